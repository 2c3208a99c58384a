//! Keeping an attempt's whole log before its pod is deleted: read from the
//! API server (capped as it is read), masked with the image's secret build
//! args, written to Redis for the retention. Only ever called after the
//! event that ends the attempt is confirmed (the `DeletePod` action comes
//! after it), and bounded: a copy that fails or takes too long is logged
//! and counted, and the pod is deleted anyway.

use std::time::Duration;

use super::context::Context;
use crate::plan::{BuildPlan, Step};
use crate::store::LogMeta;

/// The longest one attempt's copy (read and write) may take before its pod
/// is deleted without it. A 1 MiB log reads in well under a second; what
/// takes longer is an API server or Redis in trouble, and the build's
/// record must not wait on that.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a tenant's logs are kept: the worker's setting, shortened by
/// the tenant's cap.
pub(super) fn retention(ctx: &Context, tenant: &str) -> Duration {
    let cap = ctx
        .policy
        .tenant(tenant)
        .and_then(|t| t.caps.max_log_retention_seconds)
        .map_or(Duration::MAX, Duration::from_secs);
    ctx.log_retention.min(cap)
}

/// The image (index), log unit and attempt of one of the plan's Kaniko
/// pods: an image's own pod, or one platform's of a multi-platform image,
/// whose unit is `<image>/<platform>` (a platform's attempts are numbered
/// on their own). The publish step's log is not kept: it writes its
/// outcome to its termination message, which the events carry.
fn attempt_of(plan: &BuildPlan, pod: &str) -> Option<(usize, String, u32)> {
    plan.images.iter().enumerate().find_map(|(i, img)| {
        img.steps()
            .into_iter()
            .filter(|s| *s != Step::Publish)
            .find_map(|step| {
                let unit = img.unit(step);
                (1..=plan.max_attempts.max(1))
                    .find(|&a| kiln_protocol::pod_name(&plan.id, &unit, a) == pod)
                    .map(|a| (i, unit, a))
            })
    })
}

/// Copies the log of pod `pod` of `plan` to Redis, within [`COPY_TIMEOUT`].
pub(super) async fn keep_log(ctx: &Context, plan: &BuildPlan, namespace: &str, pod: &str) {
    let keep = retention(ctx, &plan.tenant);
    if keep.is_zero() {
        return;
    }
    let Some((i, unit, attempt)) = attempt_of(plan, pod) else {
        return;
    };
    let image = &plan.images[i];
    let copy = async {
        let capped = ctx.pods.whole_log(namespace, pod).await?;
        if capped.bytes == 0 {
            return Ok("empty");
        }
        let known = kiln_protocol::secret_build_arg_values(&image.build_args);
        let text = kiln_protocol::mask_secrets(&capped.text, &known);
        let now = jiff::Timestamp::now();
        let meta = LogMeta {
            bytes: capped.bytes,
            cut: capped.cut,
            kept_at: now,
            expires_at: now.checked_add(keep).unwrap_or(jiff::Timestamp::MAX),
            retention_seconds: keep.as_secs().max(1),
        };
        ctx.store
            .put_log(&plan.id, &unit, attempt, &meta, &text, ctx.record_ttl)
            .await?;
        Ok::<_, crate::Error>(if capped.cut > 0 { "cut" } else { "kept" })
    };
    match tokio::time::timeout(COPY_TIMEOUT, copy).await {
        Ok(Ok(outcome)) => ctx.metrics.log_copy(outcome),
        Ok(Err(e)) => {
            ctx.metrics.log_copy("failed");
            ctx.metrics.error(&e);
            tracing::warn!(build_id = %plan.id, pod, error = %e, "could not keep the attempt's log; deleting the pod without it");
        }
        Err(_) => {
            ctx.metrics.log_copy("failed");
            tracing::warn!(build_id = %plan.id, pod, timeout = ?COPY_TIMEOUT, "keeping the attempt's log took too long; deleting the pod without it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_name_gives_its_image_and_attempt() {
        let plan = kiln_core::fixtures::shop_plan();
        let name = kiln_protocol::pod_name(&plan.id, &plan.images[0].name, 2);
        assert_eq!(attempt_of(&plan, &name), Some((0, "api".to_owned(), 2)));
        assert_eq!(attempt_of(&plan, "kiln-someone-else-1"), None);
    }

    /// A platform's pod is kept under `<image>/<platform>`; the publish
    /// step's is not kept.
    #[test]
    fn a_platforms_pod_gives_its_own_unit() {
        let mut plan = kiln_core::fixtures::shop_plan();
        plan.images[0].platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        let image = plan.images[0].clone();
        let arm = image.unit(Step::Platform(1));
        assert_eq!(arm, "api/linux/arm64");
        let name = kiln_protocol::pod_name(&plan.id, &arm, 3);
        assert_eq!(attempt_of(&plan, &name), Some((0, arm, 3)));
        let publish = kiln_protocol::pod_name(&plan.id, &image.unit(Step::Publish), 1);
        assert_eq!(attempt_of(&plan, &publish), None);
    }
}
