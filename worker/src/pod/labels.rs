//! The labels and annotations Kiln puts on its pods, and the container
//! names it reads back.

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_BUILD: &str = "kiln.dev/build";
pub const LABEL_IMAGE: &str = "kiln.dev/image";
pub const LABEL_ATTEMPT: &str = "kiln.dev/attempt";
/// On the pods of one platform of an image with `platforms`: the platform
/// in label form (`linux-arm64-v8`).
pub const LABEL_PLATFORM: &str = "kiln.dev/platform";
/// On the publish step's pod: `publish`.
pub const LABEL_STEP: &str = "kiln.dev/step";
pub const STEP_PUBLISH: &str = "publish";
pub const ANN_BUILD_ID: &str = "kiln.dev/build-id";
pub const ANN_PLAN: &str = "kiln.dev/plan";
/// The tenant that owns the build: read without parsing the plan, and kept
/// where it survives the loss of Redis (docs/protocol.md, "Ownership and rejections").
pub const ANN_TENANT: &str = "kiln.dev/tenant";
/// Hash of the pod Kiln generates (see `ownership.rs`): with the pod's
/// own contents, what makes a pod met under Kiln's name (409) Kiln's.
pub const ANN_SPEC_SHA256: &str = "kiln.dev/spec-sha256";
/// Hash of an inline-Dockerfile ConfigMap's data.
pub const ANN_CONTENT_SHA256: &str = "kiln.dev/content-sha256";
/// The cancel of the build (its reason), put on each of its pods by the
/// worker that takes the cancel, before it acks it: unlike the Redis flag,
/// it survives a Redis failover, and whoever drives or adopts the build
/// reads it from the pod watch (the pods are the state: docs/guarantees.md).
pub const ANN_CANCELLED: &str = "kiln.dev/cancelled";
/// Selector of every pod Kiln manages.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=kiln";

/// Name of the Kaniko container: the spec creates it, the view reads its
/// status, the client reads its log.
pub(super) const KANIKO: &str = "kaniko";
/// Name of the publish step's one container.
pub(super) const PUBLISH: &str = "publish";
