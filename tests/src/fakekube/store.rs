//! The object store: etcd plus the registry rules of the real API server.
//!
//! * One global, monotonically increasing resourceVersion (etcd's revision),
//!   shared by all resources and namespaces, rendered as a decimal string.
//! * Objects are kept as JSON behind `Arc`, keyed by (namespace, name) in
//!   key order, like etcd keys `/registry/pods/<ns>/<name>`, which is what
//!   makes `limit`/`continue` pagination ordered by namespace then name.
//!   Lookups are O(log n); everything sits behind one `std::sync::Mutex`.
//! * Every write appends an event to a bounded history (the watch cache) and
//!   broadcasts it while the lock is held, so watchers see writes in
//!   resourceVersion order without gaps.
//! * A write that changes nothing is not a write: no new resourceVersion, no
//!   event (as `GuaranteedUpdate` skips unchanged objects).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::defaults;
use super::pagination::Continue;
use super::quota::{self, Quota};
use super::resource::Resource;
use super::selector::Selectors;
use super::status::{ApiError, FieldError};
use super::validation;

/// (namespace, name)
pub type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as the watch cache keeps it: the new object (for
/// DELETED, the last state stamped with the deletion's resourceVersion, as
/// etcd reports deletes) and the previous object, which the watch filter
/// needs to turn selector transitions into ADDED/DELETED.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub resource: Resource,
    pub key: Key,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl Event {
    /// The object serialized once, on first use, and shared by all watchers.
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
    }
}

/// Sizes of the store's buffers.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Events kept for watches that resume from a resourceVersion.
    pub history: usize,
    /// Events a slow watcher may fall behind before its watch is closed.
    pub broadcast: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            // ~15 KB per event (pod JSON tree + its serialized form): 20k
            // events cost ~300 MB; 10k pods with ~5 writes each fill it.
            history: 20_000,
            // Smaller than the history, so that a watcher closed for lagging
            // can resume from its resourceVersion instead of relisting. The
            // ring also keeps its last events alive, so it bounds memory too.
            broadcast: 8_192,
        }
    }
}

/// `DeleteOptions.preconditions` (also used for updates).
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// The options of a DELETE. Propagation is always Background (dependents
/// are deleted by the garbage collector after the owner is gone): Kiln asks
/// for nothing else, and the server refuses the other policies.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub preconditions: Preconditions,
}

/// What a DELETE did.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// Graceful deletion started (or was already pending): it still exists,
    /// with `deletionTimestamp` set.
    Pending(Arc<Value>),
    /// The object is gone; this is its last state.
    Removed(Arc<Value>),
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: only status (and labels/annotations) change.
    Status,
    /// Control-plane writes (scheduler binding): anything but identity.
    Internal,
}

/// Work for the garbage collector: an owner was removed.
#[derive(Debug, Clone)]
pub struct GcWork {
    pub owner_uid: String,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// `resourceVersion` unset or "0": synthetic ADDED events for the current
    /// state, then changes.
    Current,
    /// Changes after this resourceVersion, replayed from history.
    After(u64),
}

/// A registered watch: its receiver, subscribed under the store lock so that
/// `initial`/`replay` and the live events neither overlap nor leave a gap.
pub struct WatchInit {
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// The store's resourceVersion when the watch was registered.
    pub rv: u64,
    /// Current objects of the resource in the namespace (for `Current`).
    pub initial: Vec<Arc<Value>>,
    /// History events after the requested resourceVersion (for `After`).
    pub replay: Vec<Arc<Event>>,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Arc<Value>>,
    pub rv: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

struct Inner {
    rv: u64,
    pods: BTreeMap<Key, Arc<Value>>,
    configmaps: BTreeMap<Key, Arc<Value>>,
    uids: HashMap<String, (Resource, Key)>,
    /// owner uid -> objects naming it in `ownerReferences`
    dependents: HashMap<String, BTreeSet<(Resource, Key)>>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// Watches may resume from any resourceVersion >= floor (the real
    /// watch cache's `oldest - 1`).
    floor: u64,
    namespaces: BTreeSet<String>,
    kubelet: Option<mpsc::UnboundedSender<Arc<Event>>>,
    gc: Option<mpsc::UnboundedSender<GcWork>>,
    /// ResourceQuota (pods) per namespace.
    quotas: BTreeMap<String, Quota>,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("rv", &self.current_rv())
            .finish_non_exhaustive()
    }
}

/// `metav1.Time` format: RFC 3339, second precision, UTC.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn rfc3339_after(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random version-4 UUID, like the uids the API server assigns.
pub fn new_uid() -> String {
    let a: u128 = rand::random();
    let a = (a & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{a:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// Equal apart from `metadata.resourceVersion`? (Without cloning: this runs
/// on every write.)
fn same_content(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let empty = serde_json::Map::new();
    let meta = |o: &serde_json::Map<String, Value>| -> serde_json::Map<String, Value> {
        o.get("metadata")
            .and_then(Value::as_object)
            .unwrap_or(&empty)
            .clone()
    };
    let keys_equal = a.len() == b.len()
        && a.iter()
            .all(|(k, v)| k == "metadata" || b.get(k) == Some(v));
    if !keys_equal || a.contains_key("metadata") != b.contains_key("metadata") {
        return false;
    }
    let (mut ma, mut mb) = (meta(a), meta(b));
    ma.remove("resourceVersion");
    mb.remove("resourceVersion");
    ma == mb
}

fn random_suffix() -> String {
    // `utilrand.String(5)` uses this alphabet (no vowels, no confusable digits).
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(CHARS[rand::random_range(0..CHARS.len())]))
        .collect()
}

impl Inner {
    fn map(&self, r: Resource) -> &BTreeMap<Key, Arc<Value>> {
        match r {
            Resource::ConfigMaps => &self.configmaps,
            _ => &self.pods,
        }
    }

    fn map_mut(&mut self, r: Resource) -> &mut BTreeMap<Key, Arc<Value>> {
        match r {
            Resource::ConfigMaps => &mut self.configmaps,
            _ => &mut self.pods,
        }
    }

    fn record(&mut self, tx: &broadcast::Sender<Arc<Event>>, ev: Event) {
        let ev = Arc::new(ev);
        if self.history.len() >= self.history_cap
            && let Some(old) = self.history.pop_front()
        {
            self.floor = self.floor.max(old.rv);
        }
        self.history.push_back(ev.clone());
        if ev.resource == Resource::Pods
            && let Some(k) = &self.kubelet
        {
            let _ = k.send(ev.clone());
        }
        // No receivers is fine: nobody watches.
        let _ = tx.send(ev);
    }

    fn index_owners(&mut self, r: Resource, key: &Key, old: Option<&Value>, new: Option<&Value>) {
        let old_uids = old.map(owner_uids).unwrap_or_default();
        let new_uids = new.map(owner_uids).unwrap_or_default();
        for u in &old_uids {
            if !new_uids.contains(u)
                && let Some(set) = self.dependents.get_mut(u)
            {
                set.remove(&(r, key.clone()));
                if set.is_empty() {
                    self.dependents.remove(u);
                }
            }
        }
        for u in new_uids {
            self.dependents
                .entry(u)
                .or_default()
                .insert((r, key.clone()));
        }
    }

    fn put(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        r: Resource,
        key: Key,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        set_rv(&mut obj, rv);
        let obj = Arc::new(obj);
        self.index_owners(r, &key, prev.as_deref(), Some(&obj));
        if prev.is_none()
            && let Some(uid) = meta_str(&obj, "uid")
        {
            self.uids.insert(uid.to_owned(), (r, key.clone()));
        }
        self.namespaces.insert(key.0.clone());
        self.map_mut(r).insert(key.clone(), obj.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(
            tx,
            Event {
                rv,
                kind,
                resource: r,
                key,
                object: obj.clone(),
                prev,
                json: OnceLock::new(),
            },
        );
        obj
    }

    fn remove(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        r: Resource,
        key: &Key,
    ) -> Option<Arc<Value>> {
        let prev = self.map_mut(r).remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        let mut last = (*prev).clone();
        set_rv(&mut last, rv);
        self.index_owners(r, key, Some(&prev), None);
        if let Some(uid) = meta_str(&prev, "uid") {
            self.uids.remove(uid);
            if self.dependents.contains_key(uid)
                && let Some(gc) = &self.gc
            {
                let _ = gc.send(GcWork {
                    owner_uid: uid.to_owned(),
                });
            }
        }
        self.record(
            tx,
            Event {
                rv,
                kind: EventType::Deleted,
                resource: r,
                key: key.clone(),
                object: Arc::new(last),
                prev: Some(prev.clone()),
                json: OnceLock::new(),
            },
        );
        Some(prev)
    }

    fn check_preconditions(
        r: Resource,
        name: &str,
        obj: &Value,
        pre: &Preconditions,
    ) -> Result<(), ApiError> {
        // Messages from `storage.Preconditions.Check`.
        if let Some(want) = &pre.uid {
            let have = meta_str(obj, "uid").unwrap_or_default();
            if want != have {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(want) = &pre.resource_version {
            let have = meta_str(obj, "resourceVersion").unwrap_or_default();
            if want != have {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The state at `rv` of the keys in `range`, rebuilt from the live map
    /// and the history (undoing newer events), as an etcd read at a past
    /// revision would return it.
    fn state_at(
        &self,
        r: Resource,
        rv: u64,
        ns: Option<&str>,
        from: &Key,
    ) -> Result<BTreeMap<Key, Arc<Value>>, ApiError> {
        let in_scope = |k: &Key| ns.is_none_or(|n| k.0 == n) && k >= from;
        let mut state: BTreeMap<Key, Arc<Value>> = self
            .map(r)
            .range(from.clone()..)
            .take_while(|(k, _)| ns.is_none_or(|n| k.0 == n))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if rv >= self.rv {
            return Ok(state);
        }
        if rv < self.floor {
            return Err(ApiError::expired(&format!(
                "too old resource version: {rv} ({})",
                self.floor
            )));
        }
        for ev in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if ev.resource != r || !in_scope(&ev.key) {
                continue;
            }
            match (&ev.kind, &ev.prev) {
                (EventType::Added, _) | (_, None) => {
                    state.remove(&ev.key);
                }
                (_, Some(prev)) => {
                    state.insert(ev.key.clone(), prev.clone());
                }
            }
        }
        Ok(state)
    }
}

impl Store {
    pub fn new(opts: StoreOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(opts.broadcast.max(16));
        Arc::new(Self {
            inner: Mutex::new(Inner {
                rv: 1,
                pods: BTreeMap::new(),
                configmaps: BTreeMap::new(),
                uids: HashMap::new(),
                dependents: HashMap::new(),
                history: VecDeque::new(),
                history_cap: opts.history.max(1),
                floor: 1,
                namespaces: BTreeSet::new(),
                kubelet: None,
                gc: None,
                quotas: BTreeMap::new(),
            }),
            events,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_kubelet(&self, tx: mpsc::UnboundedSender<Arc<Event>>) {
        self.lock().kubelet = Some(tx);
    }

    pub fn set_gc(&self, tx: mpsc::UnboundedSender<GcWork>) {
        self.lock().gc = Some(tx);
    }

    /// Sets (or with `None` removes) the pods ResourceQuota of `ns`.
    pub fn set_quota(&self, ns: &str, q: Option<Quota>) {
        let mut inner = self.lock();
        match q {
            Some(q) => inner.quotas.insert(ns.to_owned(), q),
            None => inner.quotas.remove(ns),
        };
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.lock().namespaces.iter().cloned().collect()
    }

    /// Forget the whole event history: any watch resuming from an older
    /// resourceVersion gets 410 Expired (as after a watch cache re-init or an
    /// etcd compaction).
    pub fn expire_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = inner.rv;
    }

    pub fn get(&self, r: Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .map(r)
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn uid_exists(&self, uid: &str) -> bool {
        self.lock().uids.contains_key(uid)
    }

    /// All objects of a resource, in one namespace or all.
    pub fn all(&self, r: Resource, ns: Option<&str>) -> Vec<Arc<Value>> {
        let inner = self.lock();
        inner
            .map(r)
            .iter()
            .filter(|(k, _)| ns.is_none_or(|n| k.0 == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Objects whose `ownerReferences` name this uid.
    pub fn dependents_of(&self, owner_uid: &str) -> Vec<(Resource, Key)> {
        self.lock()
            .dependents
            .get(owner_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Creates an object that has been decoded and defaulted by the caller.
    /// Fills the system fields (uid, creationTimestamp, resourceVersion,
    /// generation), resolves `generateName`, validates, stores.
    pub fn create(&self, r: Resource, ns: &str, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let Some(o) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request was not an object",
            ));
        };
        o.insert("kind".into(), json!(r.kind()));
        o.insert("apiVersion".into(), json!("v1"));
        let meta = o
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if let Some(req_ns) = meta.get("namespace").and_then(Value::as_str)
            && !req_ns.is_empty()
            && req_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
        {
            // etcd3 store.Create returns a plain error, hence a 500.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        meta.insert("namespace".into(), json!(ns));
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "generation",
        ] {
            meta.remove(f);
        }
        if r == Resource::Pods {
            defaults::pod_on_create(&mut obj);
        }
        let generate = meta_str(&obj, "generateName")
            .unwrap_or_default()
            .to_owned();
        let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
        let errs = validation::validate_create(r, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(r, &name, &errs));
        }
        let mut inner = self.lock();
        let name = if name.is_empty() {
            let prefix: String = generate
                .chars()
                .take(validation::MAX_GENERATED_PREFIX)
                .collect();
            let generated = format!("{prefix}{}", random_suffix());
            if let Some(e) = validation::dns1123_subdomain(&generated).first() {
                return Err(ApiError::invalid(
                    r,
                    &generated,
                    &[FieldError::invalid("metadata.generateName", &generate, e)],
                ));
            }
            obj["metadata"]["name"] = json!(generated);
            generated
        } else {
            name
        };
        // Quota admission runs before storage: a create over quota is
        // refused even when the name exists (no 409 then).
        if r == Resource::Pods
            && let Some(q) = inner.quotas.get(ns)
        {
            let now = jiff::Timestamp::now();
            let used = inner
                .pods
                .iter()
                .filter(|(k, v)| k.0 == ns && quota::counts(v, now))
                .count();
            quota::admit(q, used as u64, &name)?;
        }
        let key = (ns.to_owned(), name.clone());
        if inner.map(r).contains_key(&key) {
            return Err(ApiError::already_exists(r, &name));
        }
        let dangling: Vec<String> = owner_uids(&obj)
            .into_iter()
            .filter(|u| !inner.uids.contains_key(u))
            .collect();
        let created = inner.put(&self.events, r, key, obj, None);
        // An owner reference to an object that does not exist is dangling:
        // the garbage collector deletes the dependent.
        if let Some(gc) = &inner.gc {
            for owner_uid in dangling {
                let _ = gc.send(GcWork { owner_uid });
            }
        }
        Ok(created)
    }

    /// Read-modify-write of one object. `f` gets the current object and
    /// returns the wanted one; the store then restores what the subresource
    /// may not change, validates, and commits if anything changed.
    pub fn update(
        &self,
        r: Resource,
        ns: &str,
        name: &str,
        sub: Subresource,
        pre: &Preconditions,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let key = (ns.to_owned(), name.to_owned());
        let mut inner = self.lock();
        let current = inner
            .map(r)
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))?;
        Inner::check_preconditions(r, name, &current, pre)?;
        let mut new = f(&current)?;
        // `metadata.resourceVersion` in the body is an optimistic-concurrency
        // precondition (`the object has been modified` conflict).
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::conflict(
                r,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not an object",
            ));
        }
        new["kind"] = json!(r.kind());
        new["apiVersion"] = json!("v1");
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        if let Some(n) = meta_str(&new, "name")
            && n != name
        {
            return Err(ApiError::bad_request(&format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        // Identity and system fields are not writable.
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match current["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        if (r, sub) == (Resource::Pods, Subresource::Status) {
            // podStatusStrategy.PrepareForUpdate: spec and owner references
            // come from the old pod.
            new["spec"] = current.get("spec").cloned().unwrap_or(Value::Null);
            match current["metadata"].get("ownerReferences") {
                Some(v) => new["metadata"]["ownerReferences"] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove("ownerReferences");
                    }
                }
            }
        }
        if sub != Subresource::Internal {
            let errs = validation::validate_update(r, &new);
            if !errs.is_empty() {
                return Err(ApiError::invalid(r, name, &errs));
            }
        }
        if same_content(&current, &new) {
            return Ok(current);
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let grace_done = r != Resource::Pods
            || new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(0);
        let updated = inner.put(&self.events, r, key.clone(), new, Some(current));
        if deleting && grace_done {
            // The kubelet has finished a graceful deletion.
            inner.remove(&self.events, r, &key);
        }
        Ok(updated)
    }

    /// DELETE, modelled on `registry.Store.Delete` + `rest.BeforeDelete` and
    /// the pod strategy's `CheckGracefulDelete`: a pod bound to a node and
    /// not terminated is deleted gracefully (deletionTimestamp set, the
    /// kubelet removes it); an unscheduled or finished pod, or a grace period
    /// of 0, removes it at once. (Kiln sets no finalizers, and the server
    /// refuses objects that have some.)
    pub fn delete(
        &self,
        r: Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let key = (ns.to_owned(), name.to_owned());
        let mut inner = self.lock();
        let current = inner
            .map(r)
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))?;
        Inner::check_preconditions(r, name, &current, &opts.preconditions)?;
        let mut period = 0;
        if r == Resource::Pods {
            period = opts.grace_period_seconds.unwrap_or_else(|| {
                current
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            });
            let node = current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let phase = current
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
                period = 0;
            }
            if period < 0 {
                period = 1;
            }
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            let current_period = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if current_period == 0 || opts.grace_period_seconds == Some(0) {
                let last = inner.remove(&self.events, r, &key).unwrap_or(current);
                return Ok(Deleted::Removed(last));
            }
            // Only a shorter grace period may be given while one is pending.
            if let Some(p) = opts.grace_period_seconds
                && p < current_period
            {
                let mut new = (*current).clone();
                new["metadata"]["deletionGracePeriodSeconds"] = json!(p);
                new["metadata"]["deletionTimestamp"] = json!(rfc3339_after(p));
                let updated = inner.put(&self.events, r, key, new, Some(current));
                return Ok(Deleted::Pending(updated));
            }
            return Ok(Deleted::Pending(current));
        }
        if period > 0 {
            let mut new = (*current).clone();
            new["metadata"]["deletionTimestamp"] = json!(rfc3339_after(period));
            new["metadata"]["deletionGracePeriodSeconds"] = json!(period);
            // BeforeDelete bumps the generation of a graceful deletion.
            let g = new
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
            let updated = inner.put(&self.events, r, key, new, Some(current));
            return Ok(Deleted::Pending(updated));
        }
        let last = inner.remove(&self.events, r, &key).unwrap_or(current);
        Ok(Deleted::Removed(last))
    }

    /// One page of a list. Every page is served from the state at the first
    /// page's resourceVersion (carried in the continue token), rebuilt from
    /// the event history, so pagination is as consistent as on etcd; a token
    /// older than the history gets 410 like a compacted revision.
    pub fn list(
        &self,
        r: Resource,
        ns: Option<&str>,
        sel: &Selectors,
        limit: Option<usize>,
        cont: Option<&Continue>,
    ) -> Result<ListPage, ApiError> {
        let inner = self.lock();
        let (rv, from) = match cont {
            Some(c) => (c.rv, c.start.clone()),
            None => (inner.rv, (ns.unwrap_or_default().to_owned(), String::new())),
        };
        if rv > inner.rv {
            return Err(ApiError::too_large_resource_version(rv, inner.rv));
        }
        if cont.is_some() && rv < inner.floor && rv < inner.rv {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue token \
                 in this response to retrieve the remainder of the results. Continuing with the provided \
                 token results in an inconsistent list - objects that were created, modified, or deleted \
                 between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        let state;
        let iter: Box<dyn Iterator<Item = (&Key, &Arc<Value>)>> = if rv == inner.rv {
            Box::new(
                inner
                    .map(r)
                    .range((Bound::Included(from), Bound::Unbounded))
                    .take_while(move |(k, _)| ns.is_none_or(|n| k.0 == n)),
            )
        } else {
            state = inner.state_at(r, rv, ns, &from)?;
            Box::new(state.iter())
        };
        let limit = limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut matching = iter.filter(|(_, v)| sel.matches(v));
        let mut continue_token = None;
        let mut remaining = None;
        for (k, v) in matching.by_ref() {
            if limit.is_some_and(|l| items.len() >= l) {
                continue_token = Some(
                    Continue {
                        rv,
                        start: k.clone(),
                    }
                    .encode(),
                );
                // remainingItemCount is only known for unfiltered lists.
                if sel.labels.is_empty() {
                    remaining = Some(1 + matching.count() as u64);
                }
                break;
            }
            items.push(v.clone());
        }
        Ok(ListPage {
            items,
            rv,
            continue_token,
            remaining,
        })
    }

    /// Registers a watch. Fails with 410 Expired when `After(rv)` is older
    /// than the history, as the watch cache does (`too old resource version`).
    pub fn begin_watch(
        &self,
        r: Resource,
        ns: Option<&str>,
        start: WatchStart,
    ) -> Result<WatchInit, ApiError> {
        let inner = self.lock();
        let rx = self.events.subscribe();
        match start {
            WatchStart::Current => Ok(WatchInit {
                rx,
                rv: inner.rv,
                initial: inner
                    .map(r)
                    .iter()
                    .filter(|(k, _)| ns.is_none_or(|n| k.0 == n))
                    .map(|(_, v)| v.clone())
                    .collect(),
                replay: Vec::new(),
            }),
            WatchStart::After(from) => {
                if from < inner.floor {
                    return Err(ApiError::expired(&format!(
                        "too old resource version: {from} ({})",
                        inner.floor
                    )));
                }
                let skip = inner.history.partition_point(|e| e.rv <= from);
                let replay = inner
                    .history
                    .range(skip..)
                    .filter(|e| e.resource == r && ns.is_none_or(|n| e.key.0 == n))
                    .cloned()
                    .collect();
                Ok(WatchInit {
                    rx,
                    rv: inner.rv,
                    initial: Vec::new(),
                    replay,
                })
            }
        }
    }
}
