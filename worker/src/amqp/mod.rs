//! RabbitMQ: the only module that knows lapin. One concept per file, each
//! adding its calls to [`Broker`]: `topology` (exchanges and queues),
//! `consumer` (deliveries that ride out recoveries), `publisher` (events and
//! requests with confirms, dead-lettering), `subscription` (the client's
//! event queue) and `testing` (helpers for tests and operators).
//!
//! `nodes` dials a cluster's nodes (a comma-separated `KILN_AMQP_URL`) and
//! `park` parks a delivery that must wait in a delay queue.
//!
//! The connection uses lapin's auto-recovery: after a connection loss lapin
//! reconnects (to the next node of the list) and replays the topology and
//! consumers. Deliveries received before the loss can no longer be acked
//! (the broker redelivers them), which is safe because the build id is the
//! idempotency key.

mod broker;
mod consumer;
mod names;
mod nodes;
mod park;
mod publisher;
mod subscription;
mod testing;
mod topology;

pub use broker::{Broker, url_user};
pub use consumer::{Consumer, Incoming, is_not_found};
pub use names::{BROKER_MAX_MESSAGE_BYTES, BUILD_KEY, CANCEL_KEY, DELIVERY_LIMIT, Names};
pub use nodes::Nodes;
pub use park::PARKED_HEADER;
pub use publisher::{OutgoingEvent, Routed};
pub use subscription::EventSubscription;
pub use topology::DeadLimits;
