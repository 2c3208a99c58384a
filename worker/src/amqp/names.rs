//! The names of the topology: routing keys, headers, the delivery limit, and
//! the exchanges and queues under one prefix.

/// Routing key of build requests on the requests exchange.
pub const BUILD_KEY: &str = "build";
/// Routing key of cancel requests on the requests exchange.
pub const CANCEL_KEY: &str = "cancel";
/// Header naming why a message was dead-lettered.
pub const ERROR_HEADER: &str = "kiln-error";
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
