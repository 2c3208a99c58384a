//! The worker's HTTP server on `KILN_METRICS_ADDR`: Prometheus metrics,
//! liveness, readiness and (on `KILN_STATUS_ADDR` when set, else on the same
//! port) a status page of the builds in the cluster. The status page and
//! `/api/*` are for operators only (see [`crate::http_auth`]).
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus metrics (OpenMetrics text) |
//! | `/healthz` | 200 `ok` while the process runs |
//! | `/readyz` | 200 `ok` when RabbitMQ is connected, Redis and the Kubernetes API answer and the build consumer runs; else 503 with one line per failing check |
//! | `/` | status page: builds in flight across the cluster and the build history from Redis, the same on every replica; `?tenant=&phase=&app=` filter it, `?refresh=N` reloads it every N seconds (server-rendered HTML, no JavaScript) |
//! | `/builds/<id>` | one build: timeline of its events, reasons and messages, masked log tails, digests and pinned references, pods, tenant, trace id |
//! | `/builds/<id>/logs/<image>/<attempt>` | the kept log of one attempt (text, secrets masked), 410 once it expired |
//! | `/api/builds` | the history as JSON (same filters) |
//! | `/api/builds/<id>` | one build's record as JSON |

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::cluster::Snapshot;
use crate::error::{Error, Result};
use crate::http_auth::{StatusAuth, require_operator};
use crate::store::{BuildRecord, BuildSummary, INDEX_MAX, KeptLog, RecordState};
use crate::supervisor::Supervisor;
use crate::timeline_bars::{BarRow, bars};

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many builds are listed on the status page.
const PAGE_BUILDS: usize = 500;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// `/metrics`, `/healthz` and `/readyz`: open to monitoring and probes,
/// and free of tenant data.
pub fn ops_router(sup: Supervisor) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(sup)
}

/// The status page and `/api/*`, behind [`require_operator`].
pub fn status_router(sup: Supervisor, auth: StatusAuth) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/builds/{id}", get(build_page))
        .route("/builds/{id}/logs/{image}/{attempt}", get(kept_log))
        .route("/api/builds", get(api_builds))
        .route("/api/builds/{id}", get(api_build))
        .route_layer(axum::middleware::from_fn_with_state(auth, require_operator))
        .with_state(sup)
}

/// Every route on one port (when `KILN_STATUS_ADDR` is unset).
pub fn router(sup: Supervisor, auth: StatusAuth) -> Router {
    ops_router(sup.clone())
        .merge(status_router(sup, auth))
        .fallback(not_found)
}

/// The two ports' routes (when `KILN_STATUS_ADDR` is set): monitoring's
/// and operators'.
pub fn split_routers(sup: Supervisor, auth: StatusAuth) -> (Router, Router) {
    (
        ops_router(sup.clone()).fallback(not_found),
        status_router(sup, auth).fallback(not_found),
    )
}

/// Serves `app` on a bound listener (port 0 in tests) until `shutdown`
/// resolves.
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Only for the log line: a socket without a local address still serves.
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving HTTP");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Config(format!("HTTP server failed: {e}")))
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(TEXT)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n".to_owned())
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_owned())
}

async fn metrics(State(sup): State<Supervisor>) -> Response {
    sup.ctx
        .metrics
        .cluster_builds_in_flight
        .set(i64::try_from(sup.cluster.len()).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))],
        sup.ctx.metrics.encode(),
    )
        .into_response()
}

/// One readiness check and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub problem: Option<String>,
}

async fn timed(f: impl Future<Output = Result<()>>) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

/// Runs every readiness check (the slow ones concurrently) and records them
/// in `kiln_dependency_up`.
pub async fn readiness(sup: &Supervisor) -> Vec<Check> {
    let ctx = &sup.ctx;
    let (redis, kube) = tokio::join!(timed(ctx.store.ping()), timed(ctx.pods.ping()));
    let checks = vec![
        Check {
            name: "rabbitmq",
            problem: (!ctx.broker.is_connected()).then(|| "not connected".to_owned()),
        },
        Check {
            name: "redis",
            problem: redis,
        },
        Check {
            name: "kubernetes",
            problem: kube,
        },
        Check {
            name: "consumer",
            problem: (!sup.registry.is_consuming())
                .then(|| "build consumer not running".to_owned()),
        },
    ];
    for c in &checks {
        ctx.metrics.dependency(c.name, c.problem.is_none());
    }
    checks
}

async fn readyz(State(sup): State<Supervisor>) -> Response {
    let checks = readiness(&sup).await;
    let failing: Vec<String> = checks
        .iter()
        .filter_map(|c| c.problem.as_ref().map(|p| format!("{}: {p}\n", c.name)))
        .collect();
    if failing.is_empty() {
        text(StatusCode::OK, "ok\n".to_owned())
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, failing.concat())
    }
}

/// One image row of the in-flight table.
#[derive(Debug)]
struct Row {
    first: bool,
    span: usize,
    build: String,
    namespace: String,
    worker: String,
    image: String,
    pod: String,
    phase: &'static str,
    detail: Option<String>,
    attempt: u32,
    age: String,
}

#[derive(Debug)]
struct RecentRow {
    build: String,
    phase: &'static str,
    inferred: bool,
    images: usize,
    took: String,
    ago: String,
}

/// The list filters of `/` and `/api/builds`; empty means any.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub tenant: String,
    /// A terminal phase, or `running` for builds not finished yet.
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub app: String,
    /// Seconds between reloads of the HTML page (`<meta refresh>`); 0 = off.
    #[serde(default)]
    pub refresh: u32,
}

/// The phase the list shows for a record: its terminal phase, or
/// `running` while it is not finished.
fn record_phase(r: &BuildRecord) -> &str {
    match (&r.phase, r.state) {
        (Some(p), RecordState::Finished) => p.as_str(),
        _ => "running",
    }
}

impl Filter {
    fn matches(&self, s: &BuildSummary) -> bool {
        (self.tenant.is_empty() || s.tenant == self.tenant)
            && (self.phase.is_empty() || s.phase == self.phase)
            && (self.app.is_empty() || s.app.as_deref() == Some(self.app.as_str()))
    }

    fn is_empty(&self) -> bool {
        self.tenant.is_empty() && self.phase.is_empty() && self.app.is_empty()
    }
}

/// One build of the history list.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    pub id: String,
    pub phase: String,
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub images: usize,
    pub worker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<jiff::Timestamp>,
    pub updated_at: jiff::Timestamp,
    /// From the first event to the terminal one (or now, while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip)]
    ago: String,
    #[serde(skip)]
    took: String,
    /// The duration's share of the longest listed, for the list's bar.
    #[serde(skip)]
    took_pct: u32,
}

/// The filtered history, newest first, from the builds' summaries (never
/// their records: a view's cost does not grow with log tails). `None` when
/// Redis does not answer.
async fn history(sup: &Supervisor, f: &Filter, now: jiff::Timestamp) -> Option<Vec<HistoryRow>> {
    let read = tokio::time::timeout(CHECK_TIMEOUT, sup.ctx.store.recent_summaries(INDEX_MAX)).await;
    let summaries = match read {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            sup.ctx.metrics.error(&e);
            tracing::warn!(error = %e, "status page: cannot read the build summaries");
            return None;
        }
        Err(_) => {
            sup.ctx.metrics.error(&crate::Error::Redis {
                context: "status page: reading the build summaries timed out".into(),
                source: None,
            });
            tracing::warn!("status page: reading the build summaries timed out");
            return None;
        }
    };
    let mut rows: Vec<HistoryRow> = summaries
        .into_iter()
        .filter(|s| f.matches(s))
        .map(|s| {
            // From the first event to the terminal one (or now, while it runs).
            let duration_seconds = s.started.map(|a| {
                let end = s.finished.unwrap_or(now);
                end.duration_since(a).as_secs_f64().max(0.0)
            });
            HistoryRow {
                duration_seconds,
                took: duration_seconds
                    .map(kiln_core::timeline::words)
                    .unwrap_or_default(),
                took_pct: 0,
                started_at: s.started,
                finished_at: s.finished,
                phase: s.phase,
                app: s.app,
                reason: s.reason.map(|r| r.to_string()),
                images: s.images,
                ago: since(s.updated_at, now),
                tenant: s.tenant,
                worker: s.worker,
                updated_at: s.updated_at,
                id: s.id,
            }
        })
        .collect();
    let longest = rows
        .iter()
        .filter_map(|r| r.duration_seconds)
        .fold(0.0_f64, f64::max);
    if longest > 0.0 {
        for r in &mut rows {
            #[allow(clippy::cast_possible_truncation)]
            let pct = (r.duration_seconds.unwrap_or(0.0) / longest * 100.0).round() as u32;
            r.took_pct = pct;
        }
    }
    Some(rows)
}

#[derive(Debug, Template)]
#[template(path = "status.html")]
struct StatusPage {
    filter: Filter,
    filtered: bool,
    history: Option<Vec<HistoryRow>>,
    worker: String,
    source: String,
    version: &'static str,
    consuming: bool,
    local_builds: usize,
    total: usize,
    hidden: usize,
    rows: Vec<Row>,
    recent: Vec<RecentRow>,
    generated: String,
}

/// `3s`, `4m05s`, `2h10m`, `3d04h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn since(from: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let d = now
        .duration_since(from)
        .try_into()
        .unwrap_or(Duration::ZERO);
    short_duration(d)
}

fn page(
    filter: Filter,
    history: Option<Vec<HistoryRow>>,
    sup: &Supervisor,
    snap: &Snapshot,
    holders: &HashMap<String, String>,
    now: jiff::Timestamp,
) -> StatusPage {
    let mut rows = Vec::new();
    for b in &snap.in_flight {
        let span = b.images.len().max(1);
        let worker = holders
            .get(&b.id)
            .cloned()
            .unwrap_or_else(|| "-".to_owned());
        for (i, img) in b.images.iter().enumerate() {
            rows.push(Row {
                first: i == 0,
                span,
                build: b.id.clone(),
                namespace: b.namespace.clone(),
                worker: worker.clone(),
                image: img.name.clone(),
                pod: img.pod.clone(),
                phase: img.phase,
                detail: img.detail.clone(),
                attempt: img.attempt,
                age: since(b.first_seen, now),
            });
        }
    }
    let recent = snap
        .recent
        .iter()
        .map(|o| RecentRow {
            build: o.id.clone(),
            phase: o.phase.as_str(),
            inferred: o.inferred,
            images: o.images,
            took: o
                .first_seen
                .map_or_else(|| "-".to_owned(), |f| since(f, o.finished_at)),
            ago: since(o.finished_at, now),
        })
        .collect();
    StatusPage {
        filtered: !filter.is_empty(),
        filter,
        history,
        worker: sup.ctx.settings.worker.clone(),
        source: sup.ctx.settings.source.clone(),
        version: env!("CARGO_PKG_VERSION"),
        consuming: sup.registry.is_consuming(),
        local_builds: sup.registry.in_flight(),
        total: snap.in_flight_total,
        hidden: snap.in_flight_total.saturating_sub(snap.in_flight.len()),
        rows,
        recent,
        generated: now.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

async fn status_page(State(sup): State<Supervisor>, Query(filter): Query<Filter>) -> Response {
    let now = jiff::Timestamp::now();
    let rows = history(&sup, &filter, now).await;
    let snap = sup.cluster.snapshot(PAGE_BUILDS);
    let ids: Vec<String> = snap.in_flight.iter().map(|b| b.id.clone()).collect();
    // The lease holder is the build's worker; without Redis the column
    // stays empty rather than the page failing.
    let holders: HashMap<String, String> =
        match tokio::time::timeout(CHECK_TIMEOUT, sup.ctx.store.holders(&ids)).await {
            Ok(Ok(h)) => ids
                .into_iter()
                .zip(h)
                .filter_map(|(id, w)| w.map(|w| (id, w)))
                .collect(),
            _ => HashMap::new(),
        };
    html(&page(filter, rows, &sup, &snap, &holders, now))
}

fn html(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Html(html),
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the status page: {e}\n"),
        ),
    }
}

/// The record of one build, or the answer to give instead.
async fn one_record(sup: &Supervisor, id: &str) -> std::result::Result<BuildRecord, Response> {
    match tokio::time::timeout(CHECK_TIMEOUT, sup.ctx.store.record(id)).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err(text(
            StatusCode::NOT_FOUND,
            format!("no record of build {id:?}: unknown, or older than the record TTL\n"),
        )),
        Ok(Err(e)) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis: {e}\n"),
        )),
        Err(_) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis: no answer\n".to_owned(),
        )),
    }
}

#[derive(Debug, Template)]
#[template(path = "build.html")]
struct BuildPage {
    id: String,
    phase: String,
    r: BuildRecord,
    refresh: u32,
    generated: String,
    timeline: Vec<BarRow>,
    /// The axis' length in words.
    span: String,
}

async fn build_page(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
    Query(filter): Query<Filter>,
) -> Response {
    match one_record(&sup, &id).await {
        Ok(r) => html(&{
            let (timeline, span) = bars(&r);
            BuildPage {
                timeline,
                span,
                phase: record_phase(&r).to_owned(),
                id,
                r,
                refresh: filter.refresh,
                generated: jiff::Timestamp::now()
                    .strftime("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
            }
        }),
        Err(resp) => resp,
    }
}

/// The kept log of one attempt, as text; `410 Gone` with the line that
/// says when it expired.
async fn kept_log(
    State(sup): State<Supervisor>,
    Path((id, image, attempt)): Path<(String, String, u32)>,
) -> Response {
    let read = tokio::time::timeout(CHECK_TIMEOUT, sup.ctx.store.kept_log(&id, &image, attempt));
    match read.await {
        Ok(Ok(KeptLog::Kept { text: log, .. })) => text(StatusCode::OK, log),
        Ok(Ok(KeptLog::Expired(meta))) => text(
            StatusCode::GONE,
            format!(
                "{}\n",
                crate::cli::logs::expired_message(&id, &image, attempt, &meta)
            ),
        ),
        Ok(Ok(KeptLog::Unknown)) => text(
            StatusCode::NOT_FOUND,
            format!(
                "the log of {id}/{image} attempt {attempt} is not kept: a log is kept when its pod is deleted (`kiln logs` reads a pod that still exists)\n"
            ),
        ),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis: no answer\n".to_owned(),
        ),
    }
}

async fn api_builds(State(sup): State<Supervisor>, Query(filter): Query<Filter>) -> Response {
    match history(&sup, &filter, jiff::Timestamp::now()).await {
        Some(rows) => Json(rows).into_response(),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis: no answer\n".to_owned(),
        ),
    }
}

async fn api_build(State(sup): State<Supervisor>, Path(id): Path<String>) -> Response {
    match one_record(&sup, &id).await {
        Ok(r) => Json(r).into_response(),
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(Duration::from_secs(3)), "3s");
        assert_eq!(short_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(short_duration(Duration::from_secs(7800)), "2h10m");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d04h"
        );
    }

    #[test]
    fn the_page_renders_builds_and_outcomes() {
        let page = StatusPage {
            filter: Filter::default(),
            filtered: false,
            history: None,
            worker: "kiln-a".into(),
            source: "urn:kiln:test".into(),
            version: "0.0.0",
            consuming: true,
            local_builds: 1,
            total: 1,
            hidden: 0,
            rows: vec![
                Row {
                    first: true,
                    span: 2,
                    build: "shop-<1>".into(),
                    namespace: "kiln-builds".into(),
                    worker: "kiln-a".into(),
                    image: "api".into(),
                    pod: "kiln-shop-1-api-2".into(),
                    phase: "scheduled",
                    detail: Some("ImagePullBackOff".into()),
                    attempt: 2,
                    age: "4m05s".into(),
                },
                Row {
                    first: false,
                    span: 2,
                    build: "shop-<1>".into(),
                    namespace: "kiln-builds".into(),
                    worker: "kiln-a".into(),
                    image: "web".into(),
                    pod: "kiln-shop-1-web-1".into(),
                    phase: "running",
                    detail: None,
                    attempt: 1,
                    age: "4m05s".into(),
                },
            ],
            recent: vec![RecentRow {
                build: "old".into(),
                phase: "failed",
                inferred: true,
                images: 1,
                took: "1m00s".into(),
                ago: "5s".into(),
            }],
            generated: "now".into(),
        };
        let html = page.render().expect("renders");
        assert!(html.contains(r#"<meta name="viewport""#));
        assert!(!html.contains("<script"));
        // Escaped, once per build.
        assert_eq!(html.matches("shop-&#60;1&#62;").count(), 1, "{html}");
        assert!(html.contains(r#"rowspan="2""#));
        assert!(html.contains("scheduled (ImagePullBackOff)"));
        assert!(html.contains("failed*"));
    }

    /// The build page of build `b1` whose record is `json`, as HTML.
    fn build_page_of(json: &str) -> String {
        let r: BuildRecord = serde_json::from_str(json).expect("a record");
        let (timeline, span) = bars(&r);
        let page = BuildPage {
            id: "b1".into(),
            phase: "succeeded".into(),
            r,
            refresh: 0,
            generated: "now".into(),
            timeline,
            span,
        };
        page.render().expect("renders")
    }

    #[test]
    fn the_build_page_draws_each_image_as_bars_without_javascript() {
        let json = r#"{"state":"finished","phase":"succeeded","tenant":"shop","namespace":"b","worker":"w","images":{"api":{"phase":"succeeded","attempt":2}},"updatedAt":"2026-12-01T10:04:15Z","history":{"timeline":[
            {"id":"a","type":"t","time":"2026-12-01T10:00:00Z","phase":"accepted"},
            {"id":"b","type":"t","time":"2026-12-01T10:00:02Z","phase":"running","image":"api","attempt":1},
            {"id":"c","type":"t","time":"2026-12-01T10:00:42Z","phase":"retrying","image":"api","attempt":1,"reason":"OOMKilled"},
            {"id":"d","type":"t","time":"2026-12-01T10:01:02Z","phase":"running","image":"api","attempt":2},
            {"id":"e","type":"t","time":"2026-12-01T10:04:14Z","phase":"succeeded","image":"api","attempt":2},
            {"id":"f","type":"t","time":"2026-12-01T10:04:15Z","phase":"succeeded"}]}}"#;
        let html = build_page_of(json);
        assert!(!html.contains("<script"));
        assert!(html.contains("Timeline (4 m 15 s)"), "{html}");
        assert_eq!(
            html.matches(r#"height="16" class="running""#).count(),
            2,
            "{html}"
        );
        assert!(html.contains(r#"class="backing-off""#), "{html}");
        assert!(
            html.contains(
                "ran 40 s, failed (OOMKilled), retried after 20 s, ran 3 m 12 s, succeeded"
            ),
            "{html}"
        );
    }

    /// A multi-platform image: a bar row per platform and one for the
    /// image (its publish step), and no per-position log links (its pods
    /// are not one per attempt): `kiln logs --platform` is named instead.
    #[test]
    fn the_build_page_draws_each_platform_as_its_own_row() {
        let json = r#"{"state":"finished","phase":"succeeded","tenant":"shop","namespace":"b","worker":"w","images":{"api":{"phase":"succeeded","attempt":1}},"updatedAt":"2026-12-01T10:04:15Z","history":{"images":{"api":{"pods":["kiln-b1-api-linux-amd64-1-x","kiln-b1-api-linux-arm64-1-y","kiln-b1-api-publish-1-z"]}},"timeline":[
            {"id":"a","type":"t","time":"2026-12-01T10:00:00Z","phase":"accepted"},
            {"id":"b","type":"t","time":"2026-12-01T10:00:02Z","phase":"running","image":"api","platform":"linux/amd64","attempt":1},
            {"id":"c","type":"t","time":"2026-12-01T10:00:03Z","phase":"running","image":"api","platform":"linux/arm64","attempt":1},
            {"id":"d","type":"t","time":"2026-12-01T10:03:00Z","phase":"running","image":"api","attempt":1},
            {"id":"e","type":"t","time":"2026-12-01T10:04:14Z","phase":"succeeded","image":"api","attempt":1},
            {"id":"f","type":"t","time":"2026-12-01T10:04:15Z","phase":"succeeded"}]}}"#;
        let html = build_page_of(json);
        for row in ["api/linux/amd64", "api/linux/arm64"] {
            assert!(html.contains(row), "{row}: {html}");
        }
        assert!(!html.contains("/builds/b1/logs/api/"), "{html}");
        assert!(
            html.contains("kiln logs b1 api --platform os/arch"),
            "{html}"
        );
    }
}
