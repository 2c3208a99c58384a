//! Redis: build leases, cancel flags, build records, the builds index and
//! the notices between workers. The only module that knows Redis; one
//! concept per file (`lease`, `cancel`, `record` (the schema), `records`,
//! `index`, `notices`), each adding its commands to [`Store`]; `conn` is
//! the connection, to one server or to the primary Sentinel names.
//!
//! Keys (with the configured prefix `P`, default `kiln:`):
//! - `P lease:<id>`  — a [`LeaseToken`], `<worker id>/<ulid>`, minted per
//!   claim; `SET NX PX` to claim, renewed by compare-and-extend, released by
//!   compare-and-delete, all against the exact token of that claim (Lua, so
//!   a worker can never extend or delete a lease another worker, or another
//!   claim of its own, took over).
//! - `P cancel:<id>` — the cancel reason; set by whichever worker consumed the
//!   cancel, read by the lease's holder (pushed on `P cancels`, and polled
//!   with every renewal in case the push was missed).
//! - `P cancel:<id>@<tenant>` — a cancel for an id nobody held when it came,
//!   read only by a claim of that tenant's request; kept for
//!   `KILN_KEPT_CANCEL_TTL` (10 minutes).
//! - `P kept-cancels:<tenant>` — sorted set of the ids a tenant has kept
//!   cancels for, scored by expiry: caps them per tenant
//!   ([`CancelKeeping`]), so a flood of cancels cannot fill Redis.
//! - `P build:<id>`  — a JSON [`BuildRecord`] for dedupe, ownership (tenant
//!   and request fingerprint, from the claim on), `kiln status` and the
//!   status page.
//! - `P log:<id>/<image>/<attempt>`, `P logs:<id>` — the kept logs of
//!   attempts and what was kept of each (see `logs`).
//! - `P builds`      — sorted set of build ids by the time (ms) their record
//!   was last written, trimmed to [`INDEX_MAX`] by the same round trip that
//!   writes the record: the status page's list, the same on every replica.
//! - `P sum:<id>`    — the record's list line (JSON [`BuildSummary`], no log
//!   tails or messages), written with the record and kept as long; records
//!   themselves are capped at [`RECORD_MAX_BYTES`].
//!
//! Losing Redis costs at worst duplicate work: pod names fence the cluster.

mod cancel;
mod client;
mod conn;
mod index;
mod lease;
mod logs;
mod notices;
mod record;
mod records;
mod share;

pub use cancel::CancelKeeping;
pub use client::Store;
pub use conn::RedisTarget;
pub use index::INDEX_MAX;
pub use lease::{Admit, Claim, LeaseToken, Renewal, holder_worker};
pub use logs::{KeptLog, LogMeta};
pub use notices::Notice;
pub use record::{
    BuildRecord, BuildSummary, History, ImageHistory, ImageRecord, RECORD_MAX_BYTES, RecordState,
    TIMELINE_MAX, TimelineEntry, trace_id,
};
