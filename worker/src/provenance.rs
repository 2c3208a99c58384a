//! The worker's side of signed provenance (docs/protocol.md, "Provenance"):
//! what goes into the statement of a succeeded attempt, from the plan the
//! pods carry and the pod the worker watched, signed with the key of
//! `--provenance-key`. Everything is a function of the plan, the pod and the
//! settings, never of the clock or of this worker's memory, so a worker
//! that adopts the build and re-publishes the event signs the same bytes.
//!
//! The key stays in this process: no pod spec refers to it (the tests read
//! every pod the worker creates to hold that).

use std::path::Path;
use std::sync::Arc;

use std::collections::BTreeMap;

use kiln_protocol::provenance::{
    AttemptFacts, Envelope, ResourceDescriptor, SigningKey, git_dependency, image_dependency,
    sign_statement, statement_about, statement_for, subject_of,
};
use kiln_protocol::{API_VERSION, BUILD_REQUEST_KIND, MASK, mask_text, redact_url};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::classify::PodView;
use crate::machine::Attest;
use crate::plan::{BuildPlan, ImagePlan, Step};
use crate::pod::{PodSettings, PodUnit, container_args, pod_spec, unit_pod_spec};

/// Signs provenance with the worker's key.
pub struct Attestor {
    key: SigningKey,
    /// `runDetails.builder.id`: the installation, `urn:kiln:<cluster>`
    /// (the events' `source`).
    builder_id: String,
    pods: PodSettings,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("keyid", &self.key.keyid())
            .field("builder_id", &self.builder_id)
            .finish_non_exhaustive()
    }
}

impl Attestor {
    pub fn new(key: SigningKey, builder_id: String, pods: PodSettings) -> Self {
        Self {
            key,
            builder_id,
            pods,
        }
    }

    /// Reads the PEM key file once, at start; the error names the setting.
    pub fn load(path: &Path, builder_id: String, pods: PodSettings) -> Result<Arc<Self>, String> {
        const SETTING: &str = "--provenance-key (KILN_PROVENANCE_KEY)";
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("{SETTING}: cannot read {}: {e}", path.display()))?;
        let key = SigningKey::from_pem(&pem)
            .map_err(|e| format!("{SETTING}: {}: {e}", path.display()))?;
        Ok(Arc::new(Self::new(key, builder_id, pods)))
    }

    pub fn keyid(&self) -> &str {
        self.key.keyid()
    }
}

impl Attest for Attestor {
    fn attest(
        &self,
        plan: &BuildPlan,
        image: usize,
        attempt: u32,
        digest: &str,
        pod: &PodView,
    ) -> Option<Envelope> {
        let spec = plan.images.get(image)?;
        // A multi-platform image's digest is its index, which the publish
        // pod (Kiln's own image) assembled from the platforms' manifests:
        // that image is the dependency the pod reports, and the executor's
        // argv is given per platform.
        let (ran, internal_parameters) = if spec.platforms.is_empty() {
            (
                &self.pods.kaniko_image,
                self.internal_parameters(plan, image, attempt),
            )
        } else {
            (
                &self.pods.publish_image,
                self.platforms_internal_parameters(plan, image),
            )
        };
        let mut dependencies: Vec<ResourceDescriptor> = source(spec).into_iter().collect();
        dependencies.extend(
            pod.executor_image_id
                .as_deref()
                .and_then(|id| image_dependency(ran, id)),
        );
        let terminated = pod.terminated.as_ref();
        let statement = statement_for(AttemptFacts {
            build_id: &plan.id,
            image: &spec.name,
            attempt,
            destinations: &spec.destinations,
            digest,
            external_parameters: external_parameters(plan, &spec.name),
            internal_parameters,
            resolved_dependencies: dependencies,
            builder_id: &self.builder_id,
            started_on: terminated.and_then(|t| t.started_at),
            finished_on: terminated.and_then(|t| t.finished_at),
        })?;
        Some(sign_statement(&self.key, &statement))
    }

    /// The platform manifests of a multi-platform image, signed before the
    /// publish step runs: one subject per platform and destination (the
    /// per-platform tag the platform's pod pushed, with its digest and the
    /// annotation `platform`). Only the plan and the digests go in (no
    /// pod's times or executor id: the adopting worker may find the
    /// platform pods gone), so it is the same bytes from every worker.
    fn attest_platforms(
        &self,
        plan: &BuildPlan,
        image: usize,
        attempt: u32,
        platform_digests: &BTreeMap<String, String>,
    ) -> Option<Envelope> {
        let spec = plan.images.get(image)?;
        let mut subject = Vec::new();
        for (k, platform) in spec.platforms.iter().enumerate() {
            let digest = platform_digests.get(platform)?;
            for destination in spec.for_platform(k).destinations {
                subject.push(subject_of(&destination, digest, Some(platform))?);
            }
        }
        let statement = statement_about(
            subject,
            AttemptFacts {
                build_id: &plan.id,
                image: &spec.name,
                attempt,
                destinations: &[],
                digest: "",
                external_parameters: external_parameters(plan, &spec.name),
                internal_parameters: self.platforms_internal_parameters(plan, image),
                resolved_dependencies: source(spec).into_iter().collect(),
                builder_id: &self.builder_id,
                started_on: None,
                finished_on: None,
            },
        );
        Some(sign_statement(&self.key, &statement))
    }
}

impl Attestor {
    /// What the policy and the worker's settings added: where and as whom
    /// the pod ran, the caps applied, and the executor's image and argv as
    /// the pod spec has them (build-arg values masked like the request's).
    fn internal_parameters(&self, plan: &BuildPlan, i: usize, attempt: u32) -> Value {
        // The argv does not depend on the time; the deadline field does.
        let pod = pod_spec(&self.pods, plan, i, attempt, plan.accepted_at);
        let args = masked_args(&container_args(&pod), &plan.images[i]);
        Self::settings_applied(
            plan,
            i,
            json!({"image": self.pods.kaniko_image, "args": args}),
        )
    }

    /// As [`Attestor::internal_parameters`], with the executor's argv per
    /// platform (`executor.platforms`, platform to `args`: the argv is the
    /// same for every attempt of a platform) and the image of the publish
    /// step (`executor.publishImage`).
    fn platforms_internal_parameters(&self, plan: &BuildPlan, i: usize) -> Value {
        let image = &plan.images[i];
        let platforms: Map<String, Value> = image
            .platforms
            .iter()
            .enumerate()
            .map(|(k, platform)| {
                let unit = PodUnit {
                    image: i,
                    step: Step::Platform(k),
                    attempt: 1,
                    platform_digests: BTreeMap::new(),
                    attachment: None,
                };
                let pod = unit_pod_spec(&self.pods, plan, &unit, plan.accepted_at);
                let args = masked_args(&container_args(&pod), image);
                (platform.clone(), json!({ "args": args }))
            })
            .collect();
        Self::settings_applied(
            plan,
            i,
            json!({
                "image": self.pods.kaniko_image,
                "platforms": platforms,
                "publishImage": self.pods.publish_image,
            }),
        )
    }

    /// Where and as whom the pods ran, the caps applied, and `executor`.
    fn settings_applied(plan: &BuildPlan, i: usize, executor: Value) -> Value {
        let image = &plan.images[i];
        let timeout = plan.deadline.duration_since(plan.accepted_at).as_secs();
        let mut resources = Map::new();
        resources.insert("cpu".into(), json!(image.cpu));
        resources.insert("memory".into(), json!(image.memory));
        insert(
            &mut resources,
            "ephemeralStorage",
            image.ephemeral_storage.as_deref(),
        );
        let mut out = Map::new();
        out.insert("namespace".into(), json!(plan.namespace));
        out.insert("serviceAccount".into(), json!(plan.service_account));
        insert(
            &mut out,
            "runtimeClassName",
            plan.runtime_class_name.as_deref(),
        );
        out.insert("maxAttempts".into(), json!(plan.max_attempts));
        out.insert("timeoutSeconds".into(), json!(timeout));
        out.insert("resources".into(), Value::Object(resources));
        insert(&mut out, "cacheRepo", plan.cache_repo.as_deref());
        insert(&mut out, "registrySecret", plan.registry_secret.as_deref());
        out.insert("executor".into(), executor);
        Value::Object(out)
    }
}

/// The Kaniko container's argv, build-arg values masked.
fn masked_args(args: &[String], image: &ImagePlan) -> Vec<String> {
    let known = kiln_protocol::secret_build_arg_values(&image.build_args);
    args.iter().map(|a| masked_arg(a, image, &known)).collect()
}

/// A Kaniko argument with secret build-arg values masked.
fn masked_arg(arg: &str, image: &ImagePlan, known: &[&str]) -> String {
    if let Some(kv) = arg.strip_prefix("--build-arg=")
        && let Some((name, _)) = kv.split_once('=')
        && image.build_args.contains_key(name)
    {
        return format!(
            "--build-arg={name}={}",
            masked_value(name, &image.build_args[name], known)
        );
    }
    // `--secret=id=<id>,src=<path>` names a file, never a value (ids and
    // paths are validated); the masker would take it for `secret=<value>`.
    if arg.starts_with("--secret=id=") {
        return arg.to_owned();
    }
    mask_text(arg, known)
}

fn masked_value(name: &str, value: &str, known: &[&str]) -> String {
    if kiln_protocol::secret_looking_name(name) {
        MASK.to_owned()
    } else {
        mask_text(value, known)
    }
}

/// What the tenant asked for: the request as the plan keeps it (every
/// image, so a verifier sees the siblings too), secrets masked, with the
/// fingerprint of the request as received, the image this statement is
/// about and the tenant. An inline Dockerfile is given as the SHA-256 of its
/// rendered text: the statement stays small, and a verifier holding the
/// Dockerfile can compare.
fn external_parameters(plan: &BuildPlan, image: &str) -> Value {
    let mut request = Map::new();
    request.insert("apiVersion".into(), json!(API_VERSION));
    request.insert("kind".into(), json!(BUILD_REQUEST_KIND));
    request.insert("id".into(), json!(plan.id));
    insert(&mut request, "app", plan.app.as_deref());
    insert(&mut request, "component", plan.component.as_deref());
    if !plan.labels.is_empty() {
        request.insert("labels".into(), json!(plan.labels));
    }
    request.insert(
        "images".into(),
        plan.images.iter().map(image_parameters).collect(),
    );
    json!({
        "request": request,
        "image": image,
        "fingerprint": plan.fingerprint,
        "tenant": plan.tenant,
    })
}

fn image_parameters(image: &ImagePlan) -> Value {
    let known = kiln_protocol::secret_build_arg_values(&image.build_args);
    let mut out = Map::new();
    out.insert("name".into(), json!(image.name));
    let mut context = serde_json::to_value(&image.context).unwrap_or(Value::Null);
    for pointer in ["/git/url", "/url"] {
        if let Some(url) = context.pointer_mut(pointer)
            && let Some(u) = url.as_str()
        {
            *url = json!(redact_url(u));
        }
    }
    out.insert("context".into(), context);
    match &image.rendered_dockerfile {
        Some(text) => {
            let hex = format!("{:x}", Sha256::digest(text.as_bytes()));
            out.insert("dockerfileInlineSha256".into(), json!(hex));
        }
        None => {
            out.insert("dockerfile".into(), json!(image.dockerfile));
        }
    }
    if !image.build_args.is_empty() {
        let args: Map<String, Value> = image
            .build_args
            .iter()
            .map(|(k, v)| (k.clone(), json!(masked_value(k, v, &known))))
            .collect();
        out.insert("buildArgs".into(), Value::Object(args));
    }
    // References (Secret and key), never values: Kiln never reads them.
    if !image.secrets.is_empty() {
        out.insert("secrets".into(), json!(image.secrets));
    }
    insert(&mut out, "target", image.target.as_deref());
    out.insert("destinations".into(), json!(image.destinations));
    insert(&mut out, "platform", image.platform.as_deref());
    if !image.platforms.is_empty() {
        out.insert("platforms".into(), json!(image.platforms));
    }
    out.insert("cache".into(), json!(image.cache));
    Value::Object(out)
}

/// The build context as a resolved dependency: git with its commit when
/// the request pinned one (Kaniko reports none it resolved), S3 and url
/// contexts by location (their digest is not observed).
fn source(image: &ImagePlan) -> Option<ResourceDescriptor> {
    let ctx = &image.context;
    if let Some(git) = &ctx.git {
        return Some(git_dependency(
            &redact_url(&git.url),
            git.git_ref.as_deref(),
            git.commit.as_deref(),
        ));
    }
    let uri = match (&ctx.s3, &ctx.url) {
        (Some(s3), _) => format!("s3://{}/{}", s3.bucket, s3.key),
        (None, Some(url)) => redact_url(url),
        (None, None) => return None,
    };
    Some(ResourceDescriptor {
        uri: Some(uri),
        ..ResourceDescriptor::default()
    })
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        map.insert(key.into(), json!(v));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use kiln_protocol::provenance::verify_envelope;
    use kiln_protocol::{BuildContext, GitContext};

    use super::*;
    use crate::classify::{PodPhase, Terminated};
    use crate::plan::ImagePlan;

    /// A P-256 key made for this test only.
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKIDefxt9iTwW5l8m
dIUEizCmBHl/jT5PVe4/QVCZinqhRANCAAT7fjucY1YXZE0HpXqroJ0YCp9sw2xZ
VWbYFlhVY28TqBWXO0ftlSNcUA49/rZjwGzwv96N9gmb1TFe/yxhJZtv
-----END PRIVATE KEY-----
";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const SECRET: &str = "s3cr3t-value-of-a-token";

    fn attestor() -> Attestor {
        Attestor::new(
            SigningKey::from_pem(KEY).unwrap(),
            "urn:kiln:test".into(),
            PodSettings {
                kaniko_image: "ghcr.io/osscontainertools/kaniko:v1.28.3".into(),
                fetch_image: "curl:test".into(),
                s3_region: "us-east-1".into(),
                ..PodSettings::default()
            },
        )
    }

    fn plan() -> BuildPlan {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let image = |name: &str, context: BuildContext| ImagePlan {
            name: name.into(),
            context,
            dockerfile: "Dockerfile".into(),
            rendered_dockerfile: None,
            build_args: BTreeMap::from([
                ("VERSION".into(), "1.2.3".into()),
                ("NPM_TOKEN".into(), SECRET.into()),
            ]),
            target: None,
            destinations: vec![
                format!("registry.example.com/shop/{name}:1.2.3"),
                format!("registry.example.com/shop/{name}:latest"),
            ],
            platform: None,
            platforms: Vec::new(),
            cache: false,
            cpu: "1".into(),
            memory: "2Gi".into(),
            ephemeral_storage: Some("10Gi".into()),
            git_credentials_omitted: false,
            secrets: BTreeMap::from([(
                "npm".to_owned(),
                kiln_protocol::SecretRef {
                    secret: "ci-tokens".into(),
                    key: "npmrc".into(),
                },
            )]),
        };
        let mut web = image(
            "web",
            BuildContext {
                git: None,
                s3: None,
                url: Some(format!(
                    "https://user:pw@example.com/c.tar.gz?X-Amz-Signature={SECRET}"
                )),
            },
        );
        web.rendered_dockerfile = Some("FROM scratch\n".into());
        BuildPlan {
            id: "shop-1".into(),
            tenant: "shop".into(),
            fingerprint: "f".repeat(64),
            namespace: "kiln-shop".into(),
            app: Some("shop".into()),
            component: None,
            labels: BTreeMap::new(),
            max_attempts: 3,
            accepted_at: now,
            deadline: now + jiff::SignedDuration::from_secs(3600),
            traceparent: None,
            service_account: "kiln-builder".into(),
            registry_secret: Some("shop-registry".into()),
            git_secret: None,
            s3_secret: None,
            s3_region: None,
            s3_endpoint: None,
            cache_repo: None,
            runtime_class_name: Some("gvisor".into()),
            images: vec![
                image(
                    "api",
                    BuildContext {
                        git: Some(GitContext {
                            url: "https://git.example.com/shop/cart.git".into(),
                            git_ref: Some("main".into()),
                            commit: Some(COMMIT.into()),
                            sub_path: None,
                        }),
                        s3: None,
                        url: None,
                    },
                ),
                web,
            ],
        }
    }

    fn pod(image_id: Option<&str>) -> PodView {
        PodView {
            namespace: "kiln-shop".into(),
            name: "kiln-shop-1-api-2".into(),
            image: "api".into(),
            attempt: 2,
            phase: Some(PodPhase::Succeeded),
            terminated: Some(Terminated {
                started_at: Some("2027-01-15T08:00:00Z".parse().unwrap()),
                finished_at: Some("2027-01-15T08:03:30Z".parse().unwrap()),
                ..Terminated::default()
            }),
            executor_image_id: image_id.map(str::to_owned),
            ..PodView::default()
        }
    }

    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    #[test]
    fn the_statement_says_what_the_worker_saw_and_hides_secrets() {
        let a = attestor();
        let executor = format!(
            "ghcr.io/osscontainertools/kaniko@sha256:{}",
            "cd".repeat(32)
        );
        let envelope = a
            .attest(&plan(), 0, 2, &digest(), &pod(Some(&executor)))
            .unwrap();
        // Another worker re-publishing the event signs the same bytes.
        assert_eq!(
            a.attest(&plan(), 0, 2, &digest(), &pod(Some(&executor))),
            Some(envelope.clone())
        );
        let payload = String::from_utf8(envelope.payload_bytes().unwrap()).unwrap();
        assert!(!payload.contains(SECRET), "{payload}");
        assert!(!payload.contains("pw@"), "{payload}");

        let s = verify_envelope(a.key.verifying_key(), &envelope).unwrap();
        let names: Vec<_> = s.subject.iter().map(|x| x.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "registry.example.com/shop/api:1.2.3",
                "registry.example.com/shop/api:latest"
            ]
        );
        assert!(
            s.subject
                .iter()
                .all(|x| x.digest_of("sha256") == Some(&"ab".repeat(32)[..]))
        );
        let p = &s.predicate;
        assert_eq!(p.run_details.builder.id, "urn:kiln:test");
        assert_eq!(
            p.run_details.metadata.invocation_id.as_deref(),
            Some("shop-1/api/2")
        );
        assert_eq!(
            p.run_details.metadata.started_on,
            Some("2027-01-15T08:00:00Z".parse().unwrap())
        );
        let deps = &p.build_definition.resolved_dependencies;
        assert_eq!(
            deps[0].uri.as_deref(),
            Some("git+https://git.example.com/shop/cart.git@main")
        );
        assert_eq!(deps[0].digest_of("gitCommit"), Some(COMMIT));
        assert_eq!(
            deps[1].uri.as_deref(),
            Some("oci://ghcr.io/osscontainertools/kaniko")
        );
        assert_eq!(deps[1].digest_of("sha256"), Some(&"cd".repeat(32)[..]));

        let ext = &p.build_definition.external_parameters;
        assert_eq!(ext["image"], "api");
        assert_eq!(ext["fingerprint"], "f".repeat(64));
        assert_eq!(ext["request"]["images"][0]["buildArgs"]["NPM_TOKEN"], MASK);
        assert_eq!(ext["request"]["images"][0]["buildArgs"]["VERSION"], "1.2.3");
        assert!(ext["request"]["images"][1]["dockerfileInlineSha256"].is_string());
        // Issue 18 item 12: build secrets appear as references only.
        assert_eq!(
            ext["request"]["images"][0]["secrets"],
            json!({"npm": {"secret": "ci-tokens", "key": "npmrc"}})
        );
        let int = &p.build_definition.internal_parameters;
        assert_eq!(int["namespace"], "kiln-shop");
        assert_eq!(int["runtimeClassName"], "gvisor");
        assert_eq!(int["timeoutSeconds"], 3600);
        let args: Vec<&str> = int["executor"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--build-arg=NPM_TOKEN=***"), "{args:?}");
        assert!(
            args.contains(&"--secret=id=npm,src=/kaniko/build-secrets/npm/npmrc"),
            "{args:?}"
        );
        assert!(
            args.contains(&"--digest-file=/dev/termination-log"),
            "{args:?}"
        );
    }

    #[test]
    fn without_an_image_id_the_executor_is_left_out_not_guessed() {
        let envelope = attestor()
            .attest(&plan(), 1, 1, &digest(), &pod(None))
            .unwrap();
        let s = verify_envelope(attestor().key.verifying_key(), &envelope).unwrap();
        let deps = &s.predicate.build_definition.resolved_dependencies;
        assert_eq!(deps.len(), 1, "{deps:?}");
        // The url context, its credentials and query string masked.
        let uri = deps[0].uri.as_deref().unwrap();
        assert!(
            uri.starts_with("https://") && !uri.contains(SECRET) && !uri.contains("pw"),
            "{uri}"
        );
        // No statement for a digest that is not sha256.
        assert!(
            attestor()
                .attest(&plan(), 0, 1, "md5:00", &pod(None))
                .is_none()
        );
    }

    /// The `image.succeeded` envelopes among `actions`.
    fn envelopes(actions: &[crate::machine::Action]) -> Vec<Envelope> {
        actions
            .iter()
            .filter_map(|a| match a {
                crate::machine::Action::Publish(ev) => ev.data.provenance.clone(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_worker_that_adopts_the_build_republishes_the_same_envelope() {
        use crate::machine::{Input, Machine, Settings};
        let settings = Arc::new(Settings {
            pending_timeout: std::time::Duration::from_secs(60),
            retry_base_delay: std::time::Duration::from_secs(1),
            retry_max_delay: std::time::Duration::from_secs(2),
            source: "urn:kiln:test".into(),
            worker: "w1".into(),
            provenance: Some(Arc::new(attestor())),
        });
        let plan = Arc::new(plan());
        let now = std::time::Instant::now();
        let executor = format!("kaniko@sha256:{}", "cd".repeat(32));
        let mut done = pod(Some(&executor));
        done.terminated.as_mut().unwrap().message = Some(digest());
        let mut running = done.clone();
        running.phase = Some(PodPhase::Running);
        running.terminated = None;
        running.running_since = Some("2027-01-15T08:00:00Z".parse().unwrap());

        // One worker watches attempt 2 run, then succeed.
        let mut m = Machine::adopt(
            plan.clone(),
            settings.clone(),
            &[running],
            now,
            plan.accepted_at,
        )
        .0;
        let wall = plan.accepted_at + jiff::SignedDuration::from_secs(300);
        let seen = m.handle(
            Input::Observed {
                pod: Box::new(done.clone()),
                log_tail: None,
            },
            now,
            wall,
        );
        // Another worker adopts the build after the success, an hour later,
        // and publishes the outcome again.
        let later = wall + jiff::SignedDuration::from_secs(3600);
        let (_, again) = Machine::adopt(plan.clone(), settings, &[done], now, later);
        let (a, b) = (envelopes(&seen), envelopes(&again));
        assert_eq!(a.len(), 1, "{seen:?}");
        assert_eq!(a, b);
    }

    /// The statement the publish step attaches: one subject per platform
    /// and destination (the per-platform tags, each with its platform's
    /// digest), verifiable with the worker's key, the same bytes for every
    /// worker, and none when a platform has no digest yet.
    #[test]
    fn the_platforms_statement_names_each_platform_manifest_under_its_tags() {
        let mut p = plan();
        p.images[0].platforms = vec!["linux/amd64".into(), "linux/arm64/v8".into()];
        let digests = BTreeMap::from([
            (
                "linux/amd64".to_owned(),
                format!("sha256:{}", "a".repeat(64)),
            ),
            (
                "linux/arm64/v8".to_owned(),
                format!("sha256:{}", "b".repeat(64)),
            ),
        ]);
        let a = attestor();
        let envelope = a.attest_platforms(&p, 0, 1, &digests).unwrap();
        assert_eq!(a.attest_platforms(&p, 0, 1, &digests).unwrap(), envelope);
        let statement = verify_envelope(a.key.verifying_key(), &envelope).unwrap();
        let subjects: Vec<(String, String, Value)> = statement
            .subject
            .iter()
            .map(|s| {
                (
                    s.name.clone().unwrap(),
                    s.digest["sha256"].clone(),
                    s.annotations["platform"].clone(),
                )
            })
            .collect();
        assert_eq!(
            subjects,
            [
                (
                    "registry.example.com/shop/api:1.2.3-linux-amd64",
                    "a",
                    "linux/amd64"
                ),
                (
                    "registry.example.com/shop/api:latest-linux-amd64",
                    "a",
                    "linux/amd64"
                ),
                (
                    "registry.example.com/shop/api:1.2.3-linux-arm64-v8",
                    "b",
                    "linux/arm64/v8"
                ),
                (
                    "registry.example.com/shop/api:latest-linux-arm64-v8",
                    "b",
                    "linux/arm64/v8"
                ),
            ]
            .map(|(n, h, p)| (n.to_owned(), h.repeat(64), json!(p)))
        );
        let json = serde_json::to_value(&statement).unwrap();
        let predicate = &json["predicate"];
        assert_eq!(
            predicate["buildDefinition"]["externalParameters"]["request"]["images"][0]["platforms"],
            json!(["linux/amd64", "linux/arm64/v8"])
        );
        let executor = &predicate["buildDefinition"]["internalParameters"]["executor"];
        let arm = executor["platforms"]["linux/arm64/v8"]["args"]
            .as_array()
            .unwrap();
        assert!(
            arm.contains(&json!("--custom-platform=linux/arm64/v8")),
            "{arm:?}"
        );
        assert!(!json.to_string().contains(SECRET), "{json}");
        assert_eq!(
            predicate["runDetails"]["metadata"]["invocationId"],
            "shop-1/api/1"
        );
        let one = BTreeMap::from([digests
            .first_key_value()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap()]);
        assert!(a.attest_platforms(&p, 0, 1, &one).is_none());
    }

    #[test]
    fn a_bad_key_file_names_the_setting() {
        let pods = attestor().pods;
        let err = Attestor::load(
            Path::new("/nonexistent/key.pem"),
            "urn:kiln:t".into(),
            pods.clone(),
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "--provenance-key (KILN_PROVENANCE_KEY): cannot read /nonexistent/key.pem"
            ),
            "{err}"
        );
        let path = std::env::temp_dir().join(format!("kiln-not-a-key-{}.pem", std::process::id()));
        std::fs::write(
            &path,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let err = Attestor::load(&path, "urn:kiln:t".into(), pods).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.starts_with("--provenance-key (KILN_PROVENANCE_KEY): "),
            "{err}"
        );
        assert!(err.contains("no PEM key block found"), "{err}");
    }
}
