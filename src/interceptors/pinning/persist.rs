//! Writing what a judging pass decided (first-use pins, definitions
//! awaiting review) under the lock, and reloading the pin file when it
//! changes on disk.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::batch::Batch;
use super::store::{Pin, PinError, PinFile, Seen, SeenFile};
use super::{PinEvent, Pinning};

impl Pinning {
    /// Writes a pass's new pins and notes (one locked write each), and
    /// announces its events.
    pub(super) fn commit(&self, batch: Batch) {
        let Batch {
            pins, seen, events, ..
        } = batch;
        if !pins.is_empty() {
            tracing::info!(tools = pins.len(), file = %self.files.pins.display(), "tools pinned on first use");
        }
        let mut events = events;
        if !pins.is_empty() || !seen.is_empty() {
            match self.write(pins, seen) {
                Ok(Some(reloaded)) => events.push(reloaded),
                Ok(None) => {}
                Err(err) => tracing::error!(
                    error = %err,
                    "the pins cannot be written; they hold until the proxy stops"
                ),
            }
        }
        if !events.is_empty() {
            let _ = self.events.send(events.into());
        }
    }

    /// Writes pins and notes under the lock. Returns a `Reloaded` event
    /// when the pin file held changes this proxy had not loaded yet
    /// (another writer's, such as an approval).
    fn write(
        &self,
        pins: Vec<(String, Pin)>,
        seen: Vec<(String, Option<Seen>)>,
    ) -> Result<Option<PinEvent>, PinError> {
        // Memory first: what this pass decided holds even if the disk fails.
        let (held_pins, held_seen, _) = self.current();
        let expected = with_first_pins((*held_pins).clone(), &pins);
        // Another pass pinned a different first definition of the same
        // tool: that one holds, and this pass's judgements are redone.
        let lost = |file: &PinFile| {
            pins.iter().any(|(name, pin)| {
                file.tools
                    .get(name)
                    .is_some_and(|kept| kept.sha256 != pin.sha256)
            })
        };
        let mut noted = (*held_seen).clone();
        apply_seen(&mut noted, &seen);
        {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            if lost(&expected) {
                snapshot.generation += 1;
            }
            snapshot.pins = Arc::new(expected.clone());
            snapshot.seen = Arc::new(noted);
        }
        let _lock = self.files.lock()?;
        let mut event = None;
        if !pins.is_empty() {
            let merged = with_first_pins(self.files.load_pins()?, &pins);
            self.files.save_pins(&merged)?;
            let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            if merged != expected || lost(&merged) {
                // Someone else wrote pins meanwhile: judge again, and say
                // what changed (as a reload would have).
                snapshot.generation += 1;
                let (changed, removed) = differences(&expected, &merged);
                if !changed.is_empty() || !removed.is_empty() {
                    event = Some(PinEvent::Reloaded { changed, removed });
                }
            }
            snapshot.pins = Arc::new(merged);
            snapshot.stamp = self.files.stamp();
        }
        if !seen.is_empty() {
            let mut on_disk = self.files.load_seen()?;
            apply_seen(&mut on_disk, &seen);
            self.files.save_seen(&on_disk)?;
            let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            snapshot.seen = Arc::new(on_disk);
        }
        Ok(event)
    }

    /// Re-reads the pin file if it changed on disk; `None` when nothing
    /// changed. A file that does not load leaves the pins in force.
    pub fn reload(&self) -> Option<PinEvent> {
        // Under the lock: never an older file over a newer write.
        let _lock = self.files.lock().ok();
        let stamp = self.files.stamp();
        {
            let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            if snapshot.stamp == stamp {
                return None;
            }
        }
        let loaded = self
            .files
            .load_pins()
            .and_then(|pins| Ok((pins, self.files.load_seen()?)));
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        snapshot.stamp = stamp;
        let (pins, seen) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                let message = err.to_string();
                let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
                if rejected.as_deref() == Some(message.as_str()) {
                    return None;
                }
                tracing::error!(error = %message, "the pin file changed and does not load; the pins in force stay");
                *rejected = Some(message.clone());
                return Some(PinEvent::Rejected { message });
            }
        };
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
        snapshot.seen = Arc::new(seen);
        if pins == *snapshot.pins {
            return None;
        }
        let (changed, removed) = differences(&snapshot.pins, &pins);
        snapshot.pins = Arc::new(pins);
        snapshot.generation += 1;
        tracing::info!(
            changed = changed.len(),
            removed = removed.len(),
            "pin file reloaded"
        );
        Some(PinEvent::Reloaded { changed, removed })
    }

    /// Polls the pin file every `every` until shut down; each reload is
    /// announced to [`Pinning::subscribe`]rs.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let pinning = self.clone();
            let Ok(event) = tokio::task::spawn_blocking(move || pinning.reload()).await else {
                continue;
            };
            if let Some(event) = event {
                let _ = self.events.send(Arc::from([event]));
            }
        }
    }
}

/// `file` with a pass's first-use pins added where it has none (the first
/// definition pinned holds).
fn with_first_pins(mut file: PinFile, pins: &[(String, Pin)]) -> PinFile {
    for (name, pin) in pins {
        file.tools
            .entry(name.clone())
            .or_insert_with(|| pin.clone());
    }
    file
}

/// From `old` to `new`: the tools whose pin is new or different, and those
/// no longer pinned.
fn differences(old: &PinFile, new: &PinFile) -> (Vec<String>, Vec<String>) {
    let changed = new
        .tools
        .iter()
        .filter(|(name, pin)| old.tools.get(*name) != Some(*pin))
        .map(|(name, _)| name.clone())
        .collect();
    let removed = old
        .tools
        .keys()
        .filter(|name| !new.tools.contains_key(*name))
        .cloned()
        .collect();
    (changed, removed)
}

fn apply_seen(file: &mut SeenFile, changes: &[(String, Option<Seen>)]) {
    for (name, entry) in changes {
        match entry {
            Some(entry) => {
                file.tools.insert(name.clone(), entry.clone());
            }
            None => {
                file.tools.remove(name);
            }
        }
    }
}
