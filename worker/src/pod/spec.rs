//! The Kaniko pod spec (docs/security.md, "The build sandbox"), pure: the same plan, attempt and
//! instant give the same pod. Each part of the pod has its builder: the
//! build context (git, S3, or a URL fetched by an init container), the
//! Dockerfile, the Kaniko flags, the registry credentials, and the pod
//! itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod,
    PodSpec, ResourceRequirements, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kiln_protocol::{GitContext, S3Context};

use super::build_secrets::build_secret_mounts;
use super::common::{build_pod, labels, mount, non_empty, registry_volume, restricted, value_env};
use super::labels::{ANN_CONTENT_SHA256, KANIKO};
use super::model::{PodSettings, PodUnit};
use super::ownership::data_sha256;
use super::publish_spec::PROVENANCE_FILE;
use crate::plan::{BuildPlan, ImagePlan, Step};

const DOCKERFILE_DIR: &str = "/kaniko/dockerfile";
/// Where the init container leaves a `url` context. Under /kaniko, never
/// /workspace (the executor's working directory, where a Dockerfile may
/// `COPY`): the executor leaves every mount point out of its snapshots
/// (pkg/util/fs_util.go `DetectFilesystemIgnoreList`) and /kaniko as a whole
/// (`defaultIgnoreList`).
const CONTEXT_DIR: &str = "/kaniko/fetched-context";

/// The Kaniko pod of attempt `attempt` of image `i` (docs/security.md, "The build sandbox").
pub fn pod_spec(
    settings: &PodSettings,
    plan: &BuildPlan,
    i: usize,
    attempt: u32,
    now: jiff::Timestamp,
) -> Pod {
    kaniko_pod(settings, plan, i, Step::Build, attempt, now)
}

/// The Kaniko pod of attempt `attempt` of `step` of image `i`: for a
/// platform, the image as that platform's pod builds it (its node, its
/// `--custom-platform`, its per-platform tags).
pub(super) fn kaniko_pod(
    settings: &PodSettings,
    plan: &BuildPlan,
    i: usize,
    step: Step,
    attempt: u32,
    now: jiff::Timestamp,
) -> Pod {
    let spec = &plan.images[i];
    let image = &match step {
        Step::Platform(k) => spec.for_platform(k),
        _ => spec.clone(),
    };
    let unit = spec.unit(step);
    let mut parts = Parts::default();
    // The order of the calls is the order of Kaniko's flags and volumes.
    parts.context(settings, plan, image, storage_of(image));
    parts.dockerfile(plan, image, &unit, attempt);
    parts.build_flags(plan, image);
    parts.build_secrets(image);
    parts.registry_credentials(plan);
    let pod_spec = PodSpec {
        init_containers: non_empty(parts.init_containers),
        containers: vec![kaniko_container(
            settings,
            image,
            parts.args,
            parts.env,
            parts.mounts,
        )],
        volumes: non_empty(parts.volumes),
        node_selector: image.platform.as_deref().map(node_selector),
        ..PodSpec::default()
    };
    build_pod(
        plan,
        kiln_protocol::pod_name(&plan.id, &unit, attempt),
        labels(plan, spec, step, attempt),
        pod_spec,
        now,
    )
}

/// The ConfigMap of attempt `attempt` of image `i` when its Dockerfile is
/// inline, or of a publish step with an envelope to attach (`None`
/// otherwise), owned by the attempt's pod `pod_name` with
/// uid `pod_uid`: the worker creates the pod first and this right after,
/// so the pod's deletion takes the ConfigMap with it.
pub fn configmap_spec(
    plan: &BuildPlan,
    unit: &PodUnit,
    pod_name: &str,
    pod_uid: &str,
) -> Option<ConfigMap> {
    let image = &plan.images[unit.image];
    let data = if unit.step == Step::Publish {
        let envelope = unit.attachment.as_ref()?;
        BTreeMap::from([(PROVENANCE_FILE.to_owned(), envelope.clone())])
    } else {
        let dockerfile = image.rendered_dockerfile.as_ref()?;
        BTreeMap::from([("Dockerfile".to_owned(), dockerfile.clone())])
    };
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(kiln_protocol::configmap_name(
                &plan.id,
                &image.unit(unit.step),
                unit.attempt,
            )),
            namespace: Some(plan.namespace.clone()),
            labels: Some(labels(plan, image, unit.step, unit.attempt)),
            annotations: Some(BTreeMap::from([(
                ANN_CONTENT_SHA256.to_owned(),
                data_sha256(Some(&data)),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod_name.to_owned(),
                uid: pod_uid.to_owned(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        // The real API server refuses any later change of an immutable
        // ConfigMap's data: what the 409 check saw is what gets mounted.
        immutable: Some(true),
        ..ConfigMap::default()
    })
}

/// What the builders add to the pod, in order.
#[derive(Default)]
struct Parts {
    /// Kaniko's argv, one `--flag=value` per element.
    args: Vec<String>,
    /// Kaniko's environment.
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
    /// Kaniko's mounts.
    mounts: Vec<VolumeMount>,
    init_containers: Vec<Container>,
}

impl Parts {
    /// Where Kaniko finds the build context.
    fn context(
        &mut self,
        settings: &PodSettings,
        plan: &BuildPlan,
        image: &ImagePlan,
        storage: Option<&str>,
    ) {
        match (&image.context.git, &image.context.s3, &image.context.url) {
            (Some(git), _, _) => self.git_context(plan, image, git),
            (None, Some(s3), _) => self.s3_context(settings, plan, s3),
            (None, None, Some(url)) => self.url_context(settings, url, storage),
            (None, None, None) => {}
        }
    }

    fn git_context(&mut self, plan: &BuildPlan, image: &ImagePlan, git: &GitContext) {
        // Kaniko's git context (pkg/buildcontext/git.go), split on `#`:
        // `git://repo#ref` clones the ref, `git://repo#ref#commit` clones
        // the ref and checks out the commit, `git://repo#<40 hex>` clones
        // the default branch, fetches the commit and checks it out. The
        // commit is always 40 hex (validated): `plumbing.NewHash` would
        // zero-pad a short one into a commit that does not exist.
        let repo = git
            .url
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let mut ctx = format!("git://{repo}");
        for part in [&git.git_ref, &git.commit].into_iter().flatten() {
            ctx.push('#');
            ctx.push_str(part);
        }
        self.args.push(format!("--context={ctx}"));
        if let Some(sub) = &git.sub_path {
            self.args.push(format!("--context-sub-path={sub}"));
        }
        // The executor sends them as Basic auth to the URL's host: only to
        // a host the tenant's policy lists (the plan says when not).
        if let Some(s) = plan
            .git_secret
            .as_ref()
            .filter(|_| !image.git_credentials_omitted)
        {
            self.env
                .push(secret_env("GIT_USERNAME", &s.secret, &s.id_key));
            self.env
                .push(secret_env("GIT_PASSWORD", &s.secret, &s.secret_key));
        }
    }

    fn s3_context(&mut self, settings: &PodSettings, plan: &BuildPlan, s3: &S3Context) {
        self.args.push(format!(
            "--context=s3://{}/{}",
            s3.bucket,
            encode_s3_key(&s3.key)
        ));
        if let Some(s) = &plan.s3_secret {
            self.env
                .push(secret_env("AWS_ACCESS_KEY_ID", &s.secret, &s.id_key));
            self.env.push(secret_env(
                "AWS_SECRET_ACCESS_KEY",
                &s.secret,
                &s.secret_key,
            ));
        }
        // aws-sdk-go-v2 refuses every request without a region ("A region
        // must be set when sending requests to S3."), S3-compatible
        // endpoints included: there is always one.
        let region = s3
            .region
            .as_ref()
            .or(plan.s3_region.as_ref())
            .unwrap_or(&settings.s3_region);
        self.env.push(value_env("AWS_REGION", region));
        // The tenant's endpoint wins: its credentials are sent there, so a
        // request must not redirect them to a host of its choosing.
        if let Some(endpoint) = plan.s3_endpoint.as_ref().or(s3.endpoint.as_ref()) {
            self.env.push(value_env("S3_ENDPOINT", endpoint));
            self.env.push(value_env("S3_FORCE_PATH_STYLE", "true"));
        }
    }

    /// Kaniko reads no plain https tarballs: an init container downloads it
    /// into a shared volume.
    fn url_context(&mut self, settings: &PodSettings, url: &str, storage: Option<&str>) {
        // The download counts against the pod's ephemeral storage; the
        // size limit makes the kubelet evict this pod, not its neighbours,
        // when a tarball is larger than the whole allowance.
        self.volumes.push(Volume {
            name: "context".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(
                    storage
                        .unwrap_or(crate::policy::builtin::EPHEMERAL_STORAGE)
                        .to_owned(),
                )),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
        self.mounts.push(mount("context", CONTEXT_DIR));
        self.init_containers.push(fetch_container(settings, url));
        self.args
            .push(format!("--context=tar://{CONTEXT_DIR}/context.tar.gz"));
    }

    /// An inline Dockerfile comes from the attempt's ConfigMap; otherwise
    /// Kaniko finds it in the context.
    fn dockerfile(&mut self, plan: &BuildPlan, image: &ImagePlan, unit: &str, attempt: u32) {
        if image.rendered_dockerfile.is_some() {
            self.volumes.push(Volume {
                name: "dockerfile".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: kiln_protocol::configmap_name(&plan.id, unit, attempt),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            self.mounts.push(mount("dockerfile", DOCKERFILE_DIR));
            self.args
                .push(format!("--dockerfile={DOCKERFILE_DIR}/Dockerfile"));
        } else {
            self.args.push(format!("--dockerfile={}", image.dockerfile));
        }
    }

    /// Destinations, build arguments, target, platform, cache, and where
    /// Kaniko reports the digest.
    fn build_flags(&mut self, plan: &BuildPlan, image: &ImagePlan) {
        let args = &mut self.args;
        for d in &image.destinations {
            args.push(format!("--destination={d}"));
        }
        // One argv element per flag, `--flag=value`: a value can never turn
        // into a flag of its own.
        for (k, v) in &image.build_args {
            args.push(format!("--build-arg={k}={v}"));
        }
        if let Some(t) = &image.target {
            args.push(format!("--target={t}"));
        }
        if let Some(p) = &image.platform {
            args.push(format!("--custom-platform={p}"));
        }
        if image.cache {
            args.push("--cache=true".into());
            if let Some(repo) = &plan.cache_repo {
                args.push(format!("--cache-repo={repo}"));
            }
        }
        args.push("--digest-file=/dev/termination-log".into());
        args.push("--push-retry=3".into());
        // The executor's default is `color` (cmd/executor/cmd/root.go):
        // ANSI escapes in every log line, hence in log tails and messages.
        args.push("--log-format=text".into());
    }

    /// Build secrets: files from Secret volumes, named by `--secret` flags.
    fn build_secrets(&mut self, image: &ImagePlan) {
        let m = build_secret_mounts(image);
        self.volumes.extend(m.volumes);
        self.mounts.extend(m.mounts);
        self.args.extend(m.args);
    }

    /// The registry secret becomes Kaniko's `config.json`.
    fn registry_credentials(&mut self, plan: &BuildPlan) {
        if let Some((volume, mount)) = registry_volume(plan) {
            self.volumes.push(volume);
            self.mounts.push(mount);
        }
    }
}

/// The init container that downloads a `url` context. The URL travels as
/// one argv element, never through a shell command line.
fn fetch_container(settings: &PodSettings, url: &str) -> Container {
    Container {
        name: "fetch-context".into(),
        image: Some(settings.fetch_image.clone()),
        command: Some(vec![
            "curl".into(),
            "--fail".into(),
            "--silent".into(),
            "--show-error".into(),
            "--location".into(),
            "--retry".into(),
            "3".into(),
            "--proto".into(),
            "=https".into(),
            "--output".into(),
            format!("{CONTEXT_DIR}/context.tar.gz"),
            "--url".into(),
            url.to_owned(),
        ]),
        volume_mounts: Some(vec![mount("context", CONTEXT_DIR)]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        // curl needs no privilege at all: it writes only to the mounted
        // volume. This is Pod Security `restricted` for this container.
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// The image's ephemeral storage (absent in plans of older workers).
fn storage_of(image: &ImagePlan) -> Option<&str> {
    image.ephemeral_storage.as_deref()
}

/// The Kaniko container, with requests equal to limits.
fn kaniko_container(
    settings: &PodSettings,
    image: &ImagePlan,
    args: Vec<String>,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    let mut quantities = BTreeMap::from([
        ("cpu".to_owned(), Quantity(image.cpu.clone())),
        ("memory".to_owned(), Quantity(image.memory.clone())),
    ]);
    // Without a limit one build can fill the node's disk and get other
    // tenants' pods evicted.
    if let Some(storage) = storage_of(image) {
        quantities.insert("ephemeral-storage".to_owned(), Quantity(storage.to_owned()));
    }
    Container {
        name: KANIKO.into(),
        image: Some(settings.kaniko_image.clone()),
        args: Some(args),
        env: non_empty(env),
        volume_mounts: non_empty(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities.clone()),
            limits: Some(quantities),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

/// `--custom-platform` only labels the image; every `RUN` executes on the
/// node ("exec format error" elsewhere), so the pod goes to a node of the
/// platform: `os/arch[/variant]` (validated) gives the well-known labels.
fn node_selector(platform: &str) -> BTreeMap<String, String> {
    let mut parts = platform.split('/');
    let os = parts.next().unwrap_or_default();
    let arch = parts.next().unwrap_or_default();
    BTreeMap::from([
        ("kubernetes.io/os".to_owned(), os.to_owned()),
        ("kubernetes.io/arch".to_owned(), arch.to_owned()),
    ])
}

/// Percent-encodes an S3 key for `s3://bucket/<key>`: the executor takes
/// the key from Go's `url.Parse(...).Path` (pkg/util/bucket
/// `GetNameAndFilepathFromURI`), which ends the path at `?` or `#` and
/// decodes `%XX`. Encoding every byte that is not unreserved, a sub-delim,
/// `:`, `@` or `/` makes the decoded path exactly the key.
fn encode_s3_key(key: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::labels::{
        ANN_BUILD_ID, ANN_PLAN, ANN_SPEC_SHA256, ANN_TENANT, LABEL_ATTEMPT, LABEL_BUILD,
        LABEL_IMAGE, MANAGED_BY,
    };
    use super::*;
    use crate::plan::SecretKeys;
    use kiln_protocol::{BuildContext, GitContext, S3Context};

    const COMMIT: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

    fn args_of(pod: &Pod) -> Vec<String> {
        pod.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap()
    }

    fn env_of(pod: &Pod, name: &str) -> Option<String> {
        pod.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn s3(key: &str, region: Option<&str>) -> BuildContext {
        BuildContext {
            git: None,
            s3: Some(S3Context {
                bucket: "ctx".into(),
                key: key.into(),
                region: region.map(str::to_owned),
                endpoint: None,
            }),
            url: None,
        }
    }

    /// Finding 3 (issue 12): pkg/buildcontext/git.go clones the default
    /// branch and fetches + checks out `parts[1]` when it is a full hash
    /// (`plumbing.IsHash`); a made-up `refs/heads/main` breaks repositories
    /// whose default branch has another name.
    #[test]
    fn a_commit_without_a_ref_checks_out_the_sha_from_the_default_branch() {
        let mut ctx = git();
        ctx.git.as_mut().unwrap().git_ref = None;
        let p = plan(ctx, false);
        let args = args_of(&pod_spec(&settings(), &p, 0, 1, p.accepted_at));
        assert_eq!(
            args[0],
            format!("--context=git://github.com/acme/cart.git#{COMMIT}")
        );
    }

    /// Finding 4: aws-sdk-go-v2 refuses to send a request without a region.
    /// Issue 10: a request's endpoint overrode the tenant's, sending the
    /// tenant's signed requests to any host.
    #[test]
    fn the_tenants_s3_endpoint_wins() {
        let mut ctx = s3("a.tgz", None);
        ctx.s3.as_mut().unwrap().endpoint = Some("https://evil.example.com".into());
        let mut p = plan(ctx, false);
        p.s3_endpoint = Some("https://minio.internal".into());
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        assert_eq!(
            env_of(&pod, "S3_ENDPOINT").as_deref(),
            Some("https://minio.internal")
        );
    }

    #[test]
    fn s3_contexts_always_have_a_region() {
        let p = plan(s3("a.tgz", None), false);
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        assert_eq!(env_of(&pod, "AWS_REGION").as_deref(), Some("us-east-1"));
        let p = plan(s3("a.tgz", Some("eu-west-1")), false);
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        assert_eq!(env_of(&pod, "AWS_REGION").as_deref(), Some("eu-west-1"));
    }

    /// Finding 8: pkg/util/bucket `GetNameAndFilepathFromURI` runs
    /// `url.Parse` on `s3://bucket/key`, which cuts `?query` and `#fragment`
    /// and percent-decodes the path: the key is percent-encoded so that the
    /// decoded path is the key.
    #[test]
    fn s3_keys_survive_the_executors_url_parse() {
        let p = plan(s3("ctx/a b?v=1#x%41.tgz", None), false);
        let args = args_of(&pod_spec(&settings(), &p, 0, 1, p.accepted_at));
        assert_eq!(args[0], "--context=s3://ctx/ctx/a%20b%3Fv=1%23x%2541.tgz");
    }

    /// Finding 6: `--custom-platform` is not emulation; the pod must land on
    /// a node of that platform.
    #[test]
    fn the_platform_picks_the_node() {
        let p = plan(git(), false);
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        let sel = pod.spec.unwrap().node_selector.unwrap();
        assert_eq!(sel["kubernetes.io/arch"], "arm64");
        assert_eq!(sel["kubernetes.io/os"], "linux");
        let mut p = plan(git(), false);
        p.images[0].platform = None;
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        assert_eq!(pod.spec.unwrap().node_selector, None);
    }

    /// Issue 21: each platform's pod goes to a node of its platform,
    /// builds for it and pushes under the per-platform tag, under its own
    /// name, label and ConfigMap.
    #[test]
    fn each_platform_gets_its_node_flag_tag_and_names() {
        let mut p = plan(git(), true);
        p.images[0].platform = None;
        p.images[0].platforms = vec!["linux/amd64".into(), "linux/arm64/v8".into()];
        let unit = PodUnit {
            image: 0,
            step: Step::Platform(1),
            attempt: 2,
            platform_digests: BTreeMap::new(),
            attachment: None,
        };
        let pod = kaniko_pod(&settings(), &p, 0, unit.step, 2, p.accepted_at);
        let name = pod.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("kiln-shop-cart-1-api-linux-arm64-v8-2-"),
            "{name}"
        );
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["kiln.dev/platform"], "linux-arm64-v8");
        assert!(!labels.contains_key("kiln.dev/step"));
        let spec = pod.spec.clone().unwrap();
        assert_eq!(spec.node_selector.unwrap()["kubernetes.io/arch"], "arm64");
        let args = args_of(&pod);
        assert!(
            args.contains(&"--custom-platform=linux/arm64/v8".to_owned()),
            "{args:?}"
        );
        let dests: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("--destination="))
            .collect();
        assert_eq!(
            dests,
            ["--destination=registry.example.com/shop/api:1-linux-arm64-v8"]
        );
        let cm = configmap_spec(&p, &unit, &name, "u").unwrap();
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "dockerfile");
        assert_eq!(
            volume.unwrap().config_map.unwrap().name,
            cm.metadata.name.unwrap(),
            "the platform's own ConfigMap"
        );
        let amd = kaniko_pod(&settings(), &p, 0, Step::Platform(0), 2, p.accepted_at);
        assert_ne!(amd.metadata.name.unwrap(), name);
    }

    /// Issue 10: the pod is hardened as far as Kaniko allows (seccomp,
    /// no service links, bounded disk), and the fetch container meets Pod
    /// Security `restricted`.
    #[test]
    fn build_pods_are_hardened() {
        let ctx = BuildContext {
            git: None,
            s3: None,
            url: Some("https://example.com/ctx.tar.gz".into()),
        };
        let mut p = plan(ctx, false);
        p.runtime_class_name = Some("gvisor".into());
        let spec = pod_spec(&settings(), &p, 0, 1, p.accepted_at).spec.unwrap();
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
        let psc = spec.security_context.unwrap();
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let res = spec.containers[0].resources.clone().unwrap();
        assert_eq!(res.limits.unwrap()["ephemeral-storage"].0, "12Gi");
        assert_eq!(res.requests.unwrap()["ephemeral-storage"].0, "12Gi");
        for v in spec.volumes.unwrap() {
            if let Some(e) = v.empty_dir {
                assert_eq!(e.size_limit.map(|q| q.0).as_deref(), Some("12Gi"));
            }
        }
        let init = spec.init_containers.unwrap();
        assert!(!init.is_empty());
        for c in init {
            let sc = c.security_context.unwrap();
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert!(sc.run_as_user.is_some_and(|u| u > 0));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        }
    }

    fn settings() -> PodSettings {
        PodSettings {
            kaniko_image: "kaniko:1".into(),
            fetch_image: "curl:1".into(),
            s3_region: "us-east-1".into(),
            ..PodSettings::default()
        }
    }

    fn plan(context: BuildContext, inline: bool) -> BuildPlan {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        BuildPlan {
            id: "Shop.Cart_1".into(),
            tenant: "payments".into(),
            fingerprint: String::new(),
            namespace: "kiln-payments".into(),
            app: None,
            component: None,
            labels: BTreeMap::new(),
            max_attempts: 3,
            accepted_at: now,
            deadline: now + jiff::SignedDuration::from_secs(600),
            traceparent: None,
            service_account: "kiln-builder".into(),
            registry_secret: Some("regcred".into()),
            git_secret: Some(SecretKeys {
                secret: "git".into(),
                id_key: "username".into(),
                secret_key: "password".into(),
            }),
            s3_secret: None,
            s3_region: None,
            s3_endpoint: None,
            cache_repo: Some("registry.example.com/cache".into()),
            runtime_class_name: None,
            images: vec![ImagePlan {
                name: "api".into(),
                context,
                dockerfile: "build/Dockerfile".into(),
                rendered_dockerfile: inline.then(|| "FROM alpine:3.20\n".to_owned()),
                build_args: BTreeMap::from([(
                    "VERSION".into(),
                    "1.2.3 --destination=evil.io/x".into(),
                )]),
                target: Some("runtime".into()),
                destinations: vec!["registry.example.com/shop/api:1".into()],
                platform: Some("linux/arm64".into()),
                platforms: Vec::new(),
                cache: true,
                cpu: "2".into(),
                memory: "4Gi".into(),
                ephemeral_storage: Some("12Gi".into()),
                git_credentials_omitted: false,
                secrets: BTreeMap::new(),
            }],
        }
    }

    fn git() -> BuildContext {
        BuildContext {
            git: Some(GitContext {
                url: "https://github.com/acme/cart.git".into(),
                git_ref: Some("refs/heads/main".into()),
                commit: Some(COMMIT.into()),
                sub_path: Some("services/api".into()),
            }),
            s3: None,
            url: None,
        }
    }

    fn env_names(pod: &Pod) -> Vec<String> {
        pod.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect()
    }

    /// Issue 18 item 7: a git context on a host the policy does not list
    /// gets no `secretKeyRef` of the tenant's git Secret.
    #[test]
    fn git_credentials_only_where_the_plan_gives_them() {
        let p = plan(git(), false);
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        assert_eq!(env_names(&pod), ["GIT_USERNAME", "GIT_PASSWORD"]);
        let mut p = plan(git(), false);
        p.images[0].git_credentials_omitted = true;
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        assert!(env_names(&pod).is_empty(), "{:?}", env_names(&pod));
        let text = serde_json::to_string(&pod).unwrap();
        assert!(!text.contains("secretKeyRef"), "{text}");
    }

    /// Issue 18 item 12: build secrets are files from Secret volumes named
    /// by `--secret` flags; the plan annotation and the spec hash cover them.
    #[test]
    fn build_secrets_are_mounted_files_covered_by_the_hash() {
        let p = plan(git(), false);
        let before = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        let mut p = plan(git(), false);
        p.images[0].secrets.insert(
            "npm".into(),
            kiln_protocol::SecretRef {
                secret: "ci-tokens".into(),
                key: ".npmrc".into(),
            },
        );
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        let args = args_of(&pod);
        assert!(
            args.contains(&"--secret=id=npm,src=/kaniko/build-secrets/npm/.npmrc".to_owned()),
            "{args:?}"
        );
        let spec = pod.spec.as_ref().unwrap();
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "build-secret-0")
            .unwrap();
        let secret = vol.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("ci-tokens"));
        assert_eq!(secret.default_mode, Some(0o400));
        let mount = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "build-secret-0")
            .unwrap();
        assert_eq!(mount.mount_path, "/kaniko/build-secrets/npm");
        assert_eq!(mount.read_only, Some(true));
        let ann = pod.metadata.annotations.as_ref().unwrap();
        let carried = BuildPlan::from_annotation(&ann[ANN_PLAN]).unwrap();
        assert_eq!(carried.images[0].secrets, p.images[0].secrets);
        let hash = |pod: &Pod| pod.metadata.annotations.as_ref().unwrap()[ANN_SPEC_SHA256].clone();
        assert_ne!(hash(&before), hash(&pod));
    }

    #[test]
    fn request_labels_reach_the_pod_and_never_replace_kilns() {
        let mut p = plan(git(), true);
        p.labels = BTreeMap::from([
            ("team".to_owned(), "payments".to_owned()),
            (MANAGED_BY.to_owned(), "someone-else".to_owned()),
        ]);
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(
            labels[MANAGED_BY], "kiln",
            "the watch's selector stays true"
        );
        assert_eq!(labels[LABEL_IMAGE], "api");
    }

    #[test]
    fn kaniko_pod_follows_the_design() {
        let p = plan(git(), false);
        let pod = pod_spec(&settings(), &p, 0, 2, p.accepted_at);
        let meta = &pod.metadata;
        assert_eq!(
            meta.name.as_deref(),
            Some(kiln_protocol::pod_name("Shop.Cart_1", "api", 2).as_str())
        );
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY], "kiln");
        assert_eq!(labels[LABEL_BUILD], "Shop.Cart_1");
        assert_eq!(labels[LABEL_ATTEMPT], "2");
        let ann = meta.annotations.as_ref().unwrap();
        assert_eq!(ann[ANN_BUILD_ID], "Shop.Cart_1");
        assert_eq!(BuildPlan::from_annotation(&ann[ANN_PLAN]).unwrap(), p);
        assert_eq!(ann[ANN_TENANT], p.tenant);

        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name.as_deref(), Some("kiln-builder"));
        let c = &spec.containers[0];
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let args = c.args.clone().unwrap();
        assert_eq!(
            args,
            [
                format!("--context=git://github.com/acme/cart.git#refs/heads/main#{COMMIT}")
                    .as_str(),
                "--context-sub-path=services/api",
                "--dockerfile=build/Dockerfile",
                "--destination=registry.example.com/shop/api:1",
                "--build-arg=VERSION=1.2.3 --destination=evil.io/x",
                "--target=runtime",
                "--custom-platform=linux/arm64",
                "--cache=true",
                "--cache-repo=registry.example.com/cache",
                "--digest-file=/dev/termination-log",
                "--push-retry=3",
                // Finding 7: the executor defaults to `color`.
                "--log-format=text",
            ]
        );
        // Credentials only through secretKeyRef.
        let env = c.env.clone().unwrap();
        assert!(
            env.iter()
                .all(|e| e.value.is_none() && e.value_from.is_some())
        );
        let res = c.resources.clone().unwrap();
        assert_eq!(res.limits, res.requests);
        assert_eq!(res.limits.unwrap()["memory"].0, "4Gi");
        let mounts = c.volume_mounts.clone().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/kaniko/.docker"));
    }

    #[test]
    fn inline_dockerfiles_and_url_contexts() {
        let ctx = BuildContext {
            git: None,
            s3: None,
            url: Some("https://example.com/ctx.tar.gz?sig=abc".into()),
        };
        let p = plan(ctx, true);
        let pod = pod_spec(&settings(), &p, 0, 1, p.accepted_at);
        let spec = pod.spec.unwrap();
        let args = spec.containers[0].args.clone().unwrap();
        // Finding 5: not /workspace, the executor's working directory: it
        // leaves every mount point out of its snapshots (pkg/util/fs_util.go
        // `DetectFilesystemIgnoreList`), /kaniko is left out anyway.
        assert!(
            args.contains(&"--context=tar:///kaniko/fetched-context/context.tar.gz".to_owned())
        );
        let mounts = spec.containers[0].volume_mounts.clone().unwrap();
        assert!(
            mounts.iter().all(|m| m.mount_path.starts_with("/kaniko/")),
            "{mounts:?}"
        );
        assert!(args.contains(&"--dockerfile=/kaniko/dockerfile/Dockerfile".to_owned()));
        let init = &spec.init_containers.unwrap()[0];
        // The URL is one argv element of curl, never a shell string.
        let cmd = init.command.clone().unwrap();
        assert_eq!(cmd[0], "curl");
        assert_eq!(
            cmd.last().unwrap(),
            "https://example.com/ctx.tar.gz?sig=abc"
        );
        let volumes = spec.volumes.unwrap();
        let cm = volumes.iter().find_map(|v| v.config_map.clone()).unwrap();
        assert_eq!(
            cm.name,
            kiln_protocol::configmap_name("Shop.Cart_1", "api", 1)
        );
    }
}
