//! The state machine of one build. Pure: it does no IO and never reads a
//! clock. Inputs are pod observations, the results of the actions it asked
//! for, cancels and timer ticks, each with the current time; outputs are
//! [`Action`]s that the supervisor executes in order.
//!
//! Ordering is the contract: an action list is executed front to back, and
//! the machine always asks to publish an outcome before it asks to delete the
//! pod that produced it, and to publish the terminal `build.*` event before
//! deleting the pods that remain.
//!
//! One file per concept, each importing only the ones before it:
//! `image.rs` (the per-image state), `state.rs` (inputs, actions, the
//! build's lifecycle), `events.rs` (the events published), `timers.rs`
//! (backoff, quota waits, the deadline, the tick), `platforms.rs` (units,
//! the publish step, an image with `platforms` as a whole) and `pods.rs`
//! (what pod observations and cancels do).

mod events;
mod image;
mod platforms;
mod pods;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_platforms;
mod timers;

pub use state::{Action, Attest, ImageProgress, Input, Machine, Settings, Stage};
pub use timers::{QUOTA_WAIT_MAX, QUOTA_WAIT_MIN, backoff, quota_wait};
