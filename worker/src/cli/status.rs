//! `kiln status ID`: where a build stands, from its Redis record (phase per
//! image, attempt, pod, lease holder, pending cancel) and, when a kubeconfig
//! or in-cluster config is available, from its pods.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::exit;
use super::output::Output;
use crate::classify::PodView;
use crate::config::{Connections, parse_duration};
use crate::pod::{PodSettings, Pods};
use crate::store::BuildRecord;
use crate::terminal::strip_controls;

pub const AFTER_HELP: &str = "\
Redis keeps a record of each build for a while after it ends (KILN_RECORD_TTL
of the workers, 24h by default); the pods exist until the build's outcome is
published. When one of the two cannot be reached, the other is still shown.

Examples:
  kiln status shop-cart-1.2.3-7f3a
  kiln status shop-cart-1.2.3-7f3a --output json | jq .record.images";

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The build id.
    pub id: String,
    /// Namespace of the build pods when Redis has no record naming it.
    #[arg(long, env = "KILN_NAMESPACE", default_value = "kiln-builds")]
    pub namespace: String,
    /// How long to wait for the Kubernetes API.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kube_timeout: Duration,
    /// `text`: a summary and a table; `json`/`yaml`: one document.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub connections: Connections,
}

/// `--output json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    id: String,
    /// Redis' record; `null` when there is none.
    record: Option<BuildRecord>,
    /// Worker holding the build's lease now.
    lease_holder: Option<String>,
    /// Reason of a cancel not yet carried out.
    cancel_requested: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_error: Option<String>,
    namespace: String,
    /// The build's pods; `null` when the cluster could not be asked.
    pods: Option<Vec<PodStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    name: String,
    image: String,
    attempt: u32,
    phase: String,
    /// Waiting reason, termination, eviction, ... in a few words.
    detail: String,
    deleting: bool,
    created_at: Option<jiff::Timestamp>,
}

impl PodStatus {
    fn from_view(v: &PodView) -> Self {
        let mut detail = Vec::new();
        if let Some((reason, _)) = &v.unschedulable {
            detail.push(format!("unschedulable: {reason}"));
        }
        if let Some((reason, _)) = &v.waiting {
            detail.push(format!("waiting: {reason}"));
        }
        if let Some(t) = &v.terminated {
            let mut s = format!("exit code {}", t.exit_code);
            if let Some(r) = &t.reason {
                // Writing to a String cannot fail.
                let _ = write!(s, " ({r})");
            }
            detail.push(s);
        }
        if let Some(r) = &v.pod_reason {
            detail.push(r.clone());
        }
        if v.disrupted {
            detail.push("disrupted".to_owned());
        }
        Self {
            name: v.name.clone(),
            image: v.image.clone(),
            attempt: v.attempt,
            phase: v
                .phase
                .map_or_else(|| "Unknown".to_owned(), |p| format!("{p:?}")),
            detail: detail.join(", "),
            deleting: v.deleting,
            created_at: v.created_at,
        }
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let mut st = Status {
        id: args.id.clone(),
        record: None,
        lease_holder: None,
        cancel_requested: None,
        redis_error: None,
        namespace: args.namespace.clone(),
        pods: None,
        cluster_error: None,
    };
    match super::connect_redis(&args.connections).await {
        Ok(leases) => {
            let read = async {
                let record = leases.record(&args.id).await?;
                let holder = leases.holders(std::slice::from_ref(&args.id)).await?;
                let cancel = leases.cancel_reason(&args.id).await?;
                Ok::<_, crate::Error>((record, holder.into_iter().next().flatten(), cancel))
            };
            match read.await {
                Ok((record, holder, cancel)) => {
                    st.record = record;
                    st.lease_holder = holder;
                    st.cancel_requested = cancel;
                }
                Err(e) => st.redis_error = Some(super::fold(&e.to_string())),
            }
        }
        Err(e) => st.redis_error = Some(super::one_line(&e)),
    }
    if let Some(rec) = &st.record {
        st.namespace.clone_from(&rec.namespace);
    }
    match list_pods(&st.namespace, &args.id, args.kube_timeout).await {
        Ok(mut pods) => {
            pods.sort_by(|a, b| (&a.image, a.attempt).cmp(&(&b.image, b.attempt)));
            st.pods = Some(pods.iter().map(PodStatus::from_view).collect());
        }
        Err(e) => st.cluster_error = Some(e),
    }

    let known = st.record.is_some() || st.pods.as_ref().is_some_and(|p| !p.is_empty());
    let unreachable = st.redis_error.is_some() && st.cluster_error.is_some();
    match args.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&st)?),
        Output::Yaml => Output::Yaml.print(&st)?,
        Output::Text => print_text(&st),
    }
    if unreachable {
        anyhow::bail!(
            "neither Redis nor the Kubernetes API could be asked about build {}",
            args.id
        );
    }
    if !known {
        if args.output == Output::Text {
            errln!(
                "kiln: build {} is unknown: no Redis record{} and no pods in namespace {}",
                args.id,
                if st.redis_error.is_some() {
                    " (Redis unreachable)"
                } else {
                    ""
                },
                st.namespace
            );
        }
        return Ok(exit::ERROR);
    }
    Ok(exit::OK)
}

async fn list_pods(namespace: &str, id: &str, timeout: Duration) -> Result<Vec<PodView>, String> {
    let ask = async {
        let client = Pods::default_client().await?;
        let pods = Pods::new(
            client,
            PodSettings {
                kaniko_image: String::new(),
                fetch_image: String::new(),
                s3_region: String::new(),
                ..PodSettings::default()
            },
        );
        pods.build_pods(namespace, id).await
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(pods)) => Ok(pods),
        Ok(Err(e)) if e.to_string().contains("Failed to infer configuration") => Err(
            "no Kubernetes configuration (no kubeconfig at $KUBECONFIG or ~/.kube/config, not in a cluster)"
                .to_owned(),
        ),
        Ok(Err(e)) => Err(format!(
            "cannot list the pods of the build in namespace {namespace}: {}",
            super::fold(&e.to_string())
        )),
        Err(_) => Err(format!(
            "the Kubernetes API did not answer within {} (namespace {namespace})",
            humantime::format_duration(timeout)
        )),
    }
}

fn print_text(st: &Status) {
    if let Some(e) = &st.redis_error {
        errln!("kiln: Redis unreachable, showing the cluster's view only: {e}");
    }
    if let Some(e) = &st.cluster_error {
        errln!("kiln: cluster unreachable, showing Redis' view only: {e}");
    }
    match &st.record {
        Some(rec) => print_record(st, rec),
        None if st.redis_error.is_none() => {
            outln!("build {}: no Redis record", st.id);
            print_lease_and_cancel(st);
        }
        None => {}
    }
    if let Some(pods) = &st.pods {
        print_pods(&st.namespace, pods);
    }
}

/// Redis' view: the build's phase and whereabouts, then a table of images.
fn print_record(st: &Status, rec: &BuildRecord) {
    let phase = rec.phase.map_or_else(
        || format!("{:?}", rec.state).to_lowercase(),
        |p| p.to_string(),
    );
    outln!("build {}: {phase}", st.id);
    outln!(
        "  tenant {}, namespace {}, worker {}, updated {}",
        rec.tenant,
        rec.namespace,
        rec.worker,
        rec.updated_at.strftime("%Y-%m-%d %H:%M:%SZ")
    );
    print_lease_and_cancel(st);
    if rec.images.is_empty() {
        return;
    }
    let rows: Vec<[String; 5]> = rec
        .images
        .iter()
        .map(|(name, i)| {
            [
                name.clone(),
                // `waiting (QuotaExceeded)`: why an image has no pod yet.
                i.reason
                    .as_ref()
                    .map_or_else(|| i.phase.to_string(), |r| format!("{} ({r})", i.phase)),
                i.attempt.to_string(),
                i.pod.clone().unwrap_or_default(),
                i.digest.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["IMAGE", "PHASE", "ATTEMPT", "POD", "DIGEST"], &rows);
}

/// The lease holder and a pending cancel, with or without a record.
fn print_lease_and_cancel(st: &Status) {
    if let Some(h) = &st.lease_holder {
        outln!("  lease held by {h}");
    }
    if let Some(r) = &st.cancel_requested {
        // The reason is the canceller's text.
        outln!("  cancel requested: {}", strip_controls(r));
    }
}

/// The cluster's view: a table of the build's pods.
fn print_pods(namespace: &str, pods: &[PodStatus]) {
    if pods.is_empty() {
        outln!("cluster: no pods of the build in namespace {namespace}");
        return;
    }
    outln!("cluster: namespace {namespace}");
    let rows: Vec<[String; 5]> = pods
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.image.clone(),
                p.attempt.to_string(),
                if p.deleting {
                    format!("{} (deleting)", p.phase)
                } else {
                    p.phase.clone()
                },
                p.detail.clone(),
            ]
        })
        .collect();
    table(&["POD", "IMAGE", "ATTEMPT", "PHASE", "DETAIL"], &rows);
}

/// A left-aligned table, indented by two spaces.
fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Pod reasons and details are the cluster's (and a namespace editor's)
    // text: no control sequence reaches the terminal.
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| strip_controls(&c).into_owned()))
        .collect();
    let rows = rows.as_slice();
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (cell, w) in cells.iter().zip(widths) {
            s.push(' ');
            s.push_str(cell);
            s.push_str(&" ".repeat(w.saturating_sub(cell.chars().count()) + 1));
        }
        outln!("{}", s.trim_end());
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
