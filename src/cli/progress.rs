//! Progress of long operations (`doctor`, `audit export`, `audit verify`)
//! on a terminal: one status line on stderr (an indicatif spinner), redrawn
//! ten times a second by its ticker thread (so a step that waits, on the
//! engine or the network, still shows its time going by), and cleared when
//! the work is done.
//!
//! Nothing is drawn when stderr is not a terminal: logs, pipes and CI stay
//! clean. `PORTCULLIS_PROGRESS=always` draws anyway, `never` never does.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The spinner's frames; indicatif keeps the last for a finished line, which
/// is never seen here (the line is cleared).
const FRAMES: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ";
const REDRAW: Duration = Duration::from_millis(100);
/// `⠋ verifying `serve`: 12 of 40 records (30%), 8/s 1.5s`.
const TEMPLATE: &str = "{spinner} {msg}{counts} {seconds}";

/// A status line; dropping it clears the line.
pub struct Progress {
    bar: ProgressBar,
}

/// Where the line is drawn: stderr, when it is wanted there.
///
/// Decided here, not by indicatif's own stderr target, because that one also
/// hides the line when `TERM` is unset or `dumb` (a terminal under CI's
/// environment) and cannot be told to draw anyway (`always`). Drawn through
/// `term_like`, which leaves the decision to us.
fn target() -> ProgressDrawTarget {
    let wanted = match std::env::var("PORTCULLIS_PROGRESS").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => std::io::stderr().is_terminal(),
    };
    if wanted {
        ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::buffered_stderr()), 20)
    } else {
        ProgressDrawTarget::hidden()
    }
}

impl Progress {
    /// A step with no count (`checking the docker engine`).
    pub fn step(label: impl Into<String>) -> Self {
        Self::start(label.into(), None, "")
    }

    /// Work counted in `unit`s, with the total if it is known.
    pub fn counted(label: impl Into<String>, total: Option<u64>, unit: &'static str) -> Self {
        Self::start(label.into(), total, unit)
    }

    fn start(label: String, total: Option<u64>, unit: &'static str) -> Self {
        let target = target();
        if target.is_hidden() {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .tick_chars(FRAMES)
            .with_key(
                "counts",
                move |state: &ProgressState, out: &mut dyn fmt::Write| {
                    let _ = out.write_str(&counts(state.pos(), state.len(), unit, state.elapsed()));
                },
            )
            .with_key(
                "seconds",
                |state: &ProgressState, out: &mut dyn fmt::Write| {
                    let _ = write!(out, "{:.1}s", state.elapsed().as_secs_f64());
                },
            );
        let bar = ProgressBar::with_draw_target(total, target)
            .with_style(style)
            .with_message(label);
        // Drawn at once: the ticker may not run before quick work is done.
        bar.tick();
        bar.enable_steady_tick(REDRAW);
        Self { bar }
    }

    /// How much is done so far (drawn at the next tick).
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// The total, once it is known (drawn at once when it changes).
    pub fn set_total(&self, total: u64) {
        // Called for every record checked: only a change is worth a redraw.
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
        }
    }

    /// Moves on to another step, the clock restarted.
    pub fn relabel(&self, label: impl Into<String>) {
        self.bar.reset_elapsed();
        self.bar.set_message(label.into());
    }

    /// Prints a line on stdout without tearing the status line: cleared
    /// first, drawn again after.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| {
            println!("{line}");
            let _ = std::io::stdout().flush();
        });
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// What follows the label: for counted work, the count so far (of the total
/// when it is known) and, after half a second, the rate; `…` for a step.
fn counts(done: u64, total: Option<u64>, unit: &str, elapsed: Duration) -> String {
    if unit.is_empty() {
        return "…".to_owned();
    }
    let mut text = format!(": {}", count(done));
    match total.filter(|total| *total > 0) {
        Some(total) => {
            let percent = (done.min(total) as f64 / total as f64) * 100.0;
            text.push_str(&format!(" of {} {unit} ({percent:.0}%)", count(total)));
        }
        None => text.push_str(&format!(" {unit}")),
    }
    let seconds = elapsed.as_secs_f64();
    if seconds >= 0.5 {
        text.push_str(&format!(", {}/s", count((done as f64 / seconds) as u64)));
    }
    text
}

/// A count with thin groups of three (`1 000 000`), as the tables print them.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_how_much_and_how_long() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1 000");
        assert_eq!(count(1_234_567), "1 234 567");
        let quick = Duration::from_millis(100);
        assert_eq!(
            counts(250_000, Some(1_000_000), "records", quick),
            ": 250 000 of 1 000 000 records (25%)"
        );
        assert_eq!(counts(12, None, "records", quick), ": 12 records");
        assert_eq!(
            counts(3_000, None, "records", Duration::from_secs(2)),
            ": 3 000 records, 1 500/s"
        );
        assert_eq!(counts(0, None, "", quick), "…");
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
