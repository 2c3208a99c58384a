//! The worker's HTTP server (`KILN_METRICS_ADDR`) over real HTTP: metrics,
//! liveness, readiness with a failing dependency, and the status page while a
//! build runs and after it finished.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use kiln_tests::harness::{Env, ONE_IMAGE_SUCCEEDS, one_image, unique};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(40);

/// A free port on 127.0.0.1 (bound and released; the worker binds it next).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// The operators' token the tests' workers are given (in a file, as from
/// a Secret).
const TOKEN: &str = "test-operator-token-0123456789";

/// A token file for [`TOKEN`], removed with the temp dir's other files.
fn token_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(unique("kiln-status-token"));
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

/// `GET path` over HTTP/1.1 with `Connection: close`, as an operator.
async fn get(addr: SocketAddr, path: &str) -> Option<Reply> {
    get_with(addr, path, &format!("Authorization: Bearer {TOKEN}\r\n")).await
}

/// `GET path` with `extra` header lines (each ending in CRLF).
async fn get_with(addr: SocketAddr, path: &str, extra: &str) -> Option<Reply> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = String::new();
    let mut chunked = false;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-type") {
            v.clone_into(&mut content_type);
        }
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some(Reply {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n + 2..)?;
    }
}

/// Polls `path` until `ok` accepts the reply.
async fn wait_for(addr: SocketAddr, path: &str, ok: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = get(addr, path).await;
        if let Some(r) = reply {
            if ok(&r) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: last reply {r:?}"
            );
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: no answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_page_over_http() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(3));
    let addr = free_addr();
    let token = token_file();
    let w = env.start_worker_with(|c| {
        c.metrics_addr = Some(addr);
        c.status.status_token_file = Some(token);
    });
    let worker = env.worker_id(w);

    let ready = wait_for(addr, "/readyz", |r| r.status == 200).await;
    assert_eq!(ready.body, "ok\n");
    assert!(ready.content_type.starts_with("text/plain"), "{ready:?}");
    let health = get(addr, "/healthz").await.unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(addr, "/no-such-page").await.unwrap().status, 404);

    let id = unique("http");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    // In flight: the build, its image's phase and its worker.
    let page = wait_for(addr, "/", |r| {
        r.body.contains(&id) && r.body.contains(">running<")
    })
    .await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(page.body.contains(r#"<meta name="viewport""#));
    assert!(!page.body.contains("<script"));
    assert!(page.body.contains(&worker), "worker column: {}", page.body);
    assert!(page.body.contains("<table>"));

    env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    // Finished: listed under recent outcomes, no longer in flight.
    let page = wait_for(addr, "/", |r| {
        r.body
            .split_once(r#"id="recent""#)
            .is_some_and(|(_, recent)| recent.contains(&id) && recent.contains(">succeeded<"))
    })
    .await;
    // The in-flight section ends where the build history begins.
    let (in_flight, _) = page.body.split_once(r#"id="history""#).unwrap();
    assert!(!in_flight.contains(&id), "still in flight: {in_flight}");
    // The build page says the image's provenance is signed, and by which key.
    let build = wait_for(addr, &format!("/builds/{id}"), |r| r.status == 200).await;
    assert!(
        build.body.contains("signed provenance (key <code>sha256:"),
        "{}",
        build.body
    );

    let metrics = get(addr, "/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        metrics.content_type
    );
    for want in [
        r#"kiln_builds_total{outcome="succeeded""#,
        r#"kiln_attempt_duration_seconds_count{outcome="succeeded""#,
        "kiln_request_to_pods_created_seconds_count 1",
        r#"kiln_events_published_total{routing_key="build.succeeded"} 1"#,
        r#"kiln_dependency_up{check="kubernetes"} 1"#,
        "kiln_builds_in_flight 0",
        "# EOF",
    ] {
        assert!(
            metrics.body.contains(want),
            "{want} missing:\n{}",
            metrics.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_each_failing_check() {
    let mut env = Env::new().await;
    let addr = free_addr();
    env.start_worker_with(|c| c.metrics_addr = Some(addr));
    wait_for(addr, "/readyz", |r| r.status == 200).await;

    // The API server answers too slowly (the fake injects no errors into
    // `/version`, only latency); each check has 2 s.
    env.kube.faults().set_latency(Duration::from_secs(3));
    let down = wait_for(addr, "/readyz", |r| r.status == 503).await;
    assert_eq!(down.body, "kubernetes: no answer within 2s\n", "{down:?}");
    assert_eq!(
        down.body.lines().count(),
        1,
        "only the failing check: {down:?}"
    );
    // Liveness does not depend on it.
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    let metrics = get(addr, "/metrics").await.unwrap();
    assert!(
        metrics
            .body
            .contains(r#"kiln_dependency_up{check="kubernetes"} 0"#),
        "{}",
        metrics.body
    );

    env.kube.faults().set_latency(Duration::ZERO);
    wait_for(addr, "/readyz", |r| r.status == 200).await;
}

/// Issue 18 item 9: without credentials no build data is served. The status
/// page and `/api/*` answer 401 without the token (403 on a worker given no
/// way to recognise operators), 200 with it; `/metrics` stays open and names
/// no build and no tenant; on a split port the status routes are not on the
/// metrics port at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_no_build_data_is_served() {
    let mut env = Env::new().await;
    let (one_port, metrics, status, closed) = (free_addr(), free_addr(), free_addr(), free_addr());
    let token = token_file();
    let t = token.clone();
    env.start_worker_with(|c| {
        c.metrics_addr = Some(one_port);
        c.status.status_token_file = Some(t);
    });
    let t = token.clone();
    env.start_worker_with(|c| {
        c.metrics_addr = Some(metrics);
        c.status.status_addr = Some(status);
        c.status.status_token_file = Some(t);
    });
    // Configured with neither a token nor a user header.
    env.start_worker_with(|c| c.metrics_addr = Some(closed));
    for a in [one_port, metrics, closed] {
        wait_for(a, "/readyz", |r| r.status == 200).await;
    }

    let id = unique("secret-build");
    env.publish(&one_image(&id)).await;
    env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    let paths = [
        "/".to_owned(),
        format!("/builds/{id}"),
        "/api/builds".to_owned(),
        format!("/api/builds/{id}"),
    ];
    for (addr, path) in [one_port, status]
        .into_iter()
        .flat_map(|a| paths.iter().map(move |p| (a, p)))
    {
        let ok = wait_for(addr, path, |r| r.status == 200 && r.body.contains(&id)).await;
        assert!(ok.body.contains("default"), "tenant shown: {ok:?}");
        for (extra, why) in [
            ("", "no credentials"),
            (
                "Authorization: Bearer wrong-token-0123456789\r\n",
                "a wrong token",
            ),
            (
                "X-Forwarded-User: eve\r\n",
                "a user header nobody configured",
            ),
        ] {
            let r = get_with(addr, path, extra).await.unwrap();
            assert_eq!(r.status, 401, "{path} with {why}: {r:?}");
            assert!(
                !r.body.contains(&id) && !r.body.contains("default"),
                "{r:?}"
            );
        }
        let r = get_with(closed, path, "").await.unwrap();
        assert_eq!(r.status, 403, "{path} on an unconfigured worker: {r:?}");
        assert!(r.body.contains("KILN_STATUS_TOKEN_FILE"), "a hint: {r:?}");
        assert!(!r.body.contains(&id));
        // Split ports: the status routes are not on the metrics port.
        assert_eq!(get(metrics, path).await.unwrap().status, 404, "{path}");
    }
    for a in [one_port, metrics, closed] {
        let m = get_with(a, "/metrics", "").await.unwrap();
        assert_eq!(m.status, 200);
        assert!(m.body.contains("# EOF"), "{}", m.body);
        assert!(!m.body.contains(&id), "a build id in /metrics:\n{}", m.body);
        assert!(
            !m.body.contains("default"),
            "a tenant name in /metrics:\n{}",
            m.body
        );
        assert_eq!(get_with(a, "/healthz", "").await.unwrap().status, 200);
    }
    let _ = std::fs::remove_file(&token);
}
