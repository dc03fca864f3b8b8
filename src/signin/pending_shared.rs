//! The sign-ins waiting, kept in the vault replicas share (`[vault] dir`).
//!
//! Each is sealed as the vault seals tokens (AES-256-GCM under `[vault]
//! keys`, bound to its name), under `VAULT/pending/`, beside an entry for
//! each `state` it answers to and one for its user and server, each naming
//! the digest of its link's id. A step reads the one sign-in it is for, is
//! done exactly as on a proxy's own, and writes back what changed, all
//! under the folder's lock: a link is taken on once and answered once,
//! whichever replicas the person's browser reaches. Whatever is older than
//! a link's life is swept at a new sign-in (at most every
//! [`SWEEP_EVERY`]). Replicas' clocks, and the volume's, must agree (a
//! link's end is a time of day).
//!
//! A step for a link or a `state` whose entry does not exist takes no lock
//! (a guessed id costs one `stat`); a page only looked at takes it shared.
//! A replica's own steps take their turn first, so one thread at a time
//! waits for the folder, marked as blocking (`block_in_place`), a step
//! being a few small writes.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use super::{At, MAX_PENDING, Pending, PendingError, Waiting, states_of};
use crate::signin::vault::{Vault, lock_file};

/// What a sign-in is kept under (by its link's id's digest), and a `state`
/// (by its digest).
const LINK: &str = "link";
const STATE: &str = "state";

/// The most entries the folder holds: a sign-in has up to four.
pub(super) const MAX_ENTRIES: usize = 4 * MAX_PENDING;

/// How long a step waits for another's (each takes a few file writes).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How often a replica sweeps the folder (a `stat` of every entry).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// When this replica last swept the folder, and how many entries it has
/// counted there since (those it left, and four for each link it began).
#[derive(Default)]
pub(super) struct Swept {
    at: Option<Instant>,
    left: usize,
}

/// What a user's last link to a server is kept under.
fn users(server: &str) -> String {
    format!("user:{server}")
}

/// What was read for a step: each sign-in's states and sealed form.
type Before = HashMap<[u8; 32], (Vec<[u8; 32]>, Vec<u8>)>;

/// Why the folder failed, logged (never shown to a person).
fn failed(reason: impl std::fmt::Display) -> PendingError {
    tracing::warn!(%reason, "the sign-ins waiting in the shared vault cannot be read or written");
    PendingError::Vault
}

/// `step` done on the sign-in `at` names, read from `vault` and written
/// back, under the folder's lock (this replica's turn first: `turn`).
pub(super) fn step<R>(
    (vault, turn): (&Vault, &Mutex<Swept>),
    life: Duration,
    at: At<'_>,
    step: impl FnOnce(&mut Waiting) -> Result<R, PendingError>,
) -> Result<R, PendingError> {
    // A link or a state no one was given: nothing to read or to hold.
    let unknown = match at {
        At::Link(key) | At::Look(key) => !vault.has_pending(LINK, &hex::encode(key)),
        At::State(state) => !vault.has_pending(STATE, &hex::encode(state)),
        At::Begin(..) => false,
    };
    if unknown {
        return step(&mut Waiting::default());
    }
    let blocking = || {
        let mut swept = turn.lock().unwrap_or_else(|p| p.into_inner());
        let lock = match at {
            At::Look(_) => FlockArg::LockSharedNonblock,
            _ => FlockArg::LockExclusiveNonblock,
        };
        let _lock = lock_folder(&vault.pending_dir(), lock).map_err(failed)?;
        let key = match at {
            At::Link(key) | At::Look(key) => Some(*key),
            At::State(state) => linked(vault, STATE, &hex::encode(state))?,
            At::Begin(server, user) => {
                if counted(&vault.pending_dir(), life, &mut swept).map_err(failed)? >= MAX_ENTRIES {
                    return Err(PendingError::Full);
                }
                last_link(vault, server, user)
            }
        };
        let (mut waiting, before) = read(vault, key)?;
        // Written back whatever the step says: a refusal may end a sign-in.
        let done = step(&mut waiting);
        if !matches!(at, At::Look(_)) {
            write_back(vault, &before, &waiting, at)?;
        }
        done
    };
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(blocking),
        _ => blocking(),
    }
}

/// The sign-in of `key`, if it is kept: as a step sees it, and as it was.
fn read(vault: &Vault, key: Option<[u8; 32]>) -> Result<(Waiting, Before), PendingError> {
    let mut waiting = Waiting::default();
    let mut before = Before::new();
    let Some(key) = key else {
        return Ok((waiting, before));
    };
    let pending: Option<Pending> = vault.get_pending(LINK, &hex::encode(key)).map_err(failed)?;
    if let Some(pending) = pending {
        let states = states_of(&pending);
        for state in &states {
            waiting.by_state.insert(*state, key);
        }
        let sealed = serde_json::to_vec(&pending).map_err(failed)?;
        before.insert(key, (states, sealed));
        waiting.by_id.insert(key, pending);
    }
    Ok((waiting, before))
}

/// The user's last link to `server`, to be replaced. One that does not
/// open is ended (logged), never in the way of a new one.
fn last_link(vault: &Vault, server: &str, user: &str) -> Option<[u8; 32]> {
    let key = match linked(vault, &users(server), user) {
        Ok(key) => key?,
        Err(_) => {
            let _ = vault.remove_pending(&users(server), user);
            return None;
        }
    };
    if vault
        .get_pending::<Pending>(LINK, &hex::encode(key))
        .is_err()
    {
        tracing::warn!("a user's last sign-in link does not open: it is ended");
        let _ = vault.remove_pending(LINK, &hex::encode(key));
        return None;
    }
    Some(key)
}

/// The link's digest the entry (`of`, `name`) names, if any.
fn linked(vault: &Vault, of: &str, name: &str) -> Result<Option<[u8; 32]>, PendingError> {
    let named: Option<String> = vault.get_pending(of, name).map_err(failed)?;
    Ok(named
        .and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()))
}

/// What a step changed, written: a sign-in ended loses its entry and its
/// states'; one changed is sealed again; a state new to it gets an entry;
/// a new sign-in is its user's last.
fn write_back(
    vault: &Vault,
    before: &Before,
    waiting: &Waiting,
    at: At<'_>,
) -> Result<(), PendingError> {
    for (key, (states, _)) in before {
        let kept = waiting.by_id.get(key).map(states_of).unwrap_or_default();
        for state in states.iter().filter(|state| !kept.contains(state)) {
            vault
                .remove_pending(STATE, &hex::encode(state))
                .map_err(failed)?;
        }
        if !waiting.by_id.contains_key(key) {
            vault
                .remove_pending(LINK, &hex::encode(key))
                .map_err(failed)?;
        }
    }
    for (key, pending) in &waiting.by_id {
        let was = before.get(key);
        let sealed = serde_json::to_vec(pending).map_err(failed)?;
        if was.is_none_or(|(_, before)| *before != sealed) {
            vault
                .put_pending(LINK, &hex::encode(key), pending)
                .map_err(failed)?;
        }
        for state in states_of(pending) {
            if !was.is_some_and(|(states, _)| states.contains(&state)) {
                vault
                    .put_pending(STATE, &hex::encode(state), &hex::encode(key))
                    .map_err(failed)?;
            }
        }
    }
    if let At::Begin(server, user) = at
        && let Some(key) = waiting.by_id.keys().find(|key| !before.contains_key(*key))
    {
        vault
            .put_pending(&users(server), user, &hex::encode(key))
            .map_err(failed)?;
    }
    Ok(())
}

/// The folder `dir` held (`how`) for one step at a time, across
/// processes: a folder of the proxy's user's alone (not a link, nor
/// writable by others).
fn lock_folder(dir: &Path, how: FlockArg) -> Result<Flock<File>, String> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("{}: {err}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a folder of this user's alone",
            dir.display()
        ));
    }
    let path = dir.join(".lock");
    let mut file = lock_file(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, how) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, errno)) => return Err(format!("{}: {errno}", path.display())),
        }
    }
}

/// How many entries `dir` holds, swept of what is older than `life`
/// (every entry is written within a link's life of its end) when the
/// last sweep is [`SWEEP_EVERY`] old; counted on from `swept` between.
fn counted(dir: &Path, life: Duration, swept: &mut Swept) -> Result<usize, String> {
    if swept.at.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
        swept.left += 4;
        return Ok(swept.left);
    }
    swept.left = sweep(dir, life)?;
    swept.at = Some(Instant::now());
    Ok(swept.left)
}

/// Whether `name` is one the folder's entries (or their temporary
/// files) have: what a sweep may remove.
fn entry_name(name: &str) -> bool {
    let hex = |text: &str| text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    match name.split('.').collect::<Vec<_>>()[..] {
        [digest, "json"] => hex(digest),
        [digest, suffix, "tmp"] => {
            hex(digest) && suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => false,
    }
}

/// Removes from `dir` the entries older than `life`, and says how many
/// remain. Only files named as entries are touched.
fn sweep(dir: &Path, life: Duration) -> Result<usize, String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let old = SystemTime::now()
        .checked_sub(life)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut left = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|name| entry_name(name)) else {
            continue;
        };
        // `DirEntry::metadata` does not follow a link.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.modified().is_ok_and(|at| at < old) {
            let _ = std::fs::remove_file(entry.path());
        } else if name.ends_with(".json") {
            left += 1;
        }
    }
    Ok(left)
}
