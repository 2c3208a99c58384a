//! Logs and traces.
//!
//! [`init`] installs the `tracing` subscriber: human-readable lines on stderr
//! (coloured only when stderr is a terminal and `NO_COLOR` is unset or
//! empty), or JSON lines with `KILN_LOG_FORMAT=json`, filtered by `RUST_LOG`
//! (default `info`). When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are also exported over
//! OTLP in batches, with the transport `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
//! `OTEL_EXPORTER_OTLP_PROTOCOL` names ([`protocol`]): `http/protobuf` (the
//! specification's default, e.g. `http://otel-collector:4318`; the generic
//! endpoint gets `/v1/traces` appended, the traces one is used as is) or
//! `grpc` (e.g. `http://otel-collector:4317`); `https://` uses rustls on ring
//! with the system's roots. The usual `OTEL_*` variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`) apply. Without an endpoint no
//! OpenTelemetry layer is installed and the trace helpers do nothing.
//!
//! A request's W3C `traceparent` header becomes the parent of the build's span
//! ([`set_parent`]), so a build's spans join the publisher's trace; events
//! carry the same `traceparent` (docs/protocol.md, "Message properties and headers").

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether spans are exported (an OTLP endpoint was configured).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// How long [`Guard`] waits for the last spans to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Flushes and stops the span exporter when dropped (at the end of `main`).
#[must_use = "spans are flushed when the guard is dropped"]
#[derive(Debug, Default)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        EXPORTING.store(false, Ordering::Relaxed);
        let flush = move || {
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                eprintln!("kiln: could not flush spans: {e}");
            }
        };
        // The exporter's gRPC connection runs on the tokio runtime: let it
        // make progress while this thread waits.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush);
            }
            _ => flush(),
        }
    }
}

/// The OTLP transport of spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// The transport the `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or (if unset)
/// `OTEL_EXPORTER_OTLP_PROTOCOL` variable names, read through `var`; the
/// specification's default is `http/protobuf`. `http/json` is valid OTLP
/// but not built in: an error naming the variable, rather than spans sent
/// in a form the operator did not ask for.
pub fn protocol(var: impl Fn(&str) -> Option<String>) -> Result<Protocol, String> {
    let set = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|k| var(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)));
    let Some((name, value)) = set else {
        return Ok(Protocol::HttpProtobuf);
    };
    match value.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(format!(
            "{name}={other:?} is not supported: use \"http/protobuf\" or \"grpc\""
        )),
    }
}

/// Where http/protobuf spans go: the traces endpoint as is, or the generic
/// one with `/v1/traces` appended (OTLP exporter specification).
fn http_traces_url(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let non_empty = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .map(|v| v.trim().to_owned())
        .or_else(|| {
            non_empty("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|v| format!("{}/v1/traces", v.trim().trim_end_matches('/')))
        })
}

fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// The configured OTLP trace endpoint, if any.
pub fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// Why spans are not exported, for the log: the endpoint may carry a
/// password (basic auth in the URL) and the exporter's error may quote it.
fn export_problem(endpoint: &str, error: &str) -> String {
    kiln_protocol::mask_text(
        &format!("{}: {error}", kiln_protocol::redact_url(endpoint)),
        &[],
    )
}

/// Installs the global subscriber (see the module docs). Call once, inside
/// the tokio runtime, and keep the guard until the process ends.
/// Log filter when `RUST_LOG` is unset. lapin warns about every returned
/// (unroutable) message; for events that nobody subscribes to that is
/// normal and counted in `kiln_events_unroutable_total` instead.
pub const DEFAULT_FILTER: &str = "info,lapin::returned_messages=error";

pub fn init() -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("KILN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // tracing-subscriber colours whenever NO_COLOR is unset, even into
        // a file or a log collector: colour only on a terminal.
        tracing_subscriber::fmt::layer()
            .with_ansi(crate::terminal::colour_allowed(
                std::io::stderr().is_terminal(),
            ))
            .with_writer(std::io::stderr)
            .boxed()
    };
    let target = otlp_endpoint().map(|endpoint| {
        let chosen = protocol(env_var).map(|p| {
            let url = match p {
                Protocol::Grpc => endpoint.trim().to_owned(),
                Protocol::HttpProtobuf => {
                    http_traces_url(env_var).unwrap_or_else(|| endpoint.trim().to_owned())
                }
            };
            (p, url)
        });
        (endpoint, chosen)
    });
    let (otel, provider, problem) = match target {
        None => (None, None, None),
        Some((endpoint, Err(e))) => (None, None, Some(export_problem(&endpoint, &e))),
        Some((endpoint, Ok((protocol, url)))) => match tracer_provider(&url, protocol) {
            Ok(provider) => {
                let tracer = provider.tracer("kiln");
                // The exporter's own HTTP/2 client must not trace into itself.
                let quiet = Targets::new()
                    .with_default(LevelFilter::TRACE)
                    .with_target("h2", LevelFilter::OFF)
                    .with_target("hyper", LevelFilter::OFF)
                    .with_target("hyper_util", LevelFilter::OFF)
                    .with_target("tonic", LevelFilter::OFF)
                    .with_target("tower", LevelFilter::OFF)
                    .with_target("opentelemetry", LevelFilter::OFF);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(quiet);
                (Some(layer), Some(provider), None)
            }
            Err(e) => (None, None, Some(export_problem(&endpoint, &e))),
        },
    };
    let exporting = provider.is_some();
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if exporting && installed {
        EXPORTING.store(true, Ordering::Relaxed);
        let protocol = match protocol(env_var) {
            Ok(Protocol::Grpc) => "grpc",
            _ => "http/protobuf",
        };
        let endpoint = otlp_endpoint().map(|e| kiln_protocol::redact_url(&e));
        tracing::info!(endpoint = ?endpoint, protocol, "exporting spans over OTLP");
    }
    if let Some(problem) = problem {
        tracing::warn!("not exporting spans: {problem}");
    }
    Guard {
        provider: provider.filter(|_| installed),
    }
}

fn tracer_provider(endpoint: &str, protocol: Protocol) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("telemetry::init must run inside the tokio runtime".into());
    }
    // reqwest's rustls has no provider of its own (no aws-lc-rs): ring, as
    // for the rest of the process (a no-op when main installed it already,
    // which is the error discarded here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The exporters read headers and timeout from `OTEL_*` themselves.
    let exporter = match protocol {
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.trim());
            if endpoint.trim_start().starts_with("https://") {
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_native_roots(),
                );
            }
            builder.build()
        }
        // A blocking reqwest client (built by the exporter on its own
        // thread): the batch processor exports from a thread of its own,
        // outside the tokio runtime.
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.trim())
            .build(),
    }
    .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("kiln-worker");
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The trace context a W3C `traceparent` value names, if it is valid.
pub fn parent_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.trim().to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// A request's `traceparent` header (any case), normalised, if it is a valid
/// W3C trace context.
pub fn traceparent_from_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let value = headers
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v)?;
    let cx = parent_context(value)?;
    let mut out = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.remove("traceparent")
}

/// Makes the request's trace the parent of `span` (the build's span). Does
/// nothing when spans are not exported or the value is not a trace context.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if exporting() {
        link(span, traceparent);
    }
}

fn link(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(parent_context) {
        // Fails only for a span already entered: it then keeps its parent.
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` of `span` itself, to hand to a downstream system.
/// None when spans are not exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    own_traceparent(span)
}

fn own_traceparent(span: &tracing::Span) -> Option<String> {
    let mut out = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.remove("traceparent")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            set.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_otlp_protocol_follows_the_standard_variables() {
        assert_eq!(
            protocol(vars(&[])),
            Ok(Protocol::HttpProtobuf),
            "spec default"
        );
        assert_eq!(
            protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
            Ok(Protocol::Grpc)
        );
        assert_eq!(
            protocol(vars(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ])),
            Ok(Protocol::HttpProtobuf),
            "the signal's variable wins"
        );
        let err = protocol(vars(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]))
            .expect_err("not built in");
        assert!(err.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && err.contains("http/json"));
    }

    /// Issue 10: the endpoint was logged as configured, password included.
    #[test]
    fn export_problems_hide_the_endpoint_password() {
        let text = export_problem(
            "https://otel:pl4ntedOtlpPw@collector:4318",
            "invalid URI https://otel:pl4ntedOtlpPw@collector:4318/v1/traces",
        );
        assert!(!text.contains("pl4ntedOtlpPw"), "{text}");
        assert!(
            text.starts_with("https://otel:***@collector:4318: "),
            "{text}"
        );
    }

    #[test]
    fn http_spans_go_to_v1_traces_of_the_generic_endpoint() {
        assert_eq!(
            http_traces_url(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            http_traces_url(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
            ]))
            .as_deref(),
            Some("http://t:9/x")
        );
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_parse_and_normalise() {
        let cx = parent_context(TP).expect("valid");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parent_context("garbage").is_none());
        assert!(
            parent_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        let headers = [("content-type", "x"), ("TraceParent", TP)];
        assert_eq!(traceparent_from_headers(headers).as_deref(), Some(TP));
        assert_eq!(traceparent_from_headers([("traceparent", "nope")]), None);
    }

    /// A listener on a free port and the first `n` bytes its first
    /// connection sends.
    async fn first_bytes(n: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; n];
            conn.read_exact(&mut buf).await.expect("read");
            buf
        });
        (addr, received)
    }

    /// Flushes and stops `provider` off the async threads, then waits for
    /// what the listener of [`first_bytes`] received.
    async fn flush_and_receive(
        provider: SdkTracerProvider,
        received: tokio::task::JoinHandle<Vec<u8>>,
    ) -> Vec<u8> {
        tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
        });
        tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .expect("the exporter connects")
            .expect("join")
    }

    /// Spans reach an OTLP/gRPC endpoint, and a request's traceparent
    /// becomes the parent of the build span.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_exported_under_the_request_s_trace() {
        let (addr, received) = first_bytes(24).await;
        let provider =
            tracer_provider(&format!("http://{addr}"), Protocol::Grpc).expect("provider");
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        let (trace_id, own) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("build", build_id = "b");
            link(&span, Some(TP));
            let own = own_traceparent(&span);
            let id = span.context().span().span_context().trace_id().to_string();
            drop(span);
            (id, own)
        });
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let own = own.expect("the span has a context");
        assert!(
            own.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{own}"
        );
        assert!(
            !own.contains("00f067aa0ba902b7"),
            "a child span, not the parent: {own}"
        );
        let preface = flush_and_receive(provider, received).await;
        assert_eq!(&preface[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_protobuf_spans_are_posted_to_the_traces_path() {
        let want = "POST /v1/traces HTTP/1.1\r\n";
        let (addr, received) = first_bytes(want.len()).await;
        let url = format!("http://{addr}/v1/traces");
        let provider = tracer_provider(&url, Protocol::HttpProtobuf).expect("provider");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::info_span!("build", build_id = "b"));
        });
        let head = flush_and_receive(provider, received).await;
        assert_eq!(String::from_utf8_lossy(&head), want);
    }

    #[test]
    fn without_an_endpoint_the_helpers_cost_nothing() {
        let span = tracing::info_span!("build");
        set_parent(&span, Some(TP));
        assert_eq!(traceparent_of(&span), None);
        drop(Guard::default());
    }
}
