//! Issue 10, end to end: secrets planted in every path a secret can take
//! (a failing build's log and termination message, a build arg named like a
//! token, credentials in a rejected request's URLs, passwords in the Redis,
//! AMQP and OTLP URLs) appear in no event, no dead-letter header, nothing the
//! `kiln worker` process prints and nothing the client prints.
//!
//! The worker is the real binary (`cargo build -p kiln-worker --bin kiln`)
//! with RabbitMQ, Redis and the fake API server; its stdout and stderr are
//! captured whole, at `debug` for Kiln's own modules.
//!
//! A dead-lettered message keeps its body as published (docs/protocol.md, "Bad input and dead letters":
//! `kiln.dead` holds the rejected messages themselves, for inspection and
//! replay), so the credentials a publisher put into its own request are
//! looked for in the headers of the dead letter, not in its body; every other
//! planted value must be absent from the bodies too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kiln_protocol::BuildEvent;
use kiln_tests::binary::kiln_bin;
use kiln_tests::fakekube::Fate;
use kiln_tests::harness::{Env, amqp_url, is_build_terminal, one_image, redis_url, unique};
use kiln_tests::process::WorkerProcess;
use serde_json::json;

/// A value no masker pattern knows: found only if it leaked.
fn planted(what: &str) -> String {
    let u = unique("x");
    format!("PLANTED{what}{}", &u[u.len() - 10..])
}

/// Every planted value with where it was put, for the failure message.
struct Plants(Vec<(&'static str, String)>);

impl Plants {
    fn add(&mut self, place: &'static str) -> String {
        let v = planted(&place.replace(['-', ' ', '/'], "").to_uppercase()[..4]);
        self.0.push((place, v.clone()));
        v
    }

    /// Panics naming every planted value found in `text` (from `source`).
    fn assert_absent(&self, source: &str, text: &str, except: &[&str]) {
        let leaks: Vec<String> = (self.0.iter())
            .filter(|(place, v)| !except.contains(place) && text.contains(v.as_str()))
            .map(|(place, v)| format!("{place} ({v})"))
            .collect();
        assert!(
            leaks.is_empty(),
            "{source} shows planted secrets: {}\n--- {source} ---\n{text}",
            leaks.join(", ")
        );
    }
}

/// Runs `kiln` with `envs` and `args`, waits at most `limit`, and returns
/// its stdout and stderr together.
async fn kiln_output(envs: &[(&str, &str)], args: &[&str], limit: Duration) -> String {
    let mut cmd = tokio::process::Command::new(kiln_bin());
    for var in [
        "KILN_AMQP_URL",
        "KILN_REDIS_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kiln {args:?} did not end within {limit:?}"))
        .expect("kiln runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `kiln worker` whose whole output goes to `log`, at `debug` for Kiln's
/// own modules (more paths print, more chances to leak).
fn start_worker(envs: &[(&str, String)], log: &Path) -> WorkerProcess {
    let envs = envs
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("RUST_LOG", "info,kiln_worker=debug,kiln=debug")]);
    WorkerProcess::spawn(&kiln_bin(), envs, log).unwrap()
}

/// The log of a failing `RUN` step as the executor prints it (logrus lines,
/// then the command's own output, then the error chain), with credentials
/// the step printed.
fn leaky_run_log(bearer: &str, token_arg: &str, url_password: &str) -> String {
    format!(
        "INFO[0000] Retrieving image manifest alpine:3.20\n\
         INFO[0001] Building stage 'alpine:3.20' [idx: '0', base-idx: '-1']\n\
         INFO[0002] Running: [/bin/sh -c npm ci]\n\
         npm http fetch GET 401 https://npm.example.com/left-pad (Authorization: Bearer {bearer})\n\
         npm ERR! could not authenticate with token {token_arg}\n\
         error building image: error building stage: failed to execute command: fetching https://ci:{url_password}@git.example.com/x.git: exit status 1\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_nowhere() {
    let mut env = Env::new().await;
    let mut plants = Plants(Vec::new());
    let bearer = plants.add("log bearer");
    let token_arg = plants.add("build arg");
    let url_password = plants.add("log url");
    let git_password = plants.add("git url");
    let s3_signature = plants.add("presigned url");
    let otlp_password = plants.add("otlp url");

    let dir = std::env::temp_dir().join(&env.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    env.kube.write_kubeconfig(&kubeconfig).unwrap();
    let log = leaky_run_log(&bearer, &token_arg, &url_password);
    env.kube
        .kubelet()
        .set_script(move |_| Fate::fail(1, log.clone()));

    let worker_log = dir.join("worker.log");
    let mut worker = start_worker(
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("KILN_AMQP_URL", amqp_url()),
            ("KILN_REDIS_URL", redis_url()),
            ("KILN_AMQP_PREFIX", env.prefix.clone()),
            ("KILN_REDIS_PREFIX", env.redis_prefix.clone()),
            ("KILN_NAMESPACE", kiln_tests::harness::NAMESPACE.to_owned()),
            ("KILN_RETRY_BASE_DELAY", "100ms".to_owned()),
            ("KILN_RETRY_MAX_DELAY", "200ms".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://kiln:{otlp_password}@127.0.0.1:1"),
            ),
        ],
        &worker_log,
    );

    // (1) + (3): a build whose RUN step fails printing credentials, one of
    // them the value of a build arg named like a token.
    let failing = unique("fails");
    let mut request = one_image(&failing);
    request["retry"] = json!({"maxAttempts": 2});
    request["images"][0]["buildArgs"] = json!({"NPM_TOKEN": token_arg, "VERSION": "1"});
    env.publish(&request).await;

    // (2): credentials in the URLs of requests the worker rejects.
    let rejected_git = unique("git");
    let mut git = one_image(&rejected_git);
    git["images"][0]["context"] =
        json!({"git": {"url": format!("http://bob:{git_password}@git.example.com/acme/cart.git")}});
    env.publish(&git).await;
    let rejected_url = unique("url");
    let mut presigned = one_image(&rejected_url);
    presigned["images"][0]["context"] = json!({"url": format!(
        "https://ctx.s3.amazonaws.com/cart.zip?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20250101&X-Amz-Signature={s3_signature}"
    )});
    env.publish(&presigned).await;

    let mut events: Vec<BuildEvent> = Vec::new();
    let ends = [&failing, &rejected_git, &rejected_url];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !ends.iter().all(|id| {
        events
            .iter()
            .any(|e| &&e.data.build_id == id && is_build_terminal(e))
    }) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(e) = env.next_event(left).await else {
            panic!(
                "not every build ended; events: {:?}\nworker log:\n{}",
                events.iter().map(|e| &e.id).collect::<Vec<_>>(),
                std::fs::read_to_string(&worker_log).unwrap_or_default()
            );
        };
        events.push(e);
    }
    // The failure really carried the log, masked: the test looks where the
    // secrets would be.
    let failed = events
        .iter()
        .find(|e| e.data.build_id == failing && e.event_type.contains(".image.failed."))
        .expect("an image.failed event");
    let failed_json = serde_json::to_string(failed).unwrap();
    assert!(
        failed_json.contains("could not authenticate"),
        "{failed_json}"
    );

    // The client reading the failed build's outcome from Redis and events.
    let client_env = [
        ("KILN_AMQP_URL", amqp_url()),
        ("KILN_REDIS_URL", redis_url()),
        ("KILN_AMQP_PREFIX", env.prefix.clone()),
        ("KILN_REDIS_PREFIX", env.redis_prefix.clone()),
        ("KUBECONFIG", kubeconfig.display().to_string()),
    ];
    let client_env: Vec<(&str, &str)> = client_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut cli = String::new();
    for args in [
        vec!["wait", failing.as_str(), "--output", "json"],
        vec!["wait", failing.as_str()],
        vec!["status", failing.as_str(), "--output", "json"],
    ] {
        cli.push_str(&kiln_output(&client_env, &args, Duration::from_secs(60)).await);
    }
    let git_file = dir.join("git.json");
    std::fs::write(&git_file, git.to_string()).unwrap();
    let url_file = dir.join("url.json");
    std::fs::write(&url_file, presigned.to_string()).unwrap();
    for f in [&git_file, &url_file] {
        let f = f.to_str().unwrap();
        cli.push_str(&kiln_output(&client_env, &["validate", f], Duration::from_secs(30)).await);
        cli.push_str(&kiln_output(&client_env, &["submit", f], Duration::from_secs(30)).await);
    }

    // SIGTERM: the graceful path, whose logs count too.
    worker.stop(Duration::from_secs(20)).await;
    let worker_text = std::fs::read_to_string(&worker_log).unwrap();
    assert!(
        worker_text.contains(&rejected_git),
        "the worker log is captured: {worker_text}"
    );
    // The OTLP endpoint is logged (without its password): the path is taken.
    assert!(
        worker_text.contains("kiln:***@127.0.0.1:1"),
        "the worker names its OTLP endpoint: {worker_text}"
    );

    let all_events = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    plants.assert_absent("the events", &all_events, &[]);
    let mut dead = String::new();
    let mut dead_bodies = String::new();
    while let Ok(Some(m)) = env.broker.get_one(&env.broker.names().dead()).await {
        for (k, v) in m.string_headers() {
            let _ = writeln!(dead, "{k}: {v}");
        }
        dead_bodies.push_str(&String::from_utf8_lossy(&m.body));
    }
    assert!(dead.contains("kiln-error"), "dead letters: {dead}");
    plants.assert_absent("the dead-letter headers", &dead, &[]);
    plants.assert_absent(
        "the dead-letter bodies",
        &dead_bodies,
        &["git url", "presigned url"],
    );
    plants.assert_absent("the worker's output", &worker_text, &[]);
    plants.assert_absent("the client's output", &cli, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// (4): a worker and the client given Redis and AMQP URLs with passwords
/// that cannot connect (nothing listens there, or the server refuses the
/// password), and `--help` with the URLs in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_passwords_appear_nowhere() {
    let mut plants = Plants(Vec::new());
    let redis_port = plants.add("redis url port");
    let redis_auth = plants.add("redis url auth");
    let amqp_port = plants.add("amqp url port");
    let amqp_auth = plants.add("amqp url auth");
    let dead_redis = format!("redis://kiln:{redis_port}@127.0.0.1:1/0");
    // The tests' Redis has no such user: AUTH fails.
    let redis_at = kiln_tests::host_port(&redis_url(), 6379);
    let refused_redis = format!("redis://nobody:{redis_auth}@{redis_at}/0");
    let dead_amqp = format!("amqp://guest:{amqp_port}@127.0.0.1:1/%2f");
    // RabbitMQ refuses guest with this password.
    let amqp_at = kiln_tests::host_port(&amqp_url(), 5672);
    let refused_amqp = format!("amqp://guest:{amqp_auth}@{amqp_at}/%2f");
    // The workers that reach RabbitMQ declare the topology under the
    // Env's prefix, which its clean-up removes.
    let env = Env::new().await;
    let dir = std::env::temp_dir().join(&env.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    env.kube.write_kubeconfig(&kubeconfig).unwrap();

    let mut worker_text = String::new();
    for (i, (amqp, redis, says_where)) in [
        // The worker retries an unreachable broker quietly (lapin's
        // reconnect backoff): it says nothing there is to check, but what
        // it logs meanwhile is checked all the same.
        (dead_amqp.clone(), redis_url(), false),
        (refused_amqp.clone(), redis_url(), false),
        (amqp_url(), dead_redis.clone(), true),
        (amqp_url(), refused_redis.clone(), false),
    ]
    .into_iter()
    .enumerate()
    {
        let log = dir.join(format!("worker-{i}.log"));
        let mut w = start_worker(
            &[
                ("KUBECONFIG", kubeconfig.display().to_string()),
                ("KILN_AMQP_URL", amqp),
                ("KILN_REDIS_URL", redis),
                ("KILN_AMQP_PREFIX", env.prefix.clone()),
                ("KILN_REDIS_PREFIX", env.redis_prefix.clone()),
            ],
            &log,
        );
        w.wait_or_kill(Duration::from_secs(10)).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !says_where || text.contains("kiln:***@127.0.0.1:1"),
            "worker {i} says where it could not connect: {text}"
        );
        worker_text.push_str(&text);
    }
    plants.assert_absent("the worker's output", &worker_text, &[]);

    let request = dir.join("request.json");
    std::fs::write(&request, one_image("b-1").to_string()).unwrap();
    let request = request.to_str().unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let mut cli = String::new();
    for (amqp, redis) in [(&dead_amqp, &dead_redis), (&refused_amqp, &refused_redis)] {
        let envs = [
            ("KILN_AMQP_URL", amqp.as_str()),
            ("KILN_REDIS_URL", redis.as_str()),
            ("KUBECONFIG", kubeconfig.as_str()),
        ];
        for args in [
            vec!["submit", request],
            vec!["submit", request, "--wait", "--timeout", "5s"],
            vec!["status", "b-1"],
            vec!["cancel", "b-1"],
            vec!["--help"],
            vec!["worker", "--help"],
            vec!["submit", "--help"],
            vec!["status", "--help"],
        ] {
            cli.push_str(&kiln_output(&envs, &args, Duration::from_secs(60)).await);
        }
    }
    assert!(cli.contains("guest:***@127.0.0.1:1"), "{cli}");
    assert!(cli.contains("kiln:***@127.0.0.1:1"), "{cli}");
    plants.assert_absent("the client's output", &cli, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
