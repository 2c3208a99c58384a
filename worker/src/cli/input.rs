//! Request files: JSON or YAML, from a path or standard input, decoded to
//! the JSON that goes on the wire and validated by `kiln-protocol`.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use kiln_protocol::{
    BuildRequest, CancelRequest, ROOT_PATH, ValidationError, parse_build_request,
    parse_cancel_request,
};
use serde_json::Value;

/// The file name that means standard input.
pub const STDIN: &str = "-";

/// Largest file read: well above the wire limit, so that an oversized
/// request is reported as such, but bounded.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A file's bytes and the name to report problems under.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub bytes: Vec<u8>,
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
    /// Decided by the first character: `{` or `[` is JSON, anything else YAML.
    Sniff,
}

impl Source {
    /// Reads `path`, or standard input for `-`.
    pub fn read(path: &str) -> anyhow::Result<Self> {
        let mut bytes = Vec::new();
        let (name, format) = if path == STDIN {
            std::io::stdin()
                .take(MAX_FILE_BYTES)
                .read_to_end(&mut bytes)
                .context("cannot read standard input")?;
            ("<stdin>".to_owned(), Format::Sniff)
        } else {
            let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
            file.take(MAX_FILE_BYTES)
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {path}"))?;
            let format = match Path::new(path)
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("json") => Format::Json,
                Some("yaml" | "yml") => Format::Yaml,
                _ => Format::Sniff,
            };
            (path.to_owned(), format)
        };
        Ok(Self {
            name,
            bytes,
            format,
        })
    }

    /// A source from memory (tests).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            bytes,
            format: Format::Sniff,
        }
    }

    fn is_json(&self) -> bool {
        match self.format {
            Format::Json => true,
            Format::Yaml => false,
            Format::Sniff => matches!(
                self.bytes.iter().find(|b| !b.is_ascii_whitespace()),
                Some(b'{' | b'[')
            ),
        }
    }

    /// Decodes the file to JSON. YAML that does not parse is reported here;
    /// JSON that does not parse is left to the validator, whose message has
    /// the line and column.
    pub fn decode(&self) -> Result<Document, Vec<ValidationError>> {
        if self.is_json() {
            return Ok(Document {
                value: serde_json::from_slice(&self.bytes).ok(),
                bytes: self.bytes.clone(),
                verbatim: true,
            });
        }
        let value: Value = serde_saphyr::from_slice(&self.bytes).map_err(|e| {
            vec![ValidationError::new(
                ROOT_PATH,
                format!("not valid YAML: {}", first_line(&e.to_string())),
            )]
        })?;
        let bytes = serde_json::to_vec(&value).map_err(|e| {
            vec![ValidationError::new(
                ROOT_PATH,
                format!("cannot be written as JSON: {e}"),
            )]
        })?;
        Ok(Document {
            value: Some(value),
            bytes,
            verbatim: false,
        })
    }
}

/// A request file to publish or plan: the name its problems are reported
/// under and its document, or every problem found decoding it.
#[derive(Debug)]
pub struct RequestFile {
    pub name: String,
    pub decoded: Result<Document, Vec<ValidationError>>,
}

impl RequestFile {
    /// Reads and decodes `path` (`-`: standard input).
    pub fn read(path: &str) -> anyhow::Result<Self> {
        let source = Source::read(path)?;
        let name = if path == STDIN {
            source.name.clone()
        } else {
            path.to_owned()
        };
        let decoded = source.decode();
        Ok(Self { name, decoded })
    }
}

/// A request document as JSON.
#[derive(Debug, Clone)]
pub struct Document {
    /// The parsed document, when it is JSON at all.
    pub value: Option<Value>,
    /// What is validated and published.
    pub bytes: Vec<u8>,
    /// Whether `bytes` are the user's own text, so that the line and column
    /// in the validator's messages point into the file.
    verbatim: bool,
}

/// A valid request of either kind.
#[derive(Debug, Clone)]
pub enum Request {
    Build(Box<BuildRequest>),
    Cancel(CancelRequest),
}

impl Document {
    /// The top-level `id`, if the document is an object that has one.
    pub fn id(&self) -> Option<&Value> {
        self.value.as_ref()?.as_object()?.get("id")
    }

    /// The top-level `kind`, when it is a string.
    pub fn kind(&self) -> Option<&str> {
        self.value.as_ref()?.get("kind")?.as_str()
    }

    /// Sets the top-level `id` (when the document is an object) and
    /// re-encodes the document.
    pub fn set_id(&mut self, id: &str) {
        let Some(Value::Object(map)) = &mut self.value else {
            return;
        };
        map.insert("id".to_owned(), Value::String(id.to_owned()));
        if let Some(v) = &self.value
            && let Ok(bytes) = serde_json::to_vec(v)
        {
            self.bytes = bytes;
            self.verbatim = false;
        }
    }

    /// Sets the id to `id` (`--id`) or, when there is none and the
    /// document names none, to a fresh ULID, which it returns.
    pub fn assign_id(&mut self, id: Option<&str>) -> Option<String> {
        if let Some(id) = id {
            self.set_id(id);
            None
        } else if self.id().is_none() {
            let fresh = ulid::Ulid::new().to_string();
            self.set_id(&fresh);
            Some(fresh)
        } else {
            None
        }
    }

    /// Validates the document as a build request.
    pub fn build_request(&self) -> Result<BuildRequest, Vec<ValidationError>> {
        parse_build_request(&self.bytes).map_err(|e| self.clean(e.errors()))
    }

    /// Validates the document as the request its `kind` names (a build
    /// request unless it says `CancelRequest`).
    pub fn request(&self) -> Result<Request, Vec<ValidationError>> {
        if self.kind() == Some(kiln_protocol::CANCEL_REQUEST_KIND) {
            parse_cancel_request(&self.bytes)
                .map(Request::Cancel)
                .map_err(|e| self.clean(e.errors()))
        } else {
            self.build_request().map(|r| Request::Build(Box::new(r)))
        }
    }

    /// Drops positions that point into text the user never wrote (YAML
    /// converted to JSON, or a document re-encoded to set its id).
    fn clean(&self, mut errs: Vec<ValidationError>) -> Vec<ValidationError> {
        if !self.verbatim {
            for e in &mut errs {
                e.reason = strip_position(&e.reason);
            }
        }
        errs
    }
}

/// The first line of a parser message (YAML errors add a source snippet).
fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(s);
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// `... at line 3 column 7` → `...`.
fn strip_position(reason: &str) -> String {
    if let Some((head, tail)) = reason.rsplit_once(" at line ") {
        let mut parts = tail.split(' ');
        let ok = matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(l), Some("column"), Some(c), None)
                if l.chars().all(|c| c.is_ascii_digit()) && c.chars().all(|c| c.is_ascii_digit())
        );
        if ok {
            return head.to_owned();
        }
    }
    reason.to_owned()
}

/// Prints every problem as `file: path: reason`.
pub fn print_problems(
    out: &mut impl std::io::Write,
    name: &str,
    errs: &[ValidationError],
) -> std::io::Result<()> {
    for e in errs {
        writeln!(out, "{name}: {}: {}", e.path, super::fold(&e.reason))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const YAML: &str = "
apiVersion: kiln/v1
kind: BuildRequest
id: b-1
images:
  - name: api
    context:
      git: { url: https://github.com/acme/cart.git, ref: refs/heads/main }
    destinations: [registry.example.com/shop/cart-api:1.2.3]
";

    #[test]
    fn yaml_is_decoded() {
        let doc = Source::from_bytes("x", YAML.as_bytes().to_vec())
            .decode()
            .unwrap();
        let req = doc.build_request().unwrap();
        assert_eq!(req.id, "b-1");
        assert_eq!(req.images.len(), 1);
    }

    #[test]
    fn set_id_overrides() {
        let mut doc = Source::from_bytes("x", YAML.as_bytes().to_vec())
            .decode()
            .unwrap();
        doc.set_id("other");
        assert_eq!(doc.build_request().unwrap().id, "other");
    }

    #[test]
    fn bad_yaml_is_one_problem_at_root() {
        let errs = Source::from_bytes("x", b"a: [1, 2\nb: {".to_vec())
            .decode()
            .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "$");
        assert!(!errs[0].reason.contains('\n'));
    }

    #[test]
    fn json_errors_keep_positions_when_verbatim() {
        let doc = Source::from_bytes("x", b"{\"apiVersion\": \"kiln/v1\",".to_vec())
            .decode()
            .unwrap();
        let errs = doc.build_request().unwrap_err();
        assert!(errs[0].reason.contains("line 1"), "{errs:?}");
    }

    #[test]
    fn positions() {
        assert_eq!(
            strip_position("unknown field `x` at line 3 column 7"),
            "unknown field `x`"
        );
        assert_eq!(strip_position("at line 3 is fine"), "at line 3 is fine");
    }
}
