//! Inline Dockerfile templates (`dockerfileInline` + `templateArgs`).
//!
//! A request may carry its Dockerfile as a Jinja template, rendered by the
//! worker with the image's `templateArgs`, the way SREWorks renders
//! `Dockerfile.tpl`. The template comes from a tenant, so rendering is
//! sandboxed and bounded:
//!
//! - strict about undefined names (`UndefinedBehavior::Strict`): a typo in a
//!   variable name is an error, never an empty string in the Dockerfile;
//! - no loader: `{% include %}`, `{% import %}` and `{% extends %}` find
//!   nothing, so a template cannot read files of the worker;
//! - no auto-escaping (a Dockerfile is not HTML);
//! - bounded input ([`MAX_TEMPLATE_BYTES`]), work ([`FUEL`]), recursion
//!   ([`RECURSION_LIMIT`]) and output ([`MAX_OUTPUT_BYTES`]).
//!
//! The trailing newline of the template is kept, so
//! `"FROM {{ base }}\n"` renders to a file that ends in a newline.
//!
//! Errors say plainly which line and which name or construct is at fault;
//! the caller reports them under `images[i].dockerfileInline`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

/// The largest template accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// The largest rendered Dockerfile, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;

/// The work budget of one rendering, in minijinja fuel (about one unit per
/// instruction executed, plus one per 64 bytes of data produced). A
/// realistic Dockerfile template uses a few hundred; a loop of a million
/// iterations runs out.
pub const FUEL: u64 = 1_000_000;

/// How deeply macros and nested blocks may recurse.
pub const RECURSION_LIMIT: usize = 64;

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The template itself is larger than [`MAX_TEMPLATE_BYTES`].
    #[error("template is {size} bytes, more than the limit of {limit} bytes")]
    TemplateTooLarge { size: usize, limit: usize },
    /// The template does not parse.
    #[error("{}syntax error: {message}", LinePrefix(*.line))]
    Syntax {
        line: Option<usize>,
        message: String,
    },
    /// The template uses a name that `templateArgs` does not define.
    #[error(
        "{}undefined value {name:?} (templateArgs has: {})",
        LinePrefix(*.line),
        ArgNames(.available)
    )]
    Undefined {
        line: Option<usize>,
        /// The expression that was undefined, e.g. `base_image` or `app.version`.
        name: String,
        /// The top-level names that `templateArgs` does define.
        available: Vec<String>,
    },
    /// The template did more work than [`FUEL`] allows (a runaway loop).
    #[error(
        "{}template does too much work (exceeded the budget of {limit} steps): avoid large loops and repetitions",
        LinePrefix(*.line)
    )]
    OutOfFuel { line: Option<usize>, limit: u64 },
    /// The rendered Dockerfile would exceed [`MAX_OUTPUT_BYTES`].
    #[error("rendered Dockerfile is larger than the limit of {limit} bytes")]
    OutputTooLarge { limit: usize },
    /// Any other evaluation error (unknown filter, bad operation, include of
    /// a template that does not exist, ...).
    #[error("{}{message}", LinePrefix(*.line))]
    Evaluation {
        line: Option<usize>,
        message: String,
    },
}

impl RenderError {
    /// The 1-based template line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            RenderError::Syntax { line, .. }
            | RenderError::Undefined { line, .. }
            | RenderError::OutOfFuel { line, .. }
            | RenderError::Evaluation { line, .. } => *line,
            RenderError::TemplateTooLarge { .. } | RenderError::OutputTooLarge { .. } => None,
        }
    }
}

struct LinePrefix(Option<usize>);

impl fmt::Display for LinePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, "line {line}: "),
            None => Ok(()),
        }
    }
}

struct ArgNames<'a>(&'a [String]);

impl fmt::Display for ArgNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}

/// Renders an inline Dockerfile template with its `templateArgs`.
pub fn render_dockerfile(
    template: &str,
    args: &BTreeMap<String, serde_json::Value>,
) -> Result<String, RenderError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(RenderError::TemplateTooLarge {
            size: template.len(),
            limit: MAX_TEMPLATE_BYTES,
        });
    }
    let env = environment()?;
    let tmpl = env
        .template_from_str(template)
        .map_err(|err| convert(&err, template, args))?;
    let mut out = BoundedWriter::new(MAX_OUTPUT_BYTES);
    let ctx = minijinja::Value::from(minijinja::value::Serde(args));
    match tmpl.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.buf).map_err(|_| RenderError::Evaluation {
            line: None,
            message: "rendered Dockerfile is not valid UTF-8".to_owned(),
        }),
        Err(_) if out.overflowed => Err(RenderError::OutputTooLarge {
            limit: MAX_OUTPUT_BYTES,
        }),
        Err(err) => Err(convert(&err, template, args)),
    }
}

fn environment() -> Result<Environment<'static>, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // No loader is set: includes, imports and extends find nothing.
    let syntax = SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .map_err(|err| RenderError::Evaluation {
            line: None,
            message: format!("template engine configuration: {err}"),
        })?;
    env.set_syntax(syntax);
    Ok(env)
}

/// Turns a minijinja error into a [`RenderError`] a user can act on.
fn convert(
    err: &minijinja::Error,
    template: &str,
    args: &BTreeMap<String, serde_json::Value>,
) -> RenderError {
    let line = err.line();
    let detail = err.detail().map(str::to_owned);
    match err.kind() {
        ErrorKind::SyntaxError => RenderError::Syntax {
            line,
            message: detail.unwrap_or_else(|| "invalid template".to_owned()),
        },
        ErrorKind::UndefinedError => RenderError::Undefined {
            line,
            name: undefined_name(err, template).unwrap_or_else(|| "?".to_owned()),
            available: args.keys().cloned().collect(),
        },
        ErrorKind::OutOfFuel => RenderError::OutOfFuel { line, limit: FUEL },
        ErrorKind::TemplateNotFound | ErrorKind::BadInclude => RenderError::Evaluation {
            line,
            message: "templates cannot include, import or extend other templates".to_owned(),
        },
        kind => RenderError::Evaluation {
            line,
            message: match detail {
                Some(detail) => format!("{kind}: {detail}"),
                None => kind.to_string(),
            },
        },
    }
}

/// The expression that was undefined: minijinja names it in the detail
/// ("`base_image` is undefined"); failing that, the source span of the error.
fn undefined_name(err: &minijinja::Error, template: &str) -> Option<String> {
    if let Some(detail) = err.detail()
        && let Some(start) = detail.find('`')
        && let Some(len) = detail[start + 1..].find('`')
    {
        return Some(detail[start + 1..start + 1 + len].to_owned());
    }
    let range = err.range()?;
    template
        .get(range)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An `io::Write` that accepts at most `limit` bytes and remembers whether
/// more were offered.
struct BoundedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl BoundedWriter {
    fn new(limit: usize) -> Self {
        BoundedWriter {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }
}

impl io::Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("rendered output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn args(pairs: &[(&str, serde_json::Value)]) -> BTreeMap<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn renders_the_design_example() {
        let out = render_dockerfile(
            "FROM {{ base_image }}\nCOPY . /app\n",
            &args(&[("base_image", json!("alpine:3.20"))]),
        )
        .unwrap();
        assert_eq!(out, "FROM alpine:3.20\nCOPY . /app\n");
    }

    #[test]
    fn renders_loops_conditions_filters_and_nested_args() {
        let tpl = "\
FROM {{ base.image }}:{{ base.tag | default('latest') }}
{% for pkg in packages -%}
RUN apk add --no-cache {{ pkg }}
{% endfor -%}
{% if verbose %}ENV DEBUG=1
{% endif -%}
LABEL version=\"{{ version | upper }}\" count=\"{{ packages | length }}\"
";
        let out = render_dockerfile(
            tpl,
            &args(&[
                ("base", json!({"image": "alpine"})),
                ("packages", json!(["git", "curl"])),
                ("verbose", json!(false)),
                ("version", json!("v1")),
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            "FROM alpine:latest\nRUN apk add --no-cache git\nRUN apk add --no-cache curl\nLABEL version=\"V1\" count=\"2\"\n"
        );
    }

    #[test]
    fn does_not_escape_html() {
        let out = render_dockerfile(
            "RUN echo {{ s }}",
            &args(&[("s", json!("<a href=\"x\">&</a>"))]),
        )
        .unwrap();
        assert_eq!(out, "RUN echo <a href=\"x\">&</a>");
    }

    #[test]
    fn a_template_without_variables_renders_verbatim() {
        let out = render_dockerfile("FROM scratch\n", &BTreeMap::new()).unwrap();
        assert_eq!(out, "FROM scratch\n");
    }

    #[test]
    fn undefined_variable_names_line_and_available_args() {
        let err = render_dockerfile("FROM {{ base_image }}\n", &args(&[("version", json!("1"))]))
            .unwrap_err();
        assert_eq!(
            err,
            RenderError::Undefined {
                line: Some(1),
                name: "base_image".to_owned(),
                available: vec!["version".to_owned()],
            }
        );
        assert_eq!(
            err.to_string(),
            "line 1: undefined value \"base_image\" (templateArgs has: version)"
        );
    }

    #[test]
    fn undefined_variable_on_a_later_line() {
        let err =
            render_dockerfile("FROM alpine\n\nRUN echo {{ msg }}\n", &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: undefined value \"msg\" (templateArgs has: nothing)"
        );
        assert_eq!(err.line(), Some(3));
    }

    #[test]
    fn undefined_attribute_is_named() {
        let err =
            render_dockerfile("FROM {{ base.tag }}\n", &args(&[("base", json!({}))])).unwrap_err();
        let RenderError::Undefined { name, .. } = &err else {
            panic!("expected Undefined, got {err:?}");
        };
        assert!(name.contains("tag"), "{err}");
    }

    #[test]
    fn undefined_in_a_condition_is_an_error_too() {
        let err = render_dockerfile("{% if verbose %}x{% endif %}", &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&err, RenderError::Undefined { name, .. } if name == "verbose"),
            "{err:?}"
        );
    }

    #[test]
    fn is_defined_test_still_works() {
        let out = render_dockerfile(
            "{% if verbose is defined %}verbose{% else %}quiet{% endif %}",
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(out, "quiet");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = render_dockerfile("FROM alpine\n{% for x in xs %}\nRUN x\n", &BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, RenderError::Syntax { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("syntax error"), "{msg}");
        assert!(msg.starts_with("line "), "{msg}");
    }

    #[test]
    fn unclosed_expression_is_a_syntax_error_on_its_line() {
        let err =
            render_dockerfile("FROM alpine\nRUN {{ x \n", &args(&[("x", json!(1))])).unwrap_err();
        assert!(matches!(err, RenderError::Syntax { .. }), "{err:?}");
        assert!(err.line().is_some_and(|l| l >= 2), "{err:?}");
    }

    #[test]
    fn loop_bomb_runs_out_of_fuel() {
        let err = render_dockerfile(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::OutOfFuel { .. }), "{err:?}");
        assert!(err.to_string().contains("too much work"), "{err}");
    }

    #[test]
    fn recursive_macro_is_bounded() {
        let err = render_dockerfile(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::OutOfFuel { .. } | RenderError::Evaluation { .. }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn output_too_large() {
        // 300 lines of ~1 KiB: fine for fuel, too large for the output bound.
        let err = render_dockerfile(
            "{% for i in range(300) %}{{ line }}\n{% endfor %}",
            &args(&[("line", json!("x".repeat(1024)))]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            RenderError::OutputTooLarge {
                limit: MAX_OUTPUT_BYTES
            }
        );
    }

    #[test]
    fn huge_string_repetition_is_refused() {
        let err = render_dockerfile("{{ 'x' * 100000000 }}", &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::OutOfFuel { .. }
                    | RenderError::OutputTooLarge { .. }
                    | RenderError::Evaluation { .. }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn output_just_under_the_limit_is_fine() {
        let out = render_dockerfile(
            "{{ s }}",
            &args(&[("s", json!("y".repeat(MAX_OUTPUT_BYTES)))]),
        )
        .unwrap();
        assert_eq!(out.len(), MAX_OUTPUT_BYTES);
    }

    #[test]
    fn template_too_large() {
        let tpl = "#".repeat(MAX_TEMPLATE_BYTES + 1);
        let err = render_dockerfile(&tpl, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            RenderError::TemplateTooLarge {
                size: MAX_TEMPLATE_BYTES + 1,
                limit: MAX_TEMPLATE_BYTES
            }
        );
    }

    #[test]
    fn include_is_refused() {
        let err = render_dockerfile("{% include '/etc/passwd' %}", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("cannot include"),
            "{err} / {err:?}"
        );
    }

    #[test]
    fn unknown_filter_is_reported() {
        let err =
            render_dockerfile("{{ x | nosuchfilter }}", &args(&[("x", json!(1))])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("line 1: "), "{msg}");
        assert!(
            msg.contains("nosuchfilter") || msg.contains("unknown filter"),
            "{msg}"
        );
    }
}
