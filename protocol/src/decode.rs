//! Bytes off the queue to validated requests.
//!
//! Decoding runs in steps so that the error says what is actually wrong:
//! size; JSON syntax; `apiVersion` and `kind` (a request of another version
//! or kind should be told so, not drowned in "unknown field" errors about a
//! shape it never meant to have); the typed decode, with the JSON path of the
//! first structural problem; then semantic validation, which reports every
//! problem at once.
//!
//! Structural problems (unknown field, wrong type, missing field) come one
//! at a time, because serde stops at the first; semantic ones all at once.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::bounded::bounded;
use crate::cancel::{CANCEL_REQUEST_KIND, CancelRequest};
use crate::limits::{API_VERSION, MAX_IMAGES, MAX_REASON_BYTES, MAX_REQUEST_BYTES};
use crate::request::{BUILD_REQUEST_KIND, BuildRequest};
use crate::validate::{
    ROOT_PATH, ValidationError, ValidationErrors, field, is_identifier, is_valid_build_id, quote,
};

/// Why bytes from the queue are not a request Kiln will act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("$: the request is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The text of the JSON parser's error, with line and column.
    #[error("$: the request is not valid JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Invalid(ValidationErrors),
}

impl DecodeError {
    /// The problems as path/reason pairs; never empty. Whole-document
    /// problems (size, syntax) have the path `$`. At most
    /// [`MAX_PROBLEMS`](crate::MAX_PROBLEMS), then one
    /// [`ValidationError::more`] (`$: … and N more problems`) counting the
    /// rest: what a rejection reports.
    pub fn errors(&self) -> Vec<ValidationError> {
        match self {
            DecodeError::TooLarge { size, limit } => vec![ValidationError::new(
                ROOT_PATH,
                format!("the request is {size} bytes; the limit is {limit}"),
            )],
            DecodeError::NotJson(msg) => vec![ValidationError::new(
                ROOT_PATH,
                format!("the request is not valid JSON: {msg}"),
            )],
            DecodeError::Invalid(errs) if errs.is_empty() => {
                vec![ValidationError::new(ROOT_PATH, "the request is invalid")]
            }
            DecodeError::Invalid(errs) => errs.to_vec(),
        }
    }
}

impl From<ValidationErrors> for DecodeError {
    fn from(e: ValidationErrors) -> Self {
        DecodeError::Invalid(e)
    }
}

/// Size check, JSON decode, apiVersion/kind check, then [`BuildRequest::validate`].
pub fn parse_build_request(bytes: &[u8]) -> Result<BuildRequest, DecodeError> {
    let req: BuildRequest = decode(bytes, BUILD_REQUEST_KIND)?;
    req.validate()?;
    Ok(req)
}

/// Size check, JSON decode, apiVersion/kind check, then [`CancelRequest::validate`].
pub fn parse_cancel_request(bytes: &[u8]) -> Result<CancelRequest, DecodeError> {
    let req: CancelRequest = decode(bytes, CANCEL_REQUEST_KIND)?;
    req.validate()?;
    Ok(req)
}

/// The top-level `id` of a message, when it is a JSON object whose `id` is a
/// valid build id, whatever else is wrong with it, so that a rejected
/// request can still be answered with a `build.rejected` event its publisher
/// can correlate. Other fields are skipped without being stored, so this is
/// cheap even on oversized input.
pub fn readable_id(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    // A struct also deserialises from an array; only objects have an `id`.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let parsed: IdOnly = serde_json::from_slice(bytes).ok()?;
    parsed.id.filter(|id| is_valid_build_id(id))
}

/// serde's derived `Deserialize` also accepts a struct written as a JSON
/// array of its fields in order; the contract (and the schema) says objects,
/// so positional forms are refused before the typed decode sees them.
fn check_build_request_shape(errs: &mut ValidationErrors, v: &serde_json::Value) {
    fn no_array(errs: &mut ValidationErrors, path: &str, v: Option<&serde_json::Value>) {
        if let Some(serde_json::Value::Array(_)) = v {
            errs.push(path, "must be a JSON object, not an array");
        }
    }
    no_array(errs, "retry", v.get("retry"));
    let Some(images) = v.get("images").and_then(serde_json::Value::as_array) else {
        return;
    };
    // Past the limit the count alone refuses the request; checking each
    // image would let one message buy as much work as it likes.
    for (i, image) in images.iter().enumerate().take(MAX_IMAGES) {
        let p = crate::validate::index("images", i).to_string();
        no_array(errs, &p, Some(image));
        no_array(errs, &field(&p, "resources"), image.get("resources"));
        let cp = field(&p, "context");
        let context = image.get("context");
        no_array(errs, &cp, context);
        if let Some(c) = context {
            no_array(errs, &field(&cp, "git"), c.get("git"));
            no_array(errs, &field(&cp, "s3"), c.get("s3"));
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], want_kind: &str) -> Result<T, DecodeError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_REQUEST_BYTES,
        });
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(not_json)?;
    let Some(object) = value.as_object() else {
        return Err(invalid(
            ROOT_PATH,
            format!(
                "the request must be a JSON object, not {}",
                json_type(&value)
            ),
        ));
    };
    let mut errs = ValidationErrors::default();
    check_header_value(
        &mut errs,
        "apiVersion",
        object.get("apiVersion"),
        API_VERSION,
    );
    check_header_value(&mut errs, "kind", object.get("kind"), want_kind);
    if !errs.is_empty() {
        return Err(DecodeError::Invalid(errs));
    }
    if want_kind == BUILD_REQUEST_KIND {
        check_build_request_shape(&mut errs, &value);
        if !errs.is_empty() {
            return Err(DecodeError::Invalid(errs));
        }
    }

    // Decode from the bytes rather than the `Value`, so errors keep their
    // line and column and duplicate keys are still caught.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = render_path(e.path());
            let inner = e.into_inner();
            if inner.classify() == Category::Data {
                Err(invalid(&path, data_reason(&inner)))
            } else {
                Err(not_json(inner))
            }
        }
    }
}

/// The parser's message, bounded: serde quotes what it could not read.
#[allow(clippy::needless_pass_by_value)] // a `map_err` target
fn not_json(e: serde_json::Error) -> DecodeError {
    DecodeError::NotJson(bounded(&e.to_string(), MAX_REASON_BYTES).into_owned())
}

fn invalid(path: &str, reason: String) -> DecodeError {
    DecodeError::Invalid(ValidationErrors::from(vec![ValidationError::new(
        path, reason,
    )]))
}

fn check_header_value(
    errs: &mut ValidationErrors,
    name: &str,
    value: Option<&serde_json::Value>,
    want: &str,
) {
    match value {
        None => errs.push(name, format!("is required; set it to \"{want}\"")),
        Some(serde_json::Value::String(s)) if s == want => {}
        Some(serde_json::Value::String(s)) if name == "kind" => errs.push(
            name,
            format!("{} is not valid here; use \"{want}\"", quote(s)),
        ),
        Some(serde_json::Value::String(s)) => errs.push(
            name,
            format!("{} is not supported; use \"{want}\"", quote(s)),
        ),
        Some(other) => errs.push(
            name,
            format!("must be the string \"{want}\", not {}", json_type(other)),
        ),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde's message with the position, which helps with large documents
/// (`unknown field `contxt`, expected one of ... at line 7 column 15`).
fn data_reason(e: &serde_json::Error) -> String {
    e.to_string()
}

/// serde_path_to_error's path in this crate's notation (see
/// [`ValidationError`]): `.key` for identifiers, `["key"]` otherwise, `$` for
/// the root.
fn render_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in p {
        match seg {
            Segment::Seq { index } => out = crate::validate::index(&out, *index).to_string(),
            Segment::Map { key } if is_identifier(key) => out = field(&out, key),
            Segment::Map { key } => out = crate::validate::key(&out, key).to_string(),
            Segment::Enum { variant } => out = field(&out, variant),
            Segment::Unknown => out = field(&out, "?"),
        }
    }
    if out.is_empty() {
        ROOT_PATH.to_owned()
    } else {
        out
    }
}
