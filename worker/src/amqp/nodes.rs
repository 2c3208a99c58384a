//! The nodes of a RabbitMQ cluster: `KILN_AMQP_URL` (and `--amqp-url`) may
//! name several, comma-separated, and every connection attempt (the first
//! one and each of lapin's recovery attempts) dials the next node of a
//! shuffled round, reshuffled after each round, under a backoff with
//! jitter. Workers therefore spread over the nodes, and a connection lost
//! with its node comes back on another one while quorum queues keep serving
//! from the surviving members.
//!
//! lapin's own recovery reconnects to the one URI a connection was opened
//! with; its `Connection::connector` hook lets the dialling pick the node.
//! What it replays on the new connection (channels, `confirm.select`, QoS,
//! the declared topology, consumers) is the same whichever node answers,
//! because a cluster shares its definitions. The AMQP login (user,
//! password, vhost) and the heartbeat are those of the first URL; the nodes
//! must therefore name the same user and vhost, which [`Nodes::parse`]
//! checks.

use backon::ExponentialBuilder;
use lapin::tcp::{AMQPUriTcpExt as _, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The nodes named by a `KILN_AMQP_URL`, in the order given.
#[derive(Clone)]
pub struct Nodes {
    urls: Vec<String>,
    uris: Vec<AMQPUri>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.urls.iter().map(|u| kiln_protocol::redact_url(u)))
            .finish()
    }
}

impl std::fmt::Display for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self
            .urls
            .iter()
            .map(|u| kiln_protocol::redact_url(u))
            .collect();
        f.write_str(&shown.join(","))
    }
}

impl Nodes {
    /// Parses one URL or a comma-separated list of them. Every URL must
    /// parse, and all must name the same user and vhost (the connection
    /// logs in with the first one's credentials, whichever node it reaches).
    pub fn parse(list: &str) -> Result<Self> {
        let mut urls: Vec<String> = Vec::new();
        let mut uris: Vec<AMQPUri> = Vec::new();
        for (i, url) in list.split(',').map(str::trim).enumerate() {
            if url.is_empty() {
                return Err(Error::Config(format!(
                    "KILN_AMQP_URL: URL {} of the list is empty (expected amqp://… or \
                     amqps://…, comma-separated)",
                    i + 1
                )));
            }
            let uri: AMQPUri = url.parse().map_err(|e| {
                Error::Config(format!(
                    "KILN_AMQP_URL: invalid AMQP URL {}: {e}",
                    kiln_protocol::redact_url(url)
                ))
            })?;
            if let Some(first) = uris.first() {
                let same = first.authority.userinfo.username == uri.authority.userinfo.username
                    && first.authority.userinfo.password == uri.authority.userinfo.password
                    && first.vhost == uri.vhost;
                if !same {
                    return Err(Error::Config(format!(
                        "KILN_AMQP_URL: {} names another user, password or vhost than {}: the \
                         nodes of one cluster are reached with one login",
                        kiln_protocol::redact_url(url),
                        kiln_protocol::redact_url(&urls[0])
                    )));
                }
            }
            urls.push(url.to_owned());
            uris.push(uri);
        }
        Ok(Self { urls, uris })
    }

    /// The user every node is reached as.
    pub fn user(&self) -> &str {
        &self.uris[0].authority.userinfo.username
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.uris.len()
    }

    /// Never true: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty()
    }

    /// Connects to the nodes in a random order, with recovery if `props`
    /// enables it; `backoff` paces the attempts, each of which dials the
    /// next node.
    pub async fn connect(
        &self,
        props: ConnectionProperties,
        backoff: ExponentialBuilder,
    ) -> lapin::Result<Connection> {
        let rotation = Arc::new(Mutex::new(Rotation::new(self.uris.clone())));
        let runtime = lapin::runtime::default_runtime()?;
        let props = props.with_backoff(backoff);
        Connection::connector(
            self.uris[0].clone(),
            runtime,
            async move |_first, runtime| {
                let uri = rotation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                tracing::debug!(host = %uri.authority.host, port = uri.authority.port, "dialling RabbitMQ node");
                let config = OwnedTLSConfig::default();
                uri.connect_with_config_async(config.as_ref(), &runtime)
                    .await
                    .map_err(lapin::Error::from)
            },
            props,
        )
        .await
    }
}

/// The nodes in a shuffled order, reshuffled after each round (never
/// starting a round with the node that ended the last one, when there are
/// several), so that every node is tried once per round and workers do not
/// all try the same node first.
struct Rotation {
    order: Vec<AMQPUri>,
    next: usize,
    /// xorshift64 state, seeded from the process's random hash keys (the
    /// worker has no random number crate of its own, and needs no more).
    seed: u64,
}

impl Rotation {
    fn new(order: Vec<AMQPUri>) -> Self {
        use std::hash::BuildHasher as _;
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id()) | 1;
        let mut rotation = Self {
            order,
            next: 0,
            seed,
        };
        rotation.shuffle();
        rotation
    }

    fn random(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Fisher-Yates.
    fn shuffle(&mut self) {
        for i in (1..self.order.len()).rev() {
            let j = (self.random() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    fn next(&mut self) -> AMQPUri {
        if self.next == self.order.len() {
            let last = self.order.last().cloned();
            self.shuffle();
            if self.order.len() > 1 && self.order.first() == last.as_ref() {
                self.order.swap(0, 1);
            }
            self.next = 0;
        }
        self.next += 1;
        self.order[self.next - 1].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_nodes_is_parsed_and_checked() {
        let one = Nodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("one");
        assert_eq!(one.len(), 1);
        let three = Nodes::parse("amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f ,amqp://u:p@c/%2f")
            .expect("three");
        assert_eq!(three.len(), 3);
        assert_eq!(
            three.to_string(),
            "amqp://u:***@a:5672/%2f,amqp://u:***@b:5673/%2f,amqp://u:***@c/%2f"
        );

        for (bad, says) in [
            ("amqp://u:p@a/%2f,", "URL 2 of the list is empty"),
            ("amqp://u:p@a/%2f,amqp://v:p@b/%2f", "another user"),
            (
                "amqp://u:p@a/%2f,amqp://u:q@b/%2f",
                "another user, password",
            ),
            ("amqp://u:p@a/%2f,amqp://u:p@b/other", "vhost"),
            ("amqp://u:secret@a:notaport/%2f", "invalid AMQP URL"),
        ] {
            let e = Nodes::parse(bad).expect_err(bad).to_string();
            assert!(
                e.contains("KILN_AMQP_URL") && e.contains(says),
                "{bad}: {e}"
            );
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn each_round_tries_every_node_once_in_a_new_order() {
        let nodes = Nodes::parse("amqp://a/%2f,amqp://b/%2f,amqp://c/%2f").expect("nodes");
        let mut rotation = Rotation::new(nodes.uris.clone());
        let mut firsts = std::collections::BTreeSet::new();
        let mut previous: Option<String> = None;
        for _ in 0..60 {
            let round: Vec<String> = (0..3).map(|_| rotation.next().authority.host).collect();
            let mut sorted = round.clone();
            sorted.sort();
            assert_eq!(sorted, ["a", "b", "c"], "every node once per round");
            assert_ne!(Some(&round[0]), previous.as_ref(), "no node twice in a row");
            previous = Some(round[2].clone());
            firsts.insert(round[0].clone());
        }
        assert_eq!(firsts.len(), 3, "the order changes from round to round");
    }
}
