//! The rebuild's progress: a bar on a terminal, a log line every few seconds otherwise, and
//! the progress gauges (`monitor`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

/// A progress bar on a terminal, a log line every few seconds otherwise.
pub(super) struct Meter {
    bar: ProgressBar,
    started: Instant,
    first: u64,
    logged: Instant,
}

impl Meter {
    pub(super) fn new(draw: bool, names: &[&str], at: u64) -> Meter {
        crate::monitor::register();
        let target = if draw {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        let style = ProgressStyle::with_template(
            "rebuilding {msg} [{bar:30}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(names.join(", "));
        bar.set_position(at);
        bar.reset_eta();
        Meter {
            bar,
            started: Instant::now(),
            first: at,
            logged: Instant::now(),
        }
    }

    /// `position` of `end`: the live projector's position is where the rebuild is heading.
    pub(super) fn show(&mut self, position: u64, end: u64) {
        crate::monitor::rebuild_at(position, end, false);
        self.bar.set_length(end.max(position));
        self.bar.set_position(position);
        if self.bar.is_hidden() && self.logged.elapsed() >= Duration::from_secs(5) {
            let rate = (position - self.first.min(position)) as f64
                / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta_secs = (end.saturating_sub(position) as f64 / rate.max(1.0)).round();
            tracing::info!(
                position,
                end,
                events_per_sec = rate.round(),
                eta_secs,
                "rebuilding"
            );
            self.logged = Instant::now();
        }
    }

    /// The end; `switched` when the rebuilt tables went live (the progress gauge reads 1).
    pub(super) fn finish(&self, switched: bool) {
        if switched {
            let position = self.bar.position();
            crate::monitor::rebuild_at(position, position, true);
        }
        self.bar.finish_and_clear();
    }
}
