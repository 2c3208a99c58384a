//! `GET pods/{name}/log` (with `follow=true`: streamed until the container
//! stops), as the API server (`pod/rest/log.go`,
//! `LogLocation` + `validateContainer`) and the kubelet (`validateContainerLogStatus`)
//! answer it, and the log tail the kubelet uses as termination message under
//! `FallbackToLogsOnError` (`readLastStringFromContainerLogs`: the last 80
//! lines, at most 2048 bytes, keeping the end).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::ApiError;

/// `kubecontainer.MaxContainerTerminationMessageLogLines`
pub const TERMINATION_LOG_LINES: usize = 80;
/// `kubecontainer.MaxContainerTerminationMessageLogLength`
pub const TERMINATION_LOG_BYTES: usize = 2048;

/// Log options used by the fake (`timestamps` and `since*` are accepted
/// and ignored).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub container: Option<String>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
    pub previous: bool,
    pub follow: bool,
}

/// How often a `follow=true` stream looks again without being woken, as the
/// kubelet's `logForceCheckPeriod` (1 s there; shorter here, tests are fast).
const FORCE_CHECK: Duration = Duration::from_millis(100);

/// The last `n` lines (a trailing newline does not start an extra line).
pub fn tail_lines(log: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = log.strip_suffix('\n').unwrap_or(log);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &log[i + 1..],
        None => log,
    }
}

/// The first `n` bytes, cut back to a character boundary.
fn head_bytes(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `n` bytes, moved forward to a character boundary.
fn last_bytes(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The termination message `FallbackToLogsOnError` produces from a log.
pub fn termination_tail(log: &str) -> String {
    last_bytes(
        tail_lines(log, TERMINATION_LOG_LINES),
        TERMINATION_LOG_BYTES,
    )
    .to_owned()
}

/// The container whose log `q` asks for, or `None` when the pod is not
/// bound to a node (the API server then has no kubelet to ask and answers
/// an empty body). Errors as the API server and kubelet give them.
pub fn container(pod: &Value, q: &LogQuery) -> Result<Option<String>, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let names = |field: &str| -> Vec<&str> {
        pod.pointer(field)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("/spec/containers");
    // `validateContainer` accepts init containers by name too.
    let init = names("/spec/initContainers");
    let container = match q.container.as_deref().filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c) || init.contains(&c) => c.to_owned(),
        Some(c) => {
            return Err(ApiError::bad_request(&format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].to_owned(),
        None if containers.is_empty() => {
            return Err(ApiError::bad_request(&format!(
                "a container name must be specified for pod {name}"
            )));
        }
        None => {
            return Err(ApiError::bad_request(&format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        return Ok(None);
    }
    if q.previous {
        return Err(ApiError::bad_request(&format!(
            "previous terminated container {container:?} in pod {name:?} not found"
        )));
    }
    let status = container_status(pod, &container);
    let waiting = match status {
        None => Some("ContainerCreating".to_owned()),
        Some(s) => s.pointer("/state/waiting").map(|w| {
            w.get("reason")
                .and_then(Value::as_str)
                .unwrap_or("ContainerCreating")
                .to_owned()
        }),
    };
    // A container that terminated without ever running has no log either.
    let never_ran = status.is_some_and(|s| {
        s.pointer("/state/terminated").is_some()
            && s.pointer("/state/terminated/containerID").is_none()
    });
    if let Some(reason) = waiting {
        return Err(ApiError::bad_request(&format!(
            "container {container:?} in pod {name:?} is waiting to start: {reason}"
        )));
    }
    if never_ran {
        return Err(ApiError::bad_request(&format!(
            "container {container:?} in pod {name:?} is terminated"
        )));
    }
    Ok(Some(container))
}

fn container_status<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .filter_map(|f| pod.pointer(f).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
}

/// Whether `container` of `pod` is running (the kubelet's
/// `isContainerRunning`): a `follow=true` stream ends once it is not.
pub fn running(pod: &Value, container: &str) -> bool {
    container_status(pod, container).is_some_and(|s| s.pointer("/state/running").is_some())
}

/// The part of `log` the query starts with: `tailLines` from the end.
fn start(log: &str, q: &LogQuery) -> usize {
    match q.tail_lines.filter(|n| *n >= 0) {
        Some(n) => log.len() - tail_lines(log, usize::try_from(n).unwrap_or(usize::MAX)).len(),
        None => 0,
    }
}

fn limit(q: &LogQuery) -> Option<usize> {
    q.limit_bytes
        .filter(|n| *n > 0)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// What the log endpoint answers for `pod`, whose simulated log is `log`,
/// without `follow`: the log as it is now.
pub fn respond(pod: &Value, log: Option<&str>, q: &LogQuery) -> Result<String, ApiError> {
    if container(pod, q)?.is_none() {
        return Ok(String::new());
    }
    let log = log.unwrap_or_default();
    let mut text = &log[start(log, q)..];
    if let Some(n) = limit(q) {
        text = head_bytes(text, n);
    }
    Ok(text.to_owned())
}

/// The body of `follow=true`: the log from where the query starts, then
/// every write, until the container is not running any more, the pod is
/// gone or `limitBytes` is reached, as the kubelet's `ReadLogs` with
/// `Follow` does (read to the end; if the container is not running, stop;
/// else wait for a write). `read` returns the pod (if it is still the same
/// one) and its log, in that order, so that a log read after the pod said
/// "terminated" is complete. `changes` wakes the stream when something
/// changed.
pub fn follow(
    read: impl Fn() -> Option<(Value, String)> + Send + 'static,
    container: String,
    q: LogQuery,
    changes: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    struct State<R> {
        read: R,
        container: String,
        sent: Option<usize>,
        left: Option<usize>,
        tail: LogQuery,
        changes: watch::Receiver<u64>,
        shutdown: CancellationToken,
    }
    let state = State {
        read,
        container,
        sent: None,
        left: limit(&q),
        tail: q,
        changes,
        shutdown,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.left == Some(0) {
                return None;
            }
            st.changes.borrow_and_update();
            let (running, log) = match (st.read)() {
                Some((pod, log)) => (running(&pod, &st.container), log),
                None => (false, String::new()),
            };
            let from = *st.sent.get_or_insert_with(|| start(&log, &st.tail));
            if log.len() > from {
                let mut chunk = &log[from..];
                if let Some(left) = st.left {
                    chunk = head_bytes(chunk, left);
                    st.left = Some(left - chunk.len());
                }
                st.sent = Some(from + chunk.len());
                return Some((Ok(Bytes::copy_from_slice(chunk.as_bytes())), st));
            }
            if !running {
                return None;
            }
            tokio::select! {
                _ = st.changes.changed() => {}
                () = tokio::time::sleep(FORCE_CHECK) => {}
                () = st.shutdown.cancelled() => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail_lines("a\nb\n", 0), "");
        let long: String = (0..200)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let t = termination_tail(&long);
        assert!(t.starts_with("line 120\n"));
        let wide = vec!["x".repeat(1000); 10].join("\n");
        assert_eq!(termination_tail(&wide).len(), TERMINATION_LOG_BYTES);
    }
}
