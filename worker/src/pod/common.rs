//! What every pod of a build shares, Kaniko's and the publish step's: the
//! labels and annotations that make it Kiln's and resumable, its deadline,
//! the registry credentials, the seal of its spec hash, and small builders.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, KeyToPath, Pod, PodSecurityContext, PodSpec, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels::{
    ANN_BUILD_ID, ANN_PLAN, ANN_SPEC_SHA256, ANN_TENANT, LABEL_ATTEMPT, LABEL_BUILD, LABEL_IMAGE,
    LABEL_PLATFORM, LABEL_STEP, MANAGED_BY, STEP_PUBLISH,
};
use super::ownership::pod_sha256;
use crate::plan::{BuildPlan, ImagePlan, Step};

/// The uid and gid of every container but Kaniko's: `nobody`-like, numeric
/// so that the kubelet can check `runAsNonRoot` without reading the
/// image's `/etc/passwd`.
pub const NON_ROOT_UID: i64 = 65_532;

/// Where the registry credentials are mounted (`config.json`).
pub(super) const DOCKER_CONFIG_DIR: &str = "/kaniko/.docker";

/// The pod's `activeDeadlineSeconds`: what is left of the build's time.
pub(super) fn deadline_seconds(plan: &BuildPlan, now: jiff::Timestamp) -> i64 {
    i64::try_from(plan.remaining(now).as_secs())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// The annotations every pod of a build carries (build id, plan, tenant).
pub(super) fn annotations(plan: &BuildPlan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANN_BUILD_ID.to_owned(), plan.id.clone()),
        (ANN_PLAN.to_owned(), plan.to_annotation()),
        (ANN_TENANT.to_owned(), plan.tenant.clone()),
    ])
}

/// Last: the hash covers everything else (see `ownership.rs`).
pub(super) fn seal(pod: &mut Pod) {
    let hash = pod_sha256(pod);
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.insert(ANN_SPEC_SHA256.to_owned(), hash);
    }
}

/// The labels of every object of one attempt (pod and ConfigMap): the
/// request's `labels` (validated at intake: `kiln.dev/` keys are refused),
/// then Kiln's own, which win over a request label of the same key (the
/// watch selects on `app.kubernetes.io/managed-by=kiln`); a platform's
/// pods name their platform, the publish step's pod its step.
pub(super) fn labels(
    plan: &BuildPlan,
    image: &ImagePlan,
    step: Step,
    attempt: u32,
) -> BTreeMap<String, String> {
    let mut labels = plan.labels.clone();
    labels.extend([
        (MANAGED_BY.to_owned(), "kiln".to_owned()),
        (LABEL_BUILD.to_owned(), kiln_protocol::label_value(&plan.id)),
        (LABEL_IMAGE.to_owned(), image.name.clone()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
    ]);
    if let Some(p) = image.platform_of(step) {
        labels.insert(LABEL_PLATFORM.to_owned(), kiln_protocol::platform_label(p));
    }
    if step == Step::Publish {
        labels.insert(LABEL_STEP.to_owned(), STEP_PUBLISH.to_owned());
    }
    labels
}

/// The tenant's registry Secret as `/kaniko/.docker/config.json`, read-only
/// (the Kaniko pods' and the publish step's).
pub(super) fn registry_volume(plan: &BuildPlan) -> Option<(Volume, VolumeMount)> {
    let secret = plan.registry_secret.as_ref()?;
    let volume = Volume {
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
    };
    Some((volume, mount("registry-credentials", DOCKER_CONFIG_DIR)))
}

pub(super) fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// Kubernetes omits empty lists; so does Kiln, to match what it reads back.
pub(super) fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(name != "context"),
        ..VolumeMount::default()
    }
}

pub(super) fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Pod Security `restricted` for a container that needs no privilege at
/// all (the context download, the publish step): non-root, no privilege
/// escalation, no capabilities, a read-only root filesystem.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_UID),
        run_as_group: Some(NON_ROOT_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The pod-level security context of every build pod: the container
/// runtime's default seccomp filter.
pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// A pod of the build `plan` named `name` with `labels` around `spec` (its
/// containers, volumes and node): what every build pod has besides (never
/// restarted, the build's deadline, a service account without a token, no
/// service links, the default seccomp filter, the policy's runtime class),
/// sealed with its spec hash.
pub(super) fn build_pod(
    plan: &BuildPlan,
    name: String,
    labels: BTreeMap<String, String>,
    spec: PodSpec,
    now: jiff::Timestamp,
) -> Pod {
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(plan.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations(plan)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(deadline_seconds(plan, now)),
            service_account_name: Some(plan.service_account.clone()),
            automount_service_account_token: Some(false),
            // A build reaches Kubernetes services by name only if the
            // tenant's Dockerfile says so, never through injected
            // `*_SERVICE_HOST` variables.
            enable_service_links: Some(false),
            // The container runtime's default seccomp filter (Pod Security
            // `baseline` allows omitting it; `restricted` requires it):
            // Kaniko needs root, not the rarely-used syscalls it blocks.
            security_context: Some(pod_security()),
            runtime_class_name: plan.runtime_class_name.clone(),
            ..spec
        }),
        ..Pod::default()
    };
    seal(&mut pod);
    pod
}
