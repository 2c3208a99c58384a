//! The normalised build: a request after validation, policy and template
//! rendering. It is what every pod of the build carries in its
//! `kiln.dev/plan` annotation, so that any worker can resume the build from
//! the pods alone. Pure data, no IO.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_protocol::{BuildContext, BuildRequest, SecretRef};
use serde::{Deserialize, Serialize};

use crate::policy::Admission;

/// Largest plan a pod annotation may carry (Kubernetes caps all annotations
/// of an object at 256 KiB together; keep room for the rest).
pub const MAX_PLAN_BYTES: usize = 200 * 1024;

/// Everything needed to run (or resume) a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildPlan {
    pub id: String,
    pub tenant: String,
    /// [`kiln_protocol::request_fingerprint`] of the request: a later
    /// request under this id is a duplicate only with the same one. On the
    /// pods too, so it survives the loss of Redis. Empty in plans written
    /// before it existed (any body then counts as the same).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub accepted_at: jiff::Timestamp,
    /// `accepted_at + timeoutSeconds`: the build fails with
    /// `DeadlineExceeded` after it.
    pub deadline: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub service_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_secret: Option<SecretKeys>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_secret: Option<SecretKeys>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_repo: Option<String>,
    /// The pods' `runtimeClassName` (policy); absent in older annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    pub images: Vec<ImagePlan>,
}

/// A Secret and the two keys Kiln reads from it (user/password or access
/// key id/secret key). Values reach the pod only through `secretKeyRef`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    pub secret: String,
    pub id_key: String,
    pub secret_key: String,
}

/// One image of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagePlan {
    pub name: String,
    pub context: BuildContext,
    /// Dockerfile path inside the context (when not inline).
    pub dockerfile: String,
    /// The rendered inline Dockerfile, shipped to the pod in a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub destinations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// With two or more: one pod per platform, then the publish step
    /// (docs/protocol.md, "Multi-platform images").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    pub cache: bool,
    pub cpu: String,
    pub memory: String,
    /// Absent in the annotations of workers before ephemeral storage
    /// existed: such a pod ran without a storage request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<String>,
    /// The image's git context names a host the tenant's git credentials
    /// do not list: its pods go without them (the plan's `gitSecret` is for
    /// the other images). Absent (false) in older plans.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub git_credentials_omitted: bool,
    /// Build secrets by id: references to Secret keys the policy allows,
    /// never values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
}

/// One of the pods an image needs: the image's own Kaniko pod, the pod of
/// one of its `platforms` (by index), or the publish step that assembles
/// the platforms' manifests into one image index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Build,
    Platform(usize),
    Publish,
}

impl ImagePlan {
    /// The steps of this image, in order: `Build` alone, or every platform
    /// and then `Publish`.
    pub fn steps(&self) -> Vec<Step> {
        if self.platforms.is_empty() {
            return vec![Step::Build];
        }
        (0..self.platforms.len())
            .map(Step::Platform)
            .chain([Step::Publish])
            .collect()
    }

    /// The platform of `step`, if it is a platform's.
    pub fn platform_of(&self, step: Step) -> Option<&str> {
        match step {
            Step::Platform(k) => self.platforms.get(k).map(String::as_str),
            _ => None,
        }
    }

    /// What the pod and ConfigMap names of `step` are derived from
    /// ([`kiln_protocol::pod_name`]'s `image`).
    pub fn unit(&self, step: Step) -> String {
        match step {
            Step::Build => self.name.clone(),
            Step::Platform(k) => kiln_protocol::platform_unit(
                &self.name,
                self.platforms.get(k).map_or("", String::as_str),
            ),
            Step::Publish => kiln_protocol::publish_unit(&self.name),
        }
    }

    /// The image as the pod of platform `k` builds it: for that platform
    /// alone, pushed under the per-platform tags.
    #[must_use]
    pub fn for_platform(&self, k: usize) -> ImagePlan {
        let platform = self.platforms.get(k).cloned();
        let destinations = platform.as_deref().map_or_else(Vec::new, |p| {
            self.destinations
                .iter()
                // Validated at intake: every destination has a tag short
                // enough for the suffix.
                .filter_map(|d| kiln_protocol::platform_destination(d, p).ok())
                .collect()
        });
        ImagePlan {
            destinations,
            platform,
            platforms: Vec::new(),
            ..self.clone()
        }
    }

    /// The step a pod labelled `platform` (the `kiln.dev/platform` label)
    /// or `publish` (`kiln.dev/step: publish`) belongs to, if this image
    /// has it.
    pub fn step_of(&self, platform: Option<&str>, publish: bool) -> Option<Step> {
        match (platform, publish, self.platforms.is_empty()) {
            (None, false, true) => Some(Step::Build),
            (None, true, false) => Some(Step::Publish),
            (Some(label), false, false) => self
                .platforms
                .iter()
                .position(|p| kiln_protocol::platform_label(p) == label)
                .map(Step::Platform),
            _ => None,
        }
    }
}

impl BuildPlan {
    /// Builds the plan of an admitted request. `rendered` holds, per image,
    /// the rendered inline Dockerfile (or `None` for a path in the context).
    pub fn new(
        req: &BuildRequest,
        admission: &Admission,
        rendered: Vec<Option<String>>,
        accepted_at: jiff::Timestamp,
        traceparent: Option<String>,
    ) -> Self {
        let timeout = jiff::SignedDuration::try_from(admission.timeout)
            .unwrap_or(jiff::SignedDuration::from_hours(24));
        let deadline = accepted_at
            .checked_add(timeout)
            .unwrap_or(jiff::Timestamp::MAX);
        let images = req
            .images
            .iter()
            .zip(rendered)
            .zip(&admission.resources)
            .enumerate()
            .map(|(i, ((img, rendered), res))| ImagePlan {
                name: img.name.clone(),
                context: img.context.clone(),
                dockerfile: img.dockerfile_path().to_owned(),
                rendered_dockerfile: rendered,
                build_args: img.build_args.clone(),
                target: img.target.clone(),
                destinations: img.destinations.clone(),
                platform: img.platform.clone(),
                platforms: img.platforms.clone().unwrap_or_default(),
                cache: img.cache.unwrap_or(false),
                cpu: res.cpu.clone(),
                memory: res.memory.clone(),
                ephemeral_storage: Some(res.ephemeral_storage.clone()),
                git_credentials_omitted: admission
                    .git_credentials_omitted
                    .get(i)
                    .copied()
                    .unwrap_or(false),
                secrets: img.secrets.clone(),
            })
            .collect();
        Self {
            id: req.id.clone(),
            tenant: admission.tenant.clone(),
            fingerprint: kiln_protocol::request_fingerprint(req),
            namespace: admission.namespace.clone(),
            app: req.app.clone(),
            component: req.component.clone(),
            labels: req.labels.clone(),
            max_attempts: admission.max_attempts,
            accepted_at,
            deadline,
            traceparent,
            service_account: admission.service_account.clone(),
            registry_secret: admission.registry_secret.clone(),
            git_secret: admission.git_credentials.as_ref().map(|g| SecretKeys {
                secret: g.secret.clone(),
                id_key: g.username_key.clone(),
                secret_key: g.password_key.clone(),
            }),
            s3_secret: admission.s3_credentials.as_ref().map(|s| SecretKeys {
                secret: s.secret.clone(),
                id_key: s.access_key_id_key.clone(),
                secret_key: s.secret_access_key_key.clone(),
            }),
            s3_region: admission
                .s3_credentials
                .as_ref()
                .and_then(|s| s.region.clone()),
            s3_endpoint: admission
                .s3_credentials
                .as_ref()
                .and_then(|s| s.endpoint.clone()),
            cache_repo: admission.cache_repo.clone(),
            runtime_class_name: admission.runtime_class_name.clone(),
            images,
        }
    }

    /// Time left until the deadline, as seen from `now` (zero when past).
    pub fn remaining(&self, now: jiff::Timestamp) -> Duration {
        let left = self.deadline.duration_since(now);
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    }

    pub fn image_index(&self, name: &str) -> Option<usize> {
        self.images.iter().position(|i| i.name == name)
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_annotation(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}
