//! `kiln plan`, run as a separate process (the binary as `tests/cli.rs`
//! finds it): what it prints for the examples, for bad requests and for
//! tenants, and that it is what a worker really sends to the API.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use kiln_tests::binary::kiln_bin;
use kiln_tests::fakekube::pod_on_create;
use kiln_tests::harness::{Env, unique};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `kiln plan ARGS…` with none of the worker's settings from the
/// environment the tests run in, and no cluster.
fn plan(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(kiln_bin());
    for var in [
        "KILN_NAMESPACE",
        "KILN_POLICY",
        "KILN_KANIKO_IMAGE",
        "KILN_FETCH_IMAGE",
        "KILN_S3_REGION",
        "KILN_PUBLISH_IMAGE",
        "KILN_INSECURE_REGISTRIES",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("KUBECONFIG", "/nonexistent/kubeconfig")
        .arg("plan")
        .args(args)
        .output()
        .unwrap()
}

/// A directory of its own for a test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("kiln-plan"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The YAML stream on standard output, one value per document; panics
/// with standard error when the command failed.
fn objects(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("---\n"), "{stdout}");
    stdout
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc.trim_start_matches("---\n")).unwrap())
        .collect()
}

fn kinds(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect()
}

fn kaniko_args(pod: &Value) -> Vec<&str> {
    pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn policy_yaml() -> String {
    repo("examples/policy.yaml").display().to_string()
}

#[test]
fn plan_of_an_example_prints_its_pods_with_labels_and_args() {
    let out = plan(&[repo("examples/two-images.json").to_str().unwrap()]);
    let objs = objects(&out);
    let request: Value =
        serde_json::from_slice(&std::fs::read(repo("examples/two-images.json")).unwrap()).unwrap();
    let id = request["id"].as_str().unwrap();
    // The second image's Dockerfile is inline: its ConfigMap comes first.
    assert_eq!(kinds(&objs), ["ConfigMap", "Pod", "Pod"]);
    for (pod, image) in objs[1..].iter().zip(request["images"].as_array().unwrap()) {
        let name = image["name"].as_str().unwrap();
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(
            pod["metadata"]["name"],
            kiln_protocol::pod_name(id, name, 1)
        );
        assert_eq!(pod["metadata"]["namespace"], "kiln-builds");
        // The request's labels, then Kiln's own.
        let mut labels = request["labels"].clone();
        for (k, v) in [
            ("app.kubernetes.io/managed-by", "kiln".to_owned()),
            ("kiln.dev/build", kiln_protocol::label_value(id)),
            ("kiln.dev/image", name.to_owned()),
            ("kiln.dev/attempt", "1".to_owned()),
        ] {
            labels[k] = json!(v);
        }
        assert_eq!(pod["metadata"]["labels"], labels);
        assert_eq!(pod["metadata"]["labels"]["team"], "payments");
        assert_eq!(pod["metadata"]["annotations"]["kiln.dev/build-id"], id);
        assert_eq!(pod["metadata"]["annotations"]["kiln.dev/tenant"], "default");
        let args = kaniko_args(pod);
        for dest in image["destinations"].as_array().unwrap() {
            let flag = format!("--destination={}", dest.as_str().unwrap());
            assert!(args.contains(&flag.as_str()), "{flag} not in {args:?}");
        }
        // The worker's default executor, pinned.
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            kiln_worker::config::DEFAULT_KANIKO_IMAGE
        );
    }
}

#[test]
fn an_inline_dockerfile_comes_as_a_configmap_first() {
    let out = plan(&[
        repo("examples/inline-template.json").to_str().unwrap(),
        "--kaniko-image",
        "kaniko:planned",
        "--namespace",
        "elsewhere",
    ]);
    let objs = objects(&out);
    assert_eq!(kinds(&objs), ["ConfigMap", "Pod"]);
    let (cm, pod) = (&objs[0], &objs[1]);
    assert_eq!(
        cm["metadata"]["ownerReferences"][0]["name"],
        pod["metadata"]["name"]
    );
    assert!(
        cm["data"]["Dockerfile"]
            .as_str()
            .unwrap()
            .contains("RUN apk add --no-cache tini\n"),
        "{cm}"
    );
    // The worker's settings come from the same flags.
    assert_eq!(pod["metadata"]["namespace"], "elsewhere");
    assert_eq!(pod["spec"]["containers"][0]["image"], "kaniko:planned");
}

/// Issue 21: `kiln plan` shows every platform's pod and the publish pod.
#[test]
fn a_multi_platform_image_plans_a_pod_per_platform_and_the_publish_pod() {
    let dir = TempDir::new();
    let file = dir.path().join("request.json");
    let request = serde_json::json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": "mp-1",
        "images": [{
            "name": "api",
            "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
            "destinations": ["registry.example.com/shop/api:1.0"],
            "platforms": ["linux/amd64", "linux/arm64"]
        }]
    });
    std::fs::write(&file, request.to_string()).unwrap();
    let objects = objects(&plan(&[file.to_str().unwrap()]));
    assert_eq!(kinds(&objects), ["Pod", "Pod", "Pod"]);
    for (pod, platform, arch) in [
        (&objects[0], "linux/amd64", "amd64"),
        (&objects[1], "linux/arm64", "arm64"),
    ] {
        assert_eq!(
            pod["metadata"]["labels"]["kiln.dev/platform"],
            platform.replace('/', "-")
        );
        assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/arch"], arch);
        let args = kaniko_args(pod);
        assert!(
            args.contains(&format!("--custom-platform={platform}").as_str()),
            "{args:?}"
        );
        let dest = format!(
            "--destination=registry.example.com/shop/api:1.0-{}",
            platform.replace('/', "-")
        );
        assert!(args.contains(&dest.as_str()), "{args:?}");
    }
    let publish = &objects[2];
    assert_eq!(publish["metadata"]["labels"]["kiln.dev/step"], "publish");
    assert_eq!(publish["spec"]["containers"][0]["command"][1], "publish");
    let args = kaniko_args(publish);
    assert!(
        args.contains(&"--platform=linux/amd64=<digest of its pod>"),
        "{args:?}"
    );
    assert!(args.contains(&"--destination=registry.example.com/shop/api:1.0"));
}

#[test]
fn json_output_is_one_object_per_line() {
    let out = plan(&[
        repo("examples/inline-template.json").to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kinds(&lines), ["ConfigMap", "Pod"]);
}

#[test]
fn a_bad_request_prints_every_problem_with_its_path() {
    let dir = TempDir::new();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: kiln/v1\nkind: BuildRequest\nid: bad one\nimages:\n  - name: API\n    context: {}\n    destinations: []\n",
    )
    .unwrap();
    let out = plan(&[file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let name = file.display().to_string();
    for path in [
        "id",
        "images[0].name",
        "images[0].context",
        "images[0].destinations",
    ] {
        assert!(
            stderr.contains(&format!("{name}: {path}: ")),
            "{path} missing in:\n{stderr}"
        );
    }
    assert!(stderr.contains("(InvalidRequest)"), "{stderr}");
}

#[test]
fn a_policy_violation_and_a_template_error_name_their_paths() {
    let dir = TempDir::new();
    let file = dir.path().join("refused.json");
    let request = json!({
        "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "refused-1",
        "timeoutSeconds": 86_400,
        "images": [{
            "name": "api",
            "context": {"git": {"url": "https://github.com/acme/cart.git"}},
            "destinations": ["docker.io/elsewhere/api:1"],
        }],
    });
    std::fs::write(&file, request.to_string()).unwrap();
    let out = plan(&[file.to_str().unwrap(), "--policy", &policy_yaml()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for path in ["timeoutSeconds", "images[0].destinations[0]"] {
        assert!(stderr.contains(&format!(": {path}: ")), "{path}:\n{stderr}");
    }
    assert!(stderr.contains("(PolicyViolation)"), "{stderr}");

    let template = json!({
        "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "refused-2",
        "images": [{
            "name": "site",
            "context": {"url": "https://artifacts.example.com/site.tgz"},
            "dockerfileInline": "FROM {{ nowhere }}\n",
            "destinations": ["registry.example.com/site:1"],
        }],
    });
    std::fs::write(&file, template.to_string()).unwrap();
    let out = plan(&[file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(": images[0].dockerfileInline: "),
        "{stderr}"
    );
    assert!(stderr.contains("(ConfigError)"), "{stderr}");
}

#[test]
fn the_tenant_decides_namespace_service_account_and_secrets() {
    let dir = TempDir::new();
    let file = dir.path().join("cart.json");
    let request = json!({
        "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "cart-7",
        "images": [{
            "name": "api",
            "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "main"}},
            "cache": true,
            "destinations": ["registry.example.com/shop/cart/api:7"],
        }],
    });
    std::fs::write(&file, request.to_string()).unwrap();
    let file = file.to_str().unwrap();
    let policy = policy_yaml();

    let payments = objects(&plan(&[file, "--policy", &policy, "--tenant", "payments"]));
    let pod = &payments[0];
    assert_eq!(pod["metadata"]["namespace"], "kiln-payments");
    assert_eq!(
        pod["metadata"]["annotations"]["kiln.dev/tenant"],
        "payments"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "payments-builder");
    let env = &pod["spec"]["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().iter().any(|e| e
            == &json!({"name": "GIT_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "payments-git", "key": "token", "optional": false}}})),
        "{env}"
    );
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("payments-registry"), "{volumes}");
    assert!(
        kaniko_args(pod).contains(&"--cache-repo=registry.example.com/payments/cache"),
        "{:?}",
        kaniko_args(pod)
    );

    // The default tenant may not push there: the same request is refused.
    let out = plan(&[file, "--policy", &policy]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(": images[0].destinations[0]: "),
        "{}",
        text(&out.stderr)
    );
    // A user with no entry of its own gets the default tenant's policy.
    let out = plan(&[file, "--policy", &policy, "--tenant", "stranger"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_request_without_id_is_planned_under_a_fresh_ulid_and_says_so() {
    let dir = TempDir::new();
    let file = dir.path().join("no-id.yaml");
    let body = std::fs::read_to_string(repo(".ci/plan/all-fields.yaml"))
        .unwrap()
        .replace("id: all-fields-1\n", "");
    std::fs::write(&file, body).unwrap();
    let policy = repo(".ci/plan/policy.yaml");
    let out = plan(&[file.to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
    let objs = objects(&out);
    let id = objs[1]["metadata"]["annotations"]["kiln.dev/build-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ulid::Ulid::from_string(&id).is_ok(), "{id}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("planned under {id}")), "{stderr}");
    let with_id = objects(&plan(&[
        file.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--id",
        "chosen-1",
    ]));
    assert_eq!(
        with_id[1]["metadata"]["annotations"]["kiln.dev/build-id"],
        "chosen-1"
    );
}

// ------------------------------------------------ plan = what the API got

/// What the API server adds to an object on create (its uid, version,
/// timestamps, the pod's defaults and status, the scheduler's node): taken
/// out of both sides, so that everything else must be equal.
fn without_server_fields(mut obj: Value) -> Value {
    if obj["kind"] == "Pod" {
        // The fake's own defaulting, as a real API server's.
        pod_on_create(&mut obj);
    }
    let o = obj.as_object_mut().unwrap();
    o.remove("status");
    let meta = o["metadata"].as_object_mut().unwrap();
    for f in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
        meta.remove(f);
    }
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
    }
    obj
}

/// The plan annotation without the moment of acceptance (the plan's and
/// the worker's clocks differ), and `activeDeadlineSeconds` (counted from
/// that moment) once it is checked to be close.
fn without_times(mut pod: Value, other_deadline: i64) -> Value {
    let deadline = pod["spec"]["activeDeadlineSeconds"].as_i64().unwrap();
    assert!(
        (deadline - other_deadline).abs() <= 10,
        "{deadline} vs {other_deadline}"
    );
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .remove("activeDeadlineSeconds");
    let ann = &mut pod["metadata"]["annotations"]["kiln.dev/plan"];
    let mut plan: Value = serde_json::from_str(ann.as_str().unwrap()).unwrap();
    for f in ["acceptedAt", "deadline"] {
        assert!(plan.as_object_mut().unwrap().remove(f).is_some(), "{f}");
    }
    *ann = plan;
    // The spec hash covers the plan annotation, acceptedAt and deadline
    // included: the plan's and the worker's differ by when each was made.
    // It is a 64-hex-digit sha256 in both.
    let hash = &mut pod["metadata"]["annotations"]["kiln.dev/spec-sha256"];
    assert!(
        hash.as_str()
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{hash}"
    );
    *hash = Value::String("<sha256>".into());
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_is_what_the_worker_sends_to_the_api() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(60));
    let policy = repo(".ci/plan/policy.yaml");
    let request = repo(".ci/plan/all-fields.yaml");
    let id = format!("all-fields-{}", env.prefix.rsplit('-').next().unwrap());
    let p = policy.clone();
    env.start_worker_with(move |c| {
        c.build.policy = Some(p);
        c.build.kaniko_image = "kaniko:plan".into();
        c.build.fetch_image = "curl:plan".into();
        c.build.s3_region = "ap-south-1".into();
    });
    let mut body: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&request).unwrap()).unwrap();
    body["id"] = json!(id);
    let dir = TempDir::new();
    let file = dir.path().join("request.json");
    std::fs::write(&file, body.to_string()).unwrap();
    // No AMQP user_id: the `default` tenant, `kiln plan`'s default.
    env.publish(&body).await;
    let planned = objects(&plan(&[
        file.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--kaniko-image",
        "kaniko:plan",
        "--fetch-image",
        "curl:plan",
        "--s3-region",
        "ap-south-1",
    ]));
    assert_eq!(kinds(&planned), ["ConfigMap", "Pod", "Pod", "Pod"]);
    let ns = planned[1]["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        env.eventually(WAIT, |e| e.kube.pods(&ns).len() == 3
            && e.kube.configmaps(&ns).len() == 1)
            .await,
        "the worker created {} pods",
        env.kube.pods(&ns).len()
    );
    for mut want in planned {
        let name = want["metadata"]["name"].as_str().unwrap().to_owned();
        let name = name.as_str();
        let got = if want["kind"] == "Pod" {
            serde_json::to_value(env.kube.pod(&ns, name).unwrap()).unwrap()
        } else {
            serde_json::to_value(env.kube.configmap(&ns, name).unwrap()).unwrap()
        };
        if want["kind"] == "ConfigMap" {
            // The owner's uid is the created pod's.
            let owner = want["metadata"]["ownerReferences"][0]["name"]
                .as_str()
                .unwrap();
            let uid = env.kube.pod(&ns, owner).unwrap().metadata.uid.unwrap();
            want["metadata"]["ownerReferences"][0]["uid"] = json!(uid);
        }
        let (mut want, mut got) = (without_server_fields(want), without_server_fields(got));
        if want["kind"] == "Pod" {
            let d = got["spec"]["activeDeadlineSeconds"].as_i64().unwrap();
            want = without_times(want, d);
            got = without_times(got, d);
        }
        assert_eq!(want, got, "{name}: plan (left) and API (right) differ");
    }
    env.cleanup().await;
}

// ------------------------------------------------ credentials and warnings

/// Issue 18 items 7, 11 and 12: `kiln plan` says which images get the git
/// credentials and why one does not, shows each build secret mount, and
/// warns about a build arg whose name looks secret; `kiln validate` gives
/// the same warning (`warnings` in JSON). Never a value.
#[test]
fn plan_and_validate_say_where_credentials_go_and_warn_about_secret_build_args() {
    let dir = TempDir::new();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[tenants.default]
namespace = "kiln-shop"
allowedDestinations = ["registry.example.com/shop"]
buildSecrets = ["ci-tokens"]
gitCredentials = { secret = "shop-git", hosts = ["github.com"] }
"#,
    )
    .unwrap();
    let request = dir.path().join("build.json");
    let body = json!({
        "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "creds-1",
        "images": [
            {"name": "api", "context": {"git": {"url": "https://github.com/acme/cart.git"}},
             "destinations": ["registry.example.com/shop/api:1"],
             "buildArgs": {"NPM_TOKEN": "npm_s3cr3tvalue", "VERSION": "1"},
             "secrets": {"npm": {"secret": "ci-tokens", "key": "npmrc"}}},
            {"name": "tools", "context": {"git": {"url": "https://git.evil.example/acme/tools.git"}},
             "destinations": ["registry.example.com/shop/tools:1"]}
        ]
    });
    std::fs::write(&request, serde_json::to_vec(&body).unwrap()).unwrap();
    let request = request.to_str().unwrap();
    let out = plan(&[request, "--policy", policy.to_str().unwrap()]);
    let objs = objects(&out);
    let stderr = text(&out.stderr);
    for want in [
        ": images[0].buildArgs.NPM_TOKEN: NPM_TOKEN looks like a secret",
        "images[0] (api): git credentials from Secret \"shop-git\"",
        "images[0] (api): build secret npm: Secret \"ci-tokens\" key \"npmrc\" at /kaniko/build-secrets/npm/npmrc",
        "images[1] (tools): git credentials omitted: git.evil.example is not in tenants.default.gitCredentials.hosts (github.com)",
    ] {
        assert!(stderr.contains(want), "{want}\n{stderr}");
    }
    assert!(!stderr.contains("npm_s3cr3tvalue"), "{stderr}");
    let tools = objs
        .iter()
        .find(|o| o["metadata"]["labels"]["kiln.dev/image"] == "tools")
        .unwrap();
    assert!(
        !tools["spec"].to_string().contains("secretKeyRef"),
        "{tools}"
    );

    let out = Command::new(kiln_bin())
        .args(["validate", request])
        .output()
        .unwrap();
    assert!(out.status.success(), "a warning is not a refusal");
    assert!(
        text(&out.stderr).contains("warning: ")
            && text(&out.stderr).contains("NPM_TOKEN looks like a secret"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(kiln_bin())
        .args(["validate", "-o", "json", request])
        .output()
        .unwrap();
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["valid"], true);
    assert_eq!(
        verdict["warnings"][0]["path"],
        "images[0].buildArgs.NPM_TOKEN"
    );
    assert!(!text(&out.stdout).contains("npm_s3cr3tvalue"));
}
