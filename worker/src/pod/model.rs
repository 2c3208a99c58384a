//! What the pod client is given and answers: its settings, a created (or
//! adopted) pod, and the watcher's events.

use crate::classify::PodView;

/// Pod-level settings of the worker.
#[derive(Debug, Clone)]
pub struct PodSettings {
    pub kaniko_image: String,
    /// Image of the init container that downloads `url` contexts.
    pub fetch_image: String,
    /// `AWS_REGION` of S3 contexts whose request and policy name none.
    pub s3_region: String,
}

/// How a create went.
#[derive(Debug, Clone)]
pub enum Created {
    /// We made it.
    New(PodView),
    /// It existed already (409): adopt it, never build again.
    Existing(PodView),
}

/// A change the watcher saw.
#[derive(Debug, Clone)]
pub enum PodEvent {
    Applied(PodView),
    Deleted(PodView),
    /// The watcher (re)lists: `Applied` events for every pod follow.
    Resync,
    /// The relist is complete.
    Synced,
}
