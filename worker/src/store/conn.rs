//! The connection to Redis: one URL, or the primary that Redis Sentinel
//! names (`KILN_REDIS_SENTINELS` and `KILN_REDIS_MASTER`).
//!
//! redis-rs resolves a Sentinel master once and its `ConnectionManager`
//! reconnects to the address it was built with: after a failover that is a
//! dead server, or the old primary come back as a replica, where every write
//! fails with `READONLY`. [`RedisConn`] therefore resolves the primary again
//!
//! - when a command fails with a connection error, a timeout or `READONLY`;
//! - when a Sentinel announces `+switch-master` for our master;
//! - every [`VERIFY_EVERY`], comparing the address the Sentinels name with
//!   the one in use (a missed announcement, or an old primary that came back
//!   as a stand-alone primary before the Sentinels demoted it: it would take
//!   writes nobody reads).
//!
//! Resolving asks the Sentinels for the master, connects to it and checks
//! that `ROLE` says master (redis-rs's `SentinelClient` does both); the new
//! connection replaces the old one for every clone. The failed command
//! itself is not repeated here: the caller's retry (every store call is
//! retried with backoff) lands on the new primary.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture,
    Value,
};

use crate::error::{Error, Result};

/// How often the Sentinels' view of the primary is compared with the one in
/// use, besides the `+switch-master` announcements.
pub const VERIFY_EVERY: Duration = Duration::from_secs(5);

/// How soon after one resolution another may start: a burst of failing
/// commands resolves once.
const RESOLVE_GAP: Duration = Duration::from_millis(200);

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`KILN_REDIS_URL`).
    Url(String),
    /// The primary Sentinel names.
    Sentinel {
        /// `host:port` of each Sentinel.
        sentinels: Vec<(String, u16)>,
        /// The master name the Sentinels monitor.
        master: String,
        /// The data servers' password (`requirepass`), if any.
        password: Option<String>,
        /// The Sentinels' password, if any.
        sentinel_password: Option<String>,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => f
                .debug_tuple("Url")
                .field(&kiln_protocol::redact_url(url))
                .finish(),
            Self::Sentinel {
                sentinels, master, ..
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master", master)
                .finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => f.write_str(&kiln_protocol::redact_url(url)),
            Self::Sentinel {
                sentinels, master, ..
            } => {
                let list: Vec<String> = sentinels.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                write!(f, "master {master:?} of the Sentinels {}", list.join(","))
            }
        }
    }
}

impl RedisTarget {
    /// The target the settings name: the Sentinels when `sentinels` is set
    /// (then `master` must be too), else `url`. Errors name the setting.
    pub fn from_settings(
        url: &str,
        sentinels: Option<&str>,
        master: Option<&str>,
        password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> Result<Self> {
        let sentinels = sentinels.map(str::trim).filter(|s| !s.is_empty());
        let Some(list) = sentinels else {
            if master.is_some_and(|m| !m.trim().is_empty()) {
                return Err(Error::Config(
                    "KILN_REDIS_MASTER is set but KILN_REDIS_SENTINELS is not: name the \
                     Sentinels (host:port, comma-separated)"
                        .to_owned(),
                ));
            }
            return Ok(Self::Url(url.to_owned()));
        };
        let master = master
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "KILN_REDIS_SENTINELS is set but KILN_REDIS_MASTER is not: name the master \
                 the Sentinels monitor"
                        .to_owned(),
                )
            })?;
        let mut parsed = Vec::new();
        for item in list.split(',').map(str::trim) {
            parsed.push(
                parse_host_port(item).map_err(|why| {
                    Error::Config(format!("KILN_REDIS_SENTINELS: {item:?} {why}"))
                })?,
            );
        }
        let nonempty = |p: Option<&str>| p.filter(|p| !p.is_empty()).map(str::to_owned);
        Ok(Self::Sentinel {
            sentinels: parsed,
            master: master.to_owned(),
            password: nonempty(password),
            sentinel_password: nonempty(sentinel_password),
        })
    }
}

/// `host:port` (or `[v6]:port`; the port defaults to Sentinel's 26379).
fn parse_host_port(item: &str) -> std::result::Result<(String, u16), &'static str> {
    if item.is_empty() {
        return Err("is empty: expected host:port");
    }
    if item.contains("://") || item.contains('@') || item.contains('/') {
        return Err("is not host:port (no scheme, credentials or path)");
    }
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed '['")?;
        (host, after.strip_prefix(':'))
    } else {
        match item.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (item, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    let port = match port {
        None => 26379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or("has a port that is not a number in 1-65535")?,
    };
    Ok((host.to_owned(), port))
}

/// The connection manager's settings: a command waits at most 5 s, and the
/// manager's own reconnects are few and quick (the caller retries).
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

/// The connection in use and the client it came from (for pub/sub).
#[derive(Clone)]
struct Current {
    generation: u64,
    manager: ConnectionManager,
    client: redis::Client,
}

struct Shared {
    target: RedisTarget,
    current: Mutex<Current>,
    /// The Sentinel client (None for a plain URL), also serialising the
    /// resolutions.
    sentinel: tokio::sync::Mutex<Option<SentinelClient>>,
    /// When the last resolution ended.
    last_resolve: Mutex<Option<tokio::time::Instant>>,
}

/// A Redis connection that follows the primary (see the module's docs);
/// cheap to clone, and a [`ConnectionLike`], so commands, pipelines and
/// scripts run on it as on a `ConnectionManager`.
#[derive(Clone)]
pub struct RedisConn {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// Connects to `target`; for Sentinel, also starts following the
    /// Sentinels' announcements (for as long as a clone lives).
    pub async fn connect(target: &RedisTarget) -> Result<Self> {
        let (client, sentinel) = match target {
            RedisTarget::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    let shown = kiln_protocol::redact_url(url);
                    Error::redis_caused(&format!("invalid Redis URL {shown:?}"), e)
                })?;
                (client, None)
            }
            RedisTarget::Sentinel { .. } => {
                let mut sentinel = sentinel_client(target)?;
                let client = sentinel
                    .async_get_client()
                    .await
                    .map_err(|e| Error::redis_caused(&format!("cannot resolve the {target}"), e))?;
                (client, Some(sentinel))
            }
        };
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map_err(|e| Error::redis_caused(&format!("cannot connect to {target}"), e))?;
        let is_sentinel = sentinel.is_some();
        let conn = Self {
            shared: Arc::new(Shared {
                target: target.clone(),
                current: Mutex::new(Current {
                    generation: 0,
                    manager,
                    client,
                }),
                sentinel: tokio::sync::Mutex::new(sentinel),
                last_resolve: Mutex::new(None),
            }),
        };
        if is_sentinel {
            tokio::spawn(follow_sentinels(Arc::downgrade(&conn.shared)));
        }
        Ok(conn)
    }

    /// The client of the server in use, for pub/sub connections (resolve
    /// again by calling this again after a subscription breaks).
    pub fn client(&self) -> redis::Client {
        self.shared.current().client
    }
}

impl Shared {
    fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Resolves the primary again unless the connection of `generation` was
    /// replaced already or a resolution ended moments ago; `force` skips the
    /// latter (an announcement). Failures are logged: the next failing
    /// command tries again.
    async fn resolve(&self, generation: u64, force: bool, why: &str) {
        let mut guard = self.sentinel.lock().await;
        let Some(sentinel) = guard.as_mut() else {
            return;
        };
        if self.current().generation != generation {
            return;
        }
        let now = tokio::time::Instant::now();
        {
            let last = self
                .last_resolve
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && last.is_some_and(|t| now.duration_since(t) < RESOLVE_GAP) {
                return;
            }
        }
        let resolved = async {
            let client = sentinel.async_get_client().await?;
            let manager =
                ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
            Ok::<_, RedisError>((client, manager))
        }
        .await;
        *self
            .last_resolve
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
        match resolved {
            Ok((client, manager)) => {
                let addr = client.get_connection_info().addr().to_string();
                let mut current = self
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let old = current.client.get_connection_info().addr().to_string();
                *current = Current {
                    generation: current.generation + 1,
                    manager,
                    client,
                };
                drop(current);
                tracing::warn!(from = %old, to = %addr, why, "Redis primary resolved again through Sentinel");
            }
            Err(e) => {
                tracing::warn!(error = %e, why, target = %self.target, "cannot resolve the Redis primary yet");
            }
        }
    }

    /// After a failed command: resolve again if the error says the primary
    /// may have moved.
    async fn after_error(&self, generation: u64, e: &RedisError) {
        if matches!(self.target, RedisTarget::Url(_)) {
            return;
        }
        let why = if e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
            "READONLY"
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            "connection error"
        } else {
            return;
        };
        self.resolve(generation, false, why).await;
    }

    /// The address the Sentinels name now differs from the one in use.
    async fn moved(&self) -> bool {
        let mut guard = self.sentinel.lock().await;
        let Some(sentinel) = guard.as_mut() else {
            return false;
        };
        match sentinel.async_get_client().await {
            Ok(client) => {
                client.get_connection_info().addr()
                    != self.current().client.get_connection_info().addr()
            }
            Err(_) => false,
        }
    }
}

fn sentinel_client(target: &RedisTarget) -> Result<SentinelClient> {
    let RedisTarget::Sentinel {
        sentinels,
        master,
        password,
        sentinel_password,
    } = target
    else {
        return Err(Error::Config("not a Sentinel target".to_owned()));
    };
    let addrs = sentinels
        .iter()
        .map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| Error::redis_caused("invalid Sentinel settings", e))?;
    if let Some(pw) = password {
        builder = builder.set_client_to_redis_password(pw);
    }
    if let Some(pw) = sentinel_password {
        builder = builder.set_client_to_sentinel_password(pw);
    }
    builder
        .build()
        .map_err(|e| Error::redis_caused("invalid Sentinel settings", e))
}

/// Listens to `+switch-master` on one Sentinel after another (a Sentinel
/// may die too), and every [`VERIFY_EVERY`] checks that the primary in use
/// is the one the Sentinels name. Ends when the last [`RedisConn`] is gone.
async fn follow_sentinels(shared: Weak<Shared>) {
    let Some((sentinels, master, sentinel_password)) = shared.upgrade().and_then(|s| {
        if let RedisTarget::Sentinel {
            sentinels,
            master,
            sentinel_password,
            ..
        } = &s.target
        {
            Some((sentinels.clone(), master.clone(), sentinel_password.clone()))
        } else {
            None
        }
    }) else {
        return;
    };
    let mut next = 0usize;
    loop {
        let (host, port) = &sentinels[next % sentinels.len()];
        next += 1;
        let pubsub = async {
            let info = ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?;
            let info = match &sentinel_password {
                Some(pw) => {
                    let settings = info.redis_settings().clone().set_password(pw);
                    info.set_redis_settings(settings)
                }
                None => info,
            };
            redis::Client::open(info)?.get_async_pubsub().await
        }
        .await;
        let mut pubsub = match pubsub {
            Ok(mut p) => match p.subscribe("+switch-master").await {
                Ok(()) => Some(p),
                Err(_) => None,
            },
            Err(_) => None,
        };
        // Without a subscription, still verify (then try the next Sentinel).
        loop {
            // Some(Some(_)): an announcement; Some(None): time to verify;
            // None: verify, then go to the next Sentinel.
            let message = if let Some(p) = pubsub.as_mut() {
                let mut stream = p.on_message();
                match tokio::time::timeout(VERIFY_EVERY, stream.next()).await {
                    Ok(Some(msg)) => Some(Some(msg)),
                    Ok(None) => None, // the Sentinel went away
                    Err(_) => Some(None),
                }
            } else {
                tokio::time::sleep(VERIFY_EVERY).await;
                None
            };
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let generation = shared.current().generation;
            let gone = message.is_none();
            match message {
                Some(Some(msg)) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if payload.split_whitespace().next() == Some(master.as_str()) {
                        shared.resolve(generation, true, "+switch-master").await;
                    }
                }
                Some(None) | None => {
                    if shared.moved().await {
                        shared
                            .resolve(generation, true, "the Sentinels name another primary")
                            .await;
                    }
                }
            }
            if gone {
                break;
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let Current {
                generation,
                mut manager,
                ..
            } = self.shared.current();
            let result = manager.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.shared.after_error(generation, e).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let Current {
                generation,
                mut manager,
                ..
            } = self.shared.current();
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.shared.after_error(generation, e).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.current().manager.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_settings_are_checked_and_name_the_setting() {
        assert_eq!(
            RedisTarget::from_settings("redis://r:6379", None, None, None, None).expect("url"),
            RedisTarget::Url("redis://r:6379".to_owned())
        );
        let t = RedisTarget::from_settings(
            "redis://ignored",
            Some("a:26379, b:26380,[::1]:7000,c"),
            Some("kiln"),
            Some("pw"),
            Some(""),
        )
        .expect("sentinels");
        assert_eq!(
            t,
            RedisTarget::Sentinel {
                sentinels: vec![
                    ("a".to_owned(), 26379),
                    ("b".to_owned(), 26380),
                    ("::1".to_owned(), 7000),
                    ("c".to_owned(), 26379)
                ],
                master: "kiln".to_owned(),
                password: Some("pw".to_owned()),
                sentinel_password: None,
            }
        );
        assert!(!format!("{t:?} {t}").contains("pw"), "no password shown");
        let e = RedisTarget::from_settings("u", Some("a:1"), None, None, None).expect_err("master");
        assert!(e.to_string().contains("KILN_REDIS_MASTER"), "{e}");
        let e = RedisTarget::from_settings("u", None, Some("kiln"), None, None).expect_err("list");
        assert!(e.to_string().contains("KILN_REDIS_SENTINELS"), "{e}");
        for bad in ["a:0", "a:x", "redis://a:1", "a:1,", "[::1", ":5"] {
            let e =
                RedisTarget::from_settings("u", Some(bad), Some("m"), None, None).expect_err(bad);
            assert!(e.to_string().contains("KILN_REDIS_SENTINELS"), "{bad}: {e}");
        }
    }
}
