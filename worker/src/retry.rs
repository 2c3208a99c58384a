//! The worker's retry policies, one per kind of call, so that how hard Kiln
//! insists on a dependency is decided in one place.
//!
//! Every policy here but [`kube_call`], [`amqp_connect_client`] and
//! [`registry_call`] retries without a limit of attempts:
//! what bounds a retry is the thing it serves. Callers wrap the retrying future in
//! [`bounded`] with the stop token of the build or the worker and, inside a
//! build, stop retrying at the build's deadline ([`sleep_at_most_until`]),
//! so no retry outlives what it is for.
//!
//! `Retry-After` from the Kubernetes API is honoured below these policies:
//! kube-client 5 retries 429/503/504 answers in its own tower layer
//! (`RetryPolicy::server_retry`, on by default) and waits what the server
//! asks; `kube::Error` does not carry the header, so the policies here only
//! see what is left after that.

use std::future::Future;
use std::time::Duration;

use backon::ExponentialBuilder;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Redis commands (claims, cancel flags): a Redis outage delays builds, it
/// never drops them, so the request is held and the call retried.
pub fn redis() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The worker's first Redis connection under Sentinel, while a failover
/// may be under way (Sentinel's down-after plus an election: seconds):
/// about a minute in all, then the error (the worker exits, and its
/// supervisor restarts it).
pub fn redis_startup() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(35)
}

/// Re-subscribing to Redis notices after the subscription broke: the pace
/// of Redis commands (fast after a blip, calm during an outage), named on
/// its own so the two can diverge without a search.
pub fn redis_subscribe() -> ExponentialBuilder {
    redis()
}

/// Publishing to RabbitMQ (an event, a dead-letter copy) that was nacked
/// or lost with the connection: fast after a blip, since a build waits on
/// its event, and calm during an outage.
pub fn amqp_publish() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Waiting for another worker that holds a build's lease to accept it (its
/// pods are being created): short at first, since acceptance usually takes
/// a few hundred milliseconds, never slower than once a second.
pub fn lease_held() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times()
}

/// Kubernetes writes of a build (pod creation) that failed transiently:
/// bounded by the build's deadline, after which the machine ends the build.
pub fn kube_write() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
}

/// One Kubernetes API call of the pod client (create, delete, log tail,
/// list) that failed transiently. Bounded by attempts (about a minute in
/// all): the caller owns the longer retry (the build's `kube_write`, the
/// machine's timers, the next adoption sweep). The client waits at least
/// the server's `Retry-After` on top of these delays.
pub fn kube_call() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .with_max_times(8)
}

/// The worker's connections to RabbitMQ (the first and each of lapin's
/// recoveries; every attempt dials the next node of `KILN_AMQP_URL`): quick
/// after a blip, at most every 5 s during an outage, jittered so that
/// workers do not dial in step, and never giving up (a worker waits for its
/// broker; it does not crash-loop).
pub fn amqp_connect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The client commands' connection to RabbitMQ: each of the `nodes` at
/// most twice, then the error (a person is waiting for an answer); with one
/// node, one attempt.
pub fn amqp_connect_client(nodes: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .with_max_times(if nodes > 1 { nodes * 2 - 1 } else { 0 })
}

/// One registry call of the publish step (`kiln publish`) that failed
/// transiently (5xx, 429, a dropped or refused connection): three more
/// tries within a few seconds. The publish pod's own attempts, which the
/// worker's machine retries with its backoff, are the longer retry.
pub fn registry_call() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(3)
}

/// Runs `fut` (usually a backon retry) until it ends or `stop` is
/// cancelled. `None`: it was stopped.
pub async fn bounded<T>(fut: impl Future<Output = T>, stop: &CancellationToken) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        () = stop.cancelled() => None,
    }
}

/// Sleeps `wait`, or until `deadline` if that comes first: a retry's wait
/// never carries it past what it serves.
pub fn sleep_at_most_until(wait: Duration, deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(deadline.min(Instant::now() + wait))
}

/// Sleeps until `at`; forever when there is no `at`.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bounded_gives_up_when_stopped() {
        let stop = CancellationToken::new();
        stop.cancel();
        let got = bounded(futures::future::pending::<()>(), &stop).await;
        assert_eq!(got, None);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_returns_what_the_future_gives() {
        let got = bounded(async { 7 }, &CancellationToken::new()).await;
        assert_eq!(got, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_the_deadline() {
        let start = Instant::now();
        sleep_at_most_until(Duration::from_secs(10), start + Duration::from_secs(2)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        let start = Instant::now();
        sleep_at_most_until(Duration::from_secs(1), start + Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[test]
    fn policies_never_give_up_on_their_own() {
        use backon::BackoffBuilder;
        for policy in [
            redis(),
            redis_subscribe(),
            amqp_publish(),
            lease_held(),
            kube_write(),
        ] {
            let mut delays = policy.build();
            let last = (0..1000).filter_map(|_| delays.next()).last();
            let last = last.unwrap_or_default();
            assert!(last > Duration::ZERO && last <= Duration::from_secs(20));
        }
    }
}
