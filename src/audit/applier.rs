//! The applier thread: it makes logged records readable (the storage's
//! [`Apply`]) off the callers' path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use super::storage::Apply;
use super::{AuditError, Failing, tell_readable};

/// How long the applier waits before it tries records sled refused again.
const APPLY_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// While records arrive, the applier looks for more this often, woken by a
/// timer of its own: no caller pays for waking it (waking a sleeping thread
/// costs the waker about 8 µs on our 2-core VM, an inter-processor
/// interrupt, against a commit of about 200 µs).
const APPLY_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// After this many looks that found nothing, the applier sleeps until the
/// next logged batch wakes it.
const IDLE_POLLS: u32 = 100;

/// The thread that makes logged records readable (the storage's
/// [`Apply`]), so that no caller waits for sled: a lone caller's commit is
/// the write-ahead log's write alone. It applies at once after an apply
/// that found records, every [`APPLY_POLL`] while records keep coming, and
/// sleeps when they stop; queries wait for it
/// ([`Audit::caught_up`](super::Audit::caught_up)). Dropped, it applies
/// what is left and ends.
pub(super) struct ApplierThread {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Set while the thread sleeps with no timer: the next logged batch
    /// wakes it.
    asleep: Arc<AtomicBool>,
}

impl ApplierThread {
    pub(super) fn spawn(
        apply: Arc<dyn Apply>,
        tell: Arc<watch::Sender<u64>>,
        failing: Arc<Failing>,
    ) -> Result<Self, AuditError> {
        let stop = Arc::new(AtomicBool::new(false));
        let asleep = Arc::new(AtomicBool::new(false));
        let (stopping, sleeping) = (stop.clone(), asleep.clone());
        let thread = std::thread::Builder::new()
            .name("audit-applier".into())
            .spawn(move || Self::run(&*apply, &tell, &failing, &stopping, &sleeping))
            .map_err(|err| AuditError::Write(format!("cannot start the applier: {err}")))?;
        Ok(Self {
            thread: Some(thread),
            stop,
            asleep,
        })
    }

    fn run(
        apply: &dyn Apply,
        tell: &watch::Sender<u64>,
        failing: &Failing,
        stop: &AtomicBool,
        asleep: &AtomicBool,
    ) {
        let (mut last, mut idle) = (0, 0);
        loop {
            let last_round = stop.load(Ordering::Acquire);
            // Said before the look, not after: a batch queued after this
            // look began is queued after the look took the queue's lock,
            // so its writer then sees `asleep` and wakes the thread.
            let sleepy = idle >= IDLE_POLLS;
            if sleepy {
                asleep.store(true, Ordering::Release);
            }
            let applied = apply.apply();
            match &applied {
                Ok(seq) => {
                    failing.applied();
                    tell_readable(tell, *seq);
                }
                Err(err) => failing.applying(err),
            }
            if last_round {
                return;
            }
            match applied {
                Ok(seq) if seq > last => {
                    // Found records: look again at once.
                    last = seq;
                    idle = 0;
                    asleep.store(false, Ordering::Release);
                }
                Ok(_) if sleepy => {
                    std::thread::park();
                    asleep.store(false, Ordering::Release);
                    idle = 0;
                }
                Ok(_) => {
                    idle += 1;
                    std::thread::park_timeout(APPLY_POLL);
                }
                Err(_) => {
                    idle = 0;
                    asleep.store(false, Ordering::Release);
                    std::thread::park_timeout(APPLY_RETRY);
                }
            }
        }
    }

    /// Tells the thread records were logged: a system call only if it
    /// sleeps with no timer.
    pub(super) fn wake(&self) {
        if self.asleep.load(Ordering::Acquire)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }
}

impl Drop for ApplierThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
