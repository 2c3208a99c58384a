//! Issue 18 item 8: RabbitMQ topic permissions confine a tenant to its own
//! events, because every event's routing key ends with its tenant.
//!
//! Real broker: the test creates users with `rabbitmqctl` (unique names,
//! deleted afterwards), configured as deploy/rabbitmq/tenants.md shows, and
//! subscribes as them with the client's own binding keys.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use kiln_protocol::{BuildEvent, EventData, Level, Phase, Tenant, tenant_read_permission};
use kiln_tests::harness::{Env, amqp_url, unique};
use kiln_worker::amqp::{Broker, EventSubscription, OutgoingEvent};
use kiln_worker::cli::scope::{Scope, binding_keys};

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be on PATH (the tests' RabbitMQ runs locally)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RabbitMQ user confined to tenant `name`'s events on `prefix`'s
/// exchanges; deleted on drop.
struct TenantUser {
    name: String,
    password: String,
}

impl TenantUser {
    /// `read`: the topic read pattern on `<prefix>.events`.
    fn create(prefix: &str, name: &str, read: &str) -> Self {
        let password = unique("pw");
        rabbitmqctl(&["add_user", name, &password]);
        let user = Self {
            name: name.to_owned(),
            password,
        };
        let p = regex_escape(prefix);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            name,
            r"^amq\.gen-.*",
            &format!(r"^({p}\.requests|amq\.gen-.*)$"),
            &format!(r"^({p}\.events|amq\.gen-.*)$"),
        ]);
        rabbitmqctl(&[
            "set_topic_permissions",
            "-p",
            "/",
            name,
            &format!("{prefix}.events"),
            "^$",
            read,
        ]);
        user
    }

    /// The tests' broker (`KILN_AMQP_URL`: CI's is a private node on a
    /// free port) with this user's credentials.
    fn url(&self) -> String {
        let mut url = url::Url::parse(&amqp_url()).expect("KILN_AMQP_URL is a URL");
        url.set_username(&self.name)
            .expect("an AMQP URL has a host");
        url.set_password(Some(&self.password))
            .expect("an AMQP URL has a host");
        url.to_string()
    }
}

impl Drop for TenantUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

fn regex_escape(s: &str) -> String {
    s.replace('.', r"\.")
}

fn event(build: &str, tenant: &str, phase: Phase) -> OutgoingEvent {
    let mut data = EventData::for_build(build, phase);
    data.tenant = Some(tenant.to_owned());
    let ev = BuildEvent::new("urn:kiln:test", "w-1", jiff::Timestamp::now(), data);
    OutgoingEvent {
        routing_key: ev.routing_key(),
        message_id: ev.id.clone(),
        build_id: ev.data.build_id.clone(),
        phase: phase.as_str().to_owned(),
        traceparent: None,
        body: serde_json::to_vec(&ev).unwrap(),
    }
}

/// Publishes `other`'s event, then `own`'s: the first to arrive is `own`'s.
async fn only_own_arrives(
    env: &Env,
    sub: &mut EventSubscription,
    own: &str,
    other: &str,
    phase: Phase,
) {
    for tenant in [other, own] {
        let ev = event("x-1", tenant, phase);
        env.broker.publish_event(&ev).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.routing_key, format!("build.{phase}.{own}"));
}

async fn bind_refused(broker: &Broker, key: &str) {
    let err = broker
        .subscribe_events(&[key])
        .await
        .err()
        .unwrap_or_else(|| panic!("binding {key:?} was allowed"));
    assert!(
        err.to_string().contains("ACCESS_REFUSED"),
        "binding {key:?}: {err}"
    );
}

/// A tenant confined by topic permissions cannot bind another tenant's
/// events (nor every tenant's), and binds and receives its own with the
/// literal keys `kiln watch`/`wait`/`submit --wait` use.
#[tokio::test]
async fn a_tenant_confined_by_topic_permissions_cannot_bind_another_tenants_events() {
    let env = Env::new().await;
    let tag = unique("t").replace('-', "");
    let (alice, bob) = (format!("a{}", &tag[..12]), format!("b{}", &tag[..12]));
    let alice_tenant = Tenant::new(alice.clone()).unwrap();
    // The strict pattern of the contract.
    let strict = format!(r"^[a-z]+\.[a-z]+\.{alice}$");
    let user = TenantUser::create(&env.prefix, &alice, &strict);
    let broker = Broker::connect_client(&user.url(), &env.prefix, "tenancy test")
        .await
        .unwrap();

    // Her own events: every key the client binds passes (the optional
    // `default` keys are refused and skipped), and they arrive.
    let keys = binding_keys(&Scope::Tenant(alice_tenant), &Level::ALL, &[]);
    let key_refs: Vec<&str> = keys.0.iter().map(String::as_str).collect();
    let optional: Vec<&str> = keys.1.iter().map(String::as_str).collect();
    let mut sub = broker
        .subscribe_events_optional(&key_refs, &optional)
        .await
        .unwrap();
    only_own_arrives(&env, &mut sub, &alice, &bob, Phase::Accepted).await;

    // Anyone else's, or everyone's: refused by the broker.
    for key in [
        format!("build.accepted.{bob}"),
        format!("build.*.{bob}"),
        "build.*.*".to_owned(),
        "build.#".to_owned(),
        "#".to_owned(),
        format!("build.accepted.{alice}.#"),
        "build.accepted._".to_owned(),
    ] {
        bind_refused(&broker, &key).await;
    }
    sub.close().await;
    broker.close().await;

    // The wider pattern (tenant_read_permission) also admits wildcards in
    // the first two words, and still confines the tenant.
    let wide_user = TenantUser::create(
        &env.prefix,
        &bob,
        &tenant_read_permission(&Tenant::new(bob.clone()).unwrap()),
    );
    let broker = Broker::connect_client(&wide_user.url(), &env.prefix, "tenancy test")
        .await
        .unwrap();
    let mut sub = broker
        .subscribe_events(&[&format!("build.*.{bob}")])
        .await
        .unwrap();
    only_own_arrives(&env, &mut sub, &bob, &alice, Phase::Failed).await;
    for key in [
        format!("build.*.{alice}"),
        "build.*.*".to_owned(),
        "#".to_owned(),
    ] {
        bind_refused(&broker, &key).await;
    }
    sub.close().await;
    broker.close().await;
}
