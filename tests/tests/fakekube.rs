//! Tests of the fake Kubernetes API server, through a real `kube::Client`.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kiln_tests::fakekube::{
    FakeKube, FakeKubeOptions, Fate, FaultResponse, FaultRule, PendingReason, Resource, Timing,
    Verb,
};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions,
    WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;
use sha2::Digest as _;

const NS: &str = "kiln-builds";

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "kaniko",
                "image": "gcr.io/kaniko-project/executor:v1.23.2",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
        },
    }))
    .unwrap()
}

fn kiln_pod(name: &str) -> Pod {
    pod(name, &[("app.kubernetes.io/managed-by", "kiln")])
}

async fn start() -> FakeKube {
    FakeKube::start_with(FakeKubeOptions {
        namespace: NS.to_owned(),
        ..FakeKubeOptions::default()
    })
    .await
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls until `f` holds for the pod (None: the pod is gone).
async fn wait_pod(kube: &FakeKube, name: &str, f: impl Fn(Option<&Pod>) -> bool) -> Option<Pod> {
    for _ in 0..500 {
        let p = kube.pod(NS, name);
        if f(p.as_ref()) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "pod {name} never reached the expected state: {:?}",
        kube.pod(NS, name).map(|p| p.status)
    );
}

/// kube-runtime's watcher of Kiln's pods (the label the worker selects by),
/// once its initial list is done.
async fn kiln_watcher(
    pods: &Api<Pod>,
) -> futures::stream::BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>> {
    let mut events = watcher(
        pods.clone(),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=kiln"),
    )
    .boxed();
    loop {
        if let watcher::Event::InitDone = events.try_next().await.unwrap().unwrap() {
            return events;
        }
    }
}

fn phase(p: Option<&Pod>) -> Option<&str> {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
}

fn terminated(p: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    p.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap()
}

#[tokio::test]
async fn create_get_conflict_and_validation() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::StayPending {
        reason: PendingReason::Unschedulable,
    });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());

    let created = pods
        .create(&PostParams::default(), &kiln_pod("p1"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    assert_eq!(meta.uid.as_ref().unwrap().len(), 36);
    assert!(
        meta.resource_version
            .as_ref()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert!(meta.managed_fields.is_none());
    let status = created.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );

    // Same name again: 409 AlreadyExists, shaped like the real Status.
    let err = api_error(
        pods.create(&PostParams::default(), &kiln_pod("p1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "AlreadyExists");
    assert_eq!(err.message, "pods \"p1\" already exists");
    let details = err.details.unwrap();
    assert_eq!(details.name, "p1");
    assert_eq!(details.kind, "pods");

    let got = pods.get("p1").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let err = api_error(pods.get("nope").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "pods \"nope\" not found");

    // Invalid names: 422 with the real validation messages.
    let err = api_error(
        pods.create(&PostParams::default(), &kiln_pod("Bad_Name"))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.starts_with("Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        "{}",
        err.message
    );
    let long = "a".repeat(254);
    let err = api_error(
        pods.create(&PostParams::default(), &kiln_pod(&long))
            .await
            .unwrap_err(),
    );
    assert!(
        err.message.contains("must be no more than 253 characters"),
        "{}",
        err.message
    );
    // Pod names are subdomains: 64 characters are fine, as on a real cluster.
    pods.create(&PostParams::default(), &kiln_pod(&"b".repeat(64)))
        .await
        .unwrap();
    let err = api_error(
        pods.create(&PostParams::default(), &kiln_pod(""))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("metadata.name: Required value: name or generateName is required"),
        "{}",
        err.message
    );
    let err = api_error(
        pods.create(
            &PostParams::default(),
            &pod("p2", &[("kiln.dev/build", &"x".repeat(64))]),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        err.message.contains("metadata.labels: Invalid value"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("must be no more than 63 characters"),
        "{}",
        err.message
    );
    let mut no_containers = kiln_pod("p3");
    no_containers.spec.as_mut().unwrap().containers.clear();
    let err = api_error(
        pods.create(&PostParams::default(), &no_containers)
            .await
            .unwrap_err(),
    );
    assert!(
        err.message.contains("spec.containers: Required value"),
        "{}",
        err.message
    );

    // generateName
    let mut g = kiln_pod("");
    g.metadata.name = None;
    g.metadata.generate_name = Some("kiln-gen-".into());
    let gen1 = pods.create(&PostParams::default(), &g).await.unwrap();
    let name = gen1.metadata.name.unwrap();
    assert!(
        name.starts_with("kiln-gen-") && name.len() == "kiln-gen-".len() + 5,
        "{name}"
    );

    // The call log.
    let creates: Vec<_> = kube
        .calls()
        .into_iter()
        .filter(|c| c.is(Verb::Create, Resource::Pods, "p1"))
        .map(|c| c.status)
        .collect();
    assert_eq!(creates, vec![201, 409]);

    // ConfigMaps.
    let cms: Api<ConfigMap> = Api::default_namespaced(kube.client());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("df".into());
    cm.data = Some(BTreeMap::from([(
        "Dockerfile".to_owned(),
        "FROM alpine\n".to_owned(),
    )]));
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.generation.is_none());
    assert_eq!(kube.configmaps(NS).len(), 1);
    let err = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(
        (err.code, err.details.unwrap().kind.as_str()),
        (409, "configmaps")
    );
    // ConfigMap delete answers with a Success Status.
    let deleted = cms.delete("df", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right());
    assert!(kube.configmap(NS, "df").is_none());
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::StayPending {
        reason: PendingReason::Unschedulable,
    });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    for i in 0..7 {
        let tier = if i % 2 == 0 { "build" } else { "test" };
        let mut labels = vec![("app.kubernetes.io/managed-by", "kiln"), ("tier", tier)];
        if i == 6 {
            labels = vec![("tier", "other")];
        }
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), &labels))
            .await
            .unwrap();
    }
    // Another namespace does not leak into this one.
    let other: Api<Pod> = Api::namespaced(kube.client(), "other");
    other
        .create(&PostParams::default(), &kiln_pod("x"))
        .await
        .unwrap();

    let names = |l: kube::core::ObjectList<Pod>| {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(
            pods.list(&q("app.kubernetes.io/managed-by=kiln"))
                .await
                .unwrap()
        )
        .len(),
        6
    );
    assert_eq!(
        names(pods.list(&q("tier==build")).await.unwrap()),
        ["p0", "p2", "p4"]
    );
    assert_eq!(
        names(
            pods.list(&q("app.kubernetes.io/managed-by=kiln,tier=test"))
                .await
                .unwrap()
        ),
        ["p1", "p3", "p5"]
    );
    // What Kiln never sends is refused, saying so, rather than imitated.
    for refused in [
        "tier!=build",
        "tier in (test,other)",
        "!tier",
        "tier",
        "tier=a,",
    ] {
        let err = api_error(pods.list(&q(refused)).await.unwrap_err());
        assert_eq!(err.code, 400, "{refused}: {}", err.message);
    }
    let err = api_error(
        pods.list(&ListParams::default().fields("metadata.name=p3"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("field selectors are not served"),
        "{}",
        err.message
    );
    let err = api_error(
        pods.list(&ListParams::default().labels("a/=b"))
            .await
            .unwrap_err(),
    );
    assert!(err.message.contains("Invalid value"), "{}", err.message);
    let all: Api<Pod> = Api::all(kube.client());
    let err = api_error(all.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(err.code, 404, "Kiln lists one namespace at a time");

    // limit + continue: consistent pages, as of the first page's revision.
    let first = pods.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(names(first.clone()), ["p0", "p1", "p2"]);
    let rv = first.metadata.resource_version.clone().unwrap();
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let token = first.metadata.continue_.clone().unwrap();
    // Changes between pages do not show in later pages.
    pods.delete("p4", &DeleteParams::default()).await.unwrap();
    pods.create(&PostParams::default(), &kiln_pod("p35"))
        .await
        .unwrap();
    let second = pods
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(names(second.clone()), ["p3", "p4", "p5"]);
    let third = pods
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(third.clone()), ["p6"]);
    assert!(third.metadata.continue_.is_none());
    // The current state has the changes.
    assert_eq!(
        names(pods.list(&ListParams::default()).await.unwrap()),
        ["p0", "p1", "p2", "p3", "p35", "p5", "p6"]
    );
    // A continue token older than the history is 410 Expired.
    kube.faults().expire_history();
    let err = api_error(
        pods.list(&ListParams::default().limit(3).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    let err = api_error(
        pods.list(&ListParams::default().continue_token("garbage!"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
}

#[tokio::test]
async fn watcher_sees_phases_of_a_scripted_pod() {
    let kube = start().await;
    kube.kubelet().set_script(|p| Fate::Succeed {
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
        log: format!("built {}\n", p.metadata.name.as_deref().unwrap()),
    });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let mut events = kiln_watcher(&pods).await;
    pods.create(&PostParams::default(), &kiln_pod("build-1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("unlabelled", &[]))
        .await
        .unwrap();
    let mut phases = Vec::new();
    let mut last = None;
    while phases.last().map(String::as_str) != Some("Succeeded") {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(p) = ev {
            assert_eq!(
                p.metadata.name.as_deref(),
                Some("build-1"),
                "label selector filters"
            );
            let ph = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phases.last() != Some(&ph) {
                phases.push(ph);
            }
            last = Some(p);
        }
    }
    assert_eq!(phases, ["Pending", "Running", "Succeeded"]);
    let p = last.unwrap();
    assert_eq!(
        p.spec.as_ref().unwrap().node_name.as_deref(),
        Some("fake-node-1")
    );
    let st = p.status.as_ref().unwrap();
    assert!(st.start_time.is_some() && st.pod_ip.is_some());
    let t = terminated(&p);
    assert_eq!(t.exit_code, 0);
    assert_eq!(t.reason.as_deref(), Some("Completed"));
    assert_eq!(t.message, Some(format!("sha256:{}", "ab".repeat(32))));
    assert!(t.container_id.unwrap().starts_with("containerd://"));
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert!(
        cs.image_id
            .starts_with("gcr.io/kaniko-project/executor@sha256:")
    );
    assert_eq!(cs.restart_count, 0);
    let conds: BTreeMap<_, _> = st
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), (c.status.clone(), c.reason.clone())))
        .collect();
    assert_eq!(
        conds["Ready"],
        ("False".into(), Some("PodCompleted".into()))
    );
    assert_eq!(conds["PodScheduled"].0, "True");

    // Deleting a finished pod removes it at once.
    pods.delete("build-1", &DeleteParams::background())
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let watcher::Event::Delete(p) = ev {
            assert_eq!(p.metadata.name.as_deref(), Some("build-1"));
            break;
        }
    }
}

#[tokio::test]
async fn default_success_digest_and_instant_timing() {
    let kube = start().await;
    kube.kubelet().set_timing(Timing::instant());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let stream = pods
        .watch(
            &WatchParams::default()
                .labels("app.kubernetes.io/managed-by=kiln")
                .timeout(10),
            "0",
        )
        .await
        .unwrap();
    for i in 0..50 {
        pods.create(&PostParams::default(), &kiln_pod(&format!("fast-{i}")))
            .await
            .unwrap();
    }
    let mut modified = 0;
    let mut succeeded = 0;
    let mut stream = stream.boxed();
    while succeeded < 50 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Modified(p) => {
                modified += 1;
                if phase(Some(&p)) == Some("Succeeded") {
                    succeeded += 1;
                }
            }
            WatchEvent::Added(_) | WatchEvent::Bookmark(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // bind, ContainerCreating, Running, Succeeded: separate events per pod.
    assert_eq!(modified, 4 * 50);
    let p = kube.pod(NS, "fast-0").unwrap();
    let digest = terminated(&p).message.unwrap();
    // The default digest is sha256 of the pod name.
    let want: String = sha2::Sha256::digest(b"fast-0")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(digest, format!("sha256:{want}"));
}

#[tokio::test]
async fn watch_from_expired_resource_version_gets_410_and_watcher_relists() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::RunForever);
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let p = pods
        .create(&PostParams::default(), &kiln_pod("a"))
        .await
        .unwrap();
    let old_rv = p.metadata.resource_version.unwrap();
    pods.create(&PostParams::default(), &kiln_pod("b"))
        .await
        .unwrap();

    let watch_from_old = || async {
        pods.watch(&WatchParams::default().timeout(5), &old_rv)
            .await
            .unwrap()
            .boxed()
    };

    // Within history: replay of newer events.
    let mut s = watch_from_old().await;
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("b")),
        WatchEvent::Modified(p) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
        other => panic!("{other:?}"),
    }
    drop(s);

    kube.faults().expire_history();
    let mut s = watch_from_old().await;
    match s.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message
                    .starts_with(&format!("too old resource version: {old_rv} (")),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.try_next().await.unwrap().is_none(),
        "the stream ends after the error"
    );

    // kube-runtime's watcher: a 410 on re-watch makes it list again.
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut inits = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(watcher::Event::InitDone) => {
                inits += 1;
                if inits == 2 {
                    break;
                }
                // Make the watcher's resourceVersion too old, then cut its watch.
                pods.create(&PostParams::default(), &kiln_pod("c"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                kube.faults().expire_history();
                kube.faults().close_watches();
            }
            Ok(_) => {}
            Err(e) => assert!(
                e.to_string().contains("410")
                    || e.to_string().to_lowercase().contains("expired")
                    || e.to_string().contains("watch"),
                "{e}"
            ),
        }
    }
    let lists = kube
        .calls()
        .iter()
        .filter(|c| c.verb == Verb::List && c.succeeded())
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn close_watches_makes_the_watcher_reconnect() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::RunForever);
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let mut events = kiln_watcher(&pods).await;
    // The watch starts when the stream is polled after InitDone: wait until
    // an event proves it is open.
    pods.create(&PostParams::default(), &kiln_pod("before-close"))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(_) = events.try_next().await.unwrap().unwrap() {
            break;
        }
    }
    kube.faults().close_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    pods.create(&PostParams::default(), &kiln_pod("after-close"))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(watcher::Event::Apply(p)) if p.metadata.name.as_deref() == Some("after-close") => {
                break;
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => panic!("no relist expected"),
            _ => {}
        }
    }
    let watches = kube
        .calls()
        .iter()
        .filter(|c| c.verb == Verb::Watch)
        .count();
    assert!(watches >= 2, "{watches}");
}

#[tokio::test]
async fn delete_preconditions_and_graceful_deletion() {
    let kube = start().await;
    kube.kubelet().set_script(|p| {
        if p.metadata.name.as_deref() == Some("pending") {
            Fate::StayPending {
                reason: PendingReason::Unschedulable,
            }
        } else {
            Fate::RunForever
        }
    });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let p = pods
        .create(&PostParams::default(), &kiln_pod("run"))
        .await
        .unwrap();
    let uid = p.metadata.uid.clone().unwrap();
    wait_pod(&kube, "run", |p| phase(p) == Some("Running")).await;

    let wrong = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    let err = api_error(pods.delete("run", &wrong).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        format!(
            "Operation cannot be fulfilled on pods \"run\": Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {uid}"
        )
    );
    let stale_rv = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..DeleteParams::default()
    };
    let err = api_error(pods.delete("run", &stale_rv).await.unwrap_err());
    assert!(
        err.message
            .contains("Precondition failed: ResourceVersion in precondition: 1"),
        "{}",
        err.message
    );

    // Right uid: a running pod is deleted gracefully.
    let right = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    let resp = pods.delete("run", &right).await.unwrap();
    let terminating = resp.left().expect("the pod is returned");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // The kubelet stops it and removes it.
    wait_pod(&kube, "run", |p| p.is_none()).await;
    let kinds: Vec<_> = kube
        .calls()
        .iter()
        .filter(|c| c.verb == Verb::Delete)
        .map(|c| c.status)
        .collect();
    assert_eq!(kinds, vec![409, 409, 200]);

    // An unscheduled pod goes at once.
    pods.create(&PostParams::default(), &kiln_pod("pending"))
        .await
        .unwrap();
    wait_pod(&kube, "pending", |p| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                })
            })
    })
    .await;
    pods.delete("pending", &DeleteParams::default())
        .await
        .unwrap();
    assert!(kube.pod(NS, "pending").is_none());
    let err = api_error(
        pods.delete("pending", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test]
async fn graceful_deletion_is_seen_by_watchers() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::RunForever);
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    pods.create(&PostParams::default(), &kiln_pod("g"))
        .await
        .unwrap();
    let running = wait_pod(&kube, "g", |p| phase(p) == Some("Running"))
        .await
        .unwrap();
    let rv = running.metadata.resource_version.unwrap();
    let mut s = pods
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    pods.delete("g", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match s.try_next().await.unwrap().unwrap() {
            WatchEvent::Modified(p) => seen.push(format!(
                "MODIFIED deleting={} phase={}",
                p.metadata.deletion_timestamp.is_some(),
                phase(Some(&p)).unwrap()
            )),
            WatchEvent::Deleted(p) => {
                let t = terminated(&p);
                assert_eq!(t.exit_code, 143);
                seen.push("DELETED".into());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "MODIFIED deleting=true phase=Running",
            "MODIFIED deleting=true phase=Failed",
            "DELETED"
        ]
    );
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::RunForever);
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let cms: Api<ConfigMap> = Api::default_namespaced(kube.client());
    let p = pods
        .create(&PostParams::default(), &kiln_pod("owner"))
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "owner-dockerfile",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": "owner",
                "uid": p.metadata.uid.clone().unwrap(), "controller": true, "blockOwnerDeletion": true
            }]
        },
        "data": {"Dockerfile": "FROM alpine\n"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    // An unrelated configmap stays.
    let mut keep = ConfigMap::default();
    keep.metadata.name = Some("keep".into());
    cms.create(&PostParams::default(), &keep).await.unwrap();

    wait_pod(&kube, "owner", |p| phase(p) == Some("Running")).await;
    pods.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(
        kube.configmap(NS, "owner-dockerfile").is_some(),
        "not before the owner is gone"
    );
    wait_pod(&kube, "owner", |p| p.is_none()).await;
    for _ in 0..200 {
        if kube.configmap(NS, "owner-dockerfile").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(kube.configmap(NS, "owner-dockerfile").is_none());
    assert!(kube.configmap(NS, "keep").is_some());

    // A dangling owner reference is collected too.
    let dangling: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "dangling", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "ghost", "uid": "6f1e6d0c-2d2a-4b7e-9f55-000000000000"}]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &dangling).await.unwrap();
    for _ in 0..200 {
        if kube.configmap(NS, "dangling").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(kube.configmap(NS, "dangling").is_none());
}

#[tokio::test]
async fn logs_tail_limit_and_waiting_container() {
    let kube = start().await;
    let log: String = (1..=100)
        .map(|i| format!("step {i}"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let script_log = log.clone();
    kube.kubelet()
        .set_script(move |p| match p.metadata.name.as_deref() {
            Some("pull") => Fate::StayPending {
                reason: PendingReason::ErrImagePull,
            },
            Some("bad") => Fate::fail(1, script_log.clone()),
            _ => Fate::Succeed {
                digest: None,
                log: script_log.clone(),
            },
        });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    pods.create(&PostParams::default(), &kiln_pod("ok"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &kiln_pod("bad"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &kiln_pod("pull"))
        .await
        .unwrap();
    wait_pod(&kube, "ok", |p| phase(p) == Some("Succeeded")).await;

    let tail = pods
        .logs(
            "ok",
            &LogParams {
                tail_lines: Some(2),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "step 99\nstep 100\n");
    let head = pods
        .logs(
            "ok",
            &LogParams {
                limit_bytes: Some(7),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(head, "step 1\n");
    assert_eq!(pods.logs("ok", &LogParams::default()).await.unwrap(), log);
    let both = pods
        .logs(
            "ok",
            &LogParams {
                container: Some("kaniko".into()),
                tail_lines: Some(3),
                limit_bytes: Some(8),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(both, "step 98\n");
    let err = api_error(
        pods.logs(
            "ok",
            &LogParams {
                container: Some("nope".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (err.code, err.message.as_str()),
        (400, "container nope is not valid for pod ok")
    );

    // FallbackToLogsOnError: the failure's termination message is the log tail.
    let bad = wait_pod(&kube, "bad", |p| phase(p) == Some("Failed"))
        .await
        .unwrap();
    let t = terminated(&bad);
    assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
    let msg = t.message.unwrap();
    assert!(
        msg.starts_with("step 21\n") && msg.ends_with("step 100\n"),
        "{msg}"
    );

    let pull = wait_pod(&kube, "pull", |p| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("ErrImagePull"))
    })
    .await
    .unwrap();
    assert_eq!(phase(Some(&pull)), Some("Pending"));
    let err = api_error(pods.logs("pull", &LogParams::default()).await.unwrap_err());
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "container \"kaniko\" in pod \"pull\" is waiting to start: ErrImagePull"
    );
    let err = api_error(
        pods.logs("missing", &LogParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test]
async fn failure_fates_have_real_shapes() {
    let kube = start().await;
    kube.kubelet()
        .set_script(|p| match p.metadata.name.as_deref().unwrap() {
            "oom" => Fate::OomKilled,
            "evicted" => Fate::Evicted,
            "deadline" => Fate::DeadlineExceeded,
            "lost" => Fate::NodeLost,
            "forever" => Fate::RunForever,
            "backoff" => Fate::StayPending {
                reason: PendingReason::ImagePullBackOff,
            },
            "config" => Fate::StayPending {
                reason: PendingReason::CreateContainerConfigError,
            },
            _ => Fate::succeed(),
        });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    for name in ["oom", "evicted", "deadline", "lost", "backoff", "config"] {
        pods.create(&PostParams::default(), &kiln_pod(name))
            .await
            .unwrap();
    }
    let mut forever = kiln_pod("forever");
    forever.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    pods.create(&PostParams::default(), &forever).await.unwrap();

    let oom = wait_pod(&kube, "oom", |p| phase(p) == Some("Failed"))
        .await
        .unwrap();
    let t = terminated(&oom);
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));

    let ev = wait_pod(&kube, "evicted", |p| phase(p) == Some("Failed"))
        .await
        .unwrap();
    let st = ev.status.as_ref().unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert!(
        st.message
            .as_ref()
            .unwrap()
            .starts_with("The node was low on resource: memory.")
    );
    assert!(
        st.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    );

    let dl = wait_pod(&kube, "deadline", |p| phase(p) == Some("Failed"))
        .await
        .unwrap();
    assert_eq!(
        dl.status.as_ref().unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );

    // activeDeadlineSeconds: a pod that runs too long is failed by the kubelet.
    let f = wait_pod(&kube, "forever", |p| phase(p) == Some("Failed"))
        .await
        .unwrap();
    let st = f.status.as_ref().unwrap();
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        st.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    assert_eq!(terminated(&f).exit_code, 137);

    // Node lost: disrupted, deleted, gone.
    wait_pod(&kube, "lost", |p| p.is_none()).await;
    let lost_events = kube.calls();
    assert!(
        !lost_events
            .iter()
            .any(|c| c.name.as_deref() == Some("lost") && c.verb == Verb::Delete),
        "deleted by the control plane, not through the API"
    );

    let bo = wait_pod(&kube, "backoff", |p| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("ImagePullBackOff"))
    })
    .await
    .unwrap();
    assert_eq!(phase(Some(&bo)), Some("Pending"));
    wait_pod(&kube, "config", |p| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
    })
    .await;
}

#[tokio::test]
async fn faults_500_then_success_and_429_retried_by_kube() {
    let kube = start().await;
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    kube.faults().add(
        FaultRule::new(Verb::Create, Resource::Pods)
            .name_contains("flaky")
            .times(1),
    );
    let err = api_error(
        pods.create(&PostParams::default(), &kiln_pod("flaky-1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    assert!(
        kube.pod(NS, "flaky-1").is_none(),
        "a failed call changes nothing"
    );
    pods.create(&PostParams::default(), &kiln_pod("flaky-1"))
        .await
        .unwrap();
    assert_eq!(kube.faults().injected_count(), 1);
    let statuses: Vec<u16> = kube
        .calls()
        .iter()
        .filter(|c| c.is(Verb::Create, Resource::Pods, "flaky-1"))
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [500, 201]);
    let successful = kube
        .calls()
        .iter()
        .filter(|c| c.is(Verb::Create, Resource::Pods, "flaky-1") && c.succeeded())
        .count();
    assert_eq!(successful, 1);

    // 429 with Retry-After: kube's default retry policy retries it.
    kube.faults().add(
        FaultRule::new(Verb::Get, Resource::Pods)
            .respond(FaultResponse::TooManyRequests)
            .times(1),
    );
    pods.get("flaky-1").await.unwrap();
    let gets: Vec<u16> = kube
        .calls()
        .iter()
        .filter(|c| c.is(Verb::Get, Resource::Pods, "flaky-1"))
        .map(|c| c.status)
        .collect();
    assert_eq!(gets, [429, 200]);
    assert_eq!(kube.faults().injected_count(), 2);

    // Faults on the watcher's list: the watcher reports the error and retries.
    kube.faults().add(
        FaultRule::new(Verb::List, Resource::Pods)
            .respond(FaultResponse::Code(500))
            .times(2),
    );
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut errors = 0;
    loop {
        match events.next().await.unwrap() {
            Err(_) => errors += 1,
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
        }
    }
    assert_eq!(errors, 2);

    // Latency.
    kube.faults().set_latency(Duration::from_millis(200));
    let t = std::time::Instant::now();
    pods.get("flaky-1").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    kube.faults().clear();
}

#[tokio::test]
async fn watch_selects_by_label_with_bookmarks_and_timeout() {
    let kube = FakeKube::start_with(FakeKubeOptions {
        namespace: NS.to_owned(),
        bookmark_interval: Duration::from_millis(200),
        ..FakeKubeOptions::default()
    })
    .await;
    kube.kubelet().set_script(|_| Fate::RunForever);
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    pods.create(&PostParams::default(), &kiln_pod("t"))
        .await
        .unwrap();
    wait_pod(&kube, "t", |p| phase(p) == Some("Running")).await;
    let rv = kube.resource_version().to_string();
    let mut s = pods
        .watch(
            &WatchParams::default()
                .labels("app.kubernetes.io/managed-by=kiln")
                .timeout(10),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    // A pod outside the selection, then one inside it, run to Running.
    pods.create(&PostParams::default(), &pod("other", &[("tier", "x")]))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &kiln_pod("u"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut bookmarks = 0;
    while !seen.contains(&("MODIFIED", "u".to_owned(), "Running".to_owned())) || bookmarks == 0 {
        let (kind, p) = match s.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(p) => ("ADDED", p),
            WatchEvent::Modified(p) => ("MODIFIED", p),
            WatchEvent::Deleted(p) => ("DELETED", p),
            WatchEvent::Bookmark(b) => {
                assert!(
                    b.metadata.resource_version.parse::<u64>().unwrap()
                        >= rv.parse::<u64>().unwrap()
                );
                bookmarks += 1;
                continue;
            }
            WatchEvent::Error(e) => panic!("{e:?}"),
        };
        let name = p.metadata.name.clone().unwrap();
        seen.push((kind, name, phase(Some(&p)).unwrap_or_default().to_owned()));
    }
    assert_eq!(
        seen[0],
        ("ADDED", "u".to_owned(), "Pending".to_owned()),
        "{seen:?}"
    );
    assert!(seen.iter().all(|(_, name, _)| name == "u"), "{seen:?}");

    // timeoutSeconds ends the stream.
    let t = std::time::Instant::now();
    let mut s = pods
        .watch(
            &WatchParams::default().timeout(1),
            &kube.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    while s.try_next().await.unwrap().is_some() {}
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn updates_are_refused_and_kubeconfig() {
    let kube = start().await;
    kube.kubelet().set_script(|_| Fate::StayPending {
        reason: PendingReason::Unschedulable,
    });
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let p = pods
        .create(&PostParams::default(), &kiln_pod("s"))
        .await
        .unwrap();
    // The scheduler's last write: Unschedulable.
    wait_pod(&kube, "s", |p| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some()
    })
    .await;

    // Kiln patches only a pod's annotations (the cancel mark), with a merge
    // patch: that is served, and a null removes a key.
    let marked = pods
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"kiln.dev/cancelled": "no more", "x": "y"}}}),
            ),
        )
        .await
        .unwrap();
    let annotations = marked.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("kiln.dev/cancelled").map(String::as_str),
        Some("no more")
    );
    assert_eq!(
        marked.spec, p.spec,
        "a patch of annotations changes nothing else"
    );
    let unmarked = pods
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": null}}})),
        )
        .await
        .unwrap();
    assert!(
        !unmarked
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("x")
    );

    // Kiln never updates an object otherwise: PUT and other patches are not
    // served, nor is the status subresource, and nothing changes.
    let before = kube.resource_version();
    for other in [
        Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}, "spec": {}})),
        Patch::Strategic(json!({"metadata": {"annotations": {"a": "b"}}})),
    ] {
        let err = api_error(
            pods.patch("s", &PatchParams::default(), &other)
                .await
                .unwrap_err(),
        );
        assert_eq!(err.code, 400, "{other:?}: {}", err.message);
    }
    let err = api_error(
        pods.replace("s", &PostParams::default(), &p)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 405);
    let err = api_error(
        pods.patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    // Nor does it delete with another propagation than Background, or set
    // finalizers.
    let err = api_error(pods.delete("s", &DeleteParams::orphan()).await.unwrap_err());
    assert_eq!(err.code, 422, "{}", err.message);
    let err = api_error(
        pods.delete("s", &DeleteParams::foreground())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "{}", err.message);
    let mut held = kiln_pod("held");
    held.metadata.finalizers = Some(vec!["example.com/hold".to_owned()]);
    let err = api_error(
        pods.create(&PostParams::default(), &held)
            .await
            .unwrap_err(),
    );
    assert!(err.message.contains("finalizers"), "{}", err.message);
    assert_eq!(kube.resource_version(), before);

    // A kubeconfig another process can use.
    let dir = std::env::temp_dir().join(format!("fakekube-{}", kube.addr().port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    kube.write_kubeconfig(&path).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    assert_eq!(config.default_namespace, NS);
    let client = kube::Client::try_from(config).unwrap();
    let via_kubeconfig: Api<Pod> = Api::default_namespaced(client);
    assert!(via_kubeconfig.get_opt("s").await.unwrap().is_some());
    let version = kube.client().apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    std::fs::remove_dir_all(&dir).unwrap();

    // Unknown paths: 404 Status.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(kube.client());
    let err = api_error(secrets.get("x").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn dropping_stops_the_server() {
    let kube = start().await;
    let client = kube.client();
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.list(&ListParams::default()).await.unwrap();
    let mut s = pods
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    drop(kube);
    // The open watch is cut and new connections are refused.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = s.next().await {}
    })
    .await;
    assert!(end.is_ok());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pods.list(&ListParams::default()).await.is_err());
}

/// 10,000 pods created by 64 concurrent clients while a label-selected
/// watcher follows them to Succeeded. Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test"]
async fn ten_thousand_pods() {
    let history = std::env::var("FAKEKUBE_HISTORY")
        .ok()
        .and_then(|h| h.parse().ok());
    let kube = FakeKube::start_with(FakeKubeOptions {
        namespace: NS.to_owned(),
        history: history.unwrap_or(FakeKubeOptions::default().history),
        ..FakeKubeOptions::default()
    })
    .await;
    kube.kubelet().set_timing(Timing::instant());
    let pods: Api<Pod> = Api::default_namespaced(kube.client());
    let total = 10_000;
    let watch_pods = pods.clone();
    let follower = tokio::spawn(async move {
        let mut done = std::collections::HashSet::new();
        let mut events = watcher(
            watch_pods,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=kiln"),
        )
        .boxed();
        while done.len() < total {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) =
                events.next().await.unwrap()
                && phase(Some(&p)) == Some("Succeeded")
            {
                done.insert(p.metadata.name.unwrap());
            }
        }
    });
    let start = std::time::Instant::now();
    futures::stream::iter(0..total)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &kiln_pod(&format!("load-{i}")))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let created = start.elapsed();
    tokio::time::timeout(Duration::from_secs(300), follower)
        .await
        .unwrap()
        .unwrap();
    let all = start.elapsed();
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(str::to_owned)
        .unwrap_or_default();
    println!(
        "created {total} pods in {created:?} ({:.0}/s); all Succeeded after {all:?}; rv {}; {rss}",
        total as f64 / created.as_secs_f64(),
        kube.resource_version()
    );
}
