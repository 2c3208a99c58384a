//! The client examples in other languages (examples/clients/: Python with
//! pika, Node with amqplib, both parsing events with the CloudEvents SDK)
//! against a real `kiln worker` on RabbitMQ, Redis and the fake API server.
//!
//! Each client is run twice at once: with a request that builds (it must
//! exit 0 and print the digest the worker published in `build.succeeded`)
//! and with one the worker rejects (it must exit 1 naming the rejection).
//!
//! The clients need python3 or node and their dependencies, installed
//! beside them by `examples/clients/install.sh`. Where they are missing the
//! test says so and passes, except on CI (`CI=true`), where a missing
//! dependency fails it: CI is where the examples are promised to work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kiln_protocol::BuildEvent;
use kiln_tests::binary::kiln_bin;
use kiln_tests::harness::{
    Env, NAMESPACE, amqp_url, is_build_terminal, one_image, redis_url, unique,
};
use kiln_tests::process::WorkerProcess;
use serde_json::json;

/// How long a client may take from start to outcome.
const CLIENT_LIMIT: Duration = Duration::from_secs(90);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/clients")
}

/// One of the example clients.
#[derive(Clone, Copy, Debug)]
enum Client {
    Python,
    Node,
}

impl Client {
    /// The command that runs it on `request`.
    fn command(self, request: &Path) -> tokio::process::Command {
        let dir = clients_dir();
        let mut cmd = match self {
            Self::Python => {
                let mut c = tokio::process::Command::new("python3");
                c.arg(dir.join("python/kiln_client.py"))
                    .env("PYTHONPATH", dir.join("python/.deps"));
                c
            }
            // `require` looks in node_modules beside the script.
            Self::Node => {
                let mut c = tokio::process::Command::new("node");
                c.arg(dir.join("node/kiln-client.js"));
                c
            }
        };
        cmd.arg(request);
        cmd
    }

    /// `Err(why)` when the interpreter or the client's dependencies are
    /// missing.
    fn check_installed(self) -> Result<(), String> {
        let dir = clients_dir();
        let (tool, probe, install) = match self {
            Self::Python => (
                "python3",
                std::process::Command::new("python3")
                    .args(["-c", "import pika, cloudevents.core.bindings.rabbitmq"])
                    .env("PYTHONPATH", dir.join("python/.deps"))
                    .output(),
                "python",
            ),
            Self::Node => (
                "node",
                std::process::Command::new("node")
                    .args([
                        "-e",
                        "try { require('amqplib'); require('cloudevents') } \
                         catch (e) { console.error(e.message.split('\\n')[0]); process.exit(1) }",
                    ])
                    .current_dir(dir.join("node"))
                    .output(),
                "node",
            ),
        };
        match probe {
            Err(e) => Err(format!("{tool} cannot run ({e}): install it")),
            Ok(out) if !out.status.success() => Err(format!(
                "the {self:?} client's dependencies are missing (run examples/clients/install.sh {install}): {}",
                // The last line of a traceback or a Node error says what is missing.
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or_default()
            )),
            Ok(_) => Ok(()),
        }
    }
}

/// False (after saying why) when the test cannot run here; panics instead on
/// CI, where it must.
fn can_run(client: Client) -> bool {
    let Err(why) = client.check_installed() else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// What a client printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_client(client: Client, env: &Env, request: &Path) -> Run {
    let mut cmd = client.command(request);
    cmd.env("KILN_AMQP_URL", amqp_url())
        .env("KILN_AMQP_PREFIX", &env.prefix)
        .env("KILN_WAIT_TIMEOUT", CLIENT_LIMIT.as_secs().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_LIMIT + Duration::from_secs(10), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the {client:?} client did not end within {CLIENT_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("the {client:?} client cannot start: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The build's terminal event as the test's own subscriber saw it.
async fn terminal_event(env: &mut Env, id: &str) -> BuildEvent {
    env.events_of(id, Duration::from_secs(30))
        .await
        .into_iter()
        .find(is_build_terminal)
        .unwrap_or_else(|| panic!("no terminal event for {id}"))
}

async fn client_sees_its_outcome(client: Client) {
    if !can_run(client) {
        return;
    }
    let mut env = Env::new().await;
    let dir = std::env::temp_dir().join(&env.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    env.kube.write_kubeconfig(&kubeconfig).unwrap();
    let mut worker = WorkerProcess::spawn(
        &kiln_bin(),
        [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("KILN_AMQP_URL", amqp_url()),
            ("KILN_REDIS_URL", redis_url()),
            ("KILN_AMQP_PREFIX", env.prefix.clone()),
            ("KILN_REDIS_PREFIX", env.redis_prefix.clone()),
            ("KILN_NAMESPACE", NAMESPACE.to_owned()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap();

    let good = unique("client-ok");
    let good_file = dir.join("good.json");
    std::fs::write(&good_file, one_image(&good).to_string()).unwrap();
    // A destination that is not an image reference: rejected, id readable.
    let bad = unique("client-bad");
    let mut bad_request = one_image(&bad);
    bad_request["images"][0]["destinations"] = json!(["not a reference"]);
    let bad_file = dir.join("bad.json");
    std::fs::write(&bad_file, bad_request.to_string()).unwrap();

    let (ok, rejected) = tokio::join!(
        run_client(client, &env, &good_file),
        run_client(client, &env, &bad_file)
    );
    let context = |run: &Run| {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}--- worker log (tail) ---\n{}",
            run.stdout,
            run.stderr,
            worker.log_tail(30)
        )
    };
    assert_eq!(
        ok.code,
        Some(0),
        "the {client:?} client's build should succeed\n{}",
        context(&ok)
    );
    let event = terminal_event(&mut env, &good).await;
    let digest = event
        .data
        .images
        .as_ref()
        .and_then(|images| images.first())
        .and_then(|i| i.digest.clone())
        .expect("build.succeeded names the digest");
    assert!(
        ok.stdout.contains("outcome: build.succeeded")
            && ok
                .stdout
                .contains(&format!("image api: succeeded {digest}")),
        "the {client:?} client prints the outcome and the digest {digest}\n{}",
        context(&ok)
    );
    assert_eq!(
        rejected.code,
        Some(1),
        "the {client:?} client's invalid request should end it with 1\n{}",
        context(&rejected)
    );
    assert!(
        rejected.stdout.contains("outcome: build.rejected"),
        "the {client:?} client names the rejection\n{}",
        context(&rejected)
    );
    worker.stop(Duration::from_secs(20)).await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_sees_its_outcome() {
    client_sees_its_outcome(Client::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_sees_its_outcome() {
    client_sees_its_outcome(Client::Node).await;
}
