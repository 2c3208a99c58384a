//! The simulated kubelet against a real registry ([`crate::registry`]): a
//! platform pod "builds" by pushing a small synthetic image for the
//! platform of the node its selector names (the variant from its
//! `--custom-platform`) to each of its `--destination`s, and reports the
//! digest as Kaniko would; a publish pod runs the real `kiln publish` with
//! the pod's own arguments and reports what it wrote to its digest file.
//! Every pod seen is kept, so a test can check what was scheduled.

use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::fakekube::{ConfigMapReader, Deferred, Fate, PendingReason};
use crate::registry::{Registry, push_synthetic_image, run_publish};

/// The scripted fates of one test.
#[derive(Clone)]
pub struct RegistryFates {
    registry: Arc<Registry>,
    seen: Arc<Mutex<Vec<Pod>>>,
    /// Publish pods wait until this is true.
    publish_gate: watch::Sender<bool>,
    /// Platforms (`os/arch`) whose pods fail for good (a `RUN` step fails).
    failing: Arc<Mutex<Vec<String>>>,
    configmaps: Option<ConfigMapReader>,
}

impl RegistryFates {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            seen: Arc::default(),
            publish_gate: watch::Sender::new(true),
            failing: Arc::default(),
            configmaps: None,
        }
    }

    /// Mounts publish pods' ConfigMap volumes from these.
    #[must_use]
    pub fn with_configmaps(mut self, configmaps: ConfigMapReader) -> Self {
        self.configmaps = Some(configmaps);
        self
    }

    /// Holds every publish pod before it runs `kiln publish` (until
    /// [`RegistryFates::open_publish`]).
    pub fn hold_publish(&self) {
        self.publish_gate.send_replace(false);
    }

    pub fn open_publish(&self) {
        self.publish_gate.send_replace(true);
    }

    /// Makes the pods of `platform` fail with a build error.
    pub fn fail_platform(&self, platform: &str) {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(platform.to_owned());
    }

    /// Every pod the kubelet was given so far.
    pub fn seen(&self) -> Vec<Pod> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The kubelet script.
    pub fn script(&self) -> impl Fn(&Pod) -> Fate + Send + Sync + 'static {
        let fates = self.clone();
        move |pod: &Pod| {
            fates
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(pod.clone());
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let fates = fates.clone();
            if labels.get("kiln.dev/step").map(String::as_str) == Some("publish") {
                Fate::Deferred(Deferred::new(move |pod| {
                    let fates = fates.clone();
                    async move { fates.publish(&pod).await }
                }))
            } else if labels.contains_key("kiln.dev/platform") {
                Fate::Deferred(Deferred::new(move |pod| {
                    let fates = fates.clone();
                    async move { fates.build(&pod).await }
                }))
            } else {
                Fate::succeed()
            }
        }
    }

    /// A platform pod: push the node's platform to every destination.
    async fn build(&self, pod: &Pod) -> Fate {
        let platform = node_platform(pod);
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|p| platform.starts_with(p.as_str()));
        if failing {
            return Fate::fail(
                1,
                "INFO[0001] RUN make\nerror building image: error building stage: failed to execute command: exit status 2\n",
            );
        }
        let host = format!("{}/", self.registry.host());
        let mut digest = None;
        for dest in args_of(pod, "--destination=") {
            let Some((repo, tag)) = dest
                .strip_prefix(&host)
                .and_then(|rest| rest.rsplit_once(':'))
            else {
                return Fate::fail(
                    1,
                    format!("error pushing image: {dest} is not in the registry\n"),
                );
            };
            match push_synthetic_image(&self.registry, repo, tag, &platform).await {
                Ok(d) => digest = Some(d),
                Err(e) => return Fate::fail(1, format!("error pushing image: {e:#}\n")),
            }
        }
        Fate::Succeed {
            digest,
            log: format!("INFO[0000] Building for {platform}\nINFO[0001] Pushed image\n"),
        }
    }

    /// A publish pod: `kiln publish` with the pod's arguments.
    async fn publish(&self, pod: &Pod) -> Fate {
        let mut gate = self.publish_gate.subscribe();
        // A closed sender cannot happen (self holds it).
        let _ = gate.wait_for(|open| *open).await;
        let mounted = match self.mount_configmaps(pod).await {
            Ok(m) => m,
            Err(fate) => return fate,
        };
        let args: Vec<String> = container(pod)
            .and_then(|c| c.args.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !a.starts_with("--digest-file="))
            .map(|a| mounted.rewrite(&a))
            .collect();
        let run = run_publish(&args, None).await;
        mounted.remove();
        match run {
            Ok(run) if run.code == Some(0) => Fate::Succeed {
                digest: Some(run.message),
                log: run.stderr,
            },
            Ok(run) => Fate::fail(run.code.unwrap_or(1), run.message),
            Err(e) => Fate::fail(1, format!("kiln publish failed (invalid): {e:#}")),
        }
    }
}

impl RegistryFates {
    /// Each ConfigMap volume of `pod`'s container, written to a directory
    /// of ours: waits for the ConfigMap like the kubelet's volume manager
    /// (the pod stays in `ContainerCreating` meanwhile); one still missing
    /// after 30 s leaves the pod pending.
    async fn mount_configmaps(&self, pod: &Pod) -> Result<Mounted, Fate> {
        let mut mounted = Mounted::default();
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mounts = container(pod)
            .and_then(|c| c.volume_mounts.clone())
            .unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for volume in volumes {
            let (Some(source), Some(mount)) = (
                volume.config_map.as_ref(),
                mounts.iter().find(|m| m.name == volume.name),
            ) else {
                continue;
            };
            let Some(reader) = &self.configmaps else {
                continue;
            };
            let mut found = None;
            for _ in 0..300 {
                found = reader.get(&namespace, &source.name);
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let Some(cm) = found else {
                mounted.remove();
                return Err(Fate::StayPending {
                    reason: PendingReason::CreateContainerConfigError,
                });
            };
            let dir = std::env::temp_dir().join(format!(
                "kiln-mount-{}-{}",
                std::process::id(),
                ulid::Ulid::new().to_string().to_lowercase()
            ));
            let written = std::fs::create_dir_all(&dir).and_then(|()| {
                cm.data
                    .unwrap_or_default()
                    .iter()
                    .try_for_each(|(k, v)| std::fs::write(dir.join(k), v))
            });
            mounted.dirs.push((mount.mount_path.clone(), dir));
            if let Err(e) = written {
                mounted.remove();
                return Err(Fate::fail(1, format!("cannot mount {}: {e}", source.name)));
            }
        }
        Ok(mounted)
    }
}

/// The directories standing for a pod's mount paths.
#[derive(Default)]
struct Mounted {
    dirs: Vec<(String, std::path::PathBuf)>,
}

impl Mounted {
    /// `arg` with a mount path replaced by its directory.
    fn rewrite(&self, arg: &str) -> String {
        for (path, dir) in &self.dirs {
            let prefix = format!("{path}/");
            if let Some((flag, rest)) = arg.split_once('=')
                && let Some(file) = rest.strip_prefix(&prefix)
            {
                return format!("{flag}={}", dir.join(file).display());
            }
        }
        arg.to_owned()
    }

    fn remove(&self) {
        for (_, dir) in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    pod.spec.as_ref().and_then(|s| s.containers.first())
}

fn args_of(pod: &Pod, flag: &str) -> Vec<String> {
    container(pod)
        .and_then(|c| c.args.as_ref())
        .map(|args| {
            args.iter()
                .filter_map(|a| a.strip_prefix(flag).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The platform of the node the pod's selector picks (`os/arch`), with the
/// variant of its `--custom-platform` (nodes carry no variant label).
pub fn node_platform(pod: &Pod) -> String {
    let selector = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let os = selector
        .get("kubernetes.io/os")
        .cloned()
        .unwrap_or_default();
    let arch = selector
        .get("kubernetes.io/arch")
        .cloned()
        .unwrap_or_default();
    let variant = args_of(pod, "--custom-platform=")
        .first()
        .and_then(|p| p.splitn(3, '/').nth(2).map(str::to_owned));
    match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    }
}
