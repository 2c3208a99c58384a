//! Label and field selectors, parsed with the grammar of
//! `k8s.io/apimachinery/pkg/labels/selector.go` (`Parse`) and
//! `pkg/fields/selector.go` (`ParseSelector`).
//!
//! Semantics copied from the real matcher: `a!=b` and `a notin (...)` also
//! match objects without label `a`; `a in (...)`, `a=b`, `a>1`, `a<1` need the
//! label; `a` is "exists", `!a` is "does not exist"; requirements are ANDed.

use std::collections::BTreeSet;

use serde_json::Value;

use super::resource::Resource;
use super::validation;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed `labelSelector`. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    In,
    NotIn,
}

fn lex(input: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '>' => {
                out.push(Token::Gt);
                i += 1;
            }
            '<' => {
                out.push(Token::Lt);
                i += 1;
            }
            '=' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Token::DoubleEq);
                    i += 2;
                } else {
                    out.push(Token::Eq);
                    i += 1;
                }
            }
            '!' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Token::NotEq);
                    i += 2;
                } else {
                    out.push(Token::Bang);
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | ',' | '=' | '!' | '>' | '<')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Ident(word),
                });
            }
        }
    }
    out
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) => {
                let errs = validation::label_key(&k);
                if let Some(e) = errs.first() {
                    return Err(format!(
                        "unable to parse requirement: key: Invalid value: {k:?}: {e}"
                    ));
                }
                Ok(k)
            }
            other => Err(format!(
                "unable to parse requirement: found '{}', expected: identifier",
                describe(other.as_ref())
            )),
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident(v)) => {
                let v = v.clone();
                self.pos += 1;
                if let Some(e) = validation::label_value(&v).first() {
                    return Err(format!(
                        "unable to parse requirement: values[0]: Invalid value: {v:?}: {e}"
                    ));
                }
                Ok(v)
            }
            // `a=` selects the empty value, as in the real parser.
            None | Some(Token::Comma | Token::Close) => Ok(String::new()),
            other => Err(format!("found '{}', expected: identifier", describe(other))),
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, String> {
        if self.next() != Some(Token::Open) {
            return Err("found '', expected: '('".to_owned());
        }
        let mut values = BTreeSet::new();
        loop {
            if self.peek() == Some(&Token::Close) {
                self.pos += 1;
                break;
            }
            values.insert(self.value()?);
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => break,
                other => {
                    return Err(format!(
                        "found '{}', expected: ',' or ')'",
                        describe(other.as_ref())
                    ));
                }
            }
        }
        Ok(values)
    }

    fn int(&mut self) -> Result<i64, String> {
        match self.next() {
            Some(Token::Ident(v)) => v
                .parse()
                .map_err(|_| format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {v}")),
            other => Err(format!(
                "found '{}', expected: integer",
                describe(other.as_ref())
            )),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Bang) {
            self.pos += 1;
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let key = self.key()?;
        let op = match self.peek() {
            None | Some(Token::Comma) => Op::Exists,
            Some(Token::Eq | Token::DoubleEq) => {
                self.pos += 1;
                Op::Equals(self.value()?)
            }
            Some(Token::NotEq) => {
                self.pos += 1;
                Op::NotEquals(self.value()?)
            }
            Some(Token::In) => {
                self.pos += 1;
                Op::In(self.set()?)
            }
            Some(Token::NotIn) => {
                self.pos += 1;
                Op::NotIn(self.set()?)
            }
            Some(Token::Gt) => {
                self.pos += 1;
                Op::GreaterThan(self.int()?)
            }
            Some(Token::Lt) => {
                self.pos += 1;
                Op::LessThan(self.int()?)
            }
            Some(other) => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    describe(Some(other))
                ));
            }
        };
        Ok(Requirement { key, op })
    }
}

fn describe(t: Option<&Token>) -> String {
    match t {
        None => String::new(),
        Some(Token::Ident(s)) => s.clone(),
        Some(Token::Eq) => "=".into(),
        Some(Token::DoubleEq) => "==".into(),
        Some(Token::NotEq) => "!=".into(),
        Some(Token::Bang) => "!".into(),
        Some(Token::Gt) => ">".into(),
        Some(Token::Lt) => "<".into(),
        Some(Token::Open) => "(".into(),
        Some(Token::Close) => ")".into(),
        Some(Token::Comma) => ",".into(),
        Some(Token::In) => "in".into(),
        Some(Token::NotIn) => "notin".into(),
    }
}

impl LabelSelector {
    /// Parses a `labelSelector` query value. Errors are the message of the
    /// 400 BadRequest the real server answers with.
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut p = Parser {
            tokens: lex(input),
            pos: 0,
        };
        let mut requirements = Vec::new();
        while p.peek().is_some() {
            requirements.push(p.requirement()?);
            match p.next() {
                None => break,
                Some(Token::Comma) => {
                    if p.peek().is_none() {
                        return Err("found '', expected: identifier after ','".to_owned());
                    }
                }
                Some(other) => {
                    return Err(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        describe(Some(&other))
                    ));
                }
            }
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does an object with these `metadata.labels` match?
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match &r.op {
                Op::Equals(want) => v == Some(want.as_str()),
                Op::NotEquals(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::GreaterThan(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::LessThan(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }

    /// Matches a whole object (its `metadata.labels`).
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.is_empty() || self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// A parsed `fieldSelector` (`f=v`, `f==v`, `f!=v`, comma-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// The selectable fields of each resource, as `ToSelectableFields` of the pod
/// strategy and `generic.ObjectMetaFieldsSet` define them.
fn field_value(resource: Resource, obj: &Value, field: &str) -> Option<String> {
    let s = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match (resource, field) {
        (_, "metadata.name") => Some(s("/metadata/name")),
        (_, "metadata.namespace") => Some(s("/metadata/namespace")),
        (Resource::Pods, "spec.nodeName") => Some(s("/spec/nodeName")),
        (Resource::Pods, "spec.restartPolicy") => Some(s("/spec/restartPolicy")),
        (Resource::Pods, "spec.schedulerName") => Some(s("/spec/schedulerName")),
        (Resource::Pods, "spec.serviceAccountName") => Some(s("/spec/serviceAccountName")),
        (Resource::Pods, "spec.hostNetwork") => Some(
            obj.pointer("/spec/hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        (Resource::Pods, "status.phase") => Some(s("/status/phase")),
        (Resource::Pods, "status.podIP") => Some(s("/status/podIP")),
        (Resource::Pods, "status.nominatedNodeName") => Some(s("/status/nominatedNodeName")),
        _ => None,
    }
}

impl FieldSelector {
    pub fn parse(resource: Resource, input: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{input}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            // Validate that the field exists for this resource, like the
            // field label conversion functions do.
            if field_value(resource, &Value::Null, field).is_none() {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, resource: Resource, obj: &Value) -> bool {
        self.terms.iter().all(|(field, eq, want)| {
            let got = field_value(resource, obj, field).unwrap_or_default();
            (got == *want) == *eq
        })
    }
}

/// Label and field selector together.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(
        resource: Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, String> {
        Ok(Self {
            labels: labels
                .map(LabelSelector::parse)
                .transpose()?
                .unwrap_or_default(),
            fields: fields
                .map(|f| FieldSelector::parse(resource, f))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    pub fn matches(&self, resource: Resource, obj: &Value) -> bool {
        self.labels.matches_object(obj)
            && (self.fields.is_empty() || self.fields.matches(resource, obj))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn labels(v: &Value) -> Option<&serde_json::Map<String, Value>> {
        v.as_object()
    }

    #[test]
    fn grammar() {
        let l = json!({"app": "kiln", "tier": "build", "n": "5"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(labels(&l));
        assert!(m("app=kiln"));
        assert!(m("app==kiln"));
        assert!(!m("app!=kiln"));
        assert!(m("other!=x"));
        assert!(m("tier in (build,test)"));
        assert!(!m("tier notin (build)"));
        assert!(m("missing notin (x)"));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!missing"));
        assert!(m("n>4,n<6"));
        assert!(m("app=kiln, tier in ( build )"));
        assert!(m(""));
        assert!(
            LabelSelector::parse("app=")
                .unwrap()
                .matches(labels(&json!({"app": ""})))
        );
        assert!(LabelSelector::parse("app in (a").is_err());
        assert!(LabelSelector::parse("app=kiln,").is_err());
        assert!(LabelSelector::parse("n>x").is_err());
    }
}
