//! The fleet's audit log in a real PostgreSQL (Debian's, started in a
//! temporary folder): a replica ships its store as it writes, in order and
//! exactly once, across a SIGKILL and a restart; `audit ship` ships stopped
//! stores and refuses another store under a shipped replica's name;
//! `audit query` and `audit verify --store postgres://…` read the fleet's
//! log, and verification finds a record changed or removed in the
//! database.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::postgres::Postgres;
use common::{TestProxy, audit, serve_config};
use serde_json::Value;

/// `[audit.ship]` for `replica`, its password read from the server's file.
fn ship_section(postgres: &Postgres, replica: &str, batch: u32) -> String {
    format!(
        "\n[audit.ship]\nto = \"{}\"\npassword = \"file:{}\"\nreplica = \"{replica}\"\nbatch = {batch}\n",
        postgres.url(),
        postgres.password_file.display()
    )
}

/// The records the database holds of one chain, by sequence number.
async fn shipped(client: &tokio_postgres::Client, replica: &str, store: &str) -> Vec<(i64, Value)> {
    let rows = client
        .query(
            "SELECT seq, record FROM portcullis_records WHERE replica = $1 AND store = $2 ORDER BY seq",
            &[&replica, &store],
        )
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|row| {
            let text: String = row.get(1);
            (row.get(0), serde_json::from_str(&text).unwrap())
        })
        .collect()
}

/// A store's records, read offline (`audit export`).
fn exported(config: &Path) -> Vec<Value> {
    let (ok, stdout, stderr) = audit(config, &["export", "--store", "serve"]);
    assert!(ok, "{stderr}");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_ships_every_acknowledged_call_once_across_a_sigkill() {
    let postgres = Postgres::start().await;
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_config(&ship_section(&postgres, "replica-a", 7));
    let config = proxy.write_config();
    let mut served = proxy.serve_http().await;
    // SIGKILL while calls run and batches ship: no flush, no last batch.
    let received = common::calls_then_kill(&mut served, 4).await;

    // Restarted on the same store: what it had not shipped goes now.
    let served = serve_config(&config).await;
    let client = postgres.connect().await;
    let acked = |records: &[(i64, Value)]| {
        let mut seen: HashMap<(String, u64), usize> = HashMap::new();
        for (_, record) in records {
            if record["kind"] == "exchange" && record["method"] == "tools/call" {
                let key = (
                    record["session"].as_str().unwrap().to_owned(),
                    record["request_id"].as_u64().unwrap(),
                );
                *seen.entry(key).or_default() += 1;
            }
        }
        seen
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = acked(&shipped(&client, "replica-a", "serve").await);
        if received.iter().all(|call| seen.contains_key(call)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged calls missing from the database after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A clean stop ships its `proxy_stop` too.
    served.terminate().await;

    let rows = shipped(&client, "replica-a", "serve").await;
    let seen = acked(&rows);
    for call in &received {
        assert_eq!(seen.get(call), Some(&1), "{call:?} shipped once");
    }
    // The database holds the store's chain exactly: every record, once,
    // in order, as the store holds it.
    let local = exported(&config);
    assert_eq!(rows.len(), local.len(), "as many records as the store");
    for (i, ((seq, record), stored)) in rows.iter().zip(&local).enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        assert_eq!(record, stored, "record {seq}");
    }
    assert_eq!(rows.last().unwrap().1["kind"], "proxy_stop");
    let starts = rows
        .iter()
        .filter(|(_, r)| r["kind"] == "proxy_start")
        .count();
    assert_eq!(starts, 2, "both runs are in the chain");

    // The fleet's log, read and verified in the database.
    let url = postgres.url();
    let (ok, stdout, stderr) = audit(&config, &["verify", "--store", &url]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("replica-a/serve: intact"), "{stdout}");
    let (ok, stdout, stderr) = audit(
        &config,
        &[
            "query", "--store", &url, "--kind", "exchange", "--format", "jsonl", "--limit", "5",
        ],
    );
    assert!(ok, "{stderr}");
    let found: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 5, "{stdout}");
    assert!(
        found
            .iter()
            .all(|f| f["replica"] == "replica-a" && f["store"] == "serve")
    );
    assert!(found.iter().all(|f| f["record"]["kind"] == "exchange"));

    // A record changed in the database, then one removed: each found.
    let (changed, _) = rows.iter().find(|(_, r)| r["kind"] == "exchange").unwrap();
    let tampered = |sql: &'static str| {
        let (client, config, url) = (&client, &config, &url);
        async move {
            client.execute(sql, &[changed]).await.unwrap();
            let (ok, stdout, _) = audit(config, &["verify", "--store", url]);
            assert!(!ok, "{stdout}");
            stdout
        }
    };
    let stdout = tampered(
        "UPDATE portcullis_records SET record = replace(record, '\"client\":\"tester\"', '\"client\":\"other\"') WHERE replica = 'replica-a' AND seq = $1",
    )
    .await;
    assert!(
        stdout.contains(&format!(
            "BROKEN at record {changed}: its hash does not match"
        )),
        "{stdout}"
    );
    let stdout =
        tampered("DELETE FROM portcullis_records WHERE replica = 'replica-a' AND seq = $1").await;
    assert!(
        stdout.contains(&format!("BROKEN at record {changed}: missing")),
        "{stdout}"
    );
}

/// A proxy that served calls for a moment and stopped (shipping nothing
/// itself); its config.
async fn stopped_replica() -> (TestProxy, std::path::PathBuf) {
    let proxy = TestProxy::new().with_example_server("example");
    let config = proxy.write_config();
    let served = proxy.serve_http().await;
    let worker = tokio::spawn(common::call_until_refused(served.url.clone(), 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.terminate().await;
    let _ = worker.await;
    (proxy, config)
}

/// `portcullis audit ARGS --config CONFIG` with the database's password
/// in `PGPASSWORD`: (success, stdout, stderr).
fn audit_with_password(config: &Path, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(common::portcullis_bin())
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("PGPASSWORD", common::postgres::PASSWORD)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_ship_ships_stopped_stores_once_and_refuses_another_under_a_shipped_name() {
    let postgres = Postgres::start().await;
    let url = postgres.url();
    let (_a, config_a) = stopped_replica().await;
    let (_b, config_b) = stopped_replica().await;

    // Shipped once: the second run finds nothing new.
    let ship = |config: &Path, replica: &str| {
        audit_with_password(config, &["ship", "--to", &url, "--replica", replica])
    };
    let (ok, stdout, stderr) = ship(&config_a, "a");
    assert!(ok, "{stdout}{stderr}");
    let count: usize = exported(&config_a).len();
    assert!(
        stdout.contains(&format!("a/serve: {count} records shipped")),
        "{stdout}"
    );
    let (ok, stdout, stderr) = ship(&config_a, "a");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("a/serve: 0 records shipped"), "{stdout}");
    let (ok, stdout, stderr) = ship(&config_b, "b");
    assert!(ok, "{stdout}{stderr}");

    // Another store under a name already shipped: refused, nothing added.
    let client = postgres.connect().await;
    let before = shipped(&client, "a", "serve").await.len();
    let (ok, _, stderr) = ship(&config_b, "a");
    assert!(!ok);
    assert!(stderr.contains("replica `a`, store `serve`"), "{stderr}");
    assert_eq!(shipped(&client, "a", "serve").await.len(), before);

    // TLS asked of a server that has none: refused, never sent in clear.
    let (ok, _, stderr) = audit_with_password(
        &config_a,
        &[
            "ship",
            "--to",
            &format!("{url}?sslmode=require"),
            "--replica",
            "c",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("cannot reach the database"), "{stderr}");

    // The fleet's log: both replicas' starts, each chain intact.
    let (ok, stdout, stderr) = audit_with_password(
        &config_a,
        &[
            "query",
            "--store",
            &url,
            "--kind",
            "proxy_start",
            "--format",
            "jsonl",
        ],
    );
    assert!(ok, "{stderr}");
    let mut replicas: Vec<String> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["replica"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    replicas.sort();
    assert_eq!(replicas, ["a", "b"]);
    let (ok, stdout, stderr) = audit_with_password(&config_a, &["verify", "--store", &url]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("a/serve: intact") && stdout.contains("b/serve: intact"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_quota_in_redis_and_refuse_when_it_is_gone() {
    let mut redis = common::redis::Redis::start().await;
    let section = |on_unavailable: &str| {
        format!(
            "\n[[ratelimit.rules]]\ntool = \"example__echo\"\nquota = \"5/min\"\n\n[ratelimit.shared]\nredis = \"{}\"\npassword = \"file:{}\"\non_unavailable = \"{on_unavailable}\"\n",
            redis.url(),
            redis.password_file.display()
        )
    };
    // Three replicas of one config (the third falls back to its own
    // budgets while Redis is gone).
    let mut replicas = Vec::new();
    for mode in ["refuse", "refuse", "local"] {
        let proxy = TestProxy::new()
            .with_example_server("example")
            .with_config(&section(mode));
        let served = proxy.serve_http().await;
        let session = common::HttpSession::connect(&served.url).await;
        replicas.push((proxy, served, session));
    }
    // 5 a minute, whichever replica serves them: exactly 5 of 15 pass.
    let mut passed = 0;
    for id in 0..15 {
        let (_, _, session) = &replicas[id % 3];
        let reply = echo(session, id as i64 + 1).await;
        if reply["result"].is_object() {
            passed += 1;
            assert_eq!(common::first_text(&reply), "example: q", "{reply}");
        } else {
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("tool quota of 5/min reached"), "{reply}");
            assert!(
                reply["error"]["data"]["retry_after_ms"].as_u64() > Some(1000),
                "{reply}"
            );
        }
    }
    assert_eq!(passed, 5, "the quota holds across the replicas");

    // Redis gone: refused where the config says so, this replica's own
    // budget where it says `local`.
    redis.stop();
    let reply = echo(&replicas[0].2, 100).await;
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot be checked"), "{reply}");
    assert_eq!(reply["error"]["data"]["unavailable"], true, "{reply}");
    let reply = echo(&replicas[2].2, 101).await;
    assert_eq!(common::first_text(&reply), "example: q", "{reply}");
    replicas[0]
        .1
        .log
        .wait_for(&["RATE LIMITS UNAVAILABLE"])
        .await;
    for (_, served, _) in replicas {
        served.terminate().await;
    }
}

/// One `echo` call through `session`.
async fn echo(session: &common::HttpSession, id: i64) -> Value {
    session
        .call(
            id,
            "tools/call",
            serde_json::json!({"name": "example__echo", "arguments": {"text": "q"}}),
        )
        .await
}
