//! Whose events `kiln watch`, `kiln wait` and `kiln submit --wait` read,
//! and the binding keys that select them.
//!
//! Events are published as `<level>.<phase>.<tenant>`. A broker that
//! confines a tenant gives it the topic permission
//! `^[a-z]+\.[a-z]+\.<tenant>$` on the events exchange: only bindings that
//! spell out both words and the tenant pass. So the client binds literal
//! keys, one per level and phase it needs (`build.succeeded.alice`, ...),
//! never `build.*` or `#` unless asked for every tenant.

use kiln_protocol::{Level, Phase, Tenant, binding_key};

use crate::amqp::url_user;
use crate::config::Connections;
use crate::policy::DEFAULT_TENANT;

/// `--tenant` / `--all-tenants`, shared by the commands that subscribe.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScopeArgs {
    /// Read this tenant's events (default: the RabbitMQ user of
    /// KILN_AMQP_URL, the tenant its requests are published as).
    #[arg(long, value_name = "TENANT", conflicts_with = "all_tenants")]
    pub tenant: Option<Tenant>,
    /// Operators: read every tenant's events (binds wildcard keys, which a
    /// broker confining this user to one tenant refuses).
    #[arg(long)]
    pub all_tenants: bool,
}

/// Whose events to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Tenant(Tenant),
    All,
}

impl ScopeArgs {
    /// The scope asked for: `--all-tenants`, `--tenant`, else the AMQP user.
    pub fn scope(&self, c: &Connections) -> anyhow::Result<Scope> {
        if self.all_tenants {
            return Ok(Scope::All);
        }
        if let Some(t) = &self.tenant {
            return Ok(Scope::Tenant(t.clone()));
        }
        let user = url_user(&c.amqp_url).map_err(|e| anyhow::anyhow!("{e}"))?;
        Tenant::new(user.clone()).map(Scope::Tenant).map_err(|e| {
            anyhow::anyhow!(
                "the RabbitMQ user {user:?} cannot be a tenant ({e}); pass --tenant NAME, or --all-tenants if you may read every tenant's events"
            )
        })
    }
}

/// The binding keys for `levels` and `phases` (every phase of each level
/// when empty) in `scope`, and the optional ones: for a tenant other than
/// `default`, the same keys for `default`, whose policy serves users the
/// policy does not list (their builds' events carry `default`); a broker
/// that confines the user refuses those, which is harmless.
pub fn binding_keys(
    scope: &Scope,
    levels: &[Level],
    phases: &[Phase],
) -> (Vec<String>, Vec<String>) {
    let tenant = match scope {
        Scope::All if phases.is_empty() => return (vec!["#".to_owned()], Vec::new()),
        Scope::All => None,
        Scope::Tenant(t) => Some(t),
    };
    let keys_for = |tenant: Option<&Tenant>| {
        let mut keys = Vec::new();
        for &level in levels {
            for phase in Phase::ALL {
                let wanted = phases.is_empty() || phases.contains(&phase);
                let key = binding_key(Some(level), Some(phase), tenant);
                if wanted && phase.valid_for(level) && !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        keys
    };
    let own = keys_for(tenant);
    let optional = match tenant {
        Some(t) if t.as_str() != DEFAULT_TENANT => {
            Tenant::new(DEFAULT_TENANT).map_or_else(|_| Vec::new(), |d| keys_for(Some(&d)))
        }
        _ => Vec::new(),
    };
    (own, optional)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn alice() -> Scope {
        Scope::Tenant(Tenant::new("alice").unwrap())
    }

    /// Every key bound for a tenant passes the strict read permission of
    /// the contract, so a confined tenant's subscription is never refused.
    #[test]
    fn tenant_keys_are_literal() {
        // `^[a-z]+\.[a-z]+\.alice$`, spelled out (no regex in this crate).
        let strict = |k: &str| {
            let words: Vec<&str> = k.split('.').collect();
            let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
            words.len() == 3 && word(words[0]) && word(words[1]) && words[2] == "alice"
        };
        let (own, optional) = binding_keys(&alice(), &Level::ALL, &[]);
        assert_eq!(own.len(), 13, "{own:?}");
        assert!(own.iter().all(|k| strict(k)), "{own:?}");
        assert!(own.contains(&"request.rejected.alice".to_owned()));
        assert!(optional.contains(&"build.succeeded.default".to_owned()));
        let (own, _) = binding_keys(&alice(), &[Level::Build, Level::Image], &[Phase::Failed]);
        assert_eq!(own, ["build.failed.alice", "image.failed.alice"]);
    }

    #[test]
    fn all_tenants_binds_wildcards() {
        assert_eq!(
            binding_keys(&Scope::All, &Level::ALL, &[]),
            (vec!["#".to_owned()], vec![])
        );
        let (own, optional) = binding_keys(&Scope::All, &[Level::Build], &[Phase::Failed]);
        assert_eq!(own, ["build.failed.*"]);
        assert!(optional.is_empty());
        let default = Scope::Tenant(Tenant::new(DEFAULT_TENANT).unwrap());
        assert!(binding_keys(&default, &Level::ALL, &[]).1.is_empty());
    }
}
