//! `kiln watch`: follows `<prefix>.events`, as lines for people or one
//! CloudEvent per line (`--output json`).

use kiln_protocol::{Level, Phase};

use super::exit;
use super::output::{Output, Received, human_line};
use super::scope::{ScopeArgs, binding_keys};
use crate::config::Connections;

pub const AFTER_HELP: &str = "\
Runs until interrupted (Ctrl-C: exit code 130). Filters combine: --build narrows to one build, each
--phase adds a phase (build and image events of that phase). Only the events of your tenant (the
RabbitMQ user, or --tenant) are bound; --all-tenants binds every tenant's (operators).

Examples:
  kiln watch
  kiln watch --build shop-cart-1.2.3-7f3a
  kiln watch --phase failed --phase retrying
  kiln watch --output json | jq 'select(.data.phase == \"succeeded\") | .data.imageRefs'";

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only the events of this build.
    #[arg(long, value_name = "ID")]
    pub build: Option<String>,
    /// Only events of this phase (repeatable).
    #[arg(long = "phase", value_name = "PHASE", value_parser = parse_phase)]
    pub phases: Vec<Phase>,
    /// Stop after the terminal event of the build given with --build.
    #[arg(long, requires = "build")]
    pub until_done: bool,
    /// `text`: one line per event; `json`: one CloudEvent per line; `yaml`:
    /// one YAML document per CloudEvent.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub connections: Connections,
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    Phase::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| {
            let all: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
            format!("{s:?} is not a phase; use one of {}", all.join(", "))
        })
}

pub async fn run(args: WatchArgs) -> anyhow::Result<u8> {
    let scope = args.scope.scope(&args.connections)?;
    let broker = super::connect_broker(&args.connections, "watch").await?;
    let keys = binding_keys(&scope, &Level::ALL, &args.phases);
    let mut sub = super::subscribe(&broker, &keys).await?;
    let interrupted = super::ctrl_c();
    tokio::pin!(interrupted);
    // On standard error in every format: it says the subscription exists
    // (and that Ctrl-C is caught).
    errln!(
        "watching {}{} (Ctrl-C to stop)",
        broker.names().events(),
        args.build
            .as_deref()
            .map(|b| format!(" for build {b}"))
            .unwrap_or_default()
    );
    let mut gaps = 0;
    let result = loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else {
                    break Err(anyhow::anyhow!("lost the connection to RabbitMQ while watching"));
                };
                if sub.gaps() != gaps {
                    gaps = sub.gaps();
                    errln!("kiln: warning: the connection to RabbitMQ was lost and made again; events published in between were missed");
                }
                let Some(r) = Received::decode(&msg.body) else {
                    if args.output == Output::Text {
                        errln!("kiln: skipped a message that is not a Kiln event (routing key {})", msg.routing_key);
                    }
                    continue;
                };
                if args.build.as_ref().is_some_and(|b| *b != r.event.data.build_id) {
                    continue;
                }
                match args.output {
                    Output::Text => outln!("{}", human_line(&r.event)),
                    data => if let Err(e) = r.print(data) {
                        break Err(e);
                    },
                }
                if args.until_done && r.event.level() == Level::Build && r.event.is_terminal() {
                    break Ok(exit::OK);
                }
            }
            () = &mut interrupted => break Ok(exit::INTERRUPTED),
        }
    };
    sub.close().await;
    broker.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse() {
        assert_eq!(parse_phase("retrying"), Ok(Phase::Retrying));
        assert!(parse_phase("done").is_err_and(|e| e.contains("scheduled")));
    }
}
