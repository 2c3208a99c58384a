//! The history of one chaos run, Jepsen-style: every operation the run
//! performed (requests and cancels published, faults injected, pod fates the
//! kubelet was told) and every observation (events received from
//! `kiln.events`, and what was left at the end), each with the time since the
//! start of the run.
//!
//! The checker ([`super::checker`]) is a pure function of a [`History`], so
//! the tests build histories by hand for every anomaly; the run
//! ([`super::run`]) records one through a [`Recorder`] shared by its tasks.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Milliseconds since the start of the run.
pub type Millis = u64;

/// A request published to `kiln.requests` / `build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOp {
    pub at: Millis,
    /// The id the body names (for an invalid body, the id it claims).
    pub id: String,
    /// The AMQP user it was published as (RabbitMQ verifies `user_id`).
    pub tenant: String,
    /// sha256 of the exact bytes published, hex.
    pub body_hash: String,
    /// Whether the run meant it to pass validation and policy.
    pub valid: bool,
}

/// A cancel published to `kiln.requests` / `cancel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOp {
    pub at: Millis,
    pub id: String,
    pub tenant: String,
}

/// Level of an event, from its routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventLevel {
    Build,
    Image,
    /// `request.rejected`: a request or cancel refused without touching
    /// the build its id names.
    Request,
}

/// One event as received from `kiln.events` (a `#` binding on a queue
/// declared before anything was published). Read field by field from the
/// JSON rather than through `kiln_protocol::BuildEvent`, so that events this
/// crate's protocol types do not know yet still enter the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOp {
    pub at: Millis,
    /// CloudEvents `id` (deterministic: a duplicate delivery repeats it).
    pub event_id: String,
    pub routing_key: String,
    pub level: EventLevel,
    /// `data.phase` (`rejected` for `request.rejected`).
    pub phase: String,
    pub build_id: String,
    /// `data.tenant`.
    pub tenant: Option<String>,
    pub image: Option<String>,
    pub attempt: Option<u32>,
    pub reason: Option<String>,
    /// `kilnworker`: who published it.
    pub worker: String,
    /// Every digest the event names (`data.digest`, `data.images[].digest`).
    pub digests: Vec<String>,
}

impl EventOp {
    /// Reads an event message. `Err` names what is missing or wrong.
    pub fn parse(at: Millis, routing_key: &str, body: &[u8]) -> Result<Self, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let s = |ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_owned);
        let level = match routing_key.split('.').next() {
            Some("build") => EventLevel::Build,
            Some("image") => EventLevel::Image,
            Some("request") => EventLevel::Request,
            _ => return Err(format!("routing key {routing_key:?} has no known level")),
        };
        let event_id = s("/id").ok_or("field id is missing")?;
        let build_id = s("/data/buildId").ok_or("field data.buildId is missing")?;
        let phase = s("/data/phase")
            .or_else(|| routing_key.split('.').nth(1).map(str::to_owned))
            .ok_or("field data.phase is missing")?;
        let attempt = match v.pointer("/data/attempt") {
            None | Some(Value::Null) => None,
            Some(a) => Some(
                a.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("field data.attempt is not a small number: {a}"))?,
            ),
        };
        Ok(Self {
            at,
            event_id,
            routing_key: routing_key.to_owned(),
            level,
            phase,
            build_id,
            tenant: s("/data/tenant"),
            image: s("/data/image"),
            attempt,
            reason: s("/data/reason"),
            worker: s("/kilnworker").unwrap_or_default(),
            digests: v
                .pointer("/data/digest")
                .into_iter()
                .chain(
                    v.pointer("/data/images")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.get("digest")),
                )
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        })
    }

    /// A terminal `build.*` event (everything but `build.accepted`).
    pub fn is_build_terminal(&self) -> bool {
        self.level == EventLevel::Build && self.phase != "accepted"
    }
}

/// An event message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedOp {
    pub at: Millis,
    pub routing_key: String,
    pub error: String,
}

/// Kinds of fault the run injects (`KILN_CHAOS_FAULTS` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL of a worker process, restarted shortly after.
    Kill,
    /// SIGSTOP of a worker for longer than the lease TTL, then SIGCONT.
    Stop,
    /// The worker's RabbitMQ connection closed by the broker.
    Amqp,
    /// Every Redis key of the run's prefix deleted.
    Redis,
    /// A burst of Kubernetes API 5xx/429 answers.
    Api,
    /// Every watch cut and the watch history expired (410 on resume).
    Watch,
    /// Requests and cancels from another tenant, or bodies conflicting with
    /// a live build.
    Forge,
    /// kill -9 of the RabbitMQ node leading the builds quorum queue, started
    /// again a few seconds later (clustered engines only).
    AmqpNode,
    /// kill -9 of the Redis primary, the Sentinels failing over to the
    /// replica; or the lost-write variant: the replica stopped and cut off,
    /// the workers writing to the primary alone, then the primary killed and
    /// the replica resumed and promoted (clustered engines only).
    RedisFailover,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        Self::Kill,
        Self::Stop,
        Self::Amqp,
        Self::Redis,
        Self::Api,
        Self::Watch,
        Self::Forge,
    ];

    /// The kinds that need the clustered engines (a three-node RabbitMQ
    /// cluster, Redis under Sentinel): a run whose kinds include one starts
    /// them. Not in [`Self::ALL`], the default of a run on the shared
    /// engines.
    pub const CLUSTERED: [FaultKind; 2] = [Self::AmqpNode, Self::RedisFailover];

    /// Whether this kind needs the clustered engines.
    pub fn is_clustered(self) -> bool {
        Self::CLUSTERED.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Stop => "stop",
            Self::Amqp => "amqp",
            Self::Redis => "redis",
            Self::Api => "api",
            Self::Watch => "watch",
            Self::Forge => "forge",
            Self::AmqpNode => "amqp-node",
            Self::RedisFailover => "redis-failover",
        }
    }

    /// Parses `kill,stop,...`; an unknown name is an error naming it and
    /// the known ones.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let known = Self::ALL.into_iter().chain(Self::CLUSTERED);
            let kind = known.clone().find(|k| k.as_str() == name).ok_or_else(|| {
                format!(
                    "unknown fault kind {name:?} (known: {})",
                    known.map(Self::as_str).collect::<Vec<_>>().join(",")
                )
            })?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault as it was injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultOp {
    pub kind: FaultKind,
    /// What it hit: a worker, a build id, the prefix, the API.
    pub target: String,
    pub start: Millis,
    pub end: Millis,
    /// What exactly was done, and whether it worked.
    pub note: String,
    /// For a Redis failover: milliseconds from the primary's kill to the
    /// next lease write on the new primary (`None`: none was seen).
    pub lease_write_after: Option<Millis>,
}

/// A pod as the kubelet saw it created, with the fate the run gave it. This
/// is how the checker knows which pods were told to fail, and so which
/// retries were earned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOp {
    pub at: Millis,
    pub namespace: String,
    pub name: String,
    pub build_id: String,
    pub image: String,
    pub attempt: u32,
    /// Told to fail (a retryable failure: eviction).
    pub fails: bool,
}

/// A pod still present at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftPod {
    pub namespace: String,
    pub name: String,
    pub build_id: String,
}

/// What was left once the run had settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndState {
    pub pods: Vec<LeftPod>,
    /// Lease keys (`<prefix>lease:<id>`) still in Redis.
    pub leases: Vec<String>,
    /// Every other key of the prefix, for the report (not an anomaly:
    /// records and cancel flags are meant to outlive builds).
    pub other_keys: usize,
}

/// Everything one run did and saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub seed: u64,
    pub requests: Vec<RequestOp>,
    pub cancels: Vec<CancelOp>,
    pub events: Vec<EventOp>,
    pub malformed: Vec<MalformedOp>,
    pub faults: Vec<FaultOp>,
    pub pods: Vec<PodOp>,
    pub end: EndState,
}

/// sha256 of `body`, hex.
pub fn body_hash(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut s = String::with_capacity(64);
    for b in digest {
        use fmt::Write as _;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A [`History`] under construction, shared by the tasks of a run.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    pub fn new(seed: u64) -> Self {
        Self {
            start: Instant::now(),
            history: Mutex::new(History {
                seed,
                ..History::default()
            }),
        }
    }

    /// Milliseconds since the recorder was made.
    pub fn now(&self) -> Millis {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn with<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        f(&mut self.history.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn request(&self, id: &str, tenant: &str, body: &[u8], valid: bool) {
        let op = RequestOp {
            at: self.now(),
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            body_hash: body_hash(body),
            valid,
        };
        self.with(|h| h.requests.push(op));
    }

    pub fn cancel(&self, id: &str, tenant: &str) {
        let op = CancelOp {
            at: self.now(),
            id: id.to_owned(),
            tenant: tenant.to_owned(),
        };
        self.with(|h| h.cancels.push(op));
    }

    /// Records an event message, or why it could not be read.
    pub fn event(&self, routing_key: &str, body: &[u8]) {
        let at = self.now();
        match EventOp::parse(at, routing_key, body) {
            Ok(ev) => self.with(|h| h.events.push(ev)),
            Err(error) => self.with(|h| {
                h.malformed.push(MalformedOp {
                    at,
                    routing_key: routing_key.to_owned(),
                    error,
                });
            }),
        }
    }

    pub fn fault(&self, kind: FaultKind, target: &str, start: Millis, note: &str) {
        self.fault_measured(kind, target, start, note, None);
    }

    /// [`Self::fault`] with the time to the next lease write of a Redis
    /// failover.
    pub fn fault_measured(
        &self,
        kind: FaultKind,
        target: &str,
        start: Millis,
        note: &str,
        lease_write_after: Option<Millis>,
    ) {
        let op = FaultOp {
            kind,
            target: target.to_owned(),
            start,
            end: self.now(),
            note: note.to_owned(),
            lease_write_after,
        };
        self.with(|h| h.faults.push(op));
    }

    pub fn pod(&self, op: PodOp) {
        self.with(|h| h.pods.push(op));
    }

    pub fn set_end(&self, end: EndState) {
        self.with(|h| h.end = end);
    }

    /// Build ids that have a terminal `build.*` event or a
    /// `request.rejected` answer (the run waits for all of its builds).
    pub fn answered(&self) -> std::collections::HashSet<String> {
        self.with(|h| {
            h.events
                .iter()
                .filter(|e| e.is_build_terminal() || e.level == EventLevel::Request)
                .map(|e| e.build_id.clone())
                .collect()
        })
    }

    pub fn event_count(&self) -> usize {
        self.with(|h| h.events.len())
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.with(|h| h.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_field_by_field() {
        let body = br#"{"id":"b/api/2/retrying","kilnworker":"w1","data":{"buildId":"b","image":"api","phase":"retrying","attempt":2,"tenant":"alice","reason":"Evicted"}}"#;
        let ev = EventOp::parse(7, "image.retrying", body).expect("parses");
        assert_eq!(ev.level, EventLevel::Image);
        assert_eq!(ev.attempt, Some(2));
        assert_eq!(ev.tenant.as_deref(), Some("alice"));
        assert_eq!(ev.reason.as_deref(), Some("Evicted"));
        assert!(!ev.is_build_terminal());
    }

    #[test]
    fn unreadable_events_say_why() {
        let err =
            EventOp::parse(0, "build.succeeded", br#"{"id":"x","data":{}}"#).expect_err("an error");
        assert!(err.contains("data.buildId"), "{err}");
        let err = EventOp::parse(0, "nonsense", b"{}").expect_err("an error");
        assert!(err.contains("nonsense"), "{err}");
        let err = EventOp::parse(0, "build.failed", b"not json").expect_err("an error");
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn fault_lists_parse_and_name_unknown_kinds() {
        assert_eq!(
            FaultKind::parse_list("kill, forge,kill").expect("known"),
            vec![FaultKind::Kill, FaultKind::Forge]
        );
        let err = FaultKind::parse_list("kill,nuke").expect_err("an error");
        assert!(err.contains("\"nuke\"") && err.contains("watch"), "{err}");
        assert!(err.contains("amqp-node,redis-failover"), "{err}");
        let clustered = FaultKind::parse_list("amqp-node,redis-failover,kill").expect("known");
        assert_eq!(
            clustered.iter().filter(|k| k.is_clustered()).count(),
            2,
            "{clustered:?}"
        );
        assert!(!FaultKind::ALL.iter().any(|k| k.is_clustered()));
    }
}
