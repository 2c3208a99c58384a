//! The garbage collector (kube-controller-manager's `garbagecollector`),
//! reduced to what owner references between namespaced objects need: when an
//! owner is removed, each dependent that has no other live owner is deleted
//! (Background propagation, the only one served), or else loses the
//! reference to the removed owner. A dependent
//! created with an owner reference to a uid that does not exist is deleted
//! too, as the real collector does for dangling references.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use super::store::{DeleteOptions, GcWork, Preconditions, Store, Subresource};

pub fn spawn(
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<GcWork>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(work) = rx.recv().await {
            collect(&store, &work);
        }
    })
}

fn collect(store: &Store, work: &GcWork) {
    if store.uid_exists(&work.owner_uid) {
        return;
    }
    for (resource, (ns, name)) in store.dependents_of(&work.owner_uid) {
        let Some(obj) = store.get(resource, &ns, &name) else {
            continue;
        };
        let refs: Vec<Value> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let live_owner = refs.iter().any(|r| {
            r.get("uid")
                .and_then(Value::as_str)
                .is_some_and(|u| u != work.owner_uid && store.uid_exists(u))
        });
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if live_owner {
            let remaining: Vec<Value> = refs
                .into_iter()
                .filter(|r| r.get("uid").and_then(Value::as_str) != Some(&work.owner_uid))
                .collect();
            let _ = store.update(
                resource,
                &ns,
                &name,
                Subresource::Internal,
                &Preconditions::default(),
                |cur| {
                    let mut new = cur.clone();
                    if remaining.is_empty() {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                    } else {
                        new["metadata"]["ownerReferences"] = Value::Array(remaining.clone());
                    }
                    Ok(new)
                },
            );
        } else {
            // The collector deletes with a uid precondition, so a recreated
            // object of the same name is left alone.
            let opts = DeleteOptions {
                preconditions: Preconditions {
                    uid,
                    resource_version: None,
                },
                ..DeleteOptions::default()
            };
            let _ = store.delete(resource, &ns, &name, &opts);
        }
    }
}
