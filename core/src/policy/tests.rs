#![allow(clippy::unwrap_used)]
// The loading tests write and read files, as the worker does.
#![allow(clippy::disallowed_methods)]

use super::*;
use kiln_protocol::{BuildRequest, ROOT_PATH, ValidationError};
use serde_json::json;

const EXAMPLE_TOML: &str = include_str!("../../../examples/policy.toml");
const EXAMPLE_YAML: &str = include_str!("../../../examples/policy.yaml");

/// What the worker's `policy::load` does.
fn load(path: &Path) -> Result<Policy, PolicyError> {
    Policy::from_file(path, || std::fs::read_to_string(path))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn example() -> Policy {
    Policy::from_toml_str(EXAMPLE_TOML).unwrap()
}

/// A valid request; `images` replaces the default single image.
fn request(extra: serde_json::Value) -> BuildRequest {
    let mut base = json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": "b-1",
        "images": [image("api", "registry.example.com/payments/api:1")],
    });
    if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    serde_json::from_value(base).unwrap()
}

fn image(name: &str, dest: &str) -> serde_json::Value {
    json!({
        "name": name,
        "context": { "git": { "url": "https://github.com/acme/cart.git" } },
        "destinations": [dest],
    })
}

fn invalid_problems(err: PolicyError) -> Vec<PolicyProblem> {
    match err {
        PolicyError::Invalid { problems, .. } => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn paths(problems: &[PolicyProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

fn toml_problems(s: &str) -> Vec<PolicyProblem> {
    invalid_problems(Policy::from_toml_str(s).unwrap_err())
}

fn violation_paths(errs: &[ValidationError]) -> Vec<&str> {
    errs.iter().map(|e| e.path.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Loading

#[test]
fn example_files_load_and_are_equal() {
    let toml = load(&examples_dir().join("policy.toml")).unwrap();
    let yaml = load(&examples_dir().join("policy.yaml")).unwrap();
    assert_eq!(toml, yaml);
    assert_eq!(toml, example());
    assert_eq!(yaml, Policy::from_yaml_str(EXAMPLE_YAML).unwrap());
    assert_eq!(
        toml.tenant_names().collect::<Vec<_>>(),
        ["data", "default", "payments"]
    );
    assert_eq!(
        toml.namespaces(),
        BTreeSet::from([
            "kiln-builds".to_owned(),
            "kiln-data".to_owned(),
            "kiln-payments".to_owned()
        ])
    );
}

#[test]
fn example_resolves_inheritance() {
    let p = example();

    let payments = p.tenant("payments").unwrap();
    assert_eq!(payments.namespace, "kiln-payments");
    assert_eq!(payments.service_account, "payments-builder");
    assert_eq!(
        payments.registry_secret.as_deref(),
        Some("payments-registry")
    );
    assert_eq!(
        payments.cache_repo.as_deref(),
        Some("registry.example.com/payments/cache")
    );
    assert_eq!(
        payments.git_credentials,
        Some(GitCredentials {
            secret: "payments-git".to_owned(),
            username_key: "username".to_owned(),
            password_key: "token".to_owned(),
            hosts: vec!["github.com".to_owned(), "git.example.com:8443".to_owned()],
            other_hosts: OtherHosts::Refuse,
        })
    );
    assert_eq!(payments.caps.max_attempts, 5);
    assert_eq!(payments.caps.max_timeout_seconds, 7200); // top level
    assert_eq!(payments.caps.max_images, 16);
    assert_eq!(payments.caps.max_cpu.as_str(), "4");
    assert_eq!(payments.defaults.timeout_seconds, 1800); // top level
    assert_eq!(payments.defaults.attempts, 3);

    let default = p.tenant("default").unwrap();
    assert_eq!(default.service_account, DEFAULT_SERVICE_ACCOUNT);
    assert_eq!(default.caps.max_attempts, 4); // top level
    assert_eq!(default.caps.max_memory.as_str(), "4Gi");
    assert_eq!(default.defaults.cpu.as_str(), "500m");
    assert_eq!(default.defaults.attempts, builtin::ATTEMPTS);

    let data = p.tenant("data").unwrap();
    assert_eq!(data.caps.max_timeout_seconds, 600);
    // The inherited default (1800) is lowered to the tenant's own cap.
    assert_eq!(data.defaults.timeout_seconds, 600);
    assert_eq!(data.caps.max_cpu.as_str(), builtin::MAX_CPU);
    assert_eq!(data.defaults.memory.as_str(), builtin::MEMORY);
    let s3 = data.s3_credentials.as_ref().unwrap();
    assert_eq!(s3.secret, "data-s3");
    assert_eq!(s3.access_key_id_key, "AWS_ACCESS_KEY_ID");
    assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
    assert!(data.git_credentials.is_none());
}

#[test]
fn a_log_retention_cap_is_the_tenants_else_the_top_levels_else_none() {
    let p = Policy::from_toml_str(
        r#"
[defaults.caps]
maxLogRetentionSeconds = 3600

[tenants.short]
namespace = "ci"
allowedDestinations = ["*"]
caps = { maxLogRetentionSeconds = 60 }

[tenants.inherits]
namespace = "ci"
allowedDestinations = ["*"]
"#,
    )
    .unwrap();
    let cap = |t: &str| p.tenant(t).unwrap().caps.max_log_retention_seconds;
    assert_eq!(cap("short"), Some(60));
    assert_eq!(cap("inherits"), Some(3600));
    let none =
        Policy::from_toml_str("[tenants.t]\nnamespace = \"ci\"\nallowedDestinations = [\"*\"]\n")
            .unwrap();
    assert_eq!(
        none.tenant("t").unwrap().caps.max_log_retention_seconds,
        None
    );
}

#[test]
fn minimal_tenant_gets_builtin_caps_and_defaults() {
    let p = Policy::from_toml_str(
        r#"
[tenants.ci]
namespace = "ci"
allowedDestinations = ["*"]
"#,
    )
    .unwrap();
    let t = p.tenant("ci").unwrap();
    assert_eq!(
        t.caps,
        Caps {
            max_attempts: 5,
            max_timeout_seconds: 21_600,
            max_cpu: Quantity::parse("4").unwrap(),
            max_memory: Quantity::parse("8Gi").unwrap(),
            max_ephemeral_storage: Quantity::parse("50Gi").unwrap(),
            max_images: 32,
            max_builds_in_flight: 0,
            max_log_retention_seconds: None,
        }
    );
    assert_eq!(
        t.defaults,
        Defaults {
            attempts: 3,
            timeout_seconds: 3600,
            cpu: Quantity::parse("1").unwrap(),
            memory: Quantity::parse("2Gi").unwrap(),
            ephemeral_storage: Quantity::parse("10Gi").unwrap(),
        }
    );
    assert_eq!(t.service_account, "kiln-builder");
    assert_eq!(t.allowed_destinations, [DestinationPrefix::Any]);
    // Without a policy file, the same tenant under the name "default".
    let single = Policy::single_tenant("ci");
    assert_eq!(single.tenant("default").unwrap(), t);
}

#[test]
fn git_and_s3_secret_keys_have_defaults() {
    let p = Policy::from_yaml_str(
        "
tenants:
  t:
    namespace: t
    allowedDestinations: ['*']
    gitCredentials: { secret: git, hosts: [github.com] }
    s3Credentials: { secret: s3 }
",
    )
    .unwrap();
    let t = p.tenant("t").unwrap();
    let git = t.git_credentials.as_ref().unwrap();
    assert_eq!(
        (git.username_key.as_str(), git.password_key.as_str()),
        ("username", "password")
    );
    let s3 = t.s3_credentials.as_ref().unwrap();
    assert_eq!(s3.access_key_id_key, "AWS_ACCESS_KEY_ID");
    assert_eq!(s3.secret_access_key_key, "AWS_SECRET_ACCESS_KEY");
    assert_eq!((s3.region.as_ref(), s3.endpoint.as_ref()), (None, None));
}

#[test]
fn quantities_may_be_bare_numbers() {
    let toml = Policy::from_toml_str(
        r#"
[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
caps = { maxCpu = 2 }
defaults = { cpu = 0.5 }
"#,
    )
    .unwrap();
    let yaml = Policy::from_yaml_str(
        "tenants: { t: { namespace: t, allowedDestinations: ['*'], caps: { maxCpu: 2 }, defaults: { cpu: 500m } } }",
    )
    .unwrap();
    assert_eq!(toml, yaml, "0.5 and 500m are the same quantity");
    assert_eq!(toml.tenant("t").unwrap().caps.max_cpu.as_str(), "2");
}

#[test]
fn unknown_field_names_its_path() {
    let problems = toml_problems(
        r#"
[tenants.payments]
namespace = "p"
allowedDestinations = ["*"]
caps = { maxCPU = "2" }
"#,
    );
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].path.starts_with("tenants.payments.caps"),
        "{problems:?}"
    );
    assert!(
        problems[0].reason.contains("unknown field `maxCPU`"),
        "{problems:?}"
    );
    assert!(
        problems[0].reason.contains("maxCpu"),
        "lists the expected fields: {problems:?}"
    );
}

#[test]
fn unknown_top_level_field_is_an_error() {
    let problems = invalid_problems(
        Policy::from_yaml_str(
            "tenant: {}\ntenants: { t: { namespace: t, allowedDestinations: ['*'] } }",
        )
        .unwrap_err(),
    );
    assert!(
        problems[0].reason.contains("unknown field `tenant`"),
        "{problems:?}"
    );
}

#[test]
fn missing_required_field_names_its_path() {
    let problems = toml_problems("[tenants.t]\nallowedDestinations = [\"*\"]\n");
    assert_eq!(problems[0].path, "tenants.t", "{problems:?}");
    assert!(
        problems[0].reason.contains("missing field `namespace`"),
        "{problems:?}"
    );
}

#[test]
fn wrong_type_names_its_path() {
    let problems = toml_problems(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\ncaps = { maxAttempts = -1 }\n",
    );
    assert_eq!(
        problems[0].path, "tenants.t.caps.maxAttempts",
        "{problems:?}"
    );
}

#[test]
fn syntax_errors_give_the_line() {
    let err = Policy::from_toml_str("[tenants.t]\nnamespace = = 1\n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::Syntax { .. }), "{err:?}");
    assert!(msg.starts_with("policy: invalid TOML at line 2"), "{msg}");

    let err = Policy::from_yaml_str("tenants:\n  t: [unclosed\n").unwrap_err();
    assert!(matches!(err, PolicyError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains("invalid YAML"), "{err}");
}

#[test]
fn semantic_problems_are_all_reported_with_paths() {
    let problems = toml_problems(
        r#"
[tenants.t]
namespace = "Bad_NS"
allowedDestinations = ["shop", "registry.example.com/shop:1", "Registry.example.com/x", "registry.example.com/ok/", ""]
registrySecret = "bad secret"
serviceAccountName = "-sa"
cacheRepo = "registry.example.com/cache:latest"
gitCredentials = { secret = "git", passwordKey = "pass word", hosts = ["github.com"] }
s3Credentials = { secret = "s3", region = "EU", endpoint = "s3.example.com" }
caps = { maxAttempts = 0, maxImages = 0, maxMemory = "lots" }
defaults = { cpu = "-1", timeoutSeconds = 0 }
"#,
    );
    assert_eq!(
        paths(&problems),
        [
            "tenants.t.namespace",
            "tenants.t.allowedDestinations[0]",
            "tenants.t.allowedDestinations[1]",
            "tenants.t.allowedDestinations[2]",
            "tenants.t.allowedDestinations[4]",
            "tenants.t.registrySecret",
            "tenants.t.gitCredentials.passwordKey",
            "tenants.t.s3Credentials.region",
            "tenants.t.s3Credentials.endpoint",
            "tenants.t.serviceAccountName",
            "tenants.t.cacheRepo",
            "tenants.t.caps.maxAttempts",
            "tenants.t.defaults.timeoutSeconds",
            "tenants.t.caps.maxImages",
            "tenants.t.caps.maxMemory",
            "tenants.t.defaults.cpu",
        ],
        "{problems:#?}"
    );
    let reason = |path: &str| {
        problems
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.reason.as_str())
            .unwrap()
    };
    assert!(reason("tenants.t.allowedDestinations[0]").contains("must start with a registry host"));
    assert!(reason("tenants.t.allowedDestinations[1]").contains("has a tag"));
    assert!(reason("tenants.t.caps.maxMemory").contains("not a Kubernetes quantity"));
    assert!(reason("tenants.t.defaults.cpu").contains("not a Kubernetes quantity"));
}

#[test]
fn default_above_its_own_cap_is_an_error() {
    let problems = toml_problems(
        r#"
[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
caps = { maxCpu = "1", maxAttempts = 2 }
defaults = { cpu = "1500m", attempts = 3 }
"#,
    );
    assert_eq!(
        paths(&problems),
        ["tenants.t.defaults.attempts", "tenants.t.defaults.cpu"]
    );
    assert_eq!(
        problems[1].reason,
        "1500m is more than tenants.t.caps.maxCpu (1); lower the default or raise the cap"
    );
}

#[test]
fn top_level_default_above_the_builtin_cap_is_an_error() {
    let problems = toml_problems(
        r#"
[defaults.defaults]
memory = "16Gi"

[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
"#,
    );
    assert_eq!(paths(&problems), ["defaults.defaults.memory"]);
    assert_eq!(
        problems[0].reason,
        "16Gi is more than the built-in maxMemory (8Gi); lower the default or raise the cap"
    );
}

#[test]
fn tenant_cap_below_an_inherited_default_lowers_the_default() {
    let p = Policy::from_toml_str(
        r#"
[defaults.defaults]
cpu = "2"

[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
caps = { maxCpu = "500m", maxMemory = "1Gi", maxAttempts = 1 }
"#,
    )
    .unwrap();
    let t = p.tenant("t").unwrap();
    assert_eq!(t.defaults.cpu.as_str(), "500m");
    assert_eq!(t.defaults.memory.as_str(), "1Gi");
    assert_eq!(t.defaults.attempts, 1);
}

#[test]
fn a_policy_needs_tenants() {
    assert_eq!(paths(&toml_problems("")), ["tenants"]);
    assert_eq!(
        paths(&invalid_problems(Policy::from_yaml_str("").unwrap_err())),
        ["tenants"]
    );
    assert_eq!(
        paths(&toml_problems(
            "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = []\n"
        )),
        ["tenants.t.allowedDestinations"]
    );
}

#[test]
fn odd_tenant_names_are_quoted_in_paths() {
    let problems = toml_problems(
        "[tenants.\"ci@acme.io\"]\nnamespace = \"NS\"\nallowedDestinations = [\"*\"]\n",
    );
    assert_eq!(paths(&problems), ["tenants[\"ci@acme.io\"].namespace"]);
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("kiln-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "tenants:\n  t:\n    namespace: t\n    allowedDestinations: ['*']\n    cap: {}\n",
    )
    .unwrap();
    let err = load(&file).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}: tenants.t", file.display())),
        "{msg}"
    );
    assert!(msg.contains("unknown field `cap`"), "{msg}");

    let missing = dir.join("missing.toml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, PolicyError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.toml"), "{err}");

    let json = dir.join("policy.json");
    let err = load(&json).unwrap_err();
    assert!(
        matches!(err, PolicyError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(".toml, .yaml or .yml"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn yml_extension_is_yaml() {
    let dir = std::env::temp_dir().join(format!("kiln-policy-yml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.YML");
    std::fs::write(&file, EXAMPLE_YAML).unwrap();
    assert_eq!(load(&file).unwrap(), example());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Destination prefixes

#[test]
fn prefixes_match_at_path_boundaries() {
    let p = DestinationPrefix::parse("registry.example.com/shop").unwrap();
    assert!(p.allows("registry.example.com/shop/cart"));
    assert!(p.allows("registry.example.com/shop"));
    assert!(p.allows("registry.example.com/shop/a/b/c"));
    assert!(!p.allows("registry.example.com/shopping/x"));
    assert!(!p.allows("registry.example.com/sho"));
    assert!(!p.allows("registry.example.com.evil.io/shop/x"));

    let host = DestinationPrefix::parse("localhost:5000").unwrap();
    assert!(host.allows("localhost:5000/anything"));
    assert!(!host.allows("localhost:50001/anything"));

    let trailing = DestinationPrefix::parse("registry.example.com/shop/").unwrap();
    assert_eq!(trailing, p);
    assert_eq!(
        DestinationPrefix::parse("*").unwrap(),
        DestinationPrefix::Any
    );
}

#[test]
fn prefix_matching_uses_the_normalised_reference() {
    let p = Policy::from_toml_str(
        r#"
[tenants.hub]
namespace = "hub"
allowedDestinations = ["docker.io/acme", "docker.io/library/alpine"]
"#,
    )
    .unwrap();
    let req = request(json!({"images": [
        image("a", "acme/app:1"),
        image("b", "docker.io/acme/app:1"),
        image("c", "alpine"),
        image("d", "acmecorp/app:1"),
    ]}));
    let errs = p.admit(Some("hub"), &req).unwrap_err();
    assert_eq!(violation_paths(&errs), ["images[3].destinations[0]"]);
    assert_eq!(
        errs[0].reason,
        "acmecorp/app:1 (docker.io/acmecorp/app:1) is not an allowed destination for tenant \"hub\"; allowed prefixes: docker.io/acme, docker.io/library/alpine"
    );
}

// ---------------------------------------------------------------------------
// Admission

#[test]
fn admits_with_defaults_applied() {
    let p = example();
    let req = request(json!({"images": [
        image("api", "registry.example.com/payments/api:1"),
        {
            "name": "worker",
            "context": { "s3": { "bucket": "contexts", "key": "w.tar.gz" } },
            "destinations": ["registry.example.com/shop/cart/worker:1"],
            "resources": { "cpu": "2", "memory": "8Gi" },
        },
        {
            "name": "tools",
            "context": { "url": "https://example.com/ctx.tar.gz" },
            "destinations": ["registry.example.com/payments:tools"],
            "resources": { "memory": "512Mi" },
        },
    ]}));
    let a = p.admit(Some("payments"), &req).unwrap();
    assert_eq!(
        a,
        Admission {
            tenant: "payments".to_owned(),
            namespace: "kiln-payments".to_owned(),
            max_attempts: 3,
            timeout: Duration::from_secs(1800),
            service_account: "payments-builder".to_owned(),
            registry_secret: Some("payments-registry".to_owned()),
            git_credentials: p.tenant("payments").unwrap().git_credentials.clone(),
            // The tenant has no S3 credentials: an S3 context goes without.
            s3_credentials: None,
            cache_repo: Some("registry.example.com/payments/cache".to_owned()),
            runtime_class_name: None,
            git_credentials_omitted: vec![false, false, false],
            resources: vec![
                ResourceQuantities {
                    cpu: "1".to_owned(),
                    memory: "2Gi".to_owned(),
                    ephemeral_storage: "10Gi".to_owned(),
                },
                ResourceQuantities {
                    cpu: "2".to_owned(),
                    memory: "8Gi".to_owned(),
                    ephemeral_storage: "10Gi".to_owned(),
                },
                ResourceQuantities {
                    cpu: "1".to_owned(),
                    memory: "512Mi".to_owned(),
                    ephemeral_storage: "10Gi".to_owned(),
                },
            ],
        }
    );
}

#[test]
fn request_values_within_caps_are_kept() {
    let req = request(json!({"timeoutSeconds": 7200, "retry": {"maxAttempts": 5}}));
    let a = example().admit(Some("payments"), &req).unwrap();
    assert_eq!(a.max_attempts, 5);
    assert_eq!(a.timeout, Duration::from_secs(7200));
}

#[test]
fn credentials_only_for_the_contexts_used() {
    let p = example();
    let s3_image = json!({
        "name": "etl",
        "context": { "s3": { "bucket": "contexts", "key": "etl.tar.gz" } },
        "destinations": ["ghcr.io/acme-data/etl:1"],
    });
    let a = p
        .admit(Some("data"), &request(json!({"images": [s3_image]})))
        .unwrap();
    assert_eq!(a.s3_credentials, p.tenant("data").unwrap().s3_credentials);
    assert!(a.git_credentials.is_none());
    assert_eq!(a.timeout, Duration::from_secs(600));

    let a = p
        .admit(
            Some("data"),
            &request(json!({"images": [image("etl", "ghcr.io/acme-data/etl:1")]})),
        )
        .unwrap();
    assert!(a.s3_credentials.is_none(), "git context: no S3 Secret");
}

#[test]
fn reports_every_violation_at_once() {
    let req = request(json!({
        "timeoutSeconds": 86400,
        "retry": { "maxAttempts": 9 },
        "images": [
            {
                "name": "a",
                "context": { "git": { "url": "https://github.com/acme/a.git" } },
                "destinations": ["registry.example.com/sandbox/a:1", "registry.other.io/x:1"],
                "resources": { "cpu": "3", "memory": "5Gi" },
            },
            image("b", "registry.example.com/sandbox/b:1"),
            image("c", "registry.example.com/sandboxes/c:1"),
            image("d", "registry.example.com/sandbox/d:1"),
            image("e", "registry.example.com/sandbox/e:1"),
        ],
    }));
    let errs = example().admit(Some("default"), &req).unwrap_err();
    assert_eq!(
        violation_paths(&errs),
        [
            "timeoutSeconds",
            "retry.maxAttempts",
            "images",
            "images[0].destinations[1]",
            "images[0].resources.cpu",
            "images[0].resources.memory",
            "images[2].destinations[0]",
        ]
    );
    let reasons: Vec<&str> = errs.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "86400 seconds is more than the 7200 allowed for tenant \"default\"",
            "9 attempts is more than the 4 allowed for tenant \"default\"",
            "5 images is more than the 4 per request allowed for tenant \"default\"; split the build",
            "registry.other.io/x:1 is not an allowed destination for tenant \"default\"; allowed prefixes: registry.example.com/sandbox",
            "\"3\" is more than the 2 CPU allowed for tenant \"default\"",
            "\"5Gi\" is more than the 4Gi memory allowed for tenant \"default\"",
            "registry.example.com/sandboxes/c:1 is not an allowed destination for tenant \"default\"; allowed prefixes: registry.example.com/sandbox",
        ]
    );
}

#[test]
fn the_brief_example_message() {
    let p = Policy::from_toml_str(
        "[tenants.payments]\nnamespace = \"p\"\nallowedDestinations = [\"registry.example.com/shop\"]\n",
    )
    .unwrap();
    let errs = p
        .admit(
            Some("payments"),
            &request(json!({"images": [image("x", "registry.other.io/x:1")]})),
        )
        .unwrap_err();
    assert_eq!(
        errs,
        [ValidationError::new(
            "images[0].destinations[0]",
            "registry.other.io/x:1 is not an allowed destination for tenant \"payments\"; allowed prefixes: registry.example.com/shop"
        )]
    );
}

#[test]
fn quantities_compare_numerically() {
    let p = example(); // payments: maxCpu 4, maxMemory 8Gi
    let with = |cpu: &str, memory: &str| {
        request(json!({"images": [{
            "name": "a",
            "context": { "url": "https://example.com/a.tar.gz" },
            "destinations": ["registry.example.com/payments/a:1"],
            "resources": { "cpu": cpu, "memory": memory },
        }]}))
    };
    for (cpu, memory) in [
        ("4000m", "8192Mi"),
        ("4", "8Gi"),
        ("0.5", "8589934592"),
        ("100m", "1G"),
    ] {
        assert!(
            p.admit(Some("payments"), &with(cpu, memory)).is_ok(),
            "{cpu} {memory}"
        );
    }
    for (cpu, memory, bad) in [
        ("4001m", "1Gi", "images[0].resources.cpu"),
        ("5", "1Gi", "images[0].resources.cpu"),
        ("1", "8.5Gi", "images[0].resources.memory"),
        ("1", "9G", "images[0].resources.memory"),
        ("1", "8589934593", "images[0].resources.memory"),
    ] {
        let errs = p.admit(Some("payments"), &with(cpu, memory)).unwrap_err();
        assert_eq!(violation_paths(&errs), [bad], "{cpu} {memory}");
    }
}

#[test]
fn unknown_tenant_falls_back_to_default_or_is_rejected() {
    let p = example();
    let req = request(json!({"images": [image("a", "registry.example.com/sandbox/a:1")]}));
    let a = p.admit(Some("someone-else"), &req).unwrap();
    assert_eq!(a.tenant, "default");
    assert_eq!(a.namespace, "kiln-builds");
    assert_eq!(p.admit(None, &req).unwrap().tenant, "default");

    // A user on the default policy is named as itself in violations.
    let req = request(json!({"images": [image("a", "registry.example.com/payments/a:1")]}));
    let errs = p.admit(Some("mallory"), &req).unwrap_err();
    assert!(
        errs[0]
            .reason
            .contains("for tenant \"mallory\" (\"default\" policy)"),
        "{errs:?}"
    );

    let no_default = Policy::from_toml_str(
        "[tenants.payments]\nnamespace = \"p\"\nallowedDestinations = [\"*\"]\n",
    )
    .unwrap();
    let errs = no_default.admit(Some("mallory"), &req).unwrap_err();
    assert_eq!(violation_paths(&errs), [ROOT_PATH]);
    assert!(
        errs[0].reason.contains("tenant \"mallory\" has no policy"),
        "{errs:?}"
    );
    let errs = no_default.admit(None, &req).unwrap_err();
    assert_eq!(violation_paths(&errs), [ROOT_PATH]);
    assert!(errs[0].reason.contains("no AMQP user_id"), "{errs:?}");
}

#[test]
fn single_tenant_allows_anything_within_builtin_caps() {
    let p = Policy::single_tenant("kiln-builds");
    assert_eq!(p.tenant_names().collect::<Vec<_>>(), ["default"]);
    assert_eq!(p.namespaces(), BTreeSet::from(["kiln-builds".to_owned()]));
    let req =
        request(json!({"images": [image("a", "quay.io/anyone/anything:1"), image("b", "alpine")]}));
    let a = p.admit(Some("whoever"), &req).unwrap();
    assert_eq!(a.tenant, "default");
    assert_eq!(a.namespace, "kiln-builds");
    assert_eq!(a.max_attempts, 3);
    assert_eq!(a.timeout, Duration::from_secs(3600));
    assert_eq!(a.service_account, "kiln-builder");
    assert_eq!(a.registry_secret, None);
    assert_eq!(a.resources.len(), 2);
    assert_eq!(a.resources[1].memory, "2Gi");

    let req = request(json!({"timeoutSeconds": 21601, "retry": {"maxAttempts": 6}}));
    let errs = p.admit(None, &req).unwrap_err();
    assert_eq!(
        violation_paths(&errs),
        ["timeoutSeconds", "retry.maxAttempts"]
    );
}

#[test]
fn invalid_request_values_are_reported_not_panicked_on() {
    // Protocol validation normally catches these first; admit must still
    // cope with an unvalidated request.
    let p = example();
    let req = request(json!({"images": [{
        "name": "a",
        "context": { "url": "https://example.com/a.tar.gz" },
        "destinations": ["Not A Reference"],
        "resources": { "cpu": "lots", "memory": "0" },
    }]}));
    let errs = p.admit(Some("payments"), &req).unwrap_err();
    assert_eq!(
        violation_paths(&errs),
        [
            "images[0].destinations[0]",
            "images[0].resources.cpu",
            "images[0].resources.memory"
        ]
    );
    assert!(
        errs[0].reason.contains("not a valid image reference"),
        "{errs:?}"
    );
    assert!(errs[2].reason.contains("must be more than 0"), "{errs:?}");
}

#[test]
fn namespaces_are_deduplicated() {
    let p = Policy::from_toml_str(
        r#"
[tenants.a]
namespace = "shared"
allowedDestinations = ["*"]
[tenants.b]
namespace = "shared"
allowedDestinations = ["*"]
[tenants.c]
namespace = "own"
allowedDestinations = ["*"]
"#,
    )
    .unwrap();
    assert_eq!(
        p.namespaces().into_iter().collect::<Vec<_>>(),
        ["own", "shared"]
    );
}

#[test]
fn quantity_parsing() {
    assert!(Quantity::parse("500m").is_ok());
    assert!(Quantity::parse("1.5Gi").is_ok());
    assert!(Quantity::parse("+2").is_ok());
    assert_eq!(
        Quantity::parse("1").unwrap(),
        Quantity::parse("1000m").unwrap()
    );
    assert!(Quantity::parse("Gi").is_err());
    assert!(Quantity::parse("").is_err());
    assert!(Quantity::parse("-1").is_err());
    assert!(Quantity::parse("0").is_err());
    assert!(Quantity::parse("1 Gi").is_err());
    assert!(Quantity::parse("1GB").is_err());
}

#[test]
fn quantity_comparison_is_exact_and_symmetric() {
    let q = |s: &str| Quantity::parse(s).unwrap();
    assert!(q("8589934593") > q("8Gi"));
    assert!(q("8Gi") < q("8589934593"));
    assert_eq!(q("8589934592"), q("8Gi"));
    assert_eq!(q("8192Mi"), q("8Gi"));
    assert!(q("8G") < q("8Gi"));
    assert_eq!(q("1e3"), q("1k"));
    assert_eq!(q("1E3"), q("1000"));
    assert_eq!(q("1E"), q("1e18"));
    assert_eq!(q("0.5"), q("500m"));
    assert_eq!(q(".5"), q("500m"));
    assert_eq!(q("1Ki"), q("1024"));
    assert_eq!(q("1.5Gi"), q("1536Mi"));
    assert!(q("4001m") > q("4"));
    assert_eq!(q("0.1n"), q("1n"), "rounded up to the nano-unit");
    assert!(q("8Ei") > q("8E"));
    assert!(Quantity::parse("1e40").is_err(), "too large to hold");
    assert!(Quantity::parse("1e").is_err());
    assert!(Quantity::parse("1.2.3").is_err());
    assert!(Quantity::parse(".").is_err());
    assert!(Quantity::parse("1Ki1").is_err());
}

#[test]
fn prefixes_need_a_registry_host() {
    for ok in [
        "localhost",
        "localhost:5000/x",
        "docker.io/acme",
        "10.0.0.1:5000/team",
    ] {
        assert!(DestinationPrefix::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "acme",
        "localhostfoo/x",
        "acme/app",
        "registry.example.com/x@sha256:abc",
        "registry.example.com/Team",
    ] {
        assert!(DestinationPrefix::parse(bad).is_err(), "{bad}");
    }
}

/// Issue 10: a build's disk is bounded like its memory, and a request asks
/// within the cap.
#[test]
fn ephemeral_storage_has_a_default_and_a_cap() {
    let p = Policy::from_toml_str(
        r#"
[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
runtimeClassName = "gvisor"
caps = { maxEphemeralStorage = "20Gi" }
defaults = { ephemeralStorage = "5Gi" }
"#,
    )
    .unwrap();
    let mut img = image("a", "r.example.com/a:1");
    let a = p
        .admit(Some("t"), &request(json!({ "images": [img.clone()] })))
        .unwrap();
    assert_eq!(a.resources[0].ephemeral_storage, "5Gi");
    assert_eq!(a.runtime_class_name.as_deref(), Some("gvisor"));
    img["resources"] = json!({ "ephemeralStorage": "21Gi" });
    let errs = p
        .admit(Some("t"), &request(json!({ "images": [img] })))
        .unwrap_err();
    assert_eq!(
        violation_paths(&errs),
        ["images[0].resources.ephemeralStorage"]
    );
    let problems = toml_problems(
        r#"
[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
runtimeClassName = "Not_A_Name"
defaults = { ephemeralStorage = "60Gi" }
"#,
    );
    assert_eq!(
        paths(&problems),
        [
            "tenants.t.defaults.ephemeralStorage",
            "tenants.t.runtimeClassName"
        ]
    );
}

/// Issue 10: a plain-http S3 endpoint sends the tenant's signed requests
/// in clear; allowed only when the policy says so.
#[test]
fn http_s3_endpoints_need_the_policy() {
    let problems = toml_problems(
        r#"
[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
s3Credentials = { secret = "s3", endpoint = "http://minio:9000" }
"#,
    );
    assert_eq!(paths(&problems), ["tenants.t.s3Credentials.endpoint"]);
    let text = |insecure: bool| {
        format!(
            "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\nallowInsecureS3Endpoint = {insecure}\n"
        )
    };
    let mut img = image("a", "r.example.com/a:1");
    img["context"] =
        json!({ "s3": { "bucket": "bkt", "key": "k.tgz", "endpoint": "http://minio:9000" } });
    let req = request(json!({ "images": [img] }));
    let strict = Policy::from_toml_str(&text(false)).unwrap();
    let errs = strict.admit(Some("t"), &req).unwrap_err();
    assert_eq!(violation_paths(&errs), ["images[0].context.s3.endpoint"]);
    let lax = Policy::from_toml_str(&text(true)).unwrap();
    assert!(lax.admit(Some("t"), &req).is_ok());
}

// ---------------------------------------------------------------------------
// Issue 18 item 7: credentials only to the hosts the policy lists.

fn git_policy(other_hosts: &str) -> Policy {
    Policy::from_toml_str(&format!(
        r#"
[tenants.shop]
namespace = "shop"
allowedDestinations = ["*"]
gitCredentials = {{ secret = "shop-git", hosts = ["github.com", "git.example.com:8443", "gitlab.example.com:443"]{other_hosts} }}
"#
    ))
    .unwrap()
}

fn git_image(name: &str, url: &str) -> serde_json::Value {
    json!({
        "name": name,
        "context": { "git": { "url": url } },
        "destinations": ["registry.example.com/shop/x:1"],
    })
}

#[test]
fn git_credentials_need_hosts() {
    let problems = toml_problems(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\ngitCredentials = { secret = \"git\" }\n",
    );
    assert_eq!(paths(&problems), ["tenants.t.gitCredentials.hosts"]);
    assert!(
        problems[0].reason.starts_with("is required"),
        "{problems:?}"
    );
    let problems = toml_problems(
        r#"
[tenants.t]
namespace = "t"
allowedDestinations = ["*"]
gitCredentials = { secret = "git", hosts = ["*.example.com", "https://github.com", "GitHub.com", "ok.example.com:22"] }
"#,
    );
    assert_eq!(
        paths(&problems),
        [
            "tenants.t.gitCredentials.hosts[0]",
            "tenants.t.gitCredentials.hosts[1]",
            "tenants.t.gitCredentials.hosts[2]",
        ]
    );
    assert!(problems[0].reason.contains("wildcard"), "{problems:?}");
    let problems = toml_problems(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\ngitCredentials = { secret = \"git\", hosts = [] }\n",
    );
    assert_eq!(paths(&problems), ["tenants.t.gitCredentials.hosts"]);
    let err = Policy::from_toml_str(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\ngitCredentials = { secret = \"git\", hosts = [\"github.com\"], otherHosts = \"send\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("otherHosts") && err.contains("omit"), "{err}");
}

#[test]
fn git_credentials_go_only_to_listed_hosts_and_ports() {
    let p = git_policy("");
    let req = request(json!({"images": [
        git_image("listed", "https://github.com/acme/cart.git"),
        git_image("other", "https://evil.example.com/acme/cart.git"),
        git_image("port", "https://git.example.com:8443/a/b.git"),
        git_image("wrong-port", "https://git.example.com/a/b.git"),
        git_image("default-port", "https://gitlab.example.com/a/b.git"),
        image("url", "registry.example.com/shop/y:1"),
    ]}));
    let mut req = req;
    req.images[5].context = serde_json::from_value(json!({"url": "https://e.com/c.tgz"})).unwrap();
    let a = p.admit(Some("shop"), &req).unwrap();
    assert_eq!(
        a.git_credentials_omitted,
        [false, true, false, true, false, false]
    );
    assert_eq!(
        a.git_credentials.as_ref().map(|g| g.secret.as_str()),
        Some("shop-git")
    );
    let plan =
        crate::plan::BuildPlan::new(&req, &a, vec![None; 6], jiff::Timestamp::UNIX_EPOCH, None);
    let omitted: Vec<bool> = plan
        .images
        .iter()
        .map(|i| i.git_credentials_omitted)
        .collect();
    assert_eq!(omitted, a.git_credentials_omitted);
    // Only unlisted hosts: no Secret at all in the admission.
    let only_other =
        request(json!({"images": [git_image("other", "https://evil.example.com/a/b.git")]}));
    let a = p.admit(Some("shop"), &only_other).unwrap();
    assert_eq!(a.git_credentials, None);
    assert_eq!(a.git_credentials_omitted, [true]);
}

#[test]
fn other_hosts_refuse_names_the_url_and_the_allowed_hosts() {
    let p = git_policy(", otherHosts = \"refuse\"");
    let req = request(json!({"images": [
        git_image("listed", "https://github.com/acme/cart.git"),
        git_image("other", "https://evil.example.com/acme/cart.git"),
    ]}));
    let errs = p.admit(Some("shop"), &req).unwrap_err();
    assert_eq!(violation_paths(&errs), ["images[1].context.git.url"]);
    assert_eq!(
        errs[0].reason,
        "\"evil.example.com\" is not a host the git credentials of tenant \"shop\" may be sent to; allowed hosts: github.com, git.example.com:8443, gitlab.example.com"
    );
    let ok = request(json!({"images": [git_image("listed", "https://github.com/acme/cart.git")]}));
    assert_eq!(
        p.admit(Some("shop"), &ok).unwrap().git_credentials_omitted,
        [false]
    );
}

/// S3 credentials without a policy endpoint are AWS's: a request naming
/// its own endpoint would have them sent there.
#[test]
fn s3_credentials_without_a_policy_endpoint_refuse_a_request_endpoint() {
    let p = Policy::from_toml_str(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\ns3Credentials = { secret = \"s3\" }\n",
    )
    .unwrap();
    let s3 = |endpoint: Option<&str>| {
        let mut ctx = json!({ "bucket": "contexts", "key": "c.tar.gz" });
        if let Some(e) = endpoint {
            ctx["endpoint"] = json!(e);
        }
        request(json!({"images": [{
            "name": "etl", "context": { "s3": ctx }, "destinations": ["r.example.com/etl:1"],
        }]}))
    };
    let errs = p
        .admit(Some("t"), &s3(Some("https://evil.example.com")))
        .unwrap_err();
    assert_eq!(violation_paths(&errs), ["images[0].context.s3.endpoint"]);
    assert!(errs[0].reason.contains("only to AWS S3"), "{errs:?}");
    assert!(p.admit(Some("t"), &s3(None)).is_ok());
    // The data tenant's endpoint wins over a request's (pod/spec.rs): admitted.
    let data_req = request(json!({"images": [{
        "name": "etl",
        "context": { "s3": { "bucket": "contexts", "key": "c.tgz", "endpoint": "https://other.example.com" } },
        "destinations": ["ghcr.io/acme-data/etl:1"],
    }]}));
    assert!(example().admit(Some("data"), &data_req).is_ok());
}

// ---------------------------------------------------------------------------
// Issue 18 item 12: build secrets only from the Secrets the policy lists.

#[test]
fn build_secrets_must_be_listed() {
    let p = example();
    let with = |secrets: serde_json::Value| {
        let mut img = image("api", "registry.example.com/payments/api:1");
        img["secrets"] = secrets;
        request(json!({ "images": [img] }))
    };
    let ok = with(json!({
        "npm": {"secret": "payments-npm", "key": "anything"},
        "pypi": {"secret": "ci-tokens", "key": "pypi"},
    }));
    assert!(p.admit(Some("payments"), &ok).is_ok());
    let bad = with(json!({
        "other": {"secret": "bank-tokens", "key": "npm"},
        "ci.key": {"secret": "ci-tokens", "key": "npm"},
    }));
    let errs = p.admit(Some("payments"), &bad).unwrap_err();
    assert_eq!(
        violation_paths(&errs),
        [
            "images[0].secrets[\"ci.key\"].secret",
            "images[0].secrets.other.secret"
        ]
    );
    assert_eq!(
        errs[1].reason,
        "Secret \"bank-tokens\" (key \"npm\") is not one the builds of tenant \"payments\" may mount; allowed (policy buildSecrets): payments-npm, ci-tokens/pypi"
    );
    // A tenant without buildSecrets may mount none.
    let errs = p.admit(
        Some("default"),
        &with(json!({"npm": {"secret": "payments-npm", "key": "k"}})),
    );
    let errs = errs.unwrap_err();
    let secret = errs
        .iter()
        .find(|e| e.path == "images[0].secrets.npm.secret");
    assert!(
        secret.is_some_and(|e| e.reason.ends_with("allowed (policy buildSecrets): none")),
        "{errs:?}"
    );
}

#[test]
fn build_secret_entries_are_checked() {
    let problems = toml_problems(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\nbuildSecrets = [\"ok\", \"Bad\", \"ok/bad key\", \"ok/.npmrc\"]\n",
    );
    assert_eq!(
        paths(&problems),
        ["tenants.t.buildSecrets[1]", "tenants.t.buildSecrets[2]"]
    );
}

/// Adoption trusts no plan: one that gives git credentials to an unlisted
/// host, or mounts a Secret the policy does not list, is refused.
#[test]
fn recheck_refuses_plans_that_send_credentials_or_secrets_elsewhere() {
    let p = git_policy("");
    let req = request(json!({"images": [git_image("other", "https://evil.example.com/a/b.git")]}));
    let a = p.admit(Some("shop"), &req).unwrap();
    let mut plan =
        crate::plan::BuildPlan::new(&req, &a, vec![None], jiff::Timestamp::UNIX_EPOCH, None);
    plan.deadline = plan.accepted_at + jiff::SignedDuration::from_secs(600);
    plan.max_attempts = 3;
    let clean = p.recheck(&plan);
    assert!(clean.is_empty(), "{clean:?}");
    let mut forged = plan.clone();
    forged.images[0].git_credentials_omitted = false;
    forged.git_secret = Some(crate::plan::SecretKeys {
        secret: "shop-git".into(),
        id_key: "username".into(),
        secret_key: "password".into(),
    });
    assert!(!p.recheck(&forged).is_empty());
    let mut forged = plan;
    forged.images[0].secrets.insert(
        "x".into(),
        kiln_protocol::SecretRef {
            secret: "bank-tokens".into(),
            key: "npm".into(),
        },
    );
    let why = p.recheck(&forged);
    assert!(
        why.iter().any(|w| w.contains("secrets.x.secret")),
        "{why:?}"
    );
}

/// Issue 18 item 7: Kaniko pushes the cache with the tenant's registry
/// credentials, so the cache repository obeys the destination prefixes.
#[test]
fn the_cache_repo_must_be_an_allowed_destination() {
    let problems = toml_problems(
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"registry.example.com/t\"]\ncacheRepo = \"registry.example.com/other/cache\"\n",
    );
    assert_eq!(paths(&problems), ["tenants.t.cacheRepo"]);
    assert!(
        problems[0].reason.contains("allowedDestinations"),
        "{problems:?}"
    );
    for ok in [
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"registry.example.com/t\"]\ncacheRepo = \"registry.example.com/t/cache\"\n",
        "[tenants.t]\nnamespace = \"t\"\nallowedDestinations = [\"*\"]\ncacheRepo = \"registry.example.com/any/cache\"\n",
    ] {
        assert!(Policy::from_toml_str(ok).is_ok(), "{ok}");
    }
}
