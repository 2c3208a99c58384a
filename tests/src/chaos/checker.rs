//! The checker: a pure function from a [`History`] to a [`Verdict`].
//!
//! It knows Kiln's promises (docs/protocol.md, "Events" and "Ownership and rejections") and nothing of how the
//! worker keeps them:
//!
//! * every accepted build ends in a terminal `build.*` event (else **lost**),
//!   and every distinct request gets an answer: its own build's terminal,
//!   `build.rejected` while the id was free, or `request.rejected` (else
//!   **unanswered**);
//! * one build id, one terminal event id (a second distinct one is a
//!   **conflicting terminal**; the same id delivered twice is at-least-once
//!   delivery and fine);
//! * nothing is built twice: a pod of attempt N > 1, `image.scheduled` of
//!   attempt N > 1 or `image.retrying` needs a pod of that image the kubelet
//!   was told to fail, and no pod name is created twice (else **rebuild**);
//! * tenants are isolated: every event of a build carries the tenant whose
//!   request was accepted under the id, a `request.rejected` goes to a tenant
//!   that sent something under the id, and a build is not stopped by another
//!   tenant's cancel (else **cross-tenant**); a request refused while the id
//!   was held gets no `build.rejected` (else **refused but built**);
//! * a build ends `cancelled` only when its owner asked (else **ended
//!   unasked**);
//! * nothing stays behind: no pod, no lease key (else **leftover**).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use super::history::{EventLevel, EventOp, History, Millis};

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    Lost,
    Unanswered,
    ConflictingTerminals,
    Rebuild,
    CrossTenant,
    RefusedButBuilt,
    EndedUnasked,
    Leftover,
    MalformedEvent,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 9] = [
        Self::Lost,
        Self::Unanswered,
        Self::ConflictingTerminals,
        Self::Rebuild,
        Self::CrossTenant,
        Self::RefusedButBuilt,
        Self::EndedUnasked,
        Self::Leftover,
        Self::MalformedEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Unanswered => "unanswered",
            Self::ConflictingTerminals => "conflicting-terminals",
            Self::Rebuild => "rebuild",
            Self::CrossTenant => "cross-tenant",
            Self::RefusedButBuilt => "refused-but-built",
            Self::EndedUnasked => "ended-unasked",
            Self::Leftover => "leftover",
            Self::MalformedEvent => "malformed-event",
        }
    }

    /// The promise this kind breaks, for the table.
    pub fn guarantee(self) -> &'static str {
        match self {
            Self::Lost => "an accepted build ends in a terminal build.*",
            Self::Unanswered => "every distinct request gets an answer",
            Self::ConflictingTerminals => "one terminal event id per build",
            Self::Rebuild => "nothing is built twice",
            Self::CrossTenant => "a tenant cannot see, take or stop another's build",
            Self::RefusedButBuilt => "a refused request never gets build.*",
            Self::EndedUnasked => "a build is cancelled only by its owner",
            Self::Leftover => "no pod or lease outlives its build",
            Self::MalformedEvent => "every event is a readable CloudEvent",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken promise, about one build id (or one key or event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub build_id: String,
    pub detail: String,
}

/// The checker's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub seed: u64,
    pub anomalies: Vec<Anomaly>,
    /// Build ids the history mentions.
    pub ids: usize,
    pub requests: usize,
    pub cancels: usize,
    pub events: usize,
    pub faults: usize,
    pub pods: usize,
}

impl Verdict {
    /// No anomaly at all.
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty()
    }

    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    /// Anomalies of one kind.
    pub fn of(&self, kind: AnomalyKind) -> Vec<&Anomaly> {
        self.anomalies.iter().filter(|a| a.kind == kind).collect()
    }

    /// The table printed at the end of a run: every kind with its count and
    /// up to `examples` examples.
    pub fn table(&self, examples: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos check (seed {}): {} build ids, {} requests, {} cancels, {} events, {} faults, {} pods",
            self.seed, self.ids, self.requests, self.cancels, self.events, self.faults, self.pods
        );
        let _ = writeln!(
            s,
            "{:<22} {:>6}  {:<50}  examples",
            "anomaly", "count", "guarantee"
        );
        for kind in AnomalyKind::ALL {
            let of = self.of(kind);
            let _ = writeln!(
                s,
                "{:<22} {:>6}  {:<50}  {}",
                kind.as_str(),
                of.len(),
                kind.guarantee(),
                of.first().map_or(String::new(), |a| example(a))
            );
            for a in of.iter().skip(1).take(examples.saturating_sub(1)) {
                let _ = writeln!(s, "{:<82}{}", "", example(a));
            }
        }
        let _ = writeln!(
            s,
            "VERDICT: {}",
            if self.ok() {
                "no anomaly".to_owned()
            } else {
                format!(
                    "{} anomalies; replay with KILN_CHAOS_SEED={}",
                    self.anomalies.len(),
                    self.seed
                )
            }
        );
        s
    }
}

fn example(a: &Anomaly) -> String {
    let mut s = format!("{}: {}", a.build_id, a.detail);
    if s.chars().count() > 220 {
        s = s.chars().take(217).collect::<String>() + "...";
    }
    s
}

/// Everything the history holds about one build id.
#[derive(Default)]
struct Of<'a> {
    events: Vec<&'a EventOp>,
    /// tenant -> (distinct body hashes, any valid)
    requests: BTreeMap<&'a str, (BTreeSet<&'a str>, bool)>,
    cancels: BTreeSet<&'a str>,
    /// image -> pods created, in order
    pods: BTreeMap<&'a str, Vec<&'a super::history::PodOp>>,
}

/// Checks a history against Kiln's promises.
pub fn check(h: &History) -> Verdict {
    let mut by_id: BTreeMap<&str, Of<'_>> = BTreeMap::new();
    for r in &h.requests {
        let e = by_id
            .entry(&r.id)
            .or_default()
            .requests
            .entry(&r.tenant)
            .or_default();
        e.0.insert(&r.body_hash);
        e.1 |= r.valid;
    }
    for c in &h.cancels {
        by_id.entry(&c.id).or_default().cancels.insert(&c.tenant);
    }
    let mut events: Vec<&EventOp> = h.events.iter().collect();
    events.sort_by_key(|e| e.at);
    for e in events {
        by_id.entry(&e.build_id).or_default().events.push(e);
    }
    for p in &h.pods {
        by_id
            .entry(&p.build_id)
            .or_default()
            .pods
            .entry(&p.image)
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    for (id, of) in &by_id {
        check_build(id, of, &mut out);
    }
    for p in &h.end.pods {
        out.push(Anomaly {
            kind: AnomalyKind::Leftover,
            build_id: p.build_id.clone(),
            detail: format!("pod {}/{} still exists", p.namespace, p.name),
        });
    }
    for k in &h.end.leases {
        out.push(Anomaly {
            kind: AnomalyKind::Leftover,
            build_id: k
                .rsplit_once("lease:")
                .map_or(k.as_str(), |(_, id)| id)
                .to_owned(),
            detail: format!("lease key {k} still exists"),
        });
    }
    for m in &h.malformed {
        out.push(Anomaly {
            kind: AnomalyKind::MalformedEvent,
            build_id: String::new(),
            detail: format!("{} at {} ms: {}", m.routing_key, m.at, m.error),
        });
    }
    Verdict {
        seed: h.seed,
        anomalies: out,
        ids: by_id.len(),
        requests: h.requests.len(),
        cancels: h.cancels.len(),
        events: h.events.len(),
        faults: h.faults.len(),
        pods: h.pods.len(),
    }
}

fn push(out: &mut Vec<Anomaly>, kind: AnomalyKind, id: &str, detail: String) {
    out.push(Anomaly {
        kind,
        build_id: id.to_owned(),
        detail,
    });
}

fn tenant_of(e: &EventOp) -> &str {
    e.tenant.as_deref().unwrap_or("(none)")
}

fn check_build(id: &str, of: &Of<'_>, out: &mut Vec<Anomaly>) {
    let accepted: Vec<&EventOp> = of
        .events
        .iter()
        .copied()
        .filter(|e| e.level == EventLevel::Build && e.phase == "accepted")
        .collect();
    let first_accept: Option<Millis> = accepted.first().map(|e| e.at);
    // The owner is the tenant the build was accepted for; a request
    // cancelled before it was accepted ends in build.cancelled without
    // build.accepted, and that terminal names the owner too.
    let owner: Option<&str> = accepted
        .first()
        .or_else(|| {
            of.events
                .iter()
                .find(|e| e.is_build_terminal() && e.phase != "rejected")
        })
        .map(|e| tenant_of(e));
    // A build.rejected received before the id was first accepted ended an
    // earlier request under a free id; it is not a terminal of the build.
    let early = |e: &EventOp| {
        e.level == EventLevel::Build
            && e.phase == "rejected"
            && first_accept.is_none_or(|a| e.at < a)
    };
    let terminals: BTreeSet<&str> = of
        .events
        .iter()
        .filter(|e| e.is_build_terminal() && (first_accept.is_none() || !early(e)))
        .map(|e| e.event_id.as_str())
        .collect();
    let publishers: BTreeSet<&str> = of
        .requests
        .keys()
        .copied()
        .chain(of.cancels.iter().copied())
        .collect();

    // Ownership: one tenant, one that sent a valid request under the id.
    let accept_tenants: BTreeSet<&str> = accepted.iter().map(|e| tenant_of(e)).collect();
    if accept_tenants.len() > 1 {
        push(
            out,
            AnomalyKind::CrossTenant,
            id,
            format!("build.accepted for several tenants: {accept_tenants:?}"),
        );
    }
    if let Some(o) = owner
        && !of.requests.get(o).is_some_and(|r| r.1)
    {
        push(
            out,
            AnomalyKind::CrossTenant,
            id,
            format!("built for tenant {o}, which sent no valid request under this id"),
        );
    }

    // Every build and image event carries the owner.
    let wrong: Vec<&EventOp> = of
        .events
        .iter()
        .copied()
        .filter(|e| e.level != EventLevel::Request)
        .filter(|e| match owner {
            Some(o) if !early(e) => e.tenant.as_deref() != Some(o),
            // Before anyone holds the id, a rejection goes to whoever sent
            // something under it (or names no tenant: unreadable bodies).
            _ => e.tenant.as_deref().is_some_and(|t| !publishers.contains(t)),
        })
        .collect();
    if let Some(e) = wrong.first() {
        push(
            out,
            AnomalyKind::CrossTenant,
            id,
            format!(
                "{} event(s) with another tenant than the owner {}: first {} {} carries tenant {}",
                wrong.len(),
                owner.unwrap_or("(none)"),
                e.routing_key,
                e.event_id,
                tenant_of(e)
            ),
        );
    }
    for r in of.events.iter().filter(|e| e.level == EventLevel::Request) {
        if !r.tenant.as_deref().is_some_and(|t| publishers.contains(t)) {
            push(
                out,
                AnomalyKind::CrossTenant,
                id,
                format!(
                    "{} answered to tenant {}, which sent nothing under this id",
                    r.event_id,
                    tenant_of(r)
                ),
            );
        }
    }

    // A request refused while the id was held is answered by
    // request.rejected only, never build.rejected.
    if let Some(e) = of.events.iter().find(|e| {
        e.level == EventLevel::Build && e.phase == "rejected" && first_accept.is_some() && !early(e)
    }) {
        push(
            out,
            AnomalyKind::RefusedButBuilt,
            id,
            format!(
                "{} (tenant {}, reason {}) at {} ms while the build accepted at {} ms held the id",
                e.event_id,
                tenant_of(e),
                e.reason.as_deref().unwrap_or("?"),
                e.at,
                first_accept.unwrap_or_default()
            ),
        );
    }

    // Terminals.
    if first_accept.is_some() && terminals.is_empty() {
        push(
            out,
            AnomalyKind::Lost,
            id,
            format!(
                "build.accepted (tenant {}) and no terminal build.* event",
                owner.unwrap_or("(none)")
            ),
        );
    }
    if terminals.len() > 1 {
        let list: Vec<String> = of
            .events
            .iter()
            .filter(|e| terminals.contains(e.event_id.as_str()))
            .map(|e| format!("{} ({}, {} ms)", e.event_id, tenant_of(e), e.at))
            .collect();
        push(
            out,
            AnomalyKind::ConflictingTerminals,
            id,
            format!(
                "{} distinct terminal ids: {}",
                terminals.len(),
                list.join(", ")
            ),
        );
    }

    // Every distinct request gets an answer.
    for (tenant, (bodies, _)) in &of.requests {
        // The owner's accepted build answers one of its requests (whether it
        // ended is the `lost` check's business).
        let own = usize::from(owner == Some(*tenant));
        let refused: BTreeSet<&str> = of
            .events
            .iter()
            .filter(|e| {
                (e.level == EventLevel::Request && e.tenant.as_deref() == Some(*tenant))
                    // A build.rejected answers a request too (when it came
                    // while the id was held, refused-but-built says so).
                    || (e.level == EventLevel::Build
                        && e.phase == "rejected"
                        && e.tenant.as_deref().is_none_or(|t| t == *tenant))
            })
            .map(|e| e.event_id.as_str())
            .collect();
        let got = own + refused.len();
        if got < bodies.len() {
            push(
                out,
                AnomalyKind::Unanswered,
                id,
                format!(
                    "tenant {tenant} sent {} distinct request(s) under this id and got {got} answer(s) (owner {})",
                    bodies.len(),
                    owner.unwrap_or("(none)")
                ),
            );
        }
    }

    // Cancelled only by the owner.
    if let Some(e) = of
        .events
        .iter()
        .find(|e| e.is_build_terminal() && e.phase == "cancelled")
    {
        let o = owner.unwrap_or("(none)");
        if !of.cancels.contains(o) {
            let others: Vec<&str> = of.cancels.iter().copied().filter(|t| *t != o).collect();
            if others.is_empty() {
                push(
                    out,
                    AnomalyKind::EndedUnasked,
                    id,
                    format!("{} at {} ms and nobody sent a cancel", e.event_id, e.at),
                );
            } else {
                push(
                    out,
                    AnomalyKind::CrossTenant,
                    id,
                    format!(
                        "{} at {} ms: owner {o} never cancelled, only {others:?} did",
                        e.event_id, e.at
                    ),
                );
            }
        }
    }

    check_rebuilds(id, of, out);
}

fn check_rebuilds(id: &str, of: &Of<'_>, out: &mut Vec<Anomaly>) {
    let failed_below = |image: &str, attempt: u32| {
        of.pods
            .get(image)
            .is_some_and(|ps| ps.iter().any(|p| p.fails && p.attempt < attempt))
    };
    for (image, pods) in &of.pods {
        let mut names = BTreeSet::new();
        for p in pods {
            if !names.insert(p.name.as_str()) {
                push(
                    out,
                    AnomalyKind::Rebuild,
                    id,
                    format!(
                        "pod {}/{} created again at {} ms",
                        p.namespace, p.name, p.at
                    ),
                );
            }
            if p.attempt > 1 && !failed_below(image, p.attempt) {
                push(
                    out,
                    AnomalyKind::Rebuild,
                    id,
                    format!(
                        "pod {} (image {image}, attempt {}) created although no earlier pod of the image failed",
                        p.name, p.attempt
                    ),
                );
            }
        }
    }
    let mut seen = BTreeSet::new();
    for e in &of.events {
        let (Some(image), Some(n)) = (e.image.as_deref(), e.attempt) else {
            continue;
        };
        let unearned = match e.phase.as_str() {
            "retrying" => !failed_below(image, n + 1),
            "scheduled" => n > 1 && !failed_below(image, n),
            _ => false,
        };
        if unearned && seen.insert(&e.event_id) {
            push(
                out,
                AnomalyKind::Rebuild,
                id,
                format!(
                    "{} ({}) although no pod of image {image} up to attempt {} was told to fail",
                    e.event_id,
                    e.routing_key,
                    if e.phase == "retrying" { n } else { n - 1 }
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
