//! `metav1.Status` error responses, shaped like the ones
//! `k8s.io/apimachinery/pkg/api/errors` builds (NewNotFound, NewAlreadyExists,
//! NewConflict, NewInvalid, NewBadRequest, NewResourceExpired, NewInternalError,
//! NewTooManyRequests, NewServiceUnavailable, NewTimeoutError,
//! NewMethodNotSupported), so kube-rs turns them into the same
//! `kube::Error::Api(Status)` it gets from a real cluster.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resource::Resource;

/// An API error: an HTTP status and the `Status` object sent as its body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub status: Value,
    /// `Retry-After` seconds (429, and 503/504 when the real server sets it).
    pub retry_after: Option<u64>,
}

/// One field problem of an `Invalid` (422) error, printed as
/// `<field>: <type>: <detail>` like `field.Error.Error()`.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`,
    /// `FieldValueTooLong`, `FieldValueNotSupported`.
    pub reason: &'static str,
    /// Text after the field name, e.g. `Invalid value: "X": must be ...`.
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }

    pub fn invalid_int(field: impl Into<String>, value: i64, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_owned()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message,
        }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {max} bytes"),
        }
    }

    fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn failure(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> ApiError {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    ApiError {
        code,
        status,
        retry_after: None,
    }
}

impl ApiError {
    /// `<resource> "<name>" not found`
    pub fn not_found(resource: Resource, name: &str) -> Self {
        failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} {name:?} not found", resource.plural()),
            Some(json!({"name": name, "kind": resource.plural()})),
        )
    }

    /// The real server's answer for a path it does not serve.
    pub fn no_route() -> Self {
        failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }

    /// `<resource> "<name>" already exists`
    pub fn already_exists(resource: Resource, name: &str) -> Self {
        failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} {name:?} already exists", resource.plural()),
            Some(json!({"name": name, "kind": resource.plural()})),
        )
    }

    /// `Operation cannot be fulfilled on <resource> "<name>": <why>`
    pub fn conflict(resource: Resource, name: &str, why: &str) -> Self {
        failure(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                resource.plural()
            ),
            Some(json!({"name": name, "kind": resource.plural()})),
        )
    }

    /// `<Kind> "<name>" is invalid: <errors>` (422). Several errors print as
    /// `[e1, e2]`, like `utilerrors.NewAggregate`.
    pub fn invalid(resource: Resource, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid_kind(resource.kind(), name, errors)
    }

    /// `Invalid` for a kind that is not a resource (e.g.
    /// `ListOptions.meta.k8s.io` for bad query parameters).
    pub fn invalid_kind(kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let rendered: Vec<String> = errors.iter().map(FieldError::render).collect();
        let joined = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("{kind} {name:?} is invalid: {joined}"),
            Some(json!({"name": name, "kind": kind, "causes": causes})),
        )
    }

    pub fn bad_request(message: &str) -> Self {
        failure(StatusCode::BAD_REQUEST, "BadRequest", message, None)
    }

    /// 410 `Expired`, e.g. `too old resource version: 5 (10)`.
    pub fn expired(message: &str) -> Self {
        failure(StatusCode::GONE, "Expired", message, None)
    }

    pub fn internal(message: &str) -> Self {
        failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("Internal error occurred: {message}"),
            Some(json!({"causes": [{"message": message}]})),
        )
    }

    /// `<resource> "<name>" is forbidden: <why>` (403), as
    /// `admission.NewForbidden` builds it (quota, Pod Security, RBAC).
    pub fn forbidden(resource: &str, name: &str, why: &str) -> Self {
        failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("{resource} {name:?} is forbidden: {why}"),
            Some(json!({"name": name, "kind": resource})),
        )
    }

    /// 429 as the API Priority and Fairness filter sends it, with
    /// `Retry-After: 1`.
    pub fn too_many_requests() -> Self {
        let mut e = failure(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests, please try again later.",
            Some(json!({"retryAfterSeconds": 1})),
        );
        e.retry_after = Some(1);
        e
    }

    pub fn service_unavailable() -> Self {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            None,
        )
    }

    /// 504 as the request timeout filter sends it.
    pub fn timeout() -> Self {
        failure(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            "Timeout: request did not complete within the allotted timeout",
            Some(json!({"retryAfterSeconds": 1})),
        )
    }

    /// What the watch cache answers for a resourceVersion it has not seen yet
    /// (`storage.NewTooLargeResourceVersionError`).
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        failure(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            &format!("Too large resource version: {requested}, current: {current}"),
            Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1
            })),
        )
    }

    pub fn method_not_allowed() -> Self {
        failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }

    pub fn entity_too_large() -> Self {
        failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
            None,
        )
    }

    /// A fault-injected error for the given HTTP status.
    pub fn for_status(code: u16) -> Self {
        match code {
            429 => Self::too_many_requests(),
            503 => Self::service_unavailable(),
            504 => Self::timeout(),
            500 => Self::internal("injected fault"),
            other => {
                let code = StatusCode::from_u16(other).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                failure(code, "InternalError", "injected fault", None)
            }
        }
    }
}

/// `Status` with `status: Success`, returned by DELETE for resources whose
/// store does not return the deleted object (ConfigMaps; pods return the pod).
pub fn success(resource: Resource, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": resource.plural(), "uid": uid}
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status).unwrap_or_default();
        let mut resp = (
            self.code,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
