//! What the terminal allows, shared by the client's output and the worker's
//! logs (a module of its own so that telemetry does not import the CLI).

/// Whether colour may be written to a stream: only to a terminal, and never
/// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn colour_allowed(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
