//! The audit log's cost, in one run: what committing a record adds to a call
//! at 1, 16 and 128 concurrent callers (durable and buffered, against the
//! same loop with the log off), two fsyncs of the same disk (a small write
//! in place and its `fdatasync`; the `fdatasync` of an append), taking turns
//! with the one-caller durable commits, and filtered queries over a store of
//! a million records. "durable, keyed" is durable with `[audit] key` and
//! `signing_key` set: each record sealed with HMAC-SHA256, the head signed
//! (Ed25519) every 1000 records.
//!
//! Run: `cargo bench --bench audit` (options after `--`: `--seconds S` per
//! load phase, `--records N` for the query store). Prints Markdown tables.
//!
//! "Added" latency is what the gateway awaits before it may reply: the
//! commit, from handing the record over to hearing it is stored (durable)
//! or queued (buffered). The baseline loop builds the same record and skips
//! the commit.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use portcullis::audit::{Audit, AuditRecord, Filter, SledStorage, Storage};

use common::stats;

fn record(n: u64) -> AuditRecord {
    let clients = ["claude-desktop", "cursor", "ci-agent", "analyst-7"];
    let tools = ["read_file", "write_file", "search", "create_issue", "echo"];
    let servers = ["fs", "github", "time"];
    AuditRecord {
        seq: 0,
        time: portcullis::audit::timestamp(std::time::SystemTime::now()),
        kind: "exchange".into(),
        session: format!("6fb99fea-5f7c-4c22-a494-{:012x}", n % 97),
        client: clients[(n % 4) as usize].into(),
        transport: "http".into(),
        server: Some(servers[(n % 3) as usize].into()),
        method: "tools/call".into(),
        target: Some(tools[(n % 5) as usize].into()),
        request_id: Some(serde_json::json!(n)),
        decision: if n.is_multiple_of(47) {
            "deny"
        } else {
            "allow"
        }
        .into(),
        decided_by: n.is_multiple_of(47).then(|| "authz".into()),
        policy_ids: vec!["analysts-read-only".into()],
        decision_id: Some(format!("d-{n:016x}")),
        policy_set: Some("ps-3f2a9c".into()),
        reason: n
            .is_multiple_of(47)
            .then(|| "not permitted by policy".into()),
        redactions: vec![],
        arguments_sha256: Some(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        ),
        result_bytes: 1_234,
        is_error: false,
        upstream_us: Some(850),
        total_us: 912,
        detail: None,
        prev_hash: String::new(),
        protocol: None,
        identity: None,
        profile: None,
        hash: String::new(),
        mac: None,
    }
}

/// `callers` tasks, each building and (unless `audit` is `None`) committing
/// one record after another for `seconds`: per-commit latencies, and how
/// long that took.
async fn load(audit: Option<&Audit>, callers: usize, seconds: f64) -> (Vec<Duration>, Duration) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let audit = audit.cloned();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut n = caller as u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let record = record(n);
                if let Some(audit) = &audit {
                    audit.commit(record).await.unwrap();
                } else {
                    std::hint::black_box(record);
                }
                samples.push(t.elapsed());
                n += callers as u64;
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    if let Some(audit) = audit {
        audit.flush().await.unwrap();
    }
    (samples, start.elapsed())
}

/// The keyed chain as `[audit] key` and `signing_key` make it: HMAC-SHA256
/// per record, a signed checkpoint every 1000 records (the default).
fn sealing(keyed: bool) -> portcullis::audit::Sealing {
    if !keyed {
        return portcullis::audit::Sealing::default();
    }
    let (chain, signing, _) = portcullis::audit::seal::generate().unwrap();
    portcullis::audit::Sealing {
        seal: portcullis::audit::Seal::keyed(&chain).unwrap(),
        signer: Some(portcullis::audit::Signer::from_text(&signing).unwrap()),
        store: "bench".into(),
        ..Default::default()
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Rounds in which the one-caller durable commits and both fsyncs take
/// turns: a slow spell of the disk lands on all three alike.
const ROUNDS: usize = 10;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: f64 = arg("--seconds").map_or(3.0, |s| s.parse().unwrap());
    let total: u64 = arg("--records").map_or(1_000_000, |s| s.parse().unwrap());
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();

    if std::env::args().any(|a| a == "--breakdown") {
        breakdown(dir.path());
        return;
    }
    let mut probe = common::FsyncProbe::new(dir.path());
    let (mut appends, mut overwrites) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for callers in [1usize, 16, 128] {
        let (off, off_elapsed) = load(None, callers, seconds.min(1.0)).await;
        let off = stats("off", off, off_elapsed);
        for (mode, durable, keyed) in [
            ("durable", true, false),
            ("durable, keyed", true, true),
            ("buffered", false, false),
        ] {
            let store_dir = dir
                .path()
                .join(format!("{}-{callers}", mode.replace(", ", "-")));
            let flush_every = (!durable).then(|| Duration::from_millis(10));
            let storage = SledStorage::open_with(&store_dir, flush_every).unwrap();
            let audit =
                Audit::start_sealed(storage, durable, Default::default(), sealing(keyed)).unwrap();
            let on = if callers == 1 && mode == "durable" {
                let (mut samples, mut elapsed) = (Vec::new(), Duration::ZERO);
                for _ in 0..ROUNDS {
                    appends.extend(probe.append(200));
                    let (more, took) = load(Some(&audit), 1, seconds / ROUNDS as f64).await;
                    samples.extend(more);
                    elapsed += took;
                    overwrites.extend(probe.overwrite(200));
                }
                stats(mode, samples, elapsed)
            } else {
                let (samples, elapsed) = load(Some(&audit), callers, seconds).await;
                stats(mode, samples, elapsed)
            };
            rows.push((callers, mode, on, off.p50, off.p99));
        }
    }
    let appended = stats("append", appends, Duration::from_secs(1)).p50;
    let overwritten = stats("overwrite", overwrites, Duration::from_secs(1)).p50;
    println!(
        "\nfsync on this disk (p50, taking turns with the one-caller durable commits): {:.1} µs to overwrite 512 bytes in place and fdatasync; {:.1} µs to fdatasync a 256-byte append",
        us(overwritten),
        us(appended)
    );
    println!(
        "\n| callers | mode | commits/s | added p50 µs | added p99 µs | p50 / fsync in place | p50 / fsync of an append |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (callers, mode, on, off_p50, off_p99) in rows {
        let added = |a: Duration, b: Duration| us(a.saturating_sub(b));
        println!(
            "| {callers} | {mode} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
            on.calls_per_sec,
            added(on.p50, off_p50),
            added(on.p99, off_p99),
            added(on.p50, off_p50) / us(overwritten),
            added(on.p50, off_p50) / us(appended),
        );
    }

    // A store of `total` records, written in big batches, then queried.
    let store_dir = dir.path().join("query");
    let mut storage = SledStorage::open_with(&store_dir, Some(Duration::from_millis(500))).unwrap();
    let started = Instant::now();
    let mut prev = portcullis::audit::GENESIS.to_owned();
    let mut seq = 0u64;
    let base = std::time::SystemTime::now() - Duration::from_secs(total / 100);
    while seq < total {
        let batch: Vec<AuditRecord> = (0..10_000.min(total - seq))
            .map(|_| {
                seq += 1;
                let mut r = record(seq);
                // 100 records a second, over the last total/100 seconds.
                r.time = portcullis::audit::timestamp(base + Duration::from_millis(seq * 10));
                // One rare tool, one call in 100 000.
                if seq % 100_000 == 7 {
                    r.target = Some("delete_repository".into());
                }
                r.seal(seq, &prev);
                prev.clone_from(&r.hash);
                r
            })
            .collect();
        storage.append(&batch).unwrap();
    }
    storage.flush().unwrap();
    println!(
        "\nfilled a store with {total} records in {:.1} s ({:.0} records/s, one writer, batches of 10 000)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    let reader = storage.reader();
    let middle = portcullis::audit::timestamp(base + Duration::from_millis(total / 2 * 10));
    let later = portcullis::audit::timestamp(base + Duration::from_millis((total / 2 + 6000) * 10));
    let queries: Vec<(&str, Filter)> = vec![
        (
            "--client cursor --limit 100",
            Filter {
                client: Some("cursor".into()),
                limit: Some(100),
                ..Filter::default()
            },
        ),
        (
            "--tool github__create_issue --decision deny --limit 100",
            Filter {
                target: Some("github__create_issue".into()),
                decision: Some("deny".into()),
                limit: Some(100),
                ..Filter::default()
            },
        ),
        (
            "--tool delete_repository (10 in the store, no limit)",
            Filter {
                target: Some("delete_repository".into()),
                ..Filter::default()
            },
        ),
        (
            "--since/--until one minute mid-store --client ci-agent --limit 1000",
            Filter {
                client: Some("ci-agent".into()),
                since: Some(middle.clone()),
                until: Some(later.clone()),
                limit: Some(1000),
                ..Filter::default()
            },
        ),
        (
            "--client nobody (no match)",
            Filter {
                client: Some("nobody".into()),
                limit: Some(100),
                ..Filter::default()
            },
        ),
        (
            "--limit 100 (newest)",
            Filter {
                limit: Some(100),
                ..Filter::default()
            },
        ),
    ];
    println!("\n| query over {total} records | results | p50 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (label, filter) in &queries {
        let mut samples = Vec::new();
        let mut found = 0;
        for _ in 0..20 {
            let t = Instant::now();
            found = reader.query(filter, "__").unwrap().len();
            samples.push(t.elapsed());
        }
        samples.sort();
        println!(
            "| `{label}` | {found} | {:.2} | {:.2} |",
            samples[10].as_secs_f64() * 1e3,
            samples[19].as_secs_f64() * 1e3
        );
    }
    let t = Instant::now();
    let verification = reader.verify().unwrap();
    println!(
        "\n`audit verify` over {total} records: {:.1} s ({verification:?})",
        t.elapsed().as_secs_f64()
    );
}

/// Where the writer's time goes, per record, over 100 000 records.
fn breakdown(dir: &std::path::Path) {
    let n = 100_000u64;
    let t = Instant::now();
    let mut records: Vec<AuditRecord> = (1..=n).map(record).collect();
    let build = t.elapsed();
    let t = Instant::now();
    let mut prev = portcullis::audit::GENESIS.to_owned();
    let values: Vec<Vec<u8>> = records
        .iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let value = r.seal_to_json(i as u64 + 1, &prev, &portcullis::audit::Seal::Plain);
            prev.clone_from(&r.hash);
            value
        })
        .collect();
    let seal = t.elapsed();
    // What serializing with serde alone would cost (the writer does not).
    let t = Instant::now();
    for r in &records {
        std::hint::black_box(serde_json::to_vec(r).unwrap());
    }
    let serialize = t.elapsed();
    let db = sled::open(dir.join("breakdown")).unwrap();
    let tree = db.open_tree("records").unwrap();
    let t = Instant::now();
    for (chunk, values) in records.chunks(1000).zip(values.chunks(1000)) {
        let mut batch = sled::Batch::default();
        for (r, v) in chunk.iter().zip(values) {
            batch.insert(&r.seq.to_be_bytes(), v.as_slice());
        }
        tree.apply_batch(batch).unwrap();
    }
    let records_batch = t.elapsed();
    let t = Instant::now();
    for (r, v) in records.iter().zip(&values) {
        tree.insert((r.seq + n).to_be_bytes(), v.as_slice())
            .unwrap();
    }
    let records_insert = t.elapsed();
    let index = db.open_tree("index").unwrap();
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        let mut batch = sled::Batch::default();
        for r in chunk {
            for tag in [b'c', b's', b't'] {
                let mut key = vec![tag, 0, 6];
                key.extend_from_slice(r.client.as_bytes());
                key.extend_from_slice(&r.seq.to_be_bytes());
                batch.insert(key, &[]);
            }
        }
        index.apply_batch(batch).unwrap();
    }
    let index_batch = t.elapsed();
    // What one durable commit of one record costs in sled: an insert and a
    // flush, against a bare fdatasync of the same disk.
    let mut flushes = Vec::new();
    for (i, v) in values.iter().take(500).enumerate() {
        let t = Instant::now();
        tree.insert((3 * n + i as u64).to_be_bytes(), v.as_slice())
            .unwrap();
        db.flush().unwrap();
        flushes.push(t.elapsed());
    }
    flushes.sort();
    // The same through the store the writer uses in durable mode: the
    // record logged (what a commit waits for: one synchronous write of the
    // write-ahead log), then applied into sled (on the applier thread in
    // the proxy, off the caller's path); the two fsyncs of the same disk
    // taking turns with it.
    let mut storage = SledStorage::open(&dir.join("wal")).unwrap();
    let mut probe = common::FsyncProbe::new(dir);
    let (mut logs, mut applies, mut appends, mut overwrites) = (vec![], vec![], vec![], vec![]);
    for chunk in records.chunks(50).take(10) {
        for record in chunk {
            let t = Instant::now();
            storage
                .log(vec![record.clone()], vec![record.to_json()])
                .unwrap();
            logs.push(t.elapsed());
            let t = Instant::now();
            storage.apply().unwrap();
            applies.push(t.elapsed());
        }
        appends.extend(probe.append(50));
        overwrites.extend(probe.overwrite(50));
    }
    let p50 = |samples: Vec<Duration>| us(stats("", samples, Duration::from_secs(1)).p50);
    println!(
        "one record inserted and flushed by sled: p50 {:.1} µs; logged by the store (write-ahead log): p50 {:.1} µs, then applied into sled {:.1} µs; fsync in place (512-byte write + fdatasync) {:.1} µs; fdatasync of a 256-byte append {:.1} µs",
        us(flushes[flushes.len() / 2]),
        p50(logs),
        p50(applies),
        p50(overwrites),
        p50(appends)
    );
    let per = |d: Duration| us(d) / n as f64;
    println!(
        "per record: build {:.2} µs, seal (canonical JSON + SHA-256, the stored form) {:.2} µs, serde_json::to_vec for comparison {:.2} µs, sled batch of records {:.2} µs, sled single inserts {:.2} µs, 3 index keys batched {:.2} µs",
        per(build),
        per(seal),
        per(serialize),
        per(records_batch),
        per(records_insert),
        per(index_batch)
    );
}
