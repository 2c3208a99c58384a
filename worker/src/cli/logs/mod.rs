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

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::time::Duration;

use tokio::sync::mpsc;

use super::exit;
use crate::classify::{PodPhase, PodView};
use crate::pod::{PodSettings, Pods};
use crate::store::{BuildRecord, KeptLog, LogMeta, RecordState, Store};

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

    // The attempts whose logs a worker kept when it deleted their pods.
    let kept = match &redis {
        Some(r) => r.kept_logs(&args.id).await.unwrap_or_default(),
        None => BTreeMap::new(),
    };
    // An image name the build does not have is a typo, not "no pods yet".
    if let Some(image) = &args.image {
        let mut known = known_images(&listed, record.as_ref());
        known.extend(kept.keys().map(|(u, _)| image_of_unit(u).to_owned()));
        if !known.is_empty() && !known.contains(image) {
            errln!(
                "kiln: build {} has no image {image:?}; its images: {}",
                args.id,
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
            return Ok(exit::INVALID);
        }
    }
    // A multi-platform image's platforms are units of their own
    // (`IMAGE/os/arch`: their attempts are numbered apart), one of them
    // with --platform; the publish step has no Kaniko log.
    let platform = args.platform.as_deref().map(kiln_protocol::platform_label);
    let wanted = |v: &PodView| {
        args.image.as_ref().is_none_or(|i| *i == v.image)
            && !v.publish
            && (platform.is_none() || v.platform == platform)
    };
    let mut listed: Vec<PodView> = listed.into_iter().filter(|v| wanted(v)).collect();
    listed.sort_by_key(|v| (v.log_unit(), v.attempt));

    // Kept logs are keyed the same way (`IMAGE` or `IMAGE/os/arch`).
    let kept: BTreeMap<(String, u32), LogMeta> = kept
        .into_iter()
        .filter(|((u, _), _)| unit_wanted(&args, u))
        .collect();
    let running = record
        .as_ref()
        .is_some_and(|r| r.state != RecordState::Finished);
    if listed.is_empty() && kept.is_empty() && !(args.follow && running) {
        errln!("kiln: {}", gone_message(&args, &namespace, record.as_ref()));
        return Ok(exit::ERROR);
    }
    let ctx = Ctx {
        pods,
        namespace,
        colour: crate::terminal::colour_allowed(std::io::stdout().is_terminal()),
    };
    // Following needs a build still running or pods to read; a finished
    // build whose pods are gone is shown from its kept logs.
    if args.follow && (running || !listed.is_empty()) {
        follow(&ctx, &args, redis.as_ref(), &listed).await
    } else {
        show(&ctx, &args, &listed, redis.as_ref(), &kept).await
    }
}

/// Whether the log unit `unit` is one `args` asks for (IMAGE, and the
/// platform of --platform).
fn unit_wanted(args: &LogsArgs, unit: &str) -> bool {
    args.image
        .as_ref()
        .is_none_or(|want| want == image_of_unit(unit))
        && args.platform.as_ref().is_none_or(|want| {
            platform_of_unit(unit).map(kiln_protocol::platform_label)
                == Some(kiln_protocol::platform_label(want))
        })
}

/// The image of a log unit (`IMAGE` or `IMAGE/os/arch[/variant]`).
fn image_of_unit(unit: &str) -> &str {
    unit.split_once('/').map_or(unit, |(image, _)| image)
}

/// The platform of a platform's log unit.
fn platform_of_unit(unit: &str) -> Option<&str> {
    unit.split_once('/').map(|(_, platform)| platform)
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
            ..PodSettings::default()
        },
    ))
}

/// Where one attempt's log is read from.
enum Source<'a> {
    Pod(&'a PodView),
    Kept,
}

/// Without `--follow` (or with it, once the pods are gone): the chosen
/// attempts, one after the other, each from its pod while it exists, else
/// from the log a worker kept when it deleted the pod.
async fn show(
    ctx: &Ctx,
    args: &LogsArgs,
    listed: &[PodView],
    redis: Option<&Store>,
    kept: &BTreeMap<(String, u32), LogMeta>,
) -> anyhow::Result<u8> {
    // Every attempt either source knows, by image then attempt; a pod that
    // still exists is the fresher source.
    let mut attempts: BTreeMap<(String, u32), Source> = kept
        .keys()
        .map(|(u, a)| ((u.clone(), *a), Source::Kept))
        .collect();
    for v in listed {
        attempts.insert((v.log_unit(), v.attempt), Source::Pod(v));
    }
    let images: BTreeSet<&str> = attempts.keys().map(|(u, _)| u.as_str()).collect();
    let mut chosen: Vec<(&str, u32, &Source)> = Vec::new();
    for image in &images {
        let of: Vec<(&str, u32, &Source)> = attempts
            .iter()
            .filter(|((u, _), _)| u == image)
            .map(|((u, a), s)| (u.as_str(), *a, s))
            .collect();
        match args.attempt {
            Some(n) => chosen.extend(of.iter().filter(|(_, a, _)| *a == n)),
            None if args.all_attempts => chosen.extend(&of),
            None => chosen.extend(of.last()),
        }
    }
    if chosen.is_empty() {
        errln!(
            "kiln: build {} has no pod and no kept log of attempt {} in namespace {} (pods are deleted once the next attempt exists; their logs are kept for KILN_LOG_RETENTION)",
            args.id,
            args.attempt.unwrap_or_default(),
            ctx.namespace
        );
        return Ok(exit::ERROR);
    }
    let mut printer = Printer::new(images.len() > 1, ctx.colour);
    let mut code = exit::OK;
    for (image, attempt, source) in chosen {
        let from = LineSource {
            image: image.to_owned(),
            attempt,
        };
        let v = match source {
            Source::Pod(v) => v,
            Source::Kept => {
                if !print_kept(&mut printer, &from, &args.id, redis).await? {
                    code = exit::ERROR;
                }
                continue;
            }
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
    Ok(code)
}

/// Prints the kept log of one attempt, or why it cannot: false when it
/// expired or Redis no longer answers.
async fn print_kept(
    printer: &mut Printer,
    from: &LineSource,
    id: &str,
    redis: Option<&Store>,
) -> anyhow::Result<bool> {
    let Some(redis) = redis else {
        return Ok(false);
    };
    match redis.kept_log(id, &from.image, from.attempt).await {
        Ok(KeptLog::Kept { meta, text }) => {
            if meta.cut > 0 {
                printer.handle(
                    from,
                    Msg::Note(format!(
                        "kept log, {} of its {} bytes left out (see the line that says where)",
                        meta.cut, meta.bytes
                    )),
                )?;
            }
            for line in text.split_inclusive('\n') {
                printer.line(from, line.as_bytes())?;
            }
            Ok(true)
        }
        Ok(KeptLog::Expired(meta)) => {
            errln!(
                "kiln: {}",
                expired_message(id, &from.image, from.attempt, &meta)
            );
            Ok(false)
        }
        Ok(KeptLog::Unknown) => {
            errln!(
                "kiln: the log of {id}/{} attempt {} was not kept",
                from.image,
                from.attempt
            );
            Ok(false)
        }
        Err(e) => {
            errln!(
                "kiln: cannot read the kept log of {id}/{} attempt {}: {}",
                from.image,
                from.attempt,
                super::fold(&e.to_string())
            );
            Ok(false)
        }
    }
}

/// The one line for a kept log past its retention.
pub fn expired_message(id: &str, image: &str, attempt: u32, meta: &LogMeta) -> String {
    format!(
        "the log of {id}/{image} attempt {attempt} expired at {} (kept for {})",
        meta.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        humantime::format_duration(Duration::from_secs(meta.retention_seconds))
    )
}
