//! Progress of long operations (`doctor`, `audit export`, `audit verify`)
//! on a terminal: one status line on stderr, redrawn ten times a second by a
//! ticker thread (so a step that waits, on the engine or the network, still
//! shows its time going by), and cleared when the work is done.
//!
//! Nothing is drawn when stderr is not a terminal: logs, pipes and CI stay
//! clean. `PORTCULLIS_PROGRESS=always` draws anyway, `never` never does.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const REDRAW: Duration = Duration::from_millis(100);

/// A status line; dropping it clears the line.
pub struct Progress {
    shared: Option<Arc<Shared>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    stopped: Condvar,
}

struct State {
    label: String,
    done: u64,
    total: Option<u64>,
    /// What `done` counts (`records`); empty for a step with no count.
    unit: &'static str,
    started: Instant,
    frame: usize,
    drawn: bool,
    stop: bool,
}

/// Whether progress is drawn: stderr is a terminal, unless the environment
/// says otherwise.
fn wanted() -> bool {
    match std::env::var("PORTCULLIS_PROGRESS").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => std::io::stderr().is_terminal(),
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
        if !wanted() {
            return Self {
                shared: None,
                ticker: None,
            };
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(label, total, unit)),
            stopped: Condvar::new(),
        });
        // Drawn at once: the ticker may not run before quick work is done.
        lock(&shared.state).draw();
        let ticking = shared.clone();
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let mut state = lock(&ticking.state);
                loop {
                    state = match ticking.stopped.wait_timeout(state, REDRAW) {
                        Ok((state, _)) => state,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                    if state.stop {
                        return;
                    }
                    state.draw();
                }
            })
            .ok();
        Self {
            shared: Some(shared),
            ticker,
        }
    }

    /// How much is done so far.
    pub fn set(&self, done: u64) {
        if let Some(shared) = &self.shared {
            lock(&shared.state).done = done;
        }
    }

    /// The total, once it is known (drawn at once when it changes).
    pub fn set_total(&self, total: u64) {
        if let Some(shared) = &self.shared {
            let mut state = lock(&shared.state);
            if state.total != Some(total) {
                state.total = Some(total);
                state.draw();
            }
        }
    }

    /// Moves on to another step, the clock restarted.
    pub fn relabel(&self, label: impl Into<String>) {
        if let Some(shared) = &self.shared {
            let mut state = lock(&shared.state);
            state.label = label.into();
            state.started = Instant::now();
            state.draw();
        }
    }

    /// Prints a line on stdout without tearing the status line: cleared
    /// first, drawn again after.
    pub fn println(&self, line: &str) {
        let Some(shared) = &self.shared else {
            println!("{line}");
            return;
        };
        let mut state = lock(&shared.state);
        state.clear();
        println!("{line}");
        let _ = std::io::stdout().flush();
        state.draw();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            lock(&shared.state).stop = true;
            shared.stopped.notify_all();
        }
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        if let Some(shared) = &self.shared {
            lock(&shared.state).clear();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    fn new(label: String, total: Option<u64>, unit: &'static str) -> Self {
        Self {
            label,
            done: 0,
            total,
            unit,
            started: Instant::now(),
            frame: 0,
            drawn: false,
            stop: false,
        }
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let frame = FRAMES[self.frame % FRAMES.len()];
        let mut line = format!("{frame} {}", self.label);
        if !self.unit.is_empty() {
            line.push_str(&format!(": {}", count(self.done)));
            if let Some(total) = self.total.filter(|total| *total > 0) {
                let percent = (self.done.min(total) as f64 / total as f64) * 100.0;
                line.push_str(&format!(
                    " of {} {} ({percent:.0}%)",
                    count(total),
                    self.unit
                ));
            } else {
                line.push_str(&format!(" {}", self.unit));
            }
            if elapsed >= 0.5 {
                line.push_str(&format!(
                    ", {}/s",
                    count((self.done as f64 / elapsed) as u64)
                ));
            }
        } else {
            line.push('…');
        }
        line.push_str(&format!(" {elapsed:.1}s"));
        line
    }

    fn draw(&mut self) {
        if self.stop {
            return;
        }
        self.frame += 1;
        let mut err = std::io::stderr().lock();
        // Carriage return and erase-line: the status line is redrawn in place.
        let _ = write!(err, "\r\x1b[2K{}", self.line());
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
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

    fn state(done: u64, total: Option<u64>, unit: &'static str) -> State {
        State {
            done,
            ..State::new("verifying `serve`".into(), total, unit)
        }
    }

    #[test]
    fn lines_say_what_how_much_and_how_long() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1 000");
        assert_eq!(count(1_234_567), "1 234 567");
        let line = state(250_000, Some(1_000_000), "records").line();
        assert!(
            line.starts_with("⠋ verifying `serve`: 250 000 of 1 000 000 records (25%)"),
            "{line}"
        );
        let line = state(12, None, "records").line();
        assert!(
            line.starts_with("⠋ verifying `serve`: 12 records "),
            "{line}"
        );
        let line = state(0, None, "").line();
        assert!(line.starts_with("⠋ verifying `serve`… "), "{line}");
        assert!(line.ends_with('s'), "{line}");
    }
}
