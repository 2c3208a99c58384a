//! Issue 18 item 9: what one status page view costs with 1,000 failing builds
//! whose records hold 8 KiB log tails, before (the list parsed every record)
//! and after (it reads the compact summaries). Prints the figures; asserts
//! sizes, never times.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kiln_protocol::{Phase, Reason};
use kiln_tests::harness::{redis_url, unique};
use kiln_worker::store::{
    BuildRecord, History, INDEX_MAX, ImageHistory, ImageRecord, RECORD_MAX_BYTES, RecordState,
    Store, TimelineEntry,
};

/// A failed build's record as the worker writes it: one image, an 8 KiB log
/// tail, a message and a full timeline.
fn failing(id: &str, now: jiff::Timestamp) -> BuildRecord {
    let entry = |n: usize| TimelineEntry {
        id: format!("{id}/{n}"),
        event_type: "dev.kiln.image.failed.v1".into(),
        time: now,
        phase: Phase::Failed,
        image: Some("api".into()),
        platform: None,
        attempt: Some(1),
        reason: Some(Reason::BuildError),
        message: Some("step 3/9 failed: exit status 2".into()),
    };
    BuildRecord {
        state: RecordState::Finished,
        phase: Some(Phase::Failed),
        tenant: "noisy".into(),
        fingerprint: "f".into(),
        namespace: "kiln-builds".into(),
        worker: "w1".into(),
        images: [(
            "api".to_owned(),
            ImageRecord {
                phase: Phase::Failed,
                attempt: 3,
                pod: Some(format!("kiln-{id}-api-3")),
                digest: None,
                reason: Some(Reason::BuildError),
            },
        )]
        .into(),
        updated_at: now,
        history: History {
            app: Some("shop".into()),
            reason: Some(Reason::BuildError),
            message: Some("image api failed: BuildError".into()),
            images: [(
                "api".to_owned(),
                ImageHistory {
                    reason: Some(Reason::BuildError),
                    message: Some("exit status 2".into()),
                    log_tail: Some("x".repeat(8 * 1024)),
                    ..ImageHistory::default()
                },
            )]
            .into(),
            timeline: (0..12).map(entry).collect(),
            ..History::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_view_costs_the_same_whatever_the_log_tails() {
    let prefix = format!("{}:", unique("cost"));
    let store = Store::connect(&redis_url(), &prefix, "w1", Duration::from_secs(10))
        .await
        .unwrap();
    let now = jiff::Timestamp::now();
    for i in 0..INDEX_MAX {
        let id = format!("b{i:04}");
        store
            .put_indexed_record(&id, &failing(&id, now), Duration::from_secs(300))
            .await
            .unwrap();
    }

    // Before: every record, whole (what `http.rs` parsed per view).
    let t = Instant::now();
    let records = store.recent_records(INDEX_MAX).await.unwrap();
    let before_time = t.elapsed();
    let before_bytes: usize = records
        .iter()
        .map(|(_, r)| serde_json::to_string(r).unwrap().len())
        .sum();
    // After: the summaries.
    let t = Instant::now();
    let summaries = store.recent_summaries(INDEX_MAX).await.unwrap();
    let after_time = t.elapsed();
    let after_bytes: usize = summaries
        .iter()
        .map(|s| serde_json::to_string(s).unwrap().len())
        .sum();
    // A build page: one record, capped.
    let one = store.record("b0000").await.unwrap().unwrap();
    let one_bytes = serde_json::to_string(&one).unwrap().len();
    println!(
        "list view, {} failing builds with 8 KiB log tails: before {} KiB read and parsed in {:?}; after {} KiB in {:?}; a build page reads one record of {} KiB",
        INDEX_MAX,
        before_bytes / 1024,
        before_time,
        after_bytes / 1024,
        after_time,
        one_bytes / 1024
    );
    assert_eq!(records.len(), INDEX_MAX);
    assert_eq!(summaries.len(), INDEX_MAX);
    assert!(
        after_bytes * 20 < before_bytes,
        "summaries {after_bytes} B vs records {before_bytes} B"
    );
    assert!(
        summaries
            .iter()
            .all(|s| s.phase == "failed" && s.tenant == "noisy"),
        "the list still shows phase and tenant"
    );
    assert!(one_bytes <= RECORD_MAX_BYTES);
}
