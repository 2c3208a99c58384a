//! Notices between workers over Redis pub/sub: a cancel (`P cancels`, the
//! build id) and builds released at shutdown (`P released`, a JSON list).

use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::client::Store;

/// A notice from another worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Someone asked to cancel this build.
    Cancel(String),
    /// A worker released these builds (shutting down): adopt them now.
    Released(Vec<String>),
}

impl Store {
    /// Follows the cancel and release notices of every worker. Reconnects
    /// after Redis restarts (a notice sent meanwhile is caught by the renewal
    /// poll or the adoption sweep instead).
    pub fn notices(&self) -> mpsc::Receiver<Notice> {
        let (tx, rx) = mpsc::channel(1024);
        let conn = self.conn.clone();
        let cancels = self.cancel_channel();
        let released = self.released_channel();
        tokio::spawn(async move {
            // A fresh backoff after every subscription that worked: a blip
            // hours later starts fast again.
            let mut delays = crate::retry::redis_subscribe().build();
            while !tx.is_closed() {
                // Asked each time: after a failover, the new primary's.
                match conn.client().get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        let subscribed = match pubsub.subscribe(&cancels).await {
                            Ok(()) => pubsub.subscribe(&released).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = &subscribed {
                            tracing::warn!(error = %e, "cannot subscribe to Redis notices; retrying");
                        } else {
                            delays = crate::retry::redis_subscribe().build();
                            let mut stream = pubsub.on_message();
                            while let Some(msg) = stream.next().await {
                                let Some(notice) = notice_of(&msg, &cancels) else {
                                    continue;
                                };
                                if tx.send(notice).await.is_err() {
                                    return;
                                }
                            }
                            tracing::warn!("Redis notice subscription ended; resubscribing");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to Redis notices; retrying");
                    }
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
            }
        });
        rx
    }
}

/// The notice a pub/sub message carries; `None` when it is unreadable.
fn notice_of(msg: &redis::Msg, cancels: &str) -> Option<Notice> {
    let payload = msg.get_payload::<String>().ok()?;
    Some(if msg.get_channel_name() == cancels {
        Notice::Cancel(payload)
    } else {
        // An unreadable list releases nothing: the adoption sweep finds
        // those builds once their leases lapse.
        Notice::Released(serde_json::from_str(&payload).unwrap_or_default())
    })
}
