//! Fault injection: error responses chosen by rule, added latency, dropped
//! watches and an expired watch history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::resource::{Resource, Verb};
use super::status::ApiError;
use super::store::Store;

/// The error a rule answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultResponse {
    /// 500 `InternalError`.
    InternalError,
    /// 429 `TooManyRequests` with `Retry-After: 1` (API Priority and Fairness).
    TooManyRequests,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
    /// 504 `Timeout`.
    Timeout,
    /// Any other HTTP status, with a `Status` body.
    Code(u16),
}

impl FaultResponse {
    fn error(self) -> ApiError {
        match self {
            Self::InternalError => ApiError::for_status(500),
            Self::TooManyRequests => ApiError::for_status(429),
            Self::ServiceUnavailable => ApiError::for_status(503),
            Self::Timeout => ApiError::for_status(504),
            Self::Code(c) => ApiError::for_status(c),
        }
    }
}

/// A fault rule: which calls it matches and how it answers them.
///
/// ```ignore
/// fake.faults().add(FaultRule::new(Verb::Create, Resource::Pods).times(1));
/// fake.faults().add(FaultRule::any(Verb::Watch).respond(FaultResponse::TooManyRequests).probability(0.2));
/// ```
#[derive(Debug, Clone)]
pub struct FaultRule {
    verb: Option<Verb>,
    resource: Option<Resource>,
    name_contains: Option<String>,
    /// Only calls whose `User-Agent` header contains this: one client's
    /// calls (the harness names each worker's client after the worker).
    user_agent_contains: Option<String>,
    response: FaultResponse,
    /// `None`: no limit.
    remaining: Option<u64>,
    probability: f64,
}

impl FaultRule {
    /// Matches `verb` on `resource`; answers 500, every time, until limited
    /// with [`times`](Self::times) or [`probability`](Self::probability).
    pub fn new(verb: Verb, resource: Resource) -> Self {
        Self {
            verb: Some(verb),
            resource: Some(resource),
            name_contains: None,
            user_agent_contains: None,
            response: FaultResponse::InternalError,
            remaining: None,
            probability: 1.0,
        }
    }

    /// Matches `verb` on any resource.
    pub fn any(verb: Verb) -> Self {
        Self {
            resource: None,
            ..Self::new(verb, Resource::Other)
        }
    }

    /// Matches every call.
    pub fn all() -> Self {
        Self {
            verb: None,
            resource: None,
            ..Self::new(Verb::Other, Resource::Other)
        }
    }

    /// Only calls whose object name contains this.
    #[must_use]
    pub fn name_contains(mut self, s: impl Into<String>) -> Self {
        self.name_contains = Some(s.into());
        self
    }

    /// Only calls of the client whose `User-Agent` contains this.
    #[must_use]
    pub fn user_agent_contains(mut self, s: impl Into<String>) -> Self {
        self.user_agent_contains = Some(s.into());
        self
    }

    #[must_use]
    pub fn respond(mut self, response: FaultResponse) -> Self {
        self.response = response;
        self
    }

    /// Only the next `n` matching calls fail.
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Each matching call fails with this probability (0.0..=1.0).
    #[must_use]
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p.clamp(0.0, 1.0);
        self
    }

    fn matches(&self, call: &Call<'_>) -> bool {
        let Call {
            verb,
            resource,
            name,
            user_agent,
        } = *call;
        self.verb.is_none_or(|v| v == verb)
            && self.resource.is_none_or(|r| r == resource)
            && self
                .name_contains
                .as_deref()
                .is_none_or(|s| name.is_some_and(|n| n.contains(s)))
            && self
                .user_agent_contains
                .as_deref()
                .is_none_or(|s| user_agent.is_some_and(|u| u.contains(s)))
            && self.remaining != Some(0)
    }
}

/// What a fault rule looks at in a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub verb: Verb,
    pub resource: Resource,
    pub name: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// One injected failure, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub verb: Verb,
    pub resource: Resource,
    pub name: Option<String>,
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<FaultRule>,
    latency: Duration,
    injected: Vec<Injected>,
}

/// The fault controls of one [`FakeKube`](super::FakeKube).
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
    injected: AtomicU64,
    close_watches: watch::Sender<u64>,
    store: Arc<Store>,
}

impl Faults {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            injected: AtomicU64::new(0),
            close_watches: watch::Sender::new(0),
            store,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a rule. Rules are tried in the order they were added; the first
    /// match answers.
    pub fn add(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every rule and the added latency.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.rules.clear();
        s.latency = Duration::ZERO;
    }

    /// Delay added to every API call before it is handled.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// How many calls got an injected error so far.
    pub fn injected_count(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The injected errors so far.
    pub fn injected(&self) -> Vec<Injected> {
        self.lock().injected.clone()
    }

    /// Ends every open watch stream now, abruptly (the connection is cut
    /// mid-stream, as when an API server restarts or a load balancer drops
    /// it). Clients re-watch from their last resourceVersion.
    pub fn close_watches(&self) {
        self.close_watches.send_modify(|g| *g += 1);
    }

    pub(crate) fn watch_closer(&self) -> watch::Receiver<u64> {
        self.close_watches.subscribe()
    }

    /// Drops the watch event history: the next watch from any older
    /// resourceVersion gets a 410 Expired ERROR event, and continue tokens
    /// from before expire too.
    pub fn expire_history(&self) {
        self.store.expire_history();
    }

    /// The injected error for this call, if a rule fires.
    pub(crate) fn check(&self, call: &Call<'_>) -> Option<ApiError> {
        let mut s = self.lock();
        let rule = s.rules.iter_mut().find(|r| r.matches(call))?;
        if rule.probability < 1.0 && rand::random::<f64>() >= rule.probability {
            return None;
        }
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        let err = rule.response.error();
        s.injected.push(Injected {
            verb: call.verb,
            resource: call.resource,
            name: call.name.map(str::to_owned),
            status: err.code.as_u16(),
        });
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(err)
    }
}
