//! `GET pods/{name}/log`, as the API server (`pod/rest/log.go`,
//! `LogLocation` + `validateContainer`) and the kubelet (`validateContainerLogStatus`)
//! answer it, and the log tail the kubelet uses as termination message under
//! `FallbackToLogsOnError` (`readLastStringFromContainerLogs`: the last 80
//! lines, at most 2048 bytes, keeping the end).

use serde_json::Value;

use super::status::ApiError;

/// `kubecontainer.MaxContainerTerminationMessageLogLines`
pub const TERMINATION_LOG_LINES: usize = 80;
/// `kubecontainer.MaxContainerTerminationMessageLogLength`
pub const TERMINATION_LOG_BYTES: usize = 2048;

/// Log options used by the fake (`follow`, `timestamps`, `since*` are
/// accepted and ignored; the log is returned as it is now).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub container: Option<String>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
    pub previous: bool,
}

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

/// What the log endpoint answers for `pod`, whose simulated log is `log`.
pub fn respond(pod: &Value, log: Option<&str>, q: &LogQuery) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let container = match q.container.as_deref().filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c) => c.to_owned(),
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
    // Not bound to a node: the API server has no kubelet to ask and returns
    // an empty body.
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        return Ok(String::new());
    }
    if q.previous {
        return Err(ApiError::bad_request(&format!(
            "previous terminated container {container:?} in pod {name:?} not found"
        )));
    }
    let status = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|s| {
            s.iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(&container))
        });
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
    let mut text = log.unwrap_or_default();
    if let Some(n) = q.tail_lines.filter(|n| *n >= 0) {
        text = tail_lines(text, usize::try_from(n).unwrap_or(usize::MAX));
    }
    if let Some(n) = q.limit_bytes.filter(|n| *n > 0) {
        text = head_bytes(text, usize::try_from(n).unwrap_or(usize::MAX));
    }
    Ok(text.to_owned())
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
