//! The publish step's pod (docs/protocol.md, "The publish step"), pure:
//! Kiln's own image running `kiln publish` with the platforms' manifest
//! digests and the image's destinations, the tenant's registry Secret
//! mounted read-only, and nothing else: non-root, no capabilities, a
//! read-only root filesystem, small fixed resources. The worker never
//! talks to a registry; this pod does, with the tenant's credentials.
//! When the worker signs provenance, the envelope to attach comes from the
//! attempt's ConfigMap (`configmap_spec`), mounted read-only: the signing
//! key never reaches the pod, only what it signed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, Pod, PodSpec, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::common::{
    DOCKER_CONFIG_DIR, build_pod, labels, mount, non_empty, registry_volume, restricted, value_env,
};
use super::labels::PUBLISH;
use super::model::{PodSettings, PodUnit};
use crate::plan::{BuildPlan, Step};

/// CPU, memory and ephemeral storage of the publish container (requests
/// equal limits): it moves manifests, never layers.
const RESOURCES: [(&str, &str); 3] = [
    ("cpu", "100m"),
    ("memory", "128Mi"),
    ("ephemeral-storage", "64Mi"),
];

/// Where the publish pod finds the envelope it attaches (the ConfigMap of
/// its attempt, mounted read-only), and its key in that ConfigMap.
pub const PROVENANCE_DIR: &str = "/kiln/provenance";
pub const PROVENANCE_FILE: &str = "provenance.dsse.json";

/// The publish pod of attempt `unit.attempt` of image `unit.image`.
pub(super) fn publish_pod(
    settings: &PodSettings,
    plan: &BuildPlan,
    unit: &PodUnit,
    now: jiff::Timestamp,
) -> Pod {
    let image = &plan.images[unit.image];
    let (mut volumes, mut mounts) =
        registry_volume(plan).map_or((Vec::new(), Vec::new()), |(v, m)| (vec![v], vec![m]));
    if unit.attachment.is_some() {
        volumes.push(Volume {
            name: "provenance".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: kiln_protocol::configmap_name(
                    &plan.id,
                    &image.unit(Step::Publish),
                    unit.attempt,
                ),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("provenance", PROVENANCE_DIR));
    }
    let spec = PodSpec {
        containers: vec![Container {
            name: PUBLISH.into(),
            image: Some(settings.publish_image.clone()),
            command: Some(vec!["kiln".into(), "publish".into()]),
            args: Some(publish_args(settings, plan, unit)),
            env: Some(vec![value_env("DOCKER_CONFIG", DOCKER_CONFIG_DIR)]),
            volume_mounts: non_empty(mounts),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            resources: Some(resources()),
            // Non-root, no capabilities, read-only root filesystem.
            security_context: Some(restricted()),
            ..Container::default()
        }],
        volumes: non_empty(volumes),
        node_selector: Some(BTreeMap::from([(
            "kubernetes.io/os".to_owned(),
            "linux".to_owned(),
        )])),
        ..PodSpec::default()
    };
    let name = kiln_protocol::pod_name(&plan.id, &image.unit(Step::Publish), unit.attempt);
    build_pod(
        plan,
        name,
        labels(plan, image, Step::Publish, unit.attempt),
        spec,
        now,
    )
}

/// `kiln publish`'s argv, one `--flag=value` per element, in the order of
/// the plan (the step sorts the index's children itself).
fn publish_args(settings: &PodSettings, plan: &BuildPlan, unit: &PodUnit) -> Vec<String> {
    let image = &plan.images[unit.image];
    let mut args: Vec<String> = image
        .platforms
        .iter()
        .filter_map(|p| {
            let digest = unit.platform_digests.get(p)?;
            Some(format!("--platform={p}={digest}"))
        })
        .collect();
    args.extend(
        image
            .destinations
            .iter()
            .map(|d| format!("--destination={d}")),
    );
    if unit.attachment.is_some() {
        args.push(format!("--attach={PROVENANCE_DIR}/{PROVENANCE_FILE}"));
    }
    args.push("--digest-file=/dev/termination-log".into());
    args.extend(
        settings
            .insecure_registries
            .iter()
            .map(|r| format!("--insecure-registry={r}")),
    );
    args
}

fn resources() -> ResourceRequirements {
    let quantities: BTreeMap<String, Quantity> = RESOURCES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect();
    ResourceRequirements {
        requests: Some(quantities.clone()),
        limits: Some(quantities),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan() -> BuildPlan {
        let mut p = kiln_core::fixtures::shop_plan();
        p.registry_secret = Some("regcred".into());
        p.images[0].platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        p.images[0].destinations = vec!["r.example.com/api:1".into()];
        p
    }

    fn unit() -> PodUnit {
        PodUnit {
            image: 0,
            step: Step::Publish,
            attempt: 1,
            platform_digests: BTreeMap::from([
                (
                    "linux/amd64".to_owned(),
                    format!("sha256:{}", "a".repeat(64)),
                ),
                (
                    "linux/arm64".to_owned(),
                    format!("sha256:{}", "b".repeat(64)),
                ),
            ]),
            attachment: None,
        }
    }

    fn settings() -> PodSettings {
        PodSettings {
            publish_image: "ghcr.io/kiln-build/kiln@sha256:abc".into(),
            insecure_registries: vec!["127.0.0.1:5000".into()],
            ..PodSettings::default()
        }
    }

    #[test]
    fn the_publish_pod_runs_kiln_publish_with_the_contracts_arguments() {
        let p = plan();
        let pod = publish_pod(&settings(), &p, &unit(), p.accepted_at);
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.command.as_deref().unwrap(), ["kiln", "publish"]);
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                format!("--platform=linux/amd64=sha256:{}", "a".repeat(64)),
                format!("--platform=linux/arm64=sha256:{}", "b".repeat(64)),
                "--destination=r.example.com/api:1".to_owned(),
                "--digest-file=/dev/termination-log".to_owned(),
                "--insecure-registry=127.0.0.1:5000".to_owned(),
            ]
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "DOCKER_CONFIG");
        assert_eq!(env[0].value.as_deref(), Some("/kaniko/.docker"));
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.mount_path, "/kaniko/.docker");
        assert_eq!(m.read_only, Some(true));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(
            labels.get("kiln.dev/step").map(String::as_str),
            Some("publish")
        );
        assert!(
            pod.metadata
                .name
                .unwrap()
                .starts_with("kiln-b-api-publish-1-")
        );
        assert!(
            pod.metadata
                .annotations
                .unwrap()
                .contains_key("kiln.dev/spec-sha256")
        );
    }

    /// With an envelope to attach, the pod mounts its attempt's ConfigMap
    /// read-only and names the file; the ConfigMap holds exactly the
    /// envelope under that name and is owned by the pod.
    #[test]
    fn an_envelope_to_attach_comes_from_the_attempts_configmap() {
        let p = plan();
        let envelope =
            r#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}"#;
        let attaching = PodUnit {
            attachment: Some(envelope.to_owned()),
            ..unit()
        };
        let pod = publish_pod(&settings(), &p, &attaching, p.accepted_at);
        let spec = pod.spec.clone().unwrap();
        let args = spec.containers[0].args.clone().unwrap();
        assert!(
            args.contains(&"--attach=/kiln/provenance/provenance.dsse.json".to_owned()),
            "{args:?}"
        );
        let mount = spec.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "provenance")
            .unwrap()
            .clone();
        assert_eq!(mount.mount_path, PROVENANCE_DIR);
        assert_eq!(mount.read_only, Some(true));
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "provenance")
            .unwrap();
        let cm_name = volume.config_map.unwrap().name;
        let pod_name = pod.metadata.name.unwrap();
        let cm = crate::pod::configmap_spec(&p, &attaching, &pod_name, "uid-1").unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some(cm_name.as_str()));
        assert_eq!(
            cm.data.unwrap(),
            BTreeMap::from([(PROVENANCE_FILE.to_owned(), envelope.to_owned())])
        );
        assert_eq!(cm.immutable, Some(true));
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.name.as_str(), owner.uid.as_str()),
            (pod_name.as_str(), "uid-1")
        );
        // Without one: no ConfigMap, no mount, no flag.
        assert!(crate::pod::configmap_spec(&p, &unit(), &pod_name, "u").is_none());
        let plain = publish_pod(&settings(), &p, &unit(), p.accepted_at);
        assert!(
            !plain.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap()
                .iter()
                .any(|a| a.starts_with("--attach"))
        );
    }

    #[test]
    fn the_publish_pod_is_restricted() {
        let p = plan();
        let spec = publish_pod(&settings(), &p, &unit(), p.accepted_at)
            .spec
            .unwrap();
        let sc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        let r = spec.containers[0].resources.clone().unwrap();
        assert_eq!(r.limits, r.requests);
        assert_eq!(r.limits.unwrap().len(), 3);
    }
}
