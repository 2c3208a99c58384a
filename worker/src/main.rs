//! The `kiln` binary: the worker and the client in one.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use kiln_worker::cli::{self, ClientCommand};
use kiln_worker::config::WorkerConfig;

/// Kiln: queue-driven container image builds on Kubernetes.
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about,
    propagate_version = true,
    after_help = concat!(
        "Examples:\n  kiln worker\n  kiln submit examples/two-images.json --wait\n  kiln watch --output json\n\n",
        "Run `kiln help <command>` for the options and examples of each command.\n\n",
        kiln_worker::kiln_exit_codes!()
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker: consume build requests and drive Kaniko pods.
    ///
    /// Example: KILN_NAMESPACE=kiln-builds kiln worker
    Worker(Box<WorkerConfig>),
    /// Assemble and push a multi-platform image's index (the publish pod's
    /// command; docs/protocol.md, "The publish step").
    #[command(after_help = cli::publish::AFTER_HELP)]
    Publish(cli::publish::PublishArgs),
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

fn main() -> ExitCode {
    // lapin and kube both bring rustls; pick ring for the whole process
    // before either builds a TLS config. An error means a provider is
    // installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Client(_)) {
        // The client's promise: one line, never a backtrace.
        std::panic::set_hook(Box::new(|info| {
            kiln_worker::errln!(
                "kiln: internal error (please report it): {}",
                cli::fold(&info.to_string())
            );
        }));
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // Nobody reads the output any more: end quietly (see `cli`).
        Err(e) if cli::is_broken_pipe_error(&e) => ExitCode::from(cli::exit::BROKEN_PIPE),
        Err(e) => {
            // One line, never a backtrace.
            kiln_worker::errln!("kiln: error: {}", cli::one_line(&e));
            ExitCode::from(cli::exit::ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Worker(config) => {
                // Flushes exported spans when the worker returns.
                let _telemetry = kiln_worker::telemetry::init();
                match kiln_worker::worker::run(*config, None, shutdown_signal()).await {
                    Ok(()) => Ok(0),
                    Err(e) => {
                        eprintln!("kiln: error: {}", cli::fold(&e.to_string()));
                        Ok(1)
                    }
                }
            }
            Command::Publish(args) => {
                // The pod log shows the registry calls retried.
                let _telemetry = kiln_worker::telemetry::init();
                Ok(cli::publish::run(args).await)
            }
            Command::Client(command) => cli::run(*command, Cli::command).await,
        }
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a Ctrl-C handler the worker still stops on SIGTERM.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested: handing builds over");
}
