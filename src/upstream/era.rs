//! Which revision a server is spoken to in: the one its config names, or,
//! for `protocol = "auto"`, the one found at its first start and
//! remembered for the proxy's life (restarts go straight to it).
//!
//! Finding it: `server/discover` first (with the proxy's envelope). A
//! server whose answer lists 2026-07-28 is spoken to in that revision. One
//! that answers otherwise (an error, a result without that version) or not
//! within the startup timeout is offered the `initialize` handshake on the
//! same link; when that works, the handshake is what it speaks. A server
//! that exits on `server/discover`, or whose handshake fails after it (some
//! servers take the revision of the first request they read for the life
//! of the process), is started again with the handshake first; if that
//! fails too, the next start probes again.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::ServerProtocol;

/// What the next start of a server begins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Era {
    /// `protocol = "auto"`, not known yet: `server/discover` first, the
    /// handshake as fallback.
    Unknown,
    /// The handshake (configured, or learned).
    Handshake,
    /// 2026-07-28 (configured, or learned).
    Stateless,
    /// `auto`, after a probe that ended its server or its handshake: the
    /// handshake on a fresh start, not yet remembered.
    HandshakeNext,
}

impl Era {
    fn code(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Handshake => 1,
            Self::Stateless => 2,
            Self::HandshakeNext => 3,
        }
    }

    fn of(code: u8) -> Self {
        match code {
            1 => Self::Handshake,
            2 => Self::Stateless,
            3 => Self::HandshakeNext,
            _ => Self::Unknown,
        }
    }
}

/// A server's [`Era`], shared by its supervisor (which learns it) and the
/// gateway (which asks whether it is 2026-07-28).
#[derive(Debug, Default)]
pub(crate) struct Remembered(AtomicU8);

impl Remembered {
    /// The era a server's config sets.
    pub(super) fn configure(&self, protocol: ServerProtocol) {
        let era = match protocol {
            ServerProtocol::Handshake => Era::Handshake,
            ServerProtocol::Stateless => Era::Stateless,
            ServerProtocol::Auto => Era::Unknown,
        };
        self.learn(era);
    }

    pub(super) fn get(&self) -> Era {
        Era::of(self.0.load(Ordering::Acquire))
    }

    pub(super) fn learn(&self, era: Era) {
        self.0.store(era.code(), Ordering::Release);
    }

    /// Whether the server is spoken to in 2026-07-28 (false while not
    /// known).
    pub(super) fn stateless(&self) -> bool {
        self.get() == Era::Stateless
    }

    /// The server exited during its start: after a probe, the next start
    /// tries the handshake first; after that try, the next one probes.
    pub(super) fn exited_during_start(&self) {
        match self.get() {
            Era::Unknown => self.learn(Era::HandshakeNext),
            Era::HandshakeNext => self.learn(Era::Unknown),
            Era::Handshake | Era::Stateless => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_era_survives_its_round_trip_through_the_atomic() {
        let remembered = Remembered::default();
        assert_eq!(remembered.get(), Era::Unknown);
        for era in [
            Era::Handshake,
            Era::Stateless,
            Era::HandshakeNext,
            Era::Unknown,
        ] {
            remembered.learn(era);
            assert_eq!(remembered.get(), era);
            assert_eq!(remembered.stateless(), era == Era::Stateless);
        }
    }

    #[test]
    fn exits_during_a_probe_alternate_between_the_handshake_and_a_new_probe() {
        let remembered = Remembered::default();
        remembered.exited_during_start();
        assert_eq!(remembered.get(), Era::HandshakeNext);
        remembered.exited_during_start();
        assert_eq!(remembered.get(), Era::Unknown);
        // A known era is not forgotten for an exit.
        remembered.learn(Era::Stateless);
        remembered.exited_during_start();
        assert_eq!(remembered.get(), Era::Stateless);
    }
}
