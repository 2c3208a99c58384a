//! The names of the topology: routing keys, headers, the delivery limit, and
//! the exchanges and queues under one prefix.

/// Routing key of build requests on the requests exchange.
pub const BUILD_KEY: &str = "build";
/// Routing key of cancel requests on the requests exchange.
pub const CANCEL_KEY: &str = "cancel";
/// The largest message the broker accepts, as the deploy sets it
/// (`max_message_size` in deploy/ and docker-compose.yml): the request
/// limit plus headroom, so that a request a little over the limit still
/// reaches a worker and gets a `build.rejected` that says by how much,
/// while anything larger is refused by the broker before a worker holds it.
/// The worker sizes its prefetch window by it.
pub const BROKER_MAX_MESSAGE_BYTES: usize = kiln_protocol::MAX_REQUEST_BYTES + 256 * 1024;
/// Delivery limit of the quorum queues: a poison message that crashes
/// workers is dead-lettered after this many deliveries.
pub const DELIVERY_LIMIT: i64 = 10;

/// Exchange and queue names under one prefix (docs/protocol.md, "Topology").
#[derive(Debug, Clone)]
pub struct Names {
    pub(super) prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn requests(&self) -> String {
        format!("{}.requests", self.prefix)
    }
    pub fn builds(&self) -> String {
        format!("{}.builds", self.prefix)
    }
    pub fn cancels(&self) -> String {
        format!("{}.cancels", self.prefix)
    }
    /// Requests parked for a while (see `park.rs`).
    pub fn parked(&self) -> String {
        format!("{}.parked", self.prefix)
    }
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }
}
