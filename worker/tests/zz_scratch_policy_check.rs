#[test]
fn deploy_policy_loads() {
    for p in ["../deploy/kustomize/base/policy.yaml"] {
        let r = kiln_worker::policy::Policy::load(std::path::Path::new(p));
        assert!(r.is_ok(), "{p}: {:?}", r.err().map(|e| e.to_string()));
    }
}
