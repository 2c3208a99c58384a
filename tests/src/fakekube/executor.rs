//! What the Kaniko executor prints and writes, from its source
//! (osscontainertools/kaniko at 6bcc934, v1.28.3-23), for the kubelet
//! simulator.
//!
//! [`Executor`] says what happens in a build; [`render`] turns it into an
//! exit code, a log and the content of the termination message file, reading
//! the pod's own args (`--destination`, `--digest-file`, `--log-format`,
//! `--context`) the way the executor does. The kubelet then applies
//! `FallbackToLogsOnError` to the result exactly as it does for any
//! container (see `kubelet.rs`).

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;

use super::kubelet::hex_sha256;

/// What the executor does in a simulated pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executor {
    /// Builds and pushes to every `--destination`; exit 0.
    Builds,
    /// Builds, then every push attempt fails with `error` (the text of a
    /// go-containerregistry `remote.Write` error); exit 1.
    PushFails { error: String },
    /// Fetching the `--context` fails with `error`; exit 1, cobra's usage
    /// text after the error.
    FetchFails { error: String },
    /// A `RUN` instruction exits with `exit_code`; the executor exits with
    /// the same code.
    RunFails { command: String, exit_code: i32 },
    /// A `RUN` instruction is killed by the kernel's OOM killer.
    OomKilled { command: String },
}

impl Executor {
    /// A registry that answers 503 to the manifest upload.
    pub fn push_unavailable() -> Self {
        Self::PushFails {
            error: "unexpected status code 503 Service Unavailable: <html><body><h1>503 Service Unavailable</h1></body></html>".into(),
        }
    }

    /// A git host that refuses connections.
    pub fn git_unreachable() -> Self {
        Self::FetchFails {
            error: "Get \"https://github.com/acme/cart.git/info/refs?service=git-upload-pack\": dial tcp 140.82.121.4:443: connect: connection refused".into(),
        }
    }
}

/// How the container ended, before the kubelet's termination-message rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled` (set by the runtime).
    pub reason: &'static str,
    /// stdout and stderr as the log endpoint serves them.
    pub log: String,
    /// What the container wrote to its `terminationMessagePath`.
    pub termination_file: String,
}

/// The value of `--name=value` in `args`, the last one winning as in pflag.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter()
        .rev()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn flags<'a>(args: &'a [String], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    args.iter()
        .filter_map(move |a| a.strip_prefix("--")?.strip_prefix(name)?.strip_prefix('='))
}

/// One logrus line. `--log-format` defaults to `color`
/// (cmd/executor/cmd/root.go `init`); pkg/logging/logging.go `Configure`
/// picks `TextFormatter{ForceColors}` for `color` and
/// `TextFormatter{DisableColors}` for `text`. vendor/.../logrus
/// text_formatter.go: coloured is `<LEVL>[<secs>] <msg padded to 44> `,
/// plain is `time="<RFC3339>" level=<level> msg=<quoted>`; level.go: info
/// cyan (36), warning yellow (33), error red (31).
struct Logger {
    text: bool,
    secs: u32,
    out: String,
}

impl Logger {
    fn new(args: &[String]) -> Self {
        Self {
            text: flag(args, "log-format") == Some("text"),
            secs: 0,
            out: String::new(),
        }
    }

    fn line(&mut self, level: &str, msg: &str) {
        if self.text {
            let now = jiff::Timestamp::now();
            let ts = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
            let quoted = if msg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._/@^+".contains(&b))
            {
                msg.to_owned()
            } else {
                format!("{msg:?}")
            };
            let _ = writeln!(self.out, "time=\"{ts}\" level={level} msg={quoted}");
        } else {
            let (color, label) = match level {
                "warning" => (33, "WARN"),
                "error" | "fatal" => (31, "ERRO"),
                _ => (36, "INFO"),
            };
            let _ = writeln!(
                self.out,
                "\x1b[{color}m{label}\x1b[0m[{:04}] {msg:<44} ",
                self.secs
            );
        }
        self.secs += 1;
    }

    fn info(&mut self, msg: &str) {
        self.line("info", msg);
    }

    /// The final error: `exit()` prints it with `fmt.Fprintln(os.Stderr,
    /// err)`, no formatter, no colour.
    fn plain(&mut self, text: &str) {
        self.out.push_str(text);
        self.out.push('\n');
    }
}

/// The image digest the executor computes: deterministic per pod name, so
/// tests can predict it.
pub fn digest_of(pod_name: &str) -> String {
    format!("sha256:{}", hex_sha256(pod_name))
}

/// Cobra's usage text after a `PersistentPreRunE` error (the executor sets
/// no `SilenceUsage`): `Usage:`, `Available Commands:`, `Flags:` with one
/// line per flag (about 70 of them, several KiB), and the closing line of a
/// command with subcommands (spf13/cobra command.go `defaultUsageFunc`).
/// The flag lines here are shorter stand-ins, enough to push the error line
/// out of the kubelet's 80-line, 2 KiB tail as the real ones do.
fn usage() -> String {
    let mut u = String::from(
        "Usage:\n  executor [flags]\n  executor [command]\n\nAvailable Commands:\n  completion  Generate the autocompletion script for the specified shell\n  help        Help about any command\n  login       Authenticate to a registry\n  push        Push an OCI layout or tarball\n  version     Print the version number of kaniko\n\nFlags:\n",
    );
    for name in [
        "build-arg",
        "cache",
        "cache-copy-layers",
        "cache-dir",
        "cache-repo",
        "cache-run-layers",
        "cache-ttl",
        "cleanup",
        "compressed-caching",
        "compression",
        "compression-level",
        "context",
        "context-sub-path",
        "custom-platform",
        "digest-file",
        "dockerfile",
        "force",
        "git",
        "ignore-path",
        "ignore-var-run",
        "image-download-retry",
        "image-fs-extract-retry",
        "image-name-tag-with-digest-file",
        "image-name-with-digest-file",
        "insecure",
        "insecure-pull",
        "insecure-registry",
        "kaniko-dir",
        "label",
        "log-format",
        "log-timestamp",
        "no-push",
        "no-push-cache",
        "oci-layout-path",
        "push-ignore-immutable-tag-errors",
        "push-retry",
        "registry-certificate",
        "registry-client-cert",
        "registry-map",
        "registry-mirror",
        "reproducible",
        "secret",
        "single-snapshot",
        "skip-default-registry-fallback",
        "skip-push-permission-check",
        "skip-tls-verify",
        "skip-tls-verify-pull",
        "skip-tls-verify-registry",
        "skip-unused-stages",
        "snapshot-mode",
        "tar-path",
        "target",
        "use-new-run",
        "verbosity",
    ] {
        let _ = writeln!(
            u,
            "      --{name:<40} stand-in for the help text of --{name} (see cmd/executor/cmd/root.go)"
        );
    }
    u.push_str("\nUse \"executor [command] --help\" for more information about a command.\n\n");
    u
}

/// What the executor does in `pod` (its first container's args).
pub fn render(pod: &Pod, what: &Executor) -> Exit {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let args: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    let mut log = Logger::new(&args);
    let digest = digest_of(&name);
    let digest_file = flag(&args, "digest-file");
    let destinations: Vec<&str> = flags(&args, "destination").collect();
    let context = flag(&args, "context").unwrap_or("/workspace/");
    let retries: u32 = flag(&args, "push-retry")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);

    // resolveSourceContext (cmd/executor/cmd/root.go): go-git prints its
    // clone progress to stdout (pkg/buildcontext/git.go `Progress`).
    if context.starts_with("git://") {
        log.plain("Enumerating objects: 42, done.\nCounting objects: 100% (42/42), done.");
    }
    if let Executor::FetchFails { error } = what {
        // A PersistentPreRunE error: cobra prints `Error: <err>` and the
        // usage; main.go exits 1.
        log.plain(&format!("Error: error resolving source context: {error}"));
        log.out.push_str(&usage());
        return Exit {
            exit_code: 1,
            reason: "Error",
            log: log.out,
            termination_file: String::new(),
        };
    }
    log.info("Retrieving image manifest alpine:3.20");
    log.info("Building stage 'alpine:3.20' [idx: '0', base-idx: '-1']");
    log.info("Unpacking rootfs as cmd RUN make requires it.");
    match what {
        Executor::RunFails { command, exit_code } => {
            // pkg/commands/run.go logs `Running: [/bin/sh -c ...]`; the
            // error chain ends in exec.ExitError, whose code `exit()`
            // propagates (cmd/executor/cmd/root.go).
            log.info(&format!("Running: [/bin/sh -c {command}]"));
            log.plain(&format!(
                "error building image: error building stage: failed to execute command: waiting for process to exit: exit status {exit_code}"
            ));
            return Exit {
                exit_code: *exit_code,
                reason: "Error",
                log: log.out,
                termination_file: String::new(),
            };
        }
        Executor::OomKilled { command } => {
            // The kernel kills the whole container: nothing more is printed.
            log.info(&format!("Running: [/bin/sh -c {command}]"));
            return Exit {
                exit_code: 137,
                reason: "OOMKilled",
                log: log.out,
                termination_file: String::new(),
            };
        }
        _ => {}
    }
    log.info("Running: [/bin/sh -c make]");
    log.info("Taking snapshot of full filesystem...");
    // DoPush (pkg/executor/push.go) writes --digest-file before the push
    // loop: a failing push leaves the digest behind.
    let termination_file = if digest_file == Some("/dev/termination-log") {
        digest.clone()
    } else {
        String::new()
    };
    for d in &destinations {
        log.info(&format!("Pushing image to {d}"));
        if let Executor::PushFails { error } = what {
            let repo = d.rsplit_once(':').map_or(*d, |(r, _)| r);
            let (registry, path) = repo.split_once('/').unwrap_or(("index.docker.io", repo));
            let tag = d.rsplit_once(':').map_or("latest", |(_, t)| t);
            let err = format!("PUT https://{registry}/v2/{path}/manifests/{tag}: {error}");
            // util.Retry (pkg/util/util.go): 1s, 2s, 4s, ... between tries.
            for i in 0..retries {
                log.line(
                    "warning",
                    &format!("Retrying operation after {}s due to {err}", 1u32 << i),
                );
            }
            log.plain(&format!(
                "error pushing image: failed to push to destination {d}: {err}"
            ));
            return Exit {
                exit_code: 1,
                reason: "Error",
                log: log.out,
                termination_file,
            };
        }
        let repo = d.rsplit_once(':').map_or(*d, |(r, _)| r);
        log.info(&format!("Pushed {repo}@{digest}"));
    }
    Exit {
        exit_code: 0,
        reason: "Completed",
        log: log.out,
        termination_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod(args: &[&str]) -> Pod {
        Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "kaniko".into(),
                    args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_failed_push_leaves_the_digest_and_logs_the_error() {
        let p = pod(&[
            "--destination=r.io/a/b:1",
            "--digest-file=/dev/termination-log",
            "--push-retry=3",
            "--log-format=text",
        ]);
        let e = render(&p, &Executor::push_unavailable());
        assert_eq!(e.exit_code, 1);
        assert_eq!(e.termination_file, digest_of("p"));
        assert_eq!(
            e.log
                .matches("level=warning msg=\"Retrying operation")
                .count(),
            3
        );
        assert!(e.log.contains("\nerror pushing image: failed to push to destination r.io/a/b:1: PUT https://r.io/v2/a/b/manifests/1: unexpected status code 503"), "{}", e.log);
        assert!(!e.log.contains('\x1b'));
    }

    #[test]
    fn colour_is_the_default_log_format() {
        let e = render(&pod(&["--destination=r.io/a:1"]), &Executor::Builds);
        assert!(
            e.log
                .contains("\x1b[36mINFO\x1b[0m[0000] Retrieving image manifest"),
            "{}",
            e.log
        );
        assert_eq!(e.termination_file, "", "no --digest-file, no digest");
    }

    #[test]
    fn fetch_failures_end_in_usage_text() {
        let e = render(
            &pod(&["--context=git://github.com/a/b.git"]),
            &Executor::git_unreachable(),
        );
        assert_eq!(e.exit_code, 1);
        let tail = super::super::logs::termination_tail(&e.log);
        assert!(!tail.contains("error resolving source context"), "{tail}");
        assert!(
            e.log
                .contains("Error: error resolving source context: Get ")
        );
    }

    #[test]
    fn run_failures_exit_with_the_commands_code() {
        let e = render(
            &pod(&[]),
            &Executor::RunFails {
                command: "make".into(),
                exit_code: 2,
            },
        );
        assert_eq!((e.exit_code, e.reason), (2, "Error"));
        assert!(e.log.ends_with("exit status 2\n"));
    }
}
