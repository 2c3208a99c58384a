//! The credentials a tenant's policy grants, and where each may go: git
//! credentials to the hosts `gitCredentials.hosts` lists, S3 credentials to
//! the policy's endpoint (or AWS), build secrets from the Secrets
//! `buildSecrets` lists.

use std::fmt;

/// Git credentials: a Secret with a user name and a password (or token),
/// given to Kaniko as `GIT_USERNAME` / `GIT_PASSWORD` through `secretKeyRef`,
/// which the executor sends as Basic auth to the host of the git URL: so
/// only to the hosts listed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub secret: String,
    pub username_key: String,
    pub password_key: String,
    /// `host` or `host:port` (lowercase; `:443` dropped), compared with
    /// [`kiln_protocol::GitContext::authority`].
    pub hosts: Vec<String>,
    pub other_hosts: OtherHosts,
}

impl GitCredentials {
    /// Whether the credentials may be sent to the git context's host.
    pub fn allows(&self, git: &kiln_protocol::GitContext) -> bool {
        git.authority().is_some_and(|a| self.hosts.contains(&a))
    }
}

/// One entry of `buildSecrets`: a Secret of the tenant's namespace its
/// builds may mount, every key (`name`) or one (`name/key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSecretGrant {
    pub secret: String,
    pub key: Option<String>,
}

impl BuildSecretGrant {
    pub fn allows(&self, r: &kiln_protocol::SecretRef) -> bool {
        self.secret == r.secret && self.key.as_ref().is_none_or(|k| *k == r.key)
    }
}

impl fmt::Display for BuildSecretGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}/{k}", self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

/// What a git context on a host the credentials do not list gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherHosts {
    /// Built without the credentials (a public repository still builds).
    #[default]
    Omit,
    /// Refused: `PolicyViolation` naming `images[i].context.git.url`.
    Refuse,
}

/// S3 credentials: a Secret with an access key pair, given to Kaniko as
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` through `secretKeyRef`,
/// plus defaults for contexts that name no region or endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub secret: String,
    pub access_key_id_key: String,
    pub secret_access_key_key: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}
