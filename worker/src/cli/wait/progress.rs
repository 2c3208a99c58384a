//! Where each image of the followed build stands, and how it is shown on
//! standard error: live bars on a terminal, lines otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_protocol::{BuildEvent, Level, Phase};

use super::followed::Follow;
use crate::cli::output::{human_line, short_duration};
use crate::store::BuildRecord;

/// Where each image stands, from the events seen.
#[derive(Debug, Clone, Default)]
pub(super) struct WaitedImage {
    pub(super) phase: Option<Phase>,
    pub(super) attempt: u32,
    /// The last `failed` (or `retrying`) event, for the report.
    pub(super) failure: Option<BuildEvent>,
    pub(super) succeeded: Option<BuildEvent>,
}

pub(super) struct Tracker {
    pub(super) images: BTreeMap<String, WaitedImage>,
    pub(super) view: View,
}

impl Tracker {
    pub(super) fn new(f: &Follow) -> Self {
        let mut view = View::new(f);
        let mut images = BTreeMap::new();
        for name in &f.images {
            images.insert(name.clone(), WaitedImage::default());
            view.image(name, "waiting", false, false);
        }
        Self { images, view }
    }

    /// Shows what the Redis record knows of a build still running.
    pub(super) fn seed(&mut self, rec: &BuildRecord) {
        let state = format!("{:?}", rec.state).to_lowercase();
        self.view.build(&format!("{state} by {}", rec.worker));
        for (name, img) in &rec.images {
            let state = self.images.entry(name.clone()).or_default();
            state.attempt = img.attempt;
            let ended = img.phase.is_terminal(Level::Image);
            if ended {
                state.phase = Some(img.phase);
            }
            let msg = format!("{:<9}  attempt {}", img.phase.as_str(), img.attempt);
            self.view
                .image(name, &msg, ended, img.phase == Phase::Succeeded);
        }
    }

    pub(super) fn apply(&mut self, ev: &BuildEvent) {
        self.view.event(ev);
        let d = &ev.data;
        match &d.image {
            None => {
                if !ev.is_terminal() {
                    self.view.build(d.phase.as_str());
                }
            }
            Some(name) => {
                let state = self.images.entry(name.clone()).or_default();
                let attempt = d.attempt.unwrap_or(1);
                // Stale: an older attempt, or news after the image ended
                // (events may reorder across a worker takeover).
                let ended = state.phase.is_some_and(|p| p.is_terminal(Level::Image));
                if attempt < state.attempt || (attempt == state.attempt && ended) {
                    return;
                }
                state.attempt = attempt;
                state.phase = Some(d.phase);
                match d.phase {
                    Phase::Failed | Phase::Retrying => state.failure = Some(ev.clone()),
                    Phase::Succeeded => state.succeeded = Some(ev.clone()),
                    _ => {}
                }
                let details = crate::cli::output::compact_details(ev);
                let msg = format!("{:<9}  {details}", d.phase.as_str());
                let terminal = d.phase.is_terminal(Level::Image);
                self.view
                    .image(name, &msg, terminal, d.phase == Phase::Succeeded);
            }
        }
    }
}

/// Progress on standard error: live bars on a terminal, lines otherwise,
/// nothing for `--output json`.
pub(super) enum View {
    Bars(Bars),
    Lines,
    Silent,
}

pub(super) struct Bars {
    pub(super) multi: MultiProgress,
    pub(super) build: ProgressBar,
    pub(super) images: BTreeMap<String, ProgressBar>,
    pub(super) width: usize,
}

pub(super) fn running_style(width: usize) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner:.cyan}} {{prefix:<{width}.bold}}  {{msg}}  {{elapsed:.dim}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
    .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", " "])
}

pub(super) fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl View {
    pub(super) fn new(f: &Follow) -> Self {
        if f.output.is_data() {
            return View::Silent;
        }
        if !std::io::stderr().is_terminal() {
            errln!(
                "waiting for build {} (up to {})",
                f.build_id,
                humantime::format_duration(f.timeout)
            );
            return View::Lines;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let width = f
            .images
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max("build".len());
        let build = multi.add(ProgressBar::new_spinner());
        build.set_style(running_style(width));
        build.set_prefix("build");
        build.set_message(format!("{}  waiting for a worker", f.build_id));
        build.enable_steady_tick(Duration::from_millis(120));
        View::Bars(Bars {
            multi,
            build,
            images: BTreeMap::new(),
            width,
        })
    }

    pub(super) fn event(&self, ev: &BuildEvent) {
        if let View::Lines = self {
            errln!("{}", human_line(ev));
        }
    }

    pub(super) fn build(&self, msg: &str) {
        if let View::Bars(b) = self {
            b.build.set_message(msg.to_owned());
        }
    }

    pub(super) fn image(&mut self, name: &str, msg: &str, terminal: bool, ok: bool) {
        let View::Bars(b) = self else { return };
        if name.len() > b.width {
            b.width = name.len();
            for bar in std::iter::once(&b.build).chain(b.images.values()) {
                if !bar.is_finished() {
                    bar.set_style(running_style(b.width));
                }
            }
        }
        let bar = b.images.entry(name.to_owned()).or_insert_with(|| {
            let bar = b.multi.add(ProgressBar::new_spinner());
            bar.set_style(running_style(b.width));
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_finished() {
            return;
        }
        if terminal {
            let took = short_duration(bar.elapsed());
            bar.set_style(done_style());
            let mark = if ok { "✔" } else { "✘" };
            let width = b.width;
            bar.finish_with_message(format!("{mark} {name:<width$}  {msg}  {took}"));
        } else {
            bar.set_message(msg.to_owned());
        }
    }

    /// Ends the live display, keeping the images' last lines (the report
    /// follows).
    pub(super) fn clear(&mut self) {
        if let View::Bars(b) = self {
            b.build.finish_and_clear();
            for bar in b.images.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }

    /// Leaves the display as it is.
    pub(super) fn abandon(&mut self) {
        if let View::Bars(b) = self {
            for bar in std::iter::once(&b.build).chain(b.images.values()) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}
