//! Build secrets (`secrets` on an image) in the Kaniko pod: references to
//! Secret keys become files the executor reads, never arguments, variables
//! or annotations holding a value (worker/src/pod/EXECUTOR.md, "Build
//! secrets").
//!
//! Each Secret an image names is one Secret volume projecting only the keys
//! the image names, mode 0400. Each id is that volume mounted read-only at
//! `/kaniko/build-secrets/<id>` and the flag
//! `--secret=id=<id>,src=/kaniko/build-secrets/<id>/<key>`. Not
//! `/kaniko/secrets`: that is where the executor copies each secret before
//! the build (`KanikoSecretsDir`) and what its clean-up removes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use crate::plan::ImagePlan;

/// Where the build secrets' volumes are mounted, one directory per id.
/// Under `/kaniko`, which the executor leaves out of every snapshot.
pub const BUILD_SECRETS_DIR: &str = "/kaniko/build-secrets";

/// Owner read only: the executor runs as root and copies the file.
const MODE_0400: i32 = 0o400;

/// What the build secrets of one image add to the pod.
#[derive(Default)]
pub(super) struct SecretMounts {
    pub(super) volumes: Vec<Volume>,
    pub(super) mounts: Vec<VolumeMount>,
    /// `--secret=id=…,src=…`, one per id, in id order.
    pub(super) args: Vec<String>,
}

/// The volume name of the `n`th Secret (in name order) of an image.
fn volume_name(n: usize) -> String {
    format!("build-secret-{n}")
}

/// The volumes, mounts and executor flags of `image`'s build secrets.
pub(super) fn build_secret_mounts(image: &ImagePlan) -> SecretMounts {
    let mut keys: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in image.secrets.values() {
        keys.entry(&r.secret).or_default().insert(&r.key);
    }
    let mut out = SecretMounts::default();
    for (n, (secret, keys)) in keys.iter().enumerate() {
        out.volumes.push(Volume {
            name: volume_name(n),
            secret: Some(SecretVolumeSource {
                secret_name: Some((*secret).to_owned()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: (*k).to_owned(),
                            path: (*k).to_owned(),
                            mode: None,
                        })
                        .collect(),
                ),
                default_mode: Some(MODE_0400),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    for (id, r) in &image.secrets {
        let n = keys.keys().position(|s| *s == r.secret).unwrap_or_default();
        let dir = format!("{BUILD_SECRETS_DIR}/{id}");
        out.args
            .push(format!("--secret=id={id},src={dir}/{}", r.key));
        out.mounts.push(VolumeMount {
            name: volume_name(n),
            mount_path: dir,
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_protocol::SecretRef;

    /// The fixture plan's image with `secrets` (id, Secret, key).
    fn image(secrets: &[(&str, &str, &str)]) -> ImagePlan {
        let mut image = kiln_core::fixtures::shop_plan().images.remove(0);
        image.secrets = secrets
            .iter()
            .map(|(id, s, k)| {
                let r = SecretRef {
                    secret: (*s).into(),
                    key: (*k).into(),
                };
                ((*id).to_owned(), r)
            })
            .collect();
        image
    }

    /// Issue 18 item 12: one volume per Secret projecting only the named
    /// keys, 0400, read-only mounts per id, and flags naming files only.
    #[test]
    fn one_volume_per_secret_only_the_named_keys_mounted_per_id() {
        let m = build_secret_mounts(&image(&[
            ("npm", "ci-tokens", "npm"),
            ("pypi", "ci-tokens", "pypi"),
            ("gh.token", "github", "token"),
        ]));
        assert_eq!(m.volumes.len(), 2);
        let ci = m.volumes[0].secret.as_ref().unwrap();
        assert_eq!(ci.secret_name.as_deref(), Some("ci-tokens"));
        let keys: Vec<&str> = ci.items.iter().flatten().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["npm", "pypi"]);
        assert_eq!(ci.default_mode, Some(0o400));
        assert_eq!(ci.optional, Some(false));
        assert_eq!(
            m.args,
            [
                "--secret=id=gh.token,src=/kaniko/build-secrets/gh.token/token",
                "--secret=id=npm,src=/kaniko/build-secrets/npm/npm",
                "--secret=id=pypi,src=/kaniko/build-secrets/pypi/pypi",
            ]
        );
        let mounts: Vec<(&str, &str, Option<bool>)> = m
            .mounts
            .iter()
            .map(|v| (v.name.as_str(), v.mount_path.as_str(), v.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                (
                    "build-secret-1",
                    "/kaniko/build-secrets/gh.token",
                    Some(true)
                ),
                ("build-secret-0", "/kaniko/build-secrets/npm", Some(true)),
                ("build-secret-0", "/kaniko/build-secrets/pypi", Some(true)),
            ]
        );
        assert!(
            m.mounts
                .iter()
                .all(|v| !v.mount_path.starts_with("/kaniko/secrets")),
            "the executor's own copy directory stays its own"
        );
    }

    #[test]
    fn no_secrets_add_nothing() {
        let m = build_secret_mounts(&image(&[]));
        assert!(m.volumes.is_empty() && m.mounts.is_empty() && m.args.is_empty());
    }
}
