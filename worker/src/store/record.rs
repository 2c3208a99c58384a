//! The build record Redis keeps under `P build:<id>`. Its schema is pure and
//! lives in `kiln-core` (`kiln_core::record`); the rest of the store reads
//! and writes it.

pub use kiln_core::record::{
    BuildRecord, BuildSummary, History, ImageHistory, ImageRecord, RECORD_MAX_BYTES, RecordState,
    TIMELINE_MAX, TimelineEntry, trace_id,
};
