//! Build logs for `kiln logs`: a pod's container log as a stream of lines
//! (following it while the container runs), the init container whose
//! failure stopped a pod, and a watch of one build's pods.

use futures::io::AsyncBufReadExt;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event};

use super::client::Pods;
use super::labels::{KANIKO, LABEL_BUILD, SELECTOR};
use super::model::PodEvent;
use super::view::view;
use crate::error::{Error, Result};

impl Pods {
    /// The log of `container` (default: Kaniko's) in pod `name`, line by line (each line with
    /// its `\n`, the last one maybe without). With `follow` the API server
    /// keeps the response open and streams what the container writes until
    /// it stops; without, the stream is the log as it is now. `tail_lines`
    /// starts that many lines from the end.
    ///
    /// A container that has not started yet is a 400 from the API server
    /// (`waiting to start`): [`Error::Kube`] with status 400.
    pub async fn log_lines(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
        follow: bool,
        tail_lines: Option<i64>,
    ) -> Result<impl Stream<Item = Result<Vec<u8>>> + Send + use<>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let lp = LogParams {
            container: Some(container.unwrap_or(KANIKO).to_owned()),
            follow,
            tail_lines,
            ..LogParams::default()
        };
        let reader = pods.log_stream(name, &lp).await?;
        // Bytes, not `String`s: a build may print anything, and a line cut
        // in the middle of a character must not end the stream.
        Ok(futures::stream::unfold(
            Box::pin(reader),
            |mut reader| async move {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(line), reader)),
                    Err(e) => Some((
                        Err(Error::Kube {
                            context: "log stream interrupted".to_owned(),
                            status: None,
                            retry_after: None,
                            source: Some(e.into()),
                        }),
                        reader,
                    )),
                }
            },
        ))
    }

    /// The init container of pod `name` that exited non-zero (the context
    /// download of a `url` context), if any: its log explains why the
    /// Kaniko container never ran. `None` also when the pod is gone.
    pub async fn failed_init_container(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let Some(pod) = pods.get_opt(name).await? else {
            return Ok(None);
        };
        Ok(pod
            .status
            .and_then(|s| s.init_container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0)
            })
            .map(|c| c.name))
    }

    /// Follows the pods of one build (label-selected, so a busy namespace
    /// costs nothing). Like [`Pods::watch`], the stream never ends and
    /// rides out watch errors by relisting ([`PodEvent::Resync`]).
    pub fn watch_build(
        &self,
        namespace: &str,
        build_id: &str,
    ) -> impl Stream<Item = PodEvent> + Send + use<> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{SELECTOR},{LABEL_BUILD}={}",
            kiln_protocol::label_value(build_id)
        );
        let id = build_id.to_owned();
        watcher(pods, watcher::Config::default().labels(&selector))
            .default_backoff()
            .filter_map(move |ev| {
                let event = match ev {
                    Ok(Event::Apply(p) | Event::InitApply(p)) => Some(PodEvent::Applied(view(&p))),
                    Ok(Event::Delete(p)) => Some(PodEvent::Deleted(view(&p))),
                    Ok(Event::Init) => Some(PodEvent::Resync),
                    Ok(Event::InitDone) => Some(PodEvent::Synced),
                    // The watcher's backoff retries on its own; `kiln logs`
                    // goes on with the events that follow.
                    Err(_) => None,
                };
                // A hashed label value may, in theory, be shared by two ids.
                let ours = match &event {
                    Some(PodEvent::Applied(v) | PodEvent::Deleted(v)) => v.build_id == id,
                    _ => true,
                };
                std::future::ready(event.filter(|_| ours))
            })
    }
}
