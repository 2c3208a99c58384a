//! Routing keys of events on `kiln.events`, and the binding keys and topic
//! permissions that select them.
//!
//! An event is published with `<level>.<phase>.<tenant>`
//! (`build.succeeded.alice`, `image.running.alice`,
//! `request.rejected.bob`): the tenant word lets RabbitMQ topic permissions
//! confine each tenant to its own events.

use super::phase::{Level, Phase};
use crate::tenant::Tenant;

/// `<level>.<phase>`: the routing key before the tenant word was added to
/// the contract, and the first two words of every routing key. The worker
/// publishes with it until its callers move to [`tenant_routing_key`].
pub fn routing_key(level: Level, phase: Phase) -> String {
    format!("{level}.{phase}")
}

/// `<level>.<phase>.<tenant>`: the routing key of an event on
/// `kiln.events`, where `tenant` is the tenant the event belongs to (for
/// `request.rejected`, the publisher of the refused message).
pub fn tenant_routing_key(level: Level, phase: Phase, tenant: &Tenant) -> String {
    format!("{level}.{phase}.{tenant}")
}

/// The binding key that selects events on `kiln.events`: each `None` is the
/// wildcard `*` for that word. `binding_key(Some(Level::Build), None,
/// Some(&alice))` is `build.*.alice`, every build event of alice's;
/// `binding_key(Some(Level::Build), Some(Phase::Succeeded), None)` is
/// `build.succeeded.*`, every tenant's finished builds.
pub fn binding_key(level: Option<Level>, phase: Option<Phase>, tenant: Option<&Tenant>) -> String {
    let level = level.map_or("*", Level::as_str);
    let phase = phase.map_or("*", Phase::as_str);
    let tenant = tenant.map_or("*", Tenant::as_str);
    format!("{level}.{phase}.{tenant}")
}

/// The RabbitMQ topic permission (`read` pattern on `kiln.events`) that
/// lets a subscriber bind only `tenant`'s events:
/// `^(\*|[a-z]+)\.(\*|[a-z]+)\.<tenant>$`. RabbitMQ matches the pattern
/// against the binding key as written, wildcards included, so the level and
/// phase words may be `*` (`build.*.alice` binds) while the tenant word must
/// be spelled out (`build.*.*`, `build.#` and `#` are refused). A tenant
/// name holds no regex metacharacter (`-` is literal outside a class), so it
/// needs no escaping.
pub fn tenant_read_permission(tenant: &Tenant) -> String {
    format!(r"^(\*|[a-z]+)\.(\*|[a-z]+)\.{tenant}$")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn alice() -> Tenant {
        Tenant::new("alice").unwrap()
    }

    #[test]
    fn routing_keys_end_with_the_tenant() {
        let a = alice();
        assert_eq!(
            tenant_routing_key(Level::Build, Phase::Succeeded, &a),
            "build.succeeded.alice"
        );
        assert_eq!(
            tenant_routing_key(Level::Image, Phase::Running, &a),
            "image.running.alice"
        );
        assert_eq!(
            tenant_routing_key(Level::Request, Phase::Rejected, &a),
            "request.rejected.alice"
        );
        assert_eq!(routing_key(Level::Build, Phase::Rejected), "build.rejected");
        assert_eq!(
            routing_key(Level::Request, Phase::Rejected),
            "request.rejected"
        );
    }

    #[test]
    fn bindings() {
        let a = alice();
        assert_eq!(
            binding_key(Some(Level::Build), None, Some(&a)),
            "build.*.alice"
        );
        assert_eq!(binding_key(Some(Level::Build), None, None), "build.*.*");
        assert_eq!(
            binding_key(Some(Level::Build), Some(Phase::Succeeded), None),
            "build.succeeded.*"
        );
        assert_eq!(binding_key(None, None, Some(&a)), "*.*.alice");
    }

    /// Every key a tenant's events are published with passes that tenant's
    /// read permission, and no other tenant's; the tenant's own bindings
    /// pass it, and the all-tenants bindings do not.
    #[test]
    fn read_permissions_confine_a_tenant() {
        let (a, b) = (alice(), Tenant::new("alice-2").unwrap());
        let allow_a = regex::Regex::new(&tenant_read_permission(&a)).unwrap();
        for level in Level::ALL {
            for phase in Phase::ALL.into_iter().filter(|p| p.valid_for(level)) {
                assert!(allow_a.is_match(&tenant_routing_key(level, phase, &a)));
                assert!(!allow_a.is_match(&tenant_routing_key(level, phase, &b)));
            }
        }
        for own in [
            binding_key(Some(Level::Build), None, Some(&a)),
            binding_key(None, None, Some(&a)),
            binding_key(Some(Level::Build), Some(Phase::Succeeded), Some(&a)),
        ] {
            assert!(allow_a.is_match(&own), "{own}");
        }
        for other in [
            binding_key(Some(Level::Build), None, None),
            binding_key(Some(Level::Build), None, Some(&b)),
            "build.#".to_owned(),
            "#".to_owned(),
            "*.*.#".to_owned(),
            "build.*.alice.x".to_owned(),
        ] {
            assert!(!allow_a.is_match(&other), "{other}");
        }
    }
}
