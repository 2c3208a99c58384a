//! Issue 18 item 10: one tenant cannot starve the others. Tenant `default`
//! (capped at 2 builds in flight by `maxBuildsInFlight`) submits 6 builds,
//! then tenant `guest` submits 1: guest's build is accepted while default's
//! extra builds wait parked in RabbitMQ, default never has more than 2 in
//! flight, and all 7 end exactly once in `build.succeeded`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kiln_tests::harness::{Env, NAMESPACE, one_image, unique};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_tenant_waits_parked_while_another_is_served() {
    let mut env = Env::new().await;
    let path = env.write_policy(&format!(
        "[tenants.default]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\ncaps = {{ maxBuildsInFlight = 2 }}\n\n[tenants.guest]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\n"
    ));
    env.slow_pods(Duration::from_secs(2));
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));

    let a: Vec<String> = (0..6).map(|i| unique(&format!("fair-a{i}"))).collect();
    for id in &a {
        env.publish(&one_image(id)).await;
    }
    let b = unique("fair-b");
    env.publish_raw(&serde_json::to_vec(&one_image(&b)).unwrap(), Some("guest"))
        .await;

    let mut accepted: HashMap<String, usize> = HashMap::new();
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    let mut a_running: HashSet<String> = HashSet::new();
    let (mut max_a, mut a_accepted_before_b) = (0, None);
    let deadline = tokio::time::Instant::now() + WAIT;
    while succeeded.len() < 7 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(ev) = env.next_event(left).await else {
            panic!("timed out: accepted {accepted:?}, succeeded {succeeded:?}");
        };
        let id = ev.data.build_id.clone();
        let is_a = a.contains(&id);
        if ev.event_type.ends_with(".build.accepted.v1") {
            *accepted.entry(id.clone()).or_default() += 1;
            if is_a {
                a_running.insert(id.clone());
                max_a = max_a.max(a_running.len());
            } else if id == b {
                a_accepted_before_b = Some(a.iter().filter(|x| accepted.contains_key(*x)).count());
            }
        } else if ev.event_type.ends_with(".build.succeeded.v1") {
            *succeeded.entry(id.clone()).or_default() += 1;
            a_running.remove(&id);
        }
    }
    println!(
        "default's builds accepted before guest's: {a_accepted_before_b:?}; most in flight at once: {max_a}"
    );
    assert!(max_a <= 2, "default had {max_a} builds in flight (cap 2)");
    assert!(
        a_accepted_before_b.is_some_and(|n| n <= 2),
        "guest's build waited for default's extra builds: {a_accepted_before_b:?}"
    );
    for id in a.iter().chain([&b]) {
        assert_eq!(
            accepted.get(id),
            Some(&1),
            "{id} accepted once: {accepted:?}"
        );
        assert_eq!(
            succeeded.get(id),
            Some(&1),
            "{id} succeeded once: {succeeded:?}"
        );
    }
    // Nothing further: no build doubled.
    assert!(env.next_event(Duration::from_secs(2)).await.is_none());
    env.cleanup().await;
}
