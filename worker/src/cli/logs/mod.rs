//! `kiln logs ID [IMAGE] [-f]`: the Kaniko logs of a build's pods, read
//! from the cluster with the user's kubeconfig.
//!
//! Without `--follow` it prints what the pods hold now and exits. With it,
//! it follows the running attempt of each image (the log endpoint with
//! `follow=true`, which the API server keeps open until the container
//! stops), and when an attempt fails with a retry coming, waits for the
//! next attempt's pod (a label-selected watch of the build's pods) and goes
//! on with it.
//!
//! When is an image over? The pods say it, as the worker keeps them
//! (docs/guarantees.md): a failed attempt's pod stays until the next
//! attempt's pod exists, and pods are deleted only when the build ends or
//! the image is cancelled. So an image is over when its newest attempt
//! succeeded, failed for good (not retryable, its last attempt, or past the
//! build's deadline: [`classify`] and the plan in the pod's annotation), or
//! its pod was deleted with no newer attempt. Redis' record, when it says
//! the build finished, ends every image at once and gives the exit code.

mod args;
mod follow;
mod pods;
mod stream;

pub use args::{AFTER_HELP, LogsArgs};
use follow::follow;
use pods::{known_images, pending_note, read_record};
use stream::{Ctx, LineSource, Msg, Printer, stream_pod};

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::time::Duration;

use tokio::sync::mpsc;

use super::exit;
use crate::classify::{PodPhase, PodView};
use crate::pod::{PodSettings, Pods};
use crate::store::{BuildRecord, RecordState};

pub async fn run(args: LogsArgs) -> anyhow::Result<u8> {
    match logs(args).await {
        Err(e) if super::is_broken_pipe_error(&e) => Ok(super::exit::BROKEN_PIPE),
        other => other,
    }
}

async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let redis = match super::connect_redis(&args.connections).await {
        Ok(l) => Some(l),
        Err(e) => {
            errln!(
                "kiln: Redis unreachable, going by the pods alone: {}",
                super::one_line(&e)
            );
            None
        }
    };
    let record = read_record(redis.as_ref(), &args.id).await;
    let namespace = record
        .as_ref()
        .map_or_else(|| args.namespace.clone(), |r| r.namespace.clone());
    let pods = connect_kube(args.kube_timeout).await?;
    let listed = tokio::time::timeout(args.kube_timeout, pods.build_pods(&namespace, &args.id))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the Kubernetes API did not answer within {} (namespace {namespace})",
                humantime::format_duration(args.kube_timeout)
            )
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list the pods of build {} in namespace {namespace}: {}",
                args.id,
                super::fold(&e.to_string())
            )
        })?;

    // An image name the build does not have is a typo, not "no pods yet".
    if let Some(image) = &args.image {
        let known = known_images(&listed, record.as_ref());
        if !known.is_empty() && !known.contains(image) {
            errln!(
                "kiln: build {} has no image {image:?}; its images: {}",
                args.id,
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
            return Ok(exit::INVALID);
        }
    }
    let wanted = |v: &PodView| args.image.as_ref().is_none_or(|i| *i == v.image);
    let mut listed: Vec<PodView> = listed.into_iter().filter(|v| wanted(v)).collect();
    listed.sort_by(|a, b| (&a.image, a.attempt).cmp(&(&b.image, b.attempt)));

    let running = record
        .as_ref()
        .is_some_and(|r| r.state != RecordState::Finished);
    if listed.is_empty() && !(args.follow && running) {
        errln!("kiln: {}", gone_message(&args, &namespace, record.as_ref()));
        return Ok(exit::ERROR);
    }
    let ctx = Ctx {
        pods,
        namespace,
        colour: crate::terminal::colour_allowed(std::io::stdout().is_terminal()),
    };
    if args.follow {
        follow(&ctx, &args, redis.as_ref(), &listed).await
    } else {
        show(&ctx, &args, &listed).await
    }
}

/// The one line for a build without pods.
fn gone_message(args: &LogsArgs, namespace: &str, record: Option<&BuildRecord>) -> String {
    let what = args.image.as_ref().map_or_else(
        || format!("build {}", args.id),
        |i| format!("image {i} of build {}", args.id),
    );
    let why = match record {
        Some(r) if r.state == RecordState::Finished => format!(
            "the build {} and its pods were deleted",
            r.phase.map_or("finished", kiln_protocol::Phase::as_str)
        ),
        Some(_) => "its pods are not there yet, or were deleted".to_owned(),
        None => "Redis has no record of it: it finished long ago or never existed".to_owned(),
    };
    format!(
        "no pods of {what} in namespace {namespace} ({why}); the end of each failed attempt's log is in its failure event (data.logTail): `kiln watch --build {id} -o json` shows them as they happen, `kiln status {id}` shows the outcome",
        id = args.id
    )
}

async fn connect_kube(timeout: Duration) -> anyhow::Result<Pods> {
    let client = tokio::time::timeout(timeout, Pods::default_client())
        .await
        .map_err(|_| anyhow::anyhow!("the Kubernetes configuration could not be loaded in time"))?
        .map_err(|e| {
            if e.to_string().contains("Failed to infer configuration") {
                anyhow::anyhow!(
                    "no Kubernetes configuration (no kubeconfig at $KUBECONFIG or ~/.kube/config, not in a cluster)"
                )
            } else {
                anyhow::anyhow!("{}", super::fold(&e.to_string()))
            }
        })?;
    Ok(Pods::new(
        client,
        PodSettings {
            kaniko_image: String::new(),
            fetch_image: String::new(),
            s3_region: String::new(),
        },
    ))
}

/// Without `--follow`: the chosen attempts, one after the other.
async fn show(ctx: &Ctx, args: &LogsArgs, listed: &[PodView]) -> anyhow::Result<u8> {
    let mut chosen: Vec<&PodView> = Vec::new();
    let images: BTreeSet<&str> = listed.iter().map(|v| v.image.as_str()).collect();
    for image in &images {
        let of: Vec<&PodView> = listed.iter().filter(|v| v.image == *image).collect();
        match args.attempt {
            Some(n) => chosen.extend(of.iter().filter(|v| v.attempt == n)),
            None if args.all_attempts => chosen.extend(&of),
            None => chosen.extend(of.last()),
        }
    }
    if chosen.is_empty() {
        errln!(
            "kiln: build {} has no pod of attempt {} in namespace {} (pods are deleted once the next attempt exists)",
            args.id,
            args.attempt.unwrap_or_default(),
            ctx.namespace
        );
        return Ok(exit::ERROR);
    }
    let mut printer = Printer::new(images.len() > 1, ctx.colour);
    for v in chosen {
        let from = LineSource {
            image: v.image.clone(),
            attempt: v.attempt,
        };
        if v.phase == Some(PodPhase::Pending) {
            printer.handle(&from, Msg::Note(pending_note(v)))?;
            continue;
        }
        let (tx, mut rx) = mpsc::channel(256);
        tokio::spawn(stream_pod(
            ctx.pods.clone(),
            ctx.namespace.clone(),
            v.name.clone(),
            false,
            tx,
        ));
        while let Some(msg) = rx.recv().await {
            if printer.handle(&from, msg)? {
                break;
            }
        }
    }
    Ok(exit::OK)
}
