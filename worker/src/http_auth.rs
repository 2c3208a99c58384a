//! Who may read the status page and `/api/*`: operators only.
//!
//! The page shows every tenant's builds, messages and log tails, so it is
//! closed unless the worker is told how to recognise an operator:
//!
//! - a bearer token (`KILN_STATUS_TOKEN_FILE`, a file mounted from a
//!   Secret), compared in constant time with `Authorization: Bearer …`;
//! - a user header set by an authenticating proxy in front of the worker
//!   (`KILN_STATUS_USER_HEADER`, e.g. `X-Forwarded-User`). Any client can
//!   send that header, so it is only as good as the network rule that lets
//!   nobody but the proxy reach the status address (`KILN_STATUS_ADDR` on
//!   loopback with the proxy as a sidecar, see deploy/);
//! - `--status-insecure` (`KILN_STATUS_INSECURE=true`): no check at all, for
//!   local demos and tests only; the worker warns at start.
//!
//! With none of them configured every status request gets 403 and a one-line
//! hint: the page is not open by default. `/metrics`, `/healthz` and
//! `/readyz` are never behind this check (they carry no tenant data).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// The status page's settings (`kiln worker`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusConfig {
    /// Address of the status page and `/api/*`. Unset: they are served on
    /// `KILN_METRICS_ADDR` beside `/metrics` (one port for monitoring and
    /// operators, so a network rule cannot tell them apart).
    #[arg(long, env = "KILN_STATUS_ADDR")]
    pub status_addr: Option<std::net::SocketAddr>,
    /// File holding the bearer token operators send
    /// (`Authorization: Bearer <token>`); surrounding whitespace is ignored.
    #[arg(long, env = "KILN_STATUS_TOKEN_FILE")]
    pub status_token_file: Option<PathBuf>,
    /// Header an authenticating proxy in front of the worker sets to the
    /// signed-in user (e.g. `X-Forwarded-User`). Only safe when nothing but
    /// the proxy can reach the status address.
    #[arg(long, env = "KILN_STATUS_USER_HEADER")]
    pub status_user_header: Option<String>,
    /// Serve the status page to anyone (local demos and tests only).
    #[arg(long, env = "KILN_STATUS_INSECURE", default_value_t = false)]
    pub status_insecure: bool,
}

/// How a status request proves it comes from an operator.
#[derive(Debug, Clone, Default)]
pub struct StatusAuth {
    token: Option<Arc<[u8]>>,
    user_header: Option<HeaderName>,
    insecure: bool,
}

/// The answer to a request that brings no accepted credentials.
const HINT_UNCONFIGURED: &str = "the status page is closed: set KILN_STATUS_TOKEN_FILE or KILN_STATUS_USER_HEADER (see docs/operations.md)\n";
const HINT_MISSING: &str = "operators only: send Authorization: Bearer <token>\n";

impl StatusAuth {
    /// Reads the token file and checks the header name. A token file that
    /// is missing or empty stops the worker at start, naming the setting.
    pub fn from_config(c: &StatusConfig) -> Result<Self> {
        let token = match &c.status_token_file {
            None => None,
            Some(path) => {
                let raw = std::fs::read(path).map_err(|e| {
                    Error::Config(format!(
                        "KILN_STATUS_TOKEN_FILE {}: cannot read it: {e}",
                        path.display()
                    ))
                })?;
                let t = raw.trim_ascii();
                if t.len() < 16 {
                    return Err(Error::Config(format!(
                        "KILN_STATUS_TOKEN_FILE {}: the token must have at least 16 characters (it has {})",
                        path.display(),
                        t.len()
                    )));
                }
                Some(Arc::from(t))
            }
        };
        let user_header = match &c.status_user_header {
            None => None,
            Some(name) => Some(HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                Error::Config(format!(
                    "KILN_STATUS_USER_HEADER {name:?}: not a valid HTTP header name"
                ))
            })?),
        };
        Ok(Self {
            token,
            user_header,
            insecure: c.status_insecure,
        })
    }

    /// A token accepted as is (tests and embedders).
    pub fn with_token(token: &str) -> Self {
        Self {
            token: Some(Arc::from(token.as_bytes())),
            ..Self::default()
        }
    }

    fn configured(&self) -> bool {
        self.insecure || self.token.is_some() || self.user_header.is_some()
    }

    /// Who the request comes from, or why it is refused.
    fn check(&self, headers: &axum::http::HeaderMap) -> std::result::Result<(), Refusal> {
        if self.insecure {
            return Ok(());
        }
        if !self.configured() {
            return Err(Refusal::Unconfigured);
        }
        if let Some(want) = &self.token {
            let sent = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .map(<[u8]>::trim_ascii);
            // Constant time over the token's bytes: a byte-by-byte compare
            // would tell an attacker how much of a guess was right.
            if sent.is_some_and(|s| bool::from(s.ct_eq(want))) {
                return Ok(());
            }
        }
        if let Some(name) = &self.user_header
            && headers
                .get(name)
                .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
        {
            return Ok(());
        }
        Err(Refusal::Missing)
    }
}

enum Refusal {
    Unconfigured,
    Missing,
}

/// The middleware in front of `/`, `/builds/*` and `/api/*`.
pub async fn require_operator(
    State(auth): State<StatusAuth>,
    req: Request,
    next: Next,
) -> Response {
    match auth.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => {
            let (status, hint) = match r {
                Refusal::Unconfigured => (StatusCode::FORBIDDEN, HINT_UNCONFIGURED),
                Refusal::Missing => (StatusCode::UNAUTHORIZED, HINT_MISSING),
            };
            let mut resp = (
                status,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                hint,
            )
                .into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"kiln\""),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn nothing_configured_refuses_everyone() {
        let auth = StatusAuth::default();
        assert!(matches!(
            auth.check(&headers(&[("authorization", "Bearer x")])),
            Err(Refusal::Unconfigured)
        ));
    }

    #[test]
    fn a_token_is_accepted_only_whole() {
        let auth = StatusAuth::with_token("s3cret-s3cret-s3cret");
        assert!(
            auth.check(&headers(&[(
                "authorization",
                "Bearer s3cret-s3cret-s3cret"
            )]))
            .is_ok()
        );
        for bad in [
            "Bearer s3cret",
            "Bearer s3cret-s3cret-s3cret-",
            "Basic s3cret-s3cret-s3cret",
            "",
        ] {
            assert!(
                auth.check(&headers(&[("authorization", bad)])).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            auth.check(&headers(&[("x-forwarded-user", "eve")]))
                .is_err()
        );
    }

    #[test]
    fn the_user_header_counts_only_when_configured() {
        let auth = StatusAuth::from_config(&StatusConfig {
            status_user_header: Some("X-Forwarded-User".into()),
            ..StatusConfig::default()
        })
        .unwrap();
        assert!(auth.check(&headers(&[("x-forwarded-user", "ops")])).is_ok());
        assert!(auth.check(&headers(&[("x-forwarded-user", " ")])).is_err());
        assert!(auth.check(&headers(&[])).is_err());
    }

    #[test]
    fn a_short_or_missing_token_file_names_the_setting() {
        let dir = std::env::temp_dir().join(format!("kiln-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        for path in [short, dir.join("missing")] {
            let e = StatusAuth::from_config(&StatusConfig {
                status_token_file: Some(path),
                ..StatusConfig::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("KILN_STATUS_TOKEN_FILE"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
