//! The keyed, anchored audit chain against someone who can write the audit
//! files, through the real binary: `audit keygen`, a chain sealed with
//! HMAC-SHA256 and its head signed every few records, checkpoints shipped
//! with `audit export --follow`; then the store rewritten (plain, with
//! another key, whole) and its tail cut, each caught by `audit verify`
//! with the key or a kept checkpoint, and what a plain verify cannot see.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{AUDITOR_TOKEN, TestProxy, audit, mode_of};
use portcullis::audit::{AuditRecord, Seal};
use serde_json::json;

fn keygen(dir: &Path) -> (bool, String, String) {
    common::run_portcullis([
        "audit".as_ref(),
        "keygen".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ])
}

/// The store's records, in order.
fn stored(store: &Path) -> Vec<AuditRecord> {
    let db = sled::open(store).unwrap();
    let tree = db.open_tree("records").unwrap();
    tree.iter()
        .map(|entry| serde_json::from_slice(&entry.unwrap().1).unwrap())
        .collect()
}

/// Opens the store's tree as someone with write access to its files would:
/// the proxy's own write-ahead log (replayed over the tree at open) goes
/// first, or it would put back what was changed.
fn tamper(store: &Path) -> sled::Db {
    let _ = std::fs::remove_file(store.join("portcullis.wal"));
    sled::open(store).unwrap()
}

/// Writes `records` back over the store's (an attacker with write access).
fn overwrite(store: &Path, records: &[AuditRecord]) {
    let db = tamper(store);
    let tree = db.open_tree("records").unwrap();
    for record in records {
        tree.insert(
            record.seq.to_be_bytes(),
            serde_json::to_vec(record).unwrap(),
        )
        .unwrap();
    }
    db.flush().unwrap();
}

/// Removes the records from `from` on (a cut tail).
fn cut(store: &Path, from: u64) {
    let db = tamper(store);
    let tree = db.open_tree("records").unwrap();
    let keys: Vec<_> = tree
        .range(from.to_be_bytes()..)
        .map(|entry| entry.unwrap().0)
        .collect();
    for key in keys {
        tree.remove(key).unwrap();
    }
    db.flush().unwrap();
}

/// What a rewrite does with the records' macs.
#[derive(Clone, Copy)]
enum Macs<'a> {
    /// Dropped (as a writer without the key would write them).
    Dropped,
    /// Left as they were (now of other hashes).
    Kept,
    /// Made with another key.
    Forged(&'a Seal),
}

/// Rehashes `records` from index `from` on, each onto the one before, as
/// someone rewriting the chain would.
fn reseal(records: &mut [AuditRecord], from: usize, macs: Macs) {
    for at in from..records.len() {
        let prev = if at == 0 {
            portcullis::audit::GENESIS.to_owned()
        } else {
            records[at - 1].hash.clone()
        };
        let record = &mut records[at];
        record.prev_hash = prev;
        record.hash = record.compute_hash();
        match macs {
            Macs::Dropped => record.mac = None,
            Macs::Kept => {}
            Macs::Forged(seal) => record.mac = seal.mac(&record.hash),
        }
    }
}

fn verify(config: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["verify"];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = audit(config, &args);
    (ok, format!("{stdout}{stderr}"))
}

/// `audit verify` against the checkpoints in `kept`, with the public key.
fn verify_against(config: &Path, kept: &Path, public: &str) -> (bool, String) {
    verify(
        config,
        &[
            "--checkpoint",
            kept.to_str().unwrap(),
            "--public-key",
            public,
        ],
    )
}

/// `audit verify` with the public key alone reports that a signed
/// checkpoint in the log names another head than the chain holds.
fn caught_by_the_checkpoints(config: &Path, public: &str) {
    let (ok, out) = verify(config, &["--public-key", public]);
    assert!(
        !ok && out.contains("holds another record than the one the checkpoint"),
        "{out}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn restore(backup: &Path, store: &Path) {
    std::fs::remove_dir_all(store).unwrap();
    copy_dir(backup, store);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_chain_and_a_cut_tail_are_caught_with_the_key_and_a_kept_checkpoint() {
    // Keys outside the proxy's folder; `keygen` never overwrites one.
    let keys = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = keygen(keys.path());
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("signing_key = \"file:"), "{stdout}");
    assert_eq!(mode_of(&keys.path().join("audit.key")).0, 0o600);
    assert_eq!(mode_of(&keys.path().join("checkpoint.key")).0, 0o600);
    assert_eq!(mode_of(&keys.path().join("checkpoint.pub")).0, 0o644);
    let (again, _, stderr) = keygen(keys.path());
    assert!(!again && stderr.contains("never overwritten"), "{stderr}");
    let public = keys.path().join("checkpoint.pub");
    let public = public.to_str().unwrap();

    let proxy = TestProxy::new()
        .with_raw_server("raw")
        .with_config(&format!(
            "\n[audit]\nkey = \"file:{}\"\nsigning_key = \"file:{}\"\ncheckpoint_every = 5\n",
            keys.path().join("audit.key").display(),
            keys.path().join("checkpoint.key").display()
        ));
    let config = proxy.write_config();
    let served = common::serve_config(&config).await;

    // The checkpoints are shipped as they are written, to a file the
    // proxy's host would not keep (here: beside the keys).
    let token_file = keys.path().join("auditor-token");
    std::fs::write(&token_file, AUDITOR_TOKEN).unwrap();
    let kept = keys.path().join("shipped.jsonl");
    let mut shipping = tokio::process::Command::new(common::portcullis_bin())
        .args(["audit", "export", "--follow", "--config"])
        .arg(&config)
        .args(["--url", &served.base, "--token-file"])
        .arg(&token_file)
        .arg("--output")
        .arg(&kept)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let session = common::HttpSession::connect(&served.url).await;
    for id in 1..=12 {
        common::assert_mirrored(&session, id).await;
    }
    // The running proxy verifies with its own keys.
    let (ok, out) = verify(
        &config,
        &[
            "--url",
            &served.base,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("their MACs checked"), "{out}");
    served.terminate().await;
    // The follower ends with the proxy, having shipped everything (the
    // last checkpoint is written as the proxy stops).
    let shipped = tokio::time::timeout(Duration::from_secs(20), shipping.wait()).await;
    assert!(shipped.is_ok(), "the follower did not end with the proxy");
    let lines = std::fs::read_to_string(&kept).unwrap();
    let signed = lines
        .lines()
        .filter(|l| l.contains("\"signed_checkpoint\""))
        .count();
    assert!(signed >= 3, "{signed} checkpoints shipped:\n{lines}");

    let store = proxy.dir().join(".portcullis/audit/serve");
    let records = stored(&store);
    assert!(
        records
            .iter()
            .all(|r| r.mac.as_ref().is_some_and(|m| m.len() == 64))
    );
    assert_eq!(
        records.last().map(|r| r.kind.as_str()),
        Some("signed_checkpoint"),
        "the head is signed at stop"
    );
    let (ok, out) = verify_against(&config, &kept, public);
    assert!(ok, "{out}");
    assert!(out.contains("keyed, their MACs checked"), "{out}");
    assert!(out.contains("signed checkpoints verified"), "{out}");
    assert!(out.contains("reaches the kept checkpoint"), "{out}");
    let backup = keys.path().join("backup");
    copy_dir(&store, &backup);

    // 0. One record edited in place, its hash and mac left: anyone sees it.
    let mut edited = records.clone();
    edited[3].reason = Some("nothing happened here".into());
    overwrite(&store, &edited);
    for extra in [&[][..], &["--public-key", public][..]] {
        let (ok, out) = verify(&config, extra);
        assert!(
            !ok && out.contains("its hash does not match its content"),
            "{out}"
        );
    }
    restore(&backup, &store);

    // 1. One record edited and the chain after it rehashed without the
    // key: the records after it have no mac, which anyone sees.
    let mut rewritten = records.clone();
    rewritten[3].reason = Some("nothing happened here".into());
    reseal(&mut rewritten, 3, Macs::Dropped);
    overwrite(&store, &rewritten);
    let (ok, out) = verify(&config, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("BROKEN at record {}", records[3].seq)),
        "{out}"
    );
    assert!(
        out.contains("no mac after records sealed with the chain key"),
        "{out}"
    );
    restore(&backup, &store);

    let away = |name: &str| {
        std::fs::rename(
            keys.path().join(name),
            keys.path().join(format!("{name}.away")),
        )
        .unwrap()
    };
    let back = |name: &str| {
        std::fs::rename(
            keys.path().join(format!("{name}.away")),
            keys.path().join(name),
        )
        .unwrap()
    };

    // 2. Rehashed from an edit on with the old macs left in place: the
    // links and hashes hold, so without a key it looks whole; the chain key
    // shows it, and so does the public key through the checkpoints after.
    let mut rewritten = records.clone();
    rewritten[3].reason = Some("nothing happened here".into());
    reseal(&mut rewritten, 3, Macs::Kept);
    overwrite(&store, &rewritten);
    away("audit.key");
    away("checkpoint.key");
    let (ok, out) = verify(&config, &[]);
    assert!(ok && out.contains("their MACs NOT checked"), "{out}");
    caught_by_the_checkpoints(&config, public);
    back("audit.key");
    back("checkpoint.key");
    let (ok, out) = verify(&config, &[]);
    assert!(!ok && out.contains("its mac does not match"), "{out}");
    restore(&backup, &store);

    // 3. The whole chain rewritten without the key: a plain chain that
    // links up. Only the key, or the signed checkpoints it still holds,
    // show it.
    let mut rewritten = records.clone();
    rewritten[0].client = "someone-else".into();
    reseal(&mut rewritten, 0, Macs::Dropped);
    overwrite(&store, &rewritten);
    away("audit.key");
    away("checkpoint.key");
    let (ok, out) = verify(&config, &[]);
    assert!(ok && out.contains("intact"), "{out}");
    back("audit.key");
    let (ok, out) = verify(&config, &[]);
    assert!(
        !ok && out.contains("no record is sealed with the chain key"),
        "{out}"
    );
    away("audit.key");
    caught_by_the_checkpoints(&config, public);
    back("audit.key");
    back("checkpoint.key");
    restore(&backup, &store);

    // 4. Rewritten with macs of a key of the attacker's own.
    let mut rewritten = records.clone();
    rewritten[5].decision = "allow".into();
    let theirs = Seal::keyed(&"ab".repeat(32)).unwrap();
    reseal(&mut rewritten, 5, Macs::Forged(&theirs));
    overwrite(&store, &rewritten);
    let (ok, out) = verify(&config, &[]);
    assert!(!ok && out.contains("its mac does not match"), "{out}");
    restore(&backup, &store);

    // 5. The tail cut: the chain that is left is whole, keyed and linked,
    // so only a checkpoint kept elsewhere shows it: a cut that reaches back
    // past the newest checkpoint shipped (records after it are what a cut
    // can take unseen; `checkpoint_every` and `_interval` bound them).
    let last = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "signed_checkpoint")
        .filter_map(|r| r["detail"]["seq"].as_u64())
        .max()
        .unwrap();
    cut(&store, last - 2);
    let (ok, out) = verify(&config, &[]);
    assert!(
        ok && out.contains("intact"),
        "a cut tail is invisible to the chain alone: {out}"
    );
    let (ok, out) = verify_against(&config, &kept, public);
    assert!(!ok, "{out}");
    assert!(out.contains("its tail was cut"), "{out}");
    assert!(
        out.contains(&format!("vouches for records up to {last}")),
        "{out}"
    );

    // A kept file with a forged checkpoint is refused, not believed.
    let forged = keys.path().join("forged.jsonl");
    let mut statement: serde_json::Value = serde_json::from_str(
        lines
            .lines()
            .rfind(|l| l.contains("\"signed_checkpoint\""))
            .unwrap(),
    )
    .unwrap();
    statement["detail"]["seq"] = json!(last - 1);
    std::fs::write(&forged, statement.to_string()).unwrap();
    let (ok, out) = verify_against(&config, &forged, public);
    assert!(!ok && out.contains("cannot be trusted"), "{out}");

    // 6. The store removed whole, another left beside it: the kept
    // checkpoints still name the one that is gone.
    copy_dir(&backup, &store.with_file_name("stdio-other"));
    std::fs::rename(&store, keys.path().join("serve-moved-away")).unwrap();
    let (ok, out) = verify_against(&config, &kept, public);
    assert!(
        !ok && out.contains("store `serve`, which is not here"),
        "{out}"
    );
}

#[test]
fn keys_inside_the_data_folder_are_refused() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let data: PathBuf = proxy.dir().join(".portcullis");
    std::fs::create_dir_all(&data).unwrap();
    let (ok, _, stderr) = keygen(&data.join("keys"));
    assert!(ok, "{stderr}");
    let proxy = proxy.with_config("\n[audit]\nkey = \"file:.portcullis/keys/audit.key\"\n");
    let stderr = common::serve_refused(&proxy.write_config());
    assert!(stderr.contains("audit.key"), "{stderr}");
    assert!(stderr.contains("inside `proxy.data_dir`"), "{stderr}");
}
