//! The connection: a [`Broker`] with its confirm-mode publishing channel,
//! for the worker (auto-recovery) and the client (one try); each concept's
//! file adds its calls to it.

use lapin::options::ConfirmSelectOptions;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::RwLock;

use super::names::Names;
use super::nodes::Nodes;
use crate::error::{Error, Result};

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Amqp {
            context: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// A connection with a confirm-mode publishing channel.
pub struct Broker {
    pub(super) conn: Connection,
    pub(super) publisher: RwLock<Channel>,
    pub(super) names: Names,
    /// Where it connected, and as what: an event subscription opens a
    /// connection of its own with them (and again after losing it).
    pub(super) nodes: Nodes,
    pub(super) connection_name: String,
    /// The limits of the topology this connection declared, if it did: what
    /// [`Broker::declare_again`] declares.
    pub(super) declared: std::sync::OnceLock<super::topology::DeadLimits>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects with auto-recovery and opens the publishing channel.
    /// `url` is one URL or a cluster's node URLs, comma-separated: the
    /// connection (and each recovery) dials them in a random order, for
    /// ever, with backoff and jitter.
    pub async fn connect(url: &str, prefix: &str, connection_name: &str) -> Result<Self> {
        let nodes = Nodes::parse(url)?;
        let props = ConnectionProperties::default().enable_auto_recover();
        let backoff = crate::retry::amqp_connect();
        Self::connect_with(&nodes, prefix, connection_name, props, backoff).await
    }

    pub(super) async fn connect_with(
        nodes: &Nodes,
        prefix: &str,
        connection_name: &str,
        props: ConnectionProperties,
        backoff: backon::ExponentialBuilder,
    ) -> Result<Self> {
        let named = props.with_connection_name(LongString::from(connection_name.to_owned()));
        let conn = nodes
            .connect(named, backoff)
            .await
            .map_err(|e| Error::amqp_caused(&format!("cannot connect to {nodes}"), e))?;
        let publisher = Self::confirm_channel(&conn).await?;
        Ok(Self {
            conn,
            publisher: RwLock::new(publisher),
            names: Names::new(prefix),
            nodes: nodes.clone(),
            connection_name: connection_name.to_owned(),
            declared: std::sync::OnceLock::new(),
        })
    }

    pub(super) async fn confirm_channel(conn: &Connection) -> Result<Channel> {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Whether the connection is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Connects without auto-recovery, each node of `url` tried (in a
    /// random order) at most twice: for the short-lived client commands,
    /// which should fail soon (and say why) when the broker cannot be
    /// reached rather than retry for minutes.
    pub async fn connect_client(url: &str, prefix: &str, connection_name: &str) -> Result<Self> {
        let nodes = Nodes::parse(url)?;
        let backoff = crate::retry::amqp_connect_client(nodes.len());
        let props = ConnectionProperties::default();
        Self::connect_with(&nodes, prefix, connection_name, props, backoff).await
    }

    /// Closes the connection politely (shutdown).
    pub async fn close(&self) {
        // The worker is exiting: a connection that cannot close politely is
        // closed by the broker when the socket goes.
        if let Err(e) = self
            .conn
            .close(200, "kiln worker shutting down".into())
            .await
        {
            tracing::debug!(error = %e, "AMQP connection did not close politely");
        }
    }
}

/// Closes a channel that has done its job. A failure is only logged: the
/// channel closes with its connection anyway, and what it did is done.
pub(super) async fn close_channel(ch: &Channel, why: &str) {
    if let Err(e) = ch.close(200, why.into()).await {
        tracing::debug!(error = %e, why, "AMQP channel did not close politely");
    }
}

/// The user name of an AMQP URL (`guest` when the URL names none, as the
/// client then logs in as `guest`): the tenant of the requests the client
/// publishes, set as their `user_id` so that RabbitMQ verifies it.
/// With a list of nodes, every URL names the same user ([`Nodes::parse`]).
pub fn url_user(url: &str) -> Result<String> {
    Ok(Nodes::parse(url)?.user().to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Issue 10: what the client and the worker print about a broker they
    /// cannot reach or parse names it without the password.
    #[tokio::test]
    async fn connect_errors_hide_the_password() {
        let e =
            url_user("amqp://guest:pl4ntedAmqpPw@127.0.0.1:notaport/%2f").expect_err("not a port");
        let text = format!("{e} / {e:?}");
        assert!(!text.contains("pl4ntedAmqpPw"), "{text}");
        assert!(text.contains("amqp://guest:***@127.0.0.1"), "{text}");

        let url = "amqp://guest:pl4nted@mqPw@127.0.0.1:1/%2f";
        let connect = Broker::connect_client(url, "kiln-unit", "kiln unit test");
        let e = tokio::time::timeout(Duration::from_secs(20), connect)
            .await
            .expect("nothing listens on port 1: refused at once")
            .expect_err("cannot connect");
        let text = format!("{e} / {e:?}");
        assert!(!text.contains("mqPw"), "{text}");
        assert!(text.contains("amqp://guest:***@127.0.0.1:1"), "{text}");
    }
}
