//! Watch streams, modelled on the API server's watch cache
//! (`staging/src/k8s.io/apiserver/pkg/storage/cacher`):
//!
//! * The response is `200` with chunked, newline-delimited JSON
//!   `{"type":...,"object":...}` events.
//! * Resuming from a resourceVersion replays newer events from the bounded
//!   history; one older than the history gets an `ERROR` event with a 410
//!   `Expired` Status, `too old resource version: <rv> (<oldest-1>)`, inside a
//!   200 stream (`newErrWatcher`), then the stream ends.
//! * `resourceVersion` unset or "0" starts with synthetic `ADDED` events for
//!   the current state; `sendInitialEvents=true` does the same and then sends
//!   a `BOOKMARK` annotated `k8s.io/initial-events-end: "true"`.
//! * Selector filtering uses the object before and after each change
//!   (`cacheWatcher.convertToWatchEvent`): an update that makes an object
//!   match is sent as `ADDED`, one that makes it stop matching as `DELETED`
//!   (the previous object with the new resourceVersion).
//! * With `allowWatchBookmarks=true`, bookmarks go out periodically (the real
//!   server: about every minute; here `bookmark_interval`) and 2 s before the
//!   watch's deadline (`nextBookmarkTime`).
//! * `timeoutSeconds` ends the stream cleanly. A watcher that falls too far
//!   behind (broadcast lag) has its stream closed, as the real server closes
//!   unresponsive watchers; the client re-watches.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::resource::Resource;
use super::selector::Selectors;
use super::status::ApiError;
use super::store::{Event, EventType, Store, WatchStart};

/// A parsed watch request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub resource: Resource,
    pub namespace: String,
    pub selectors: Selectors,
    /// `None` for unset or "0".
    pub resource_version: Option<u64>,
    pub allow_bookmarks: bool,
    pub timeout: Duration,
}

fn frame(kind: &str, object: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(object.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(kind.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(object);
    b.put_slice(b"}\n");
    b.freeze()
}

fn bookmark(resource: Resource, rv: u64) -> Bytes {
    let meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    let obj = json!({"kind": resource.kind(), "apiVersion": "v1", "metadata": meta});
    frame("BOOKMARK", obj.to_string().as_bytes())
}

fn error_event(err: &ApiError) -> Bytes {
    frame("ERROR", err.status.to_string().as_bytes())
}

struct Filter {
    resource: Resource,
    namespace: String,
    selectors: Selectors,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.selectors.matches(obj)
    }

    /// `cacheWatcher.convertToWatchEvent`.
    fn convert(&self, ev: &Event) -> Option<Bytes> {
        if ev.resource != self.resource || self.namespace != ev.key.0 {
            return None;
        }
        let cur = ev.kind != EventType::Deleted && self.matches(&ev.object);
        let old = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match (cur, old) {
            (true, false) => Some(frame("ADDED", ev.json())),
            (true, true) => Some(frame("MODIFIED", ev.json())),
            (false, true) if ev.kind == EventType::Deleted => Some(frame("DELETED", ev.json())),
            (false, true) => {
                let mut prev = ev.prev.as_deref().cloned().unwrap_or(Value::Null);
                prev["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
                Some(frame(
                    "DELETED",
                    &serde_json::to_vec(&prev).unwrap_or_default(),
                ))
            }
            (false, false) => None,
        }
    }
}

type Chunk = Result<Bytes, std::io::Error>;

fn streaming_response(rx: mpsc::Receiver<Chunk>) -> Response {
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// A 200 stream holding one ERROR event, as `newErrWatcher` produces.
fn error_stream(err: &ApiError) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(error_event(err)));
    streaming_response(rx)
}

/// Serves one watch request.
pub async fn serve(
    store: Arc<Store>,
    req: WatchRequest,
    mut closer: watch::Receiver<u64>,
    bookmark_interval: Duration,
    shutdown: CancellationToken,
) -> Response {
    let deadline = Instant::now() + req.timeout;
    // A resourceVersion the store has not reached yet: the watch cache waits
    // up to 3 s for it, then answers "Too large resource version".
    if let Some(rv) = req.resource_version {
        let wait_until = Instant::now() + Duration::from_secs(3);
        while store.current_rv() < rv {
            if Instant::now() >= wait_until {
                return error_stream(&ApiError::too_large_resource_version(
                    rv,
                    store.current_rv(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let start = match req.resource_version {
        Some(rv) => WatchStart::After(rv),
        None => WatchStart::Current,
    };
    let init = match store.begin_watch(req.resource, Some(&req.namespace), start) {
        Ok(init) => init,
        Err(err) => return error_stream(&err),
    };
    let filter = Filter {
        resource: req.resource,
        namespace: req.namespace.clone(),
        selectors: req.selectors.clone(),
    };
    let mut first: Vec<Bytes> = Vec::with_capacity(init.initial.len() + init.replay.len() + 1);
    for obj in &init.initial {
        if filter.matches(obj) {
            first.push(frame(
                "ADDED",
                &serde_json::to_vec(&**obj).unwrap_or_default(),
            ));
        }
    }
    for ev in &init.replay {
        if let Some(line) = filter.convert(ev) {
            first.push(line);
        }
    }
    let (tx, rx) = mpsc::channel::<Chunk>(256);
    // Closing watches is edge-triggered: only closes after this point count.
    closer.mark_unchanged();
    tokio::spawn(pump(
        store,
        filter,
        init.rx,
        init.rv,
        first,
        tx,
        closer,
        shutdown,
        deadline,
        req.allow_bookmarks.then_some(bookmark_interval),
    ));
    streaming_response(rx)
}

enum Step {
    Continue,
    Stop,
}

async fn forward(
    filter: &Filter,
    ev: &Event,
    progress: &mut u64,
    tx: &mpsc::Sender<Chunk>,
) -> Step {
    if ev.rv <= *progress {
        return Step::Continue;
    }
    *progress = ev.rv;
    if let Some(line) = filter.convert(ev)
        && tx.send(Ok(line)).await.is_err()
    {
        return Step::Stop;
    }
    Step::Continue
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    store: Arc<Store>,
    filter: Filter,
    mut events: broadcast::Receiver<Arc<Event>>,
    start_rv: u64,
    first: Vec<Bytes>,
    tx: mpsc::Sender<Chunk>,
    mut closer: watch::Receiver<u64>,
    shutdown: CancellationToken,
    deadline: Instant,
    bookmark_interval: Option<Duration>,
) {
    for line in first {
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    let mut progress = start_rv;
    let pre_deadline = deadline
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(deadline);
    let far = deadline + Duration::from_secs(3600);
    let mut next_bookmark =
        bookmark_interval.map_or(far, |i| (Instant::now() + i).min(pre_deadline));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(std::io::Error::other("fake API server shut down"))).await;
                return;
            }
            _ = closer.changed() => {
                // Cut the connection mid-stream: hyper aborts the response
                // without the terminating chunk.
                let _ = tx.send(Err(std::io::Error::other("watch closed by fault injection"))).await;
                return;
            }
            () = tx.closed() => return,
            () = tokio::time::sleep_until(deadline) => return,
            r = events.recv() => match r {
                Ok(ev) => {
                    if let Step::Stop = forward(&filter, &ev, &mut progress, &tx).await {
                        return;
                    }
                }
                // Too slow: the real server closes such watchers.
                Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep_until(next_bookmark) => {
                // Every event committed up to `rv` is already in our receiver
                // (events are broadcast under the store lock), so after
                // draining it the bookmark cannot skip an event.
                let rv = store.current_rv();
                loop {
                    match events.try_recv() {
                        Ok(ev) => {
                            if let Step::Stop = forward(&filter, &ev, &mut progress, &tx).await {
                                return;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                progress = progress.max(rv);
                if tx.send(Ok(bookmark(filter.resource, progress))).await.is_err() {
                    return;
                }
                let now = Instant::now();
                next_bookmark = match bookmark_interval {
                    Some(i) if now < pre_deadline => (now + i).min(pre_deadline),
                    _ => far,
                };
            }
        }
    }
}
