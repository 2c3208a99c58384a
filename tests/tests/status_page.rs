//! The status page in a real browser: two workers sharing one prefix, builds
//! that succeeded, failed (with a reason and a log tail) and still run; the
//! pages are loaded in headless Chromium from each worker's HTTP server and
//! checked for what a person looks for.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the test
//! says so and passes, except under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::fakekube::Fate;
use kiln_tests::harness::{Env, ONE_IMAGE_FAILS, ONE_IMAGE_SUCCEEDS, one_image, unique};

const WAIT: Duration = Duration::from_secs(60);
const FAILED_LOG: &str = "INFO[0002] RUN make\nerror: no rule to make target 'all'\n";

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// Headless Chromium with `extra` flags on `url`; its stdout.
fn browse(chromium: &Path, profile: &Path, extra: &[&str], url: &str) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The DOM of `url` after the browser loaded it.
async fn dom(chromium: &Path, profile: &Path, url: String) -> String {
    let (c, p) = (chromium.to_owned(), profile.to_owned());
    tokio::task::spawn_blocking(move || browse(&c, &p, &["--dump-dom"], &url))
        .await
        .unwrap()
}

/// Reloads `url` until `ok` accepts its DOM.
async fn dom_until(
    chromium: &Path,
    profile: &Path,
    url: String,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = dom(chromium, profile, url.clone()).await;
        if ok(&d) {
            return d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url}:\n{d}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The build ids of the history table, in page order.
fn listed(dom: &str) -> Vec<String> {
    let Some((_, table)) = dom.split_once(r#"<table id="builds">"#) else {
        return Vec::new();
    };
    let table = table.split("</table>").next().unwrap_or_default();
    table
        .split(r#"<a href="/builds/"#)
        .skip(1)
        .filter_map(|s| s.split('"').next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_status_page_for_the_fleet_in_a_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium not installed (apt-get install chromium)");
        return;
    };
    // A fresh browser profile, removed at the end.
    let profile = std::env::temp_dir().join(unique("kiln-chromium"));
    std::fs::create_dir_all(&profile).unwrap();
    let mut env = Env::new().await;
    let ok = unique("page-ok");
    let bad = unique("page-bad");
    let run = unique("page-run");
    let (bad_s, run_s) = (bad.clone(), run.clone());
    env.kube.kubelet().set_script(move |pod| {
        let build = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kiln.dev/build-id").cloned())
            .unwrap_or_default();
        if build == bad_s {
            Fate::fail(1, FAILED_LOG)
        } else if build == run_s {
            Fate::RunForever
        } else {
            Fate::Succeed {
                digest: None,
                log: String::new(),
            }
        }
    });
    let (a, b) = (free_addr(), free_addr());
    // A browser sends no bearer token: these workers serve the page to
    // anyone (KILN_STATUS_INSECURE, demos and tests only).
    for addr in [a, b] {
        env.start_worker_with(|c| {
            c.metrics_addr = Some(addr);
            c.status.status_insecure = true;
        });
    }

    let mut cart = one_image(&bad);
    cart["app"] = "cart".into();
    env.publish(&one_image(&ok)).await;
    env.publish(&cart).await;
    env.publish(&one_image(&run)).await;
    // First: `wait_running` reads only events not seen yet, while
    // `expect_sequence` also reads the ones seen before.
    env.wait_running(&run, 1, WAIT).await;
    env.expect_sequence(&ok, ONE_IMAGE_SUCCEEDS, WAIT).await;
    let failed = env.expect_sequence(&bad, ONE_IMAGE_FAILS, WAIT).await;
    let message = failed
        .iter()
        .find(|e| e.event_type.ends_with(".build.failed.v1"))
        .and_then(|e| e.data.message.clone())
        .unwrap();

    // The same list on both replicas, whichever worker ran which build.
    let all = |d: &str| {
        let l = listed(d);
        [&ok, &bad, &run].iter().all(|id| l.contains(id))
            && d.contains(">succeeded<")
            && d.contains(">failed<")
    };
    let on_a = dom_until(&chromium, &profile, format!("http://{a}/"), all).await;
    let on_b = dom_until(&chromium, &profile, format!("http://{b}/"), all).await;
    assert_eq!(listed(&on_a), listed(&on_b), "both replicas list the same");
    assert!(on_a.contains("BuildError"), "reason in the list:\n{on_a}");

    // A filter narrows the list, server-side.
    let cart_only = dom(&chromium, &profile, format!("http://{b}/?app=cart")).await;
    assert_eq!(listed(&cart_only), vec![bad.clone()], "{cart_only}");
    let running = dom(&chromium, &profile, format!("http://{a}/?phase=running")).await;
    assert_eq!(listed(&running), vec![run.clone()], "{running}");
    let nobody = dom(&chromium, &profile, format!("http://{a}/?tenant=nobody")).await;
    assert!(listed(&nobody).is_empty() && nobody.contains("No builds match"));

    // The failed build: reason, message and the log tail, from either worker.
    let page = dom(&chromium, &profile, format!("http://{b}/builds/{bad}")).await;
    assert!(page.contains(r#"id="reason">BuildError<"#), "{page}");
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(page.contains(&escaped), "message {message:?}:\n{page}");
    assert!(page.contains("error: no rule to make target"), "{page}");
    assert!(page.contains("build.failed"), "timeline:\n{page}");

    // The succeeded build: its digest and the digest-pinned reference.
    let page = dom(&chromium, &profile, format!("http://{a}/builds/{ok}")).await;
    let digest = page
        .split(r#"<code class="digest">"#)
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or_default()
        .to_owned();
    assert!(digest.starts_with("sha256:"), "{page}");
    assert!(
        page.contains(&format!("registry.example.com/shop/api:1.0.0@{digest}")),
        "{page}"
    );
    assert!(page.contains("succeeded"), "{page}");

    if let Some(path) = std::env::var_os("KILN_SCREENSHOT") {
        let (c, p) = (chromium.clone(), profile.clone());
        let shot = format!("--screenshot={}", PathBuf::from(path).display());
        let url = format!("http://{a}/");
        tokio::task::spawn_blocking(move || {
            browse(
                &c,
                &p,
                &[&shot, "--window-size=1280,900", "--hide-scrollbars"],
                &url,
            )
        })
        .await
        .unwrap();
    }
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&profile);
}
