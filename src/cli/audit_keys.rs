//! The audit chain's keys on the command line: `audit keygen`, the keys
//! `serve` seals and signs with, and the keys and kept checkpoints `audit
//! verify` checks with.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::audit::{Checkpoint, Keys, Seal, Sealing, Signer, SledStorage, Verifier};
use crate::config::{Config, SecretRef};

/// File names `audit keygen` writes.
const CHAIN_KEY: &str = "audit.key";
const SIGNING_KEY: &str = "checkpoint.key";
const PUBLIC_KEY: &str = "checkpoint.pub";

/// Writes `text` to a new file at `path` with `mode` (an existing file is
/// never overwritten).
fn write_new_key(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))?;
    // The process's umask (077) narrowed the public key's mode too; set
    // on the open file, not by path (which could be swapped).
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// `portcullis session-key --out FILE`: a key that seals session ids
/// (`[proxy] session_keys`), 32 random bytes as hex, in a new file
/// readable by its owner only. Every replica behind one balancer is given
/// the same file.
pub fn session_key(out: &Path) -> anyhow::Result<()> {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    write_new_key(out, &hex::encode(key), 0o600)?;
    println!("wrote {}", out.display());
    println!("give every replica the same key, in its config:");
    println!("  [proxy]");
    println!("  session_keys = [\"file:{}\"]", out.display());
    Ok(())
}

/// `portcullis audit keygen --dir DIR`: a chain key, a checkpoint signing
/// key and its public key, each in a new file (none is overwritten); the
/// private ones readable by their owner only.
pub fn keygen(dir: &Path) -> anyhow::Result<()> {
    let (chain, signing, public) = crate::audit::seal::generate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text, mode) in [
        (CHAIN_KEY, &chain, 0o600),
        (SIGNING_KEY, &signing, 0o600),
        (PUBLIC_KEY, &public, 0o644),
    ] {
        write_new_key(&dir.join(name), text, mode)?;
    }
    let shown = |name: &str| dir.join(name).display().to_string();
    println!(
        "wrote {}, {} and {}",
        shown(CHAIN_KEY),
        shown(SIGNING_KEY),
        shown(PUBLIC_KEY)
    );
    println!("keep them outside data_dir, and give the proxy's config:");
    println!("  [audit]");
    println!("  key = \"file:{}\"", shown(CHAIN_KEY));
    println!("  signing_key = \"file:{}\"", shown(SIGNING_KEY));
    println!(
        "keep a copy of {} and of the chain key where the proxy's host cannot write them: `audit verify --key` and `--public-key` check with them",
        PUBLIC_KEY
    );
    Ok(())
}

fn read_ref(reference: &SecretRef, what: &str) -> anyhow::Result<String> {
    reference
        .resolve()
        .map_err(|message| anyhow::anyhow!("{what}: {message}"))
}

/// How a proxy (or the CLI) seals and signs `store`, from `[audit]`.
/// Statements name the store by its folder (`serve`, `stdio-NAME`, `cli`).
pub fn sealing(config: &Config, store: &SledStorage) -> anyhow::Result<Sealing> {
    let store = store
        .path()
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let audit = &config.audit;
    let seal = match &audit.key {
        Some(key) => Seal::keyed(&read_ref(key, "`audit.key`")?).context("`audit.key`")?,
        None => Seal::Plain,
    };
    let signer = match &audit.signing_key {
        Some(key) => Some(
            Signer::from_text(&read_ref(key, "`audit.signing_key`")?)
                .context("`audit.signing_key`")?,
        ),
        None => None,
    };
    Ok(Sealing {
        seal,
        signer,
        store,
        checkpoint_every: audit.checkpoint_every,
        checkpoint_interval: audit.checkpoint_interval,
        // Nothing shipped yet, as far as retention knows: the shipper
        // moves it once the database says where it stands.
        shipped: audit
            .ship
            .as_ref()
            .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0))),
    })
}

/// The keys `audit verify` checks with: `--key` and `--public-key` when
/// given, else the config's own keys when they can be read here.
pub fn verify_keys(
    config: &Config,
    key: Option<&Path>,
    public_key: Option<&Path>,
) -> anyhow::Result<Keys> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let seal = match (key, &config.audit.key) {
        (Some(path), _) => Seal::keyed(&read(path)?).with_context(|| path.display().to_string())?,
        (None, Some(reference)) => match reference.resolve() {
            Ok(text) => Seal::keyed(&text).context("`audit.key`")?,
            Err(message) => {
                eprintln!(
                    "note: keyed records are checked for their links only ({message}; give --key)"
                );
                Seal::Plain
            }
        },
        (None, None) => Seal::Plain,
    };
    let checkpoints = match (public_key, &config.audit.signing_key) {
        (Some(path), _) => {
            Some(Verifier::from_text(&read(path)?).with_context(|| path.display().to_string())?)
        }
        (None, Some(reference)) => reference
            .resolve()
            .ok()
            .and_then(|text| Signer::from_text(&text).ok())
            .map(|signer| signer.verifier()),
        (None, None) => None,
    };
    Ok(Keys { seal, checkpoints })
}

/// The checkpoints in `file`, as `audit export` wrote them (JSON lines of
/// records; the `signed_checkpoint` ones count) or bare checkpoints, one
/// JSON object a line. Every one must be signed by `verifier`'s key: a
/// file that holds a forged one is refused.
pub fn kept_checkpoints(file: &Path, verifier: &Verifier) -> anyhow::Result<Vec<Checkpoint>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", file.display(), number + 1))?;
        let detail = match value.get("kind").and_then(serde_json::Value::as_str) {
            Some("signed_checkpoint") => value.get("detail").cloned().unwrap_or_default(),
            Some(_) => continue,
            None => value,
        };
        let checkpoint: Checkpoint = serde_json::from_value(detail).with_context(|| {
            format!("{}:{}: not a signed checkpoint", file.display(), number + 1)
        })?;
        if !verifier.verifies(&checkpoint) {
            bail!(
                "{}:{}: the checkpoint for record {} is not signed by key {}: it cannot be trusted",
                file.display(),
                number + 1,
                checkpoint.statement.seq,
                verifier.key_id()
            );
        }
        found.push(checkpoint);
    }
    if found.is_empty() {
        bail!("{}: holds no signed checkpoint", file.display());
    }
    Ok(found)
}
