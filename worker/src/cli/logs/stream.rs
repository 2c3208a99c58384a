//! Reading pod logs for `kiln logs`: one task per attempt streams its
//! Kaniko log (or the init container that stopped it) as [`Msg`]s, and the
//! [`Printer`] writes them, prefixed by image and attempt.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::pin::pin;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::classify::PodView;
use crate::pod::Pods;

/// What every log task of the command shares.
pub(super) struct Ctx {
    pub(super) pods: Pods,
    pub(super) namespace: String,
    pub(super) colour: bool,
}

/// What a log task tells the printer, in order.
pub(super) enum Msg {
    Line(Vec<u8>),
    /// A note for standard error.
    Note(String),
    End,
}

/// Who a line belongs to.
#[derive(Clone)]
pub(super) struct LineSource {
    pub(super) image: String,
    pub(super) attempt: u32,
}

/// Writes lines to standard output, prefixed when several images are shown.
pub(super) struct Printer {
    pub(super) prefix: bool,
    pub(super) colour: bool,
    pub(super) colours: BTreeMap<String, usize>,
}

impl Printer {
    pub(super) fn new(prefix: bool, colour: bool) -> Self {
        Self {
            prefix,
            colour,
            colours: BTreeMap::new(),
        }
    }

    pub(super) fn line(&mut self, from: &LineSource, line: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.prefix {
            let p = format!("{}#{} | ", from.image, from.attempt);
            if self.colour {
                // Cyan, yellow, magenta, green, blue, red: one per image.
                const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];
                let n = self.colours.len();
                let i = *self.colours.entry(from.image.clone()).or_insert(n);
                write!(out, "\x1b[{}m{p}\x1b[0m", COLOURS[i % COLOURS.len()])?;
            } else {
                out.write_all(p.as_bytes())?;
            }
        }
        out.write_all(line)?;
        if !line.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    pub(super) fn handle(&mut self, from: &LineSource, msg: Msg) -> std::io::Result<bool> {
        match msg {
            Msg::Line(l) => self.line(from, &l)?,
            Msg::Note(n) => {
                writeln!(
                    std::io::stderr(),
                    "kiln: {}#{}: {n}",
                    from.image,
                    from.attempt
                )?;
            }
            Msg::End => return Ok(true),
        }
        Ok(false)
    }
}

/// Reads one pod's Kaniko log into `tx` (following it if asked), or the
/// log of the init container that stopped the pod, then sends
/// [`Msg::End`].
pub(super) async fn stream_pod(
    pods: Pods,
    ns: String,
    name: String,
    follow: bool,
    tx: mpsc::Sender<Msg>,
) {
    let send = |m: Msg| {
        let tx = tx.clone();
        async move { tx.send(m).await.is_ok() }
    };
    let opened = pods.log_lines(&ns, &name, None, follow, None).await;
    let lines = match opened {
        Ok(s) => Some(s.boxed()),
        Err(crate::Error::Kube {
            status: Some(400),
            context: message,
            ..
        }) => {
            if let Ok(Some(init)) = pods.failed_init_container(&ns, &name).await {
                send(Msg::Note(format!(
                    "the Kaniko container never ran: init container {init} failed; its log follows"
                )))
                .await;
                match pods.log_lines(&ns, &name, Some(&init), false, None).await {
                    Ok(s) => Some(s.boxed()),
                    Err(e) => {
                        send(Msg::Note(format!("cannot read the log of {init}: {e}"))).await;
                        None
                    }
                }
            } else {
                // The API server's reason, e.g. "... is waiting to start:
                // PodInitializing".
                send(Msg::Note(format!(
                    "no log: {}",
                    message.rsplit(": ").next().unwrap_or(&message)
                )))
                .await;
                None
            }
        }
        Err(crate::Error::Kube {
            status: Some(404), ..
        }) => {
            send(Msg::Note(format!(
                "pod {name} was deleted before its log could be read"
            )))
            .await;
            None
        }
        Err(e) => {
            send(Msg::Note(format!("cannot read the log of pod {name}: {e}"))).await;
            None
        }
    };
    if let Some(mut lines) = lines {
        while let Some(line) = lines.next().await {
            let ok = match line {
                Ok(l) => send(Msg::Line(l)).await,
                Err(e) => {
                    send(Msg::Note(e.to_string())).await;
                    false
                }
            };
            if !ok {
                break;
            }
        }
    }
    // The printer is gone (the command is ending): nobody to tell.
    let _ = tx.send(Msg::End).await;
}

pub(super) fn spawn_stream(
    ctx: &Ctx,
    v: &PodView,
    tx: &mpsc::Sender<(LineSource, Msg)>,
    tail: Option<i64>,
) {
    let (pods, ns, name) = (ctx.pods.clone(), ctx.namespace.clone(), v.name.clone());
    let from = LineSource {
        image: v.image.clone(),
        attempt: v.attempt,
    };
    let out = tx.clone();
    tokio::spawn(async move {
        let (inner_tx, mut inner_rx) = mpsc::channel(256);
        let reader = async {
            if tail.is_some() {
                follow_from_now(pods, ns, name, inner_tx).await;
            } else {
                stream_pod(pods, ns, name, true, inner_tx).await;
            }
        };
        let forward = async {
            while let Some(m) = inner_rx.recv().await {
                if out.send((from.clone(), m)).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(reader, forward);
    });
}

/// Follows a pod's log from now on (after a cut stream).
pub(super) async fn follow_from_now(pods: Pods, ns: String, name: String, tx: mpsc::Sender<Msg>) {
    if let Ok(lines) = pods.log_lines(&ns, &name, None, true, Some(0)).await {
        let mut lines = pin!(lines);
        while let Some(Ok(l)) = lines.next().await {
            if tx.send(Msg::Line(l)).await.is_err() {
                return;
            }
        }
    }
    // The printer is gone (the command is ending): nobody to tell.
    let _ = tx.send(Msg::End).await;
}
