//! The client side of the `kiln` binary: `submit`, `wait`, `watch`,
//! `cancel`, `status`, `logs`, `validate`, `plan`, `schema` and
//! `completions`.
//!
//! Conventions shared by every command:
//! - results a script may capture (build ids, digest-pinned references,
//!   JSON) go to standard output; progress, explanations and errors go to
//!   standard error;
//! - one exit-code table for all commands ([`exit`]);
//! - failures to reach RabbitMQ, Redis or the cluster are one line naming
//!   the address (password hidden) and what failed, never a backtrace;
//! - every line goes through [`outln!`] or [`errln!`], never `println!`:
//!   when the reader of a pipe goes away (`kiln watch | head -1`) the
//!   command ends at once, silently, with exit code 141 (128 + SIGPIPE,
//!   what a shell reports for `yes | head -1`), instead of the panic that
//!   `println!` raises under Rust's ignored SIGPIPE;
//! - Ctrl-C ends a command that waits (`submit --wait`, `wait`, `watch`)
//!   with exit code 130; the other commands keep the default SIGINT action,
//!   which the shell reports as 130 too;
//! - `--output text|json|yaml` wherever there is output; colour only on a
//!   terminal and never with `NO_COLOR` set (<https://no-color.org>).
//!
//! Only `main.rs` and this module use `anyhow`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::anyhow;
use clap::Subcommand;

use crate::amqp::{Broker, EventSubscription};
use crate::config::Connections;
use crate::store::Store;
use kiln_protocol::redact_url;

/// `println!` that ends the process quietly when standard output is a
/// closed pipe (see the module docs).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!($($arg)*))
    };
}

/// `eprintln!` that ends the process quietly when standard error is a
/// closed pipe.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::print_err(format_args!($($arg)*))
    };
}

pub mod cancel;
pub mod completions;
pub mod input;
pub mod logs;
pub mod output;
pub mod plan;
pub mod provenance;
pub mod publish;
pub mod schema;
pub mod scope;
pub mod status;
pub mod submit;
pub mod validate;
pub mod verify;
pub mod wait;
pub mod watch;

/// Exit codes of the client commands.
pub mod exit {
    /// Done; for `submit --wait` and `wait`: the build succeeded.
    pub const OK: u8 = 0;
    /// The build failed.
    pub const FAILED: u8 = 1;
    /// The input is invalid (nothing was published), or the command line is.
    pub const INVALID: u8 = 2;
    /// The build was cancelled.
    pub const CANCELLED: u8 = 3;
    /// The build was rejected by the worker (invalid request, policy).
    pub const REJECTED: u8 = 4;
    /// Gave up waiting (`--timeout`); the build goes on.
    pub const TIMED_OUT: u8 = 5;
    /// Kiln could not do what was asked: RabbitMQ, Redis or the cluster is
    /// unreachable, a publish was not routed, the build is unknown, ...
    pub const ERROR: u8 = 6;
    /// Interrupted (Ctrl-C) while waiting; the build goes on.
    pub const INTERRUPTED: u8 = 130;
    /// The reader of standard output (or error) went away: 128 + SIGPIPE,
    /// as a shell reports a process that SIGPIPE ended.
    pub const BROKEN_PIPE: u8 = 141;
}

/// The exit-code table, for `--help` (a macro so that `concat!` can use it).
#[macro_export]
#[doc(hidden)]
macro_rules! kiln_exit_codes {
    () => {
        "Exit codes:
  0  succeeded
  1  failed
  2  invalid input: nothing was published
  3  cancelled
  4  rejected
  5  timed out waiting (the build goes on)
  6  error: RabbitMQ, Redis or the cluster unreachable, publish not routed, ...
130  interrupted (Ctrl-C); a build being waited for goes on
141  the reader of the output went away (`kiln watch | head -1`)"
    };
}

/// How long to wait for RabbitMQ or Redis to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client commands, flattened into the top-level command line by
/// `main.rs` next to `kiln worker`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Validate a build request and publish it (optionally wait for it).
    #[command(after_help = submit::AFTER_HELP)]
    Submit(submit::SubmitArgs),
    /// Wait for a build to finish, showing progress per image.
    #[command(after_help = wait::AFTER_HELP)]
    Wait(wait::WaitArgs),
    /// Follow the events of every build (or of one), as lines or JSON.
    #[command(after_help = watch::AFTER_HELP)]
    Watch(watch::WatchArgs),
    /// Ask the workers to cancel a build.
    #[command(after_help = cancel::AFTER_HELP)]
    Cancel(cancel::CancelArgs),
    /// Show where a build stands: Redis' record and the cluster's pods.
    #[command(after_help = status::AFTER_HELP)]
    Status(status::StatusArgs),
    /// Print (or follow, across retries) the Kaniko logs of a build.
    #[command(after_help = logs::AFTER_HELP)]
    Logs(logs::LogsArgs),
    /// Check request files (JSON or YAML) without publishing anything.
    #[command(after_help = validate::AFTER_HELP)]
    Validate(validate::ValidateArgs),
    /// Print the ConfigMaps and pods a worker would create for a request.
    #[command(after_help = plan::AFTER_HELP)]
    Plan(Box<plan::PlanArgs>),
    /// Print the JSON Schema of a request or of the events.
    #[command(after_help = schema::AFTER_HELP)]
    Schema(schema::SchemaArgs),
    /// Print the signed provenance of a build's images, from its record.
    #[command(after_help = provenance::AFTER_HELP)]
    Provenance(provenance::ProvenanceArgs),
    /// Verify a provenance envelope, or an event carrying one, against a public key.
    #[command(after_help = verify::AFTER_HELP)]
    Verify(verify::VerifyArgs),
    /// Print a shell completion script.
    #[command(after_help = completions::AFTER_HELP)]
    Completions(completions::CompletionsArgs),
}

/// Runs one client command; `Ok` carries the exit code, `Err` is printed as
/// one line by `main` (exit code [`exit::ERROR`]). `command` builds the
/// whole command line (for completions).
pub async fn run(cmd: ClientCommand, command: fn() -> clap::Command) -> anyhow::Result<u8> {
    match cmd {
        ClientCommand::Submit(a) => submit::run(a).await,
        ClientCommand::Wait(a) => wait::run(a).await,
        ClientCommand::Watch(a) => watch::run(a).await,
        ClientCommand::Cancel(a) => cancel::run(a).await,
        ClientCommand::Status(a) => status::run(a).await,
        ClientCommand::Logs(a) => logs::run(a).await,
        ClientCommand::Validate(a) => validate::run(&a),
        ClientCommand::Plan(a) => plan::run(&a),
        ClientCommand::Schema(a) => schema::run(&a),
        ClientCommand::Provenance(a) => provenance::run(a).await,
        ClientCommand::Verify(a) => verify::run(&a),
        ClientCommand::Completions(a) => completions::run(&a, command),
    }
}

/// One line on standard output; see [`outln!`].
pub fn print_out(args: std::fmt::Arguments<'_>) {
    let written = writeln!(std::io::stdout().lock(), "{args}");
    if let Err(e) = written {
        write_failed(&e, "standard output");
    }
}

/// One line on standard error; see [`errln!`].
pub fn print_err(args: std::fmt::Arguments<'_>) {
    if let Err(e) = writeln!(std::io::stderr().lock(), "{args}")
        && is_broken_pipe(&e)
    {
        std::process::exit(i32::from(exit::BROKEN_PIPE));
    }
    // Any other failure to write to standard error has nowhere to be told.
}

/// A closed pipe ends the process at once with [`exit::BROKEN_PIPE`] and
/// no message (nobody reads it); any other failure is told on standard
/// error, exit code [`exit::ERROR`]. Exiting here, rather than returning
/// an error through every caller, also stops a `watch` loop at once.
fn write_failed(e: &std::io::Error, what: &str) -> ! {
    if !is_broken_pipe(e) {
        // Standard error failing too leaves only the exit code to tell.
        let _ = writeln!(
            std::io::stderr(),
            "kiln: error: cannot write to {what}: {e}"
        );
        std::process::exit(i32::from(exit::ERROR));
    }
    std::process::exit(i32::from(exit::BROKEN_PIPE))
}

fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Whether an error came from writing to a closed pipe (errors returned
/// by `writeln!(…)?` rather than [`outln!`]).
pub fn is_broken_pipe_error(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(is_broken_pipe)
}

/// An error as one line: the causes joined with `: `, line breaks folded.
pub fn one_line(e: &anyhow::Error) -> String {
    fold(&format!("{e:#}"))
}

/// Folds a multi-line message onto one line.
pub fn fold(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Connects to RabbitMQ as the client (`kiln <what>`), with a timeout.
pub async fn connect_broker(c: &Connections, what: &str) -> anyhow::Result<Broker> {
    let url = redact_url(&c.amqp_url);
    let name = format!("kiln {what}");
    let connect = Broker::connect_client(&c.amqp_url, &c.amqp_prefix, &name);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(broker)) => Ok(broker),
        Ok(Err(e)) => {
            let msg = hide(&e.to_string(), &c.amqp_url, &url);
            let detail = msg
                .strip_prefix("RabbitMQ: ")
                .unwrap_or(&msg)
                .strip_prefix(&format!("cannot connect to {url}: "))
                .unwrap_or(&msg)
                .to_owned();
            Err(anyhow!(
                "cannot connect to RabbitMQ at {url}: {}",
                fold(&detail)
            ))
        }
        Err(_) => Err(anyhow!(
            "cannot connect to RabbitMQ at {url}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Connects to Redis (read-only use: records, leases, cancel flags), with a
/// timeout.
pub async fn connect_redis(c: &Connections) -> anyhow::Result<Store> {
    // With Sentinels, what is named is the master and the Sentinels (no
    // password is part of it).
    let target = c.redis_target().map_err(|e| anyhow!("{e}"))?;
    let url = match &target {
        crate::store::RedisTarget::Url(_) => redact_url(&c.redis_url),
        sentinel @ crate::store::RedisTarget::Sentinel { .. } => sentinel.to_string(),
    };
    let connect = Store::connect_to(&target, &c.redis_prefix, "kiln-cli", Duration::from_secs(1));
    let leases = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(leases)) => leases,
        Ok(Err(e)) => {
            let msg = hide(&e.to_string(), &c.redis_url, &url);
            let detail = msg.strip_prefix("Redis: ").unwrap_or(&msg);
            let detail = detail
                .strip_prefix(&format!("cannot connect to {url}: "))
                .unwrap_or(detail);
            return Err(anyhow!(
                "cannot connect to Redis at {url}: {}",
                fold(detail)
            ));
        }
        Err(_) => {
            return Err(anyhow!(
                "cannot connect to Redis at {url}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ));
        }
    };
    // The connection manager may connect lazily; one round trip tells.
    match tokio::time::timeout(CONNECT_TIMEOUT, leases.ping()).await {
        Ok(Ok(())) => Ok(leases),
        Ok(Err(e)) => Err(anyhow!(
            "cannot talk to Redis at {url}: {}",
            fold(&hide(&e.to_string(), &c.redis_url, &url))
        )),
        Err(_) => Err(anyhow!(
            "cannot talk to Redis at {url}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Replaces a URL (with its password) by its redacted form in a message.
fn hide(msg: &str, url: &str, redacted: &str) -> String {
    if url.is_empty() {
        msg.to_owned()
    } else {
        msg.replace(url, redacted)
    }
}

/// Subscribes to the events exchange, explaining a missing exchange.
pub async fn subscribe(
    broker: &Broker,
    (keys, optional): &(Vec<String>, Vec<String>),
) -> anyhow::Result<EventSubscription> {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let optional: Vec<&str> = optional.iter().map(String::as_str).collect();
    broker
        .subscribe_events_optional(&keys, &optional)
        .await
        .map_err(|e| explain_amqp(&e.to_string(), &broker.names().events()))
}

/// Turns RabbitMQ's "NOT_FOUND - no exchange" into advice.
pub fn explain_amqp(msg: &str, exchange: &str) -> anyhow::Error {
    let msg = fold(msg);
    if msg.contains("NOT_FOUND") && msg.contains("exchange") {
        let prefix = exchange
            .rsplit_once('.')
            .map_or(exchange, |(p, _)| p)
            .to_owned();
        anyhow!(
            "RabbitMQ has no exchange {exchange}: no worker with prefix {prefix:?} has started on this broker (check KILN_AMQP_PREFIX)"
        )
    } else {
        anyhow!("{msg}")
    }
}

/// Resolves on Ctrl-C (or never, if the signal cannot be caught). The
/// handler is installed when this is called, not when first polled: create
/// it once, before telling the user the command waits, and poll the same
/// future in every turn of the loop (a fresh `tokio::signal::ctrl_c()` per
/// turn would leave gaps in which a Ctrl-C is caught and dropped).
pub fn ctrl_c() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        async move {
            match signal {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => futures::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
}
