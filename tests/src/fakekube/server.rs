//! HTTP routing and the REST handlers, with the paths, query parameters and
//! answers of the real API server for core/v1 pods and configmaps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::calls::{CallLog, CallRecord};
use super::faults::{Call, Faults};
use super::kubelet::Kubelet;
use super::logs::{self, LogQuery};
use super::pagination::Continue;
use super::resource::{Resource, Verb};
use super::selector::Selectors;
use super::status::{self, ApiError, FieldError};
use super::store::{DeleteOptions, Deleted, Preconditions, Store, Subresource};
use super::watch::{self, WatchRequest};

/// The real server's request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct App {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub calls: Arc<CallLog>,
    pub kubelet: Kubelet,
    pub bookmark_interval: Duration,
    pub shutdown: CancellationToken,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Version,
    Api,
    Apis,
    ApiV1,
    Collection {
        resource: Resource,
        ns: String,
    },
    Object {
        resource: Resource,
        ns: String,
        name: String,
    },
    Log {
        ns: String,
        name: String,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let res = Resource::from_plural;
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["api", "v1"] => Route::ApiV1,
        ["api", "v1", "namespaces", ns, r] => {
            res(r).map_or(Route::Unknown, |resource| Route::Collection {
                resource,
                ns: (*ns).to_owned(),
            })
        }
        ["api", "v1", "namespaces", ns, r, name] => {
            res(r).map_or(Route::Unknown, |resource| Route::Object {
                resource,
                ns: (*ns).to_owned(),
                name: (*name).to_owned(),
            })
        }
        ["api", "v1", "namespaces", ns, "pods", name, "log"] => Route::Log {
            ns: (*ns).to_owned(),
            name: (*name).to_owned(),
        },
        _ => Route::Unknown,
    }
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        self.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(&format!("invalid value {v:?} for query parameter {k}"))
                })
            })
            .transpose()
    }
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// A list item: the real server omits `kind`/`apiVersion` inside lists.
struct Item<'a>(&'a Value);

impl Serialize for Item<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in m {
                    if k != "kind" && k != "apiVersion" {
                        map.serialize_entry(k, v)?;
                    }
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    continue_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: ListMeta,
    items: Vec<Item<'a>>,
}

/// Decodes a body into the typed object and back, so unknown fields are
/// dropped and malformed objects are rejected as the real decoder does.
fn normalize(resource: Resource, body: Value) -> Result<Value, ApiError> {
    let kind = resource.kind();
    if let Some(k) = body.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != kind
    {
        return Err(ApiError::bad_request(&format!(
            "the API version in the data (v1) does not match the expected API version (v1) or kind {k} does not match {kind}"
        )));
    }
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(&format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
        ))
    };
    match resource {
        Resource::Pods => serde_json::from_value::<Pod>(body)
            .map_err(bad)
            .and_then(|p| serde_json::to_value(p).map_err(bad)),
        Resource::ConfigMaps => serde_json::from_value::<ConfigMap>(body)
            .map_err(bad)
            .and_then(|c| serde_json::to_value(c).map_err(bad)),
        Resource::Other => Ok(body),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(&format!(
            "the object provided is unrecognized (must be of type JSON): {e}"
        ))
    })
}

fn parse_rv(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>().map_err(|_| {
        ApiError::bad_request(&format!(
            "invalid resource version: strconv.ParseUint: parsing {v:?}: invalid syntax"
        ))
    })
}

fn selectors(p: &Params) -> Result<Selectors, ApiError> {
    Selectors::parse(p.get("labelSelector"), p.get("fieldSelector"))
        .map_err(|e| ApiError::bad_request(&e))
}

/// The catch-all handler: routes, applies latency and faults, records the call.
pub(crate) async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let params = Params(
        Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map(|q| q.0)
            .unwrap_or_default(),
    );
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY).await;
    let r = route(uri.path());
    let (verb, resource, sub, ns, mut name) = describe(&r, &method, &params);
    if verb == Verb::Create
        && let Ok(b) = &body
    {
        // A create names its object in the body (audit logs do the same).
        name = created_name(b);
    }
    let resp = match body {
        Err(_) => ApiError::entity_too_large().into_response(),
        Ok(body) => {
            let latency = app.faults.latency();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let call = Call {
                verb,
                resource,
                name: name.as_deref(),
                user_agent: user_agent.as_deref(),
            };
            match app.faults.check(&call) {
                Some(err) if verb != Verb::Other => err.into_response(),
                _ => handle(&app, r, &method, &params, content_type.as_deref(), &body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
            }
        }
    };
    app.calls.push(CallRecord {
        verb,
        resource,
        subresource: sub,
        namespace: ns,
        name,
        status: resp.status().as_u16(),
    });
    resp
}

/// `metadata.name` (or `generateName`) of a create's body.
fn created_name(body: &Bytes) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        generate_name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        metadata: Option<Meta>,
    }
    let m = serde_json::from_slice::<Obj>(body).ok()?.metadata?;
    m.name.filter(|n| !n.is_empty()).or(m.generate_name)
}

type Described = (
    Verb,
    Resource,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn describe(r: &Route, method: &Method, p: &Params) -> Described {
    let by_method = |m: &Method| match *m {
        Method::GET => Verb::Get,
        Method::POST => Verb::Create,
        Method::DELETE => Verb::Delete,
        Method::PATCH => Verb::Patch,
        _ => Verb::Other,
    };
    match r {
        Route::Collection { resource, ns } => {
            let verb = match *method {
                Method::GET if p.flag("watch") => Verb::Watch,
                Method::GET => Verb::List,
                Method::POST => Verb::Create,
                _ => Verb::Other,
            };
            (verb, *resource, None, Some(ns.clone()), None)
        }
        Route::Object { resource, ns, name } => (
            by_method(method),
            *resource,
            None,
            Some(ns.clone()),
            Some(name.clone()),
        ),
        Route::Log { ns, name } => (
            Verb::Logs,
            Resource::Pods,
            Some("log".into()),
            Some(ns.clone()),
            Some(name.clone()),
        ),
        _ => (Verb::Other, Resource::Other, None, None, None),
    }
}

async fn handle(
    app: &App,
    r: Route,
    method: &Method,
    p: &Params,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if p.flag("dryRun") || p.get("dryRun").is_some_and(|v| v == "All") {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the fake API server",
        ));
    }
    match (r, method.clone()) {
        (Route::Version, Method::GET) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "fakekube",
                "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2",
                "compiler": "gc", "platform": "linux/amd64"
            }),
        )),
        (Route::Api, Method::GET) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.addr.to_string()}]
            }),
        )),
        (Route::Apis, Method::GET) => Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        )),
        (Route::ApiV1, Method::GET) => Ok(json_response(StatusCode::OK, &api_resources())),
        (Route::Collection { resource, ns }, Method::GET) => {
            if p.flag("watch") {
                watch(app, resource, ns, p).await
            } else {
                list(app, resource, &ns, p)
            }
        }
        (Route::Collection { resource, ns }, Method::POST) => {
            let obj = normalize(resource, parse_body(body)?)?;
            let created = app.store.create(resource, &ns, obj)?;
            Ok(json_response(StatusCode::CREATED, &*created))
        }
        (Route::Object { resource, ns, name }, Method::GET) => {
            let obj = app
                .store
                .get(resource, &ns, &name)
                .ok_or_else(|| ApiError::not_found(resource, &name))?;
            Ok(json_response(StatusCode::OK, &*obj))
        }
        (Route::Object { resource, ns, name }, Method::DELETE) => {
            delete(app, resource, &ns, &name, p, body)
        }
        (
            Route::Object {
                resource: Resource::Pods,
                ns,
                name,
            },
            Method::PATCH,
        ) => patch_annotations(app, &ns, &name, content_type, body),
        (Route::Log { ns, name }, Method::GET) => pod_log(app, &ns, &name, p),
        (Route::Unknown, _) => Err(ApiError::no_route()),
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A JSON merge patch (`application/merge-patch+json`) of a pod's
/// `metadata.annotations`: the one patch Kiln sends (it marks a cancelled
/// build's pods). Any other content type or field is refused, naming it,
/// so that a Kiln change that starts patching more fails its tests.
fn patch_annotations(
    app: &App,
    ns: &str,
    name: &str,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if content_type.map(|c| c.split(';').next().unwrap_or("").trim())
        != Some("application/merge-patch+json")
    {
        return Err(ApiError::bad_request(&format!(
            "the fake API server serves only merge patches (application/merge-patch+json) of \
             pod annotations, not {}",
            content_type.unwrap_or("a patch without a content type")
        )));
    }
    let patch = parse_body(body)?;
    let annotations = match &patch {
        Value::Object(top)
            if top.len() == 1
                && top.get("metadata").is_some_and(|m| {
                    m.as_object()
                        .is_some_and(|m| m.len() == 1 && m.contains_key("annotations"))
                }) =>
        {
            patch["metadata"]["annotations"].clone()
        }
        _ => {
            return Err(ApiError::bad_request(
                "the fake API server patches only metadata.annotations of a pod",
            ));
        }
    };
    let Value::Object(annotations) = annotations else {
        return Err(ApiError::bad_request(
            "metadata.annotations of a patch must be an object",
        ));
    };
    let updated = app.store.update(
        Resource::Pods,
        ns,
        name,
        Subresource::Status,
        &Preconditions::default(),
        |current| {
            let mut new = current.clone();
            if !new["metadata"]["annotations"].is_object() {
                new["metadata"]["annotations"] = json!({});
            }
            for (k, v) in annotations {
                if v.is_null() {
                    if let Some(a) = new["metadata"]["annotations"].as_object_mut() {
                        a.remove(&k);
                    }
                } else {
                    new["metadata"]["annotations"][k] = v;
                }
            }
            Ok(new)
        },
    )?;
    Ok(json_response(StatusCode::OK, &*updated))
}

/// The verbs served: Kiln creates, gets, lists, watches and deletes pods,
/// patches their annotations, creates ConfigMaps and reads logs; it never
/// updates.
fn api_resources() -> Value {
    let verbs = json!(["create", "delete", "get", "list", "watch"]);
    let pod_verbs = json!(["create", "delete", "get", "list", "patch", "watch"]);
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "verbs": verbs, "shortNames": ["cm"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": pod_verbs, "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}
        ]
    })
}

/// Query parameters Kiln never sends (kube-runtime's watcher sends them
/// only for streaming lists and exact-version lists, which Kiln does not
/// configure): refused, naming the parameter.
fn refuse_unsent(p: &Params) -> Result<(), ApiError> {
    for k in ["resourceVersionMatch", "sendInitialEvents"] {
        if p.get(k).is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request(&format!(
                "{k} is not served by the fake API server (Kiln does not send it)"
            )));
        }
    }
    Ok(())
}

fn list(app: &App, resource: Resource, ns: &str, p: &Params) -> Result<Response, ApiError> {
    refuse_unsent(p)?;
    let sel = selectors(p)?;
    let rv = p.get("resourceVersion").filter(|v| !v.is_empty());
    let cont = p.get("continue").filter(|v| !v.is_empty());
    let limit = p
        .int("limit")?
        .filter(|l| *l > 0)
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    // ValidateListOptions / the continue rules of the storage layer.
    if cont.is_some() && rv.is_some_and(|v| v != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    // Without resourceVersionMatch, any resourceVersion means "not older
    // than", and this store is always at its latest.
    if let Some(v) = rv {
        parse_rv(v)?;
    }
    let cont = cont
        .map(Continue::decode)
        .transpose()
        .map_err(|e| ApiError::bad_request(&e))?;
    let page = app
        .store
        .list(resource, Some(ns), &sel, limit, cont.as_ref())?;
    let body = ListBody {
        kind: resource.list_kind(),
        api_version: "v1",
        metadata: ListMeta {
            resource_version: page.rv.to_string(),
            continue_: page.continue_token,
            remaining_item_count: page.remaining,
        },
        items: page.items.iter().map(|i| Item(i)).collect(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn watch(
    app: &App,
    resource: Resource,
    ns: String,
    p: &Params,
) -> Result<Response, ApiError> {
    refuse_unsent(p)?;
    let selectors = selectors(p)?;
    let bookmarks = p.flag("allowWatchBookmarks");
    let resource_version = match p.get("resourceVersion").filter(|v| !v.is_empty()) {
        None | Some("0") => None,
        Some(v) => Some(parse_rv(v)?),
    };
    // Without timeoutSeconds the real server picks 30-60 minutes.
    let timeout = p
        .int("timeoutSeconds")?
        .filter(|t| *t > 0)
        .map_or(1800, i64::unsigned_abs);
    let req = WatchRequest {
        resource,
        namespace: ns,
        selectors,
        resource_version,
        allow_bookmarks: bookmarks,
        timeout: Duration::from_secs(timeout),
    };
    Ok(watch::serve(
        app.store.clone(),
        req,
        app.faults.watch_closer(),
        app.bookmark_interval,
        app.shutdown.clone(),
    )
    .await)
}

fn delete(
    app: &App,
    resource: Resource,
    ns: &str,
    name: &str,
    p: &Params,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let mut opts = DeleteOptions {
        grace_period_seconds: p.int("gracePeriodSeconds")?,
        ..DeleteOptions::default()
    };
    let mut propagation = p.get("propagationPolicy").map(str::to_owned);
    let mut orphan = p.get("orphanDependents").map(|v| v == "true");
    if !body.is_empty() {
        let d: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions =
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(&format!(
                    "DeleteOptions in version \"v1\" cannot be handled: {e}"
                ))
            })?;
        if d.grace_period_seconds.is_some() {
            opts.grace_period_seconds = d.grace_period_seconds;
        }
        if let Some(pre) = d.preconditions {
            opts.preconditions = Preconditions {
                uid: pre.uid,
                resource_version: pre.resource_version,
            };
        }
        if d.propagation_policy.is_some() {
            propagation = d.propagation_policy;
        }
        if d.orphan_dependents.is_some() {
            orphan = d.orphan_dependents;
        }
    }
    if let Some(g) = opts.grace_period_seconds
        && g < 0
    {
        return Err(ApiError::invalid_kind(
            "DeleteOptions.meta.k8s.io",
            "",
            &[FieldError::invalid_int(
                "gracePeriodSeconds",
                g,
                "must be greater than or equal to 0",
            )],
        ));
    }
    // Kiln deletes with Background propagation; the others are refused
    // rather than imitated.
    let orphan_flag = orphan.map(|o| if o { "true" } else { "false" });
    match (propagation.as_deref(), orphan_flag) {
        (None | Some("Background"), None | Some("false")) => {}
        (p, o) => {
            return Err(ApiError::invalid_kind(
                "DeleteOptions.meta.k8s.io",
                "",
                &[FieldError::invalid(
                    "propagationPolicy",
                    &format!(
                        "{}{}",
                        p.unwrap_or_default(),
                        o.map(|o| format!(" (orphanDependents={o})"))
                            .unwrap_or_default()
                    ),
                    "only Background propagation is served by the fake API server (Kiln asks for nothing else)",
                )],
            ));
        }
    }
    match app.store.delete(resource, ns, name, &opts)? {
        Deleted::Pending(obj) => Ok(json_response(StatusCode::OK, &*obj)),
        // The pod registry returns the deleted object; other resources a
        // Success Status.
        Deleted::Removed(obj) if resource == Resource::Pods => {
            Ok(json_response(StatusCode::OK, &*obj))
        }
        Deleted::Removed(obj) => {
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::OK,
                &status::success(resource, name, uid),
            ))
        }
    }
}

fn pod_log(app: &App, ns: &str, name: &str, p: &Params) -> Result<Response, ApiError> {
    let pod = app
        .store
        .get(Resource::Pods, ns, name)
        .ok_or_else(|| ApiError::not_found(Resource::Pods, name))?;
    let q = LogQuery {
        container: p.get("container").map(str::to_owned),
        tail_lines: p.int("tailLines")?,
        limit_bytes: p.int("limitBytes")?,
        previous: p.flag("previous"),
        follow: p.flag("follow"),
    };
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let body = match logs::container(&pod, &q)? {
        Some(container) if q.follow => {
            // Streamed (chunked) until the container stops, as the kubelet
            // does; the changes receiver is taken before the first read so
            // that no write falls between the two.
            let changes = app.kubelet.log_changes();
            let (store, kubelet) = (app.store.clone(), app.kubelet.clone());
            let (ns, name) = (ns.to_owned(), name.to_owned());
            let read = move || {
                let pod = store.get(Resource::Pods, &ns, &name)?;
                (pod.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid.as_str()))
                    .then(|| ((*pod).clone(), kubelet.log_by_uid(&uid).unwrap_or_default()))
            };
            Body::from_stream(logs::follow(
                read,
                container,
                q,
                changes,
                app.shutdown.clone(),
            ))
        }
        _ => Body::from(logs::respond(
            &pod,
            app.kubelet.log_by_uid(&uid).as_deref(),
            &q,
        )?),
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/api/v1/namespaces/a/pods"),
            Route::Collection {
                resource: Resource::Pods,
                ns: "a".into()
            }
        );
        // Kiln lists and watches one namespace at a time.
        assert_eq!(route("/api/v1/pods"), Route::Unknown);
        assert_eq!(route("/api/v1/namespaces/a/pods/p/status"), Route::Unknown);
        assert_eq!(
            route("/api/v1/namespaces/a/pods/p/log"),
            Route::Log {
                ns: "a".into(),
                name: "p".into()
            }
        );
        assert_eq!(route("/api/v1/namespaces/a/secrets"), Route::Unknown);
        assert_eq!(route("/apis/batch/v1/jobs"), Route::Unknown);
    }
}
