//! Kubernetes: the Kaniko pod and its ConfigMap, create-or-adopt, delete,
//! logs, and the label-selected pod watcher. The only module that knows
//! kube and k8s-openapi.
//!
//! Pods carry everything needed to resume their build (DESIGN section 5):
//! deterministic names, labels `app.kubernetes.io/managed-by=kiln`,
//! `kiln.dev/build`, `kiln.dev/image`, `kiln.dev/attempt`, and annotations
//! with the full build id and the [`BuildPlan`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, KeyToPath, Pod, PodSpec,
    ResourceRequirements, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event};

use crate::classify::{PodPhase, PodView, Terminated};
use crate::error::{Error, Result};
use crate::plan::{BuildPlan, ImagePlan};

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        let status = match &e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        };
        Error::Kube {
            message: e.to_string(),
            status,
            retry_after: None,
        }
    }
}

/// The Kubernetes client type, for callers that build their own.
pub use kube::Client as KubeClient;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_BUILD: &str = "kiln.dev/build";
pub const LABEL_IMAGE: &str = "kiln.dev/image";
pub const LABEL_ATTEMPT: &str = "kiln.dev/attempt";
pub const ANN_BUILD_ID: &str = "kiln.dev/build-id";
pub const ANN_PLAN: &str = "kiln.dev/plan";
/// Selector of every pod Kiln manages.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=kiln";

const KANIKO: &str = "kaniko";
const DOCKERFILE_DIR: &str = "/kaniko/dockerfile";
const CONTEXT_DIR: &str = "/workspace";

/// Pod-level settings of the worker.
#[derive(Debug, Clone)]
pub struct PodSettings {
    pub kaniko_image: String,
    /// Image of the init container that downloads `url` contexts.
    pub fetch_image: String,
}

/// The pod client.
#[derive(Clone)]
pub struct Pods {
    client: kube::Client,
    settings: Arc<PodSettings>,
    /// Bounds concurrent API calls (as client-go's QPS/burst do): a burst of
    /// requests must not open hundreds of connections to the API server.
    calls: Arc<tokio::sync::Semaphore>,
}

/// Concurrent create/delete/log calls per worker.
pub const MAX_CONCURRENT_CALLS: usize = 32;

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How a create went.
#[derive(Debug, Clone)]
pub enum Created {
    /// We made it.
    New(PodView),
    /// It existed already (409): adopt it, never build again.
    Existing(PodView),
}

fn api_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .with_max_times(8)
}

impl Pods {
    pub fn new(client: kube::Client, settings: PodSettings) -> Self {
        Self {
            client,
            settings: Arc::new(settings),
            calls: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS)),
        }
    }

    /// Builds a client from the usual kubeconfig or in-cluster config.
    pub async fn default_client() -> Result<kube::Client> {
        kube::Client::try_default().await.map_err(|e| Error::Kube {
            message: format!(
                "cannot configure the Kubernetes client (kubeconfig or in-cluster): {e}"
            ),
            status: None,
            retry_after: None,
        })
    }

    /// Round trip to the API server (readiness).
    pub async fn ping(&self) -> Result<()> {
        self.client.apiserver_version().await?;
        Ok(())
    }

    /// Creates the pod of `attempt` of image `i` (and, for inline
    /// Dockerfiles, its ConfigMap owned by the pod). A 409 means the pod
    /// exists: it is returned for adoption. Transient API errors are retried.
    pub async fn create(
        &self,
        plan: &BuildPlan,
        i: usize,
        attempt: u32,
        now: jiff::Timestamp,
    ) -> Result<Created> {
        let _permit = self.calls.acquire().await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &plan.namespace);
        let pod = pod_spec(&self.settings, plan, i, attempt, now);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let attempt_create = || async {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(p) => Ok(Created::New(view(&p))),
                Err(kube::Error::Api(s)) if s.code == 409 => match pods.get_opt(&name).await? {
                    Some(p) => Ok(Created::Existing(view(&p))),
                    // Deleted between the two calls: the next try creates it.
                    None => Err(Error::Kube {
                        message: format!("pod {name} vanished while being adopted"),
                        status: Some(503),
                        retry_after: None,
                    }),
                },
                Err(e) => Err(Error::from(e)),
            }
        };
        let created = attempt_create
            .retry(api_backoff())
            .when(Error::is_transient)
            .notify(|e, d| tracing::warn!(build_id = %plan.id, pod = %name, error = %e, retry_in = ?d, "pod create failed; retrying"))
            .await?;
        if let Some(rendered) = &plan.images[i].rendered_dockerfile {
            let owner = match &created {
                Created::New(v) | Created::Existing(v) => v.uid.clone(),
            };
            self.create_configmap(plan, i, attempt, &name, &owner, rendered)
                .await?;
        }
        Ok(created)
    }

    async fn create_configmap(
        &self,
        plan: &BuildPlan,
        i: usize,
        attempt: u32,
        pod_name: &str,
        pod_uid: &str,
        dockerfile: &str,
    ) -> Result<()> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &plan.namespace);
        let image = &plan.images[i];
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(kiln_protocol::configmap_name(
                    &plan.id,
                    &image.name,
                    attempt,
                )),
                namespace: Some(plan.namespace.clone()),
                labels: Some(labels(plan, image, attempt)),
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
            data: Some(BTreeMap::from([(
                "Dockerfile".to_owned(),
                dockerfile.to_owned(),
            )])),
            ..ConfigMap::default()
        };
        (|| async {
            match cms.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        })
        .retry(api_backoff())
        .when(Error::is_transient)
        .await
    }

    /// Deletes a pod if it is still the one we mean (uid precondition).
    /// Gone already is fine.
    pub async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Result<()> {
        let _permit = self.calls.acquire().await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut dp = DeleteParams::background();
        if !uid.is_empty() {
            dp.preconditions = Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
        }
        (|| async {
            match pods.delete(name, &dp).await {
                Ok(_) => Ok(()),
                // 404: gone; 409: the name now belongs to another pod.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        })
        .retry(api_backoff())
        .when(Error::is_transient)
        .await
    }

    /// The last lines of the Kaniko log (at most 8 KiB), or `None` if the
    /// log cannot be read (the termination message is used instead).
    pub async fn log_tail(&self, namespace: &str, name: &str) -> Option<String> {
        let _permit = self.calls.acquire().await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let lp = LogParams {
            container: Some(KANIKO.into()),
            tail_lines: Some(50),
            limit_bytes: Some(i64::try_from(kiln_protocol::LOG_TAIL_MAX_BYTES).unwrap_or(8192)),
            ..LogParams::default()
        };
        match tokio::time::timeout(Duration::from_secs(5), pods.logs(name, &lp)).await {
            Ok(Ok(log)) if !log.trim().is_empty() => Some(log),
            _ => None,
        }
    }

    /// Every Kiln pod of one build in `namespace`.
    pub async fn build_pods(&self, namespace: &str, build_id: &str) -> Result<Vec<PodView>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{SELECTOR},{LABEL_BUILD}={}",
            kiln_protocol::label_value(build_id)
        );
        let list = (|| async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .map_err(Error::from)
        })
        .retry(api_backoff())
        .when(Error::is_transient)
        .await?;
        Ok(list
            .items
            .iter()
            .map(view)
            .filter(|v| v.build_id == build_id)
            .collect())
    }

    /// Follows every Kiln pod of `namespace`. The stream never ends: watch
    /// errors (dropped connections, 410 Gone, 5xx) are retried with backoff
    /// by kube-runtime, which relists and yields [`PodEvent::Resync`].
    pub fn watch(&self, namespace: &str) -> impl Stream<Item = PodEvent> + Send + use<> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let cfg = watcher::Config::default().labels(SELECTOR).timeout(290);
        let ns = namespace.to_owned();
        watcher(pods, cfg).default_backoff().filter_map(move |ev| {
            let ns = ns.clone();
            async move {
                match ev {
                    Ok(Event::Apply(p) | Event::InitApply(p)) => Some(PodEvent::Applied(view(&p))),
                    Ok(Event::Delete(p)) => Some(PodEvent::Deleted(view(&p))),
                    Ok(Event::Init) => Some(PodEvent::Resync),
                    Ok(Event::InitDone) => Some(PodEvent::Synced),
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "pod watch interrupted; resuming");
                        None
                    }
                }
            }
        })
    }
}

/// The Kaniko pod of attempt `attempt` of image `i` (DESIGN section 7).
pub fn pod_spec(
    settings: &PodSettings,
    plan: &BuildPlan,
    i: usize,
    attempt: u32,
    now: jiff::Timestamp,
) -> Pod {
    let image = &plan.images[i];
    let name = kiln_protocol::pod_name(&plan.id, &image.name, attempt);
    let mut args = Vec::new();
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut init_containers = Vec::new();

    match (&image.context.git, &image.context.s3, &image.context.url) {
        (Some(git), _, _) => {
            // Kaniko's git context: git://host/path#ref#commit.
            let repo = git
                .url
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let mut ctx = format!("git://{repo}");
            if git.git_ref.is_some() || git.commit.is_some() {
                ctx.push('#');
                ctx.push_str(git.git_ref.as_deref().unwrap_or("refs/heads/main"));
            }
            if let Some(commit) = &git.commit {
                ctx.push('#');
                ctx.push_str(commit);
            }
            args.push(format!("--context={ctx}"));
            if let Some(sub) = &git.sub_path {
                args.push(format!("--context-sub-path={sub}"));
            }
            if let Some(s) = &plan.git_secret {
                env.push(secret_env("GIT_USERNAME", &s.secret, &s.id_key));
                env.push(secret_env("GIT_PASSWORD", &s.secret, &s.secret_key));
            }
        }
        (None, Some(s3), _) => {
            args.push(format!("--context=s3://{}/{}", s3.bucket, s3.key));
            if let Some(s) = &plan.s3_secret {
                env.push(secret_env("AWS_ACCESS_KEY_ID", &s.secret, &s.id_key));
                env.push(secret_env(
                    "AWS_SECRET_ACCESS_KEY",
                    &s.secret,
                    &s.secret_key,
                ));
            }
            if let Some(region) = s3.region.as_ref().or(plan.s3_region.as_ref()) {
                env.push(value_env("AWS_REGION", region));
            }
            if let Some(endpoint) = s3.endpoint.as_ref().or(plan.s3_endpoint.as_ref()) {
                env.push(value_env("S3_ENDPOINT", endpoint));
                env.push(value_env("S3_FORCE_PATH_STYLE", "true"));
            }
        }
        (None, None, Some(url)) => {
            // Kaniko reads no plain https tarballs: an init container
            // downloads it into a shared volume. The URL travels in the
            // environment, never through a shell command line.
            volumes.push(Volume {
                name: "context".into(),
                empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            mounts.push(mount("context", CONTEXT_DIR));
            init_containers.push(Container {
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
                    url.clone(),
                ]),
                volume_mounts: Some(vec![mount("context", CONTEXT_DIR)]),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ..Container::default()
            });
            args.push(format!("--context=tar://{CONTEXT_DIR}/context.tar.gz"));
        }
        (None, None, None) => {}
    }

    if image.rendered_dockerfile.is_some() {
        volumes.push(Volume {
            name: "dockerfile".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: kiln_protocol::configmap_name(&plan.id, &image.name, attempt),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("dockerfile", DOCKERFILE_DIR));
        args.push(format!("--dockerfile={DOCKERFILE_DIR}/Dockerfile"));
    } else {
        args.push(format!("--dockerfile={}", image.dockerfile));
    }
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

    if let Some(secret) = &plan.registry_secret {
        volumes.push(Volume {
            name: "registry-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: "config.json".into(),
                    mode: None,
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("registry-credentials", "/kaniko/.docker"));
    }

    let quantities = BTreeMap::from([
        ("cpu".to_owned(), Quantity(image.cpu.clone())),
        ("memory".to_owned(), Quantity(image.memory.clone())),
    ]);
    let deadline = i64::try_from(plan.remaining(now).as_secs())
        .unwrap_or(i64::MAX)
        .max(1);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(plan.namespace.clone()),
            labels: Some(labels(plan, image, attempt)),
            annotations: Some(BTreeMap::from([
                (ANN_BUILD_ID.to_owned(), plan.id.clone()),
                (ANN_PLAN.to_owned(), plan.to_annotation()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(deadline),
            service_account_name: Some(plan.service_account.clone()),
            automount_service_account_token: Some(false),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![Container {
                name: KANIKO.into(),
                image: Some(settings.kaniko_image.clone()),
                args: Some(args),
                env: (!env.is_empty()).then_some(env),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities.clone()),
                    limits: Some(quantities),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A change the watcher saw.
#[derive(Debug, Clone)]
pub enum PodEvent {
    Applied(PodView),
    Deleted(PodView),
    /// The watcher (re)lists: `Applied` events for every pod follow.
    Resync,
    /// The relist is complete.
    Synced,
}

fn labels(plan: &BuildPlan, image: &ImagePlan, attempt: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), "kiln".to_owned()),
        (LABEL_BUILD.to_owned(), kiln_protocol::label_value(&plan.id)),
        (LABEL_IMAGE.to_owned(), image.name.clone()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
    ])
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(name != "context"),
        ..VolumeMount::default()
    }
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

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Copies what Kiln reads out of a pod.
pub fn view(p: &Pod) -> PodView {
    let meta = &p.metadata;
    let labels = meta.labels.as_ref();
    let annotations = meta.annotations.as_ref();
    let status = p.status.as_ref();
    let kaniko = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == KANIKO));
    // An init container (context download) that failed explains the pod.
    let init_failed = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0)
            })
        });
    let state = init_failed
        .and_then(|c| c.state.as_ref())
        .or_else(|| kaniko.and_then(|c| c.state.as_ref()));
    let waiting = state
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| Some((w.reason.clone()?, w.message.clone().unwrap_or_default())));
    let terminated = state
        .and_then(|s| s.terminated.as_ref())
        .map(|t| Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            message: t.message.clone(),
            started_at: t.started_at.as_ref().map(|x| x.0),
            finished_at: t.finished_at.as_ref().map(|x| x.0),
        });
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let unschedulable = conditions.and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                    c.message.clone().unwrap_or_default(),
                )
            })
    });
    let disrupted = conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    PodView {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        build_id: annotations
            .and_then(|a| a.get(ANN_BUILD_ID))
            .cloned()
            .unwrap_or_default(),
        image: labels
            .and_then(|l| l.get(LABEL_IMAGE))
            .cloned()
            .unwrap_or_default(),
        attempt: labels
            .and_then(|l| l.get(LABEL_ATTEMPT))
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        phase: status.and_then(|s| s.phase.as_deref()).map(|ph| match ph {
            "Pending" => PodPhase::Pending,
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            _ => PodPhase::Unknown,
        }),
        deleting: meta.deletion_timestamp.is_some(),
        created_at: meta.creation_timestamp.as_ref().map(|t| t.0),
        unschedulable,
        waiting,
        running_since: state
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .map(|t| t.0),
        terminated,
        pod_reason: status.and_then(|s| s.reason.clone()),
        pod_message: status.and_then(|s| s.message.clone()),
        disrupted,
        plan: annotations
            .and_then(|a| a.get(ANN_PLAN))
            .map(|s| Arc::from(s.as_str())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::SecretKeys;
    use kiln_protocol::{BuildContext, GitContext};

    fn settings() -> PodSettings {
        PodSettings {
            kaniko_image: "kaniko:1".into(),
            fetch_image: "curl:1".into(),
        }
    }

    fn plan(context: BuildContext, inline: bool) -> BuildPlan {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        BuildPlan {
            id: "Shop.Cart_1".into(),
            tenant: "payments".into(),
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
                cache: true,
                cpu: "2".into(),
                memory: "4Gi".into(),
            }],
        }
    }

    fn git() -> BuildContext {
        BuildContext {
            git: Some(GitContext {
                url: "https://github.com/acme/cart.git".into(),
                git_ref: Some("refs/heads/main".into()),
                commit: Some("9fceb02".into()),
                sub_path: Some("services/api".into()),
            }),
            s3: None,
            url: None,
        }
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
                "--context=git://github.com/acme/cart.git#refs/heads/main#9fceb02",
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
        assert!(args.contains(&"--context=tar:///workspace/context.tar.gz".to_owned()));
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
