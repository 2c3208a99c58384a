//! What the client and the worker's logs share about the terminal they
//! write to. A module of its own so that telemetry need not import the CLI.

/// Whether colour may be written to a stream: only to a terminal, and never
/// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn colour_allowed(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
