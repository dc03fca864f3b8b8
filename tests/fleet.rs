//! The fleet's audit log in a real PostgreSQL (Debian's, started in a
//! temporary folder): a replica ships its store as it writes, in order and
//! exactly once, across a SIGKILL and a restart; `audit ship` ships stopped
//! stores and refuses another store under a shipped replica's name;
//! `audit query` and `audit verify --store postgres://…` read the fleet's
//! log, and verification finds a record changed or removed in the
//! database.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

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
    // Auditors read the fleet's log on the replica: the admin API and the
    // console's Fleet page (a client's token opens neither).
    fleet_read_over_http(&served.base).await;
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

    // A side column changed (what a filtered query could narrow by), a row
    // added outside the chain: each found by verify, and none hides the
    // record from a query or shows the added row.
    let (changed, _) = rows
        .iter()
        .find(|(_, r)| r["kind"] == "exchange" && r["method"] == "tools/call")
        .unwrap();
    let restore = "UPDATE portcullis_records SET time = record::json ->> 'time', \
                   kind = record::json ->> 'kind', client = record::json ->> 'client', \
                   server = record::json ->> 'server', decision = record::json ->> 'decision' \
                   WHERE replica = 'replica-a' AND seq = $1";
    let found_by = |filters: &[&str]| {
        let mut args = vec!["query", "--store", &url, "--format", "jsonl"];
        args.extend_from_slice(filters);
        let (ok, stdout, stderr) = audit(&config, &args);
        assert!(ok, "{stderr}");
        stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|f| f["replica"] == "replica-a")
            .map(|f| f["record"]["seq"].as_i64().unwrap())
            .collect::<Vec<i64>>()
    };
    let record_of = |seq: &i64| rows.iter().find(|(at, _)| at == seq).unwrap().1.clone();
    let since = record_of(changed)["time"].as_str().unwrap().to_owned();
    let by_every_column = [
        "--client",
        "tester",
        "--kind",
        "exchange",
        "--server",
        "example",
        "--decision",
        "allow",
        "--since",
        &since,
    ];
    for (column, sql) in [
        (
            "client",
            "UPDATE portcullis_records SET client = 'someone-else' WHERE replica = 'replica-a' AND seq = $1",
        ),
        (
            "kind",
            "UPDATE portcullis_records SET kind = 'session_end' WHERE replica = 'replica-a' AND seq = $1",
        ),
        (
            "server",
            "UPDATE portcullis_records SET server = 'elsewhere' WHERE replica = 'replica-a' AND seq = $1",
        ),
        (
            "decision",
            "UPDATE portcullis_records SET decision = 'deny' WHERE replica = 'replica-a' AND seq = $1",
        ),
        (
            "time",
            "UPDATE portcullis_records SET time = '1970-01-01T00:00:00Z' WHERE replica = 'replica-a' AND seq = $1",
        ),
    ] {
        client.execute(sql, &[changed]).await.unwrap();
        let (ok, stdout, _) = audit(&config, &["verify", "--store", &url]);
        assert!(!ok, "{column}: {stdout}");
        assert!(
            stdout.contains(&format!(
                "BROKEN at record {changed}: its `{column}` column is not what the record says"
            )),
            "{column}: {stdout}"
        );
        assert!(
            found_by(&by_every_column).contains(changed),
            "{column}: the record is hidden from a query"
        );
        client.execute(restore, &[changed]).await.unwrap();
    }
    let (ok, stdout, _) = audit(&config, &["verify", "--store", &url]);
    assert!(ok, "restored: {stdout}");
    // A forged copy of a record added before the chain's start.
    client
        .execute(
            "INSERT INTO portcullis_records (replica, store, seq, time, kind, client, server, decision, record) \
             VALUES ('replica-a', 'serve', 0, $1, 'exchange', 'tester', 'example', 'allow', $2)",
            &[&since, &record_of(changed).to_string()],
        )
        .await
        .unwrap();
    let (ok, stdout, _) = audit(&config, &["verify", "--store", &url]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("BROKEN at record 0: 1 rows lie outside the chain"),
        "{stdout}"
    );
    // The copy says it is that record: shown, it would be there twice.
    assert_eq!(
        found_by(&["--client", "tester", "--kind", "exchange"])
            .iter()
            .filter(|seq| *seq == changed)
            .count(),
        1,
        "the forged row is shown"
    );
    client
        .execute(
            "DELETE FROM portcullis_records WHERE replica = 'replica-a' AND seq = 0",
            &[],
        )
        .await
        .unwrap();

    // A record changed in the database, then one removed: each found.
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

/// The fleet's log through a replica's admin API and console.
async fn fleet_read_over_http(base: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{base}/admin/audit/fleet?kind=exchange&limit=3");
    let records = common::admin_list(&http, &url, common::AUDITOR_TOKEN).await;
    assert_eq!(records.len(), 3, "{records:?}");
    for found in &records {
        assert_eq!(found["replica"], "replica-a", "{found}");
        assert_eq!(found["store"], "serve", "{found}");
        assert_eq!(found["record"]["kind"], "exchange", "{found}");
    }
    let status = http
        .get(&url)
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "a client's token reads nothing");
    let bad = http
        .get(format!("{base}/admin/audit/fleet?since=yesterday"))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // One store's sequence number means nothing across the fleet: refused.
    let paged = http
        .get(format!("{base}/admin/audit/fleet?after=5"))
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(paged.status(), 400);

    let html = common::console_page(base, "/admin/fleet?client=tester").await;
    let head: String = html.chars().take(2000).collect();
    assert!(html.contains("<table id=\"fleet\""), "{head}");
    assert!(html.contains("<td>replica-a/serve</td>"), "{head}");
    assert!(html.contains("<td>tools/call</td><td>echo</td>"), "{head}");
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

/// A client of the replicas behind the balancer, which reads which
/// replica answered each request (`X-Portcullis-Replica`).
struct Balanced {
    http: reqwest::Client,
    url: String,
}

/// One answer through the balancer: its status, the replica that gave it,
/// its body (`null` if not JSON).
struct Answer {
    status: u16,
    replica: String,
    body: Value,
}

impl Balanced {
    async fn post(&self, session: Option<&str>, body: Value) -> Option<Answer> {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(common::TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let replica = response
            .headers()
            .get("x-portcullis-replica")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.json().await.unwrap_or(Value::Null);
        Some(Answer {
            status,
            replica,
            body,
        })
    }

    /// A new session: its id and the replica that began it.
    async fn begin(&self) -> (String, String) {
        let initialize = serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"balanced","version":"0"}}});
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(common::TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        request = request.timeout(Duration::from_secs(20));
        let response = request.send().await.expect("initialize");
        assert_eq!(response.status(), 200);
        let header = |name: &str| {
            response.headers()[name]
                .to_str()
                .expect("a header")
                .to_owned()
        };
        let (id, replica) = (header("mcp-session-id"), header("x-portcullis-replica"));
        self.post(
            Some(&id),
            serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        )
        .await;
        (id, replica)
    }

    /// `SERVER__echo` called in `session` under request id `id`.
    async fn echo(&self, session: &str, server: &str, id: u64) -> Option<Answer> {
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":format!("{server}__echo"),"arguments":{"text":format!("call {id}")}}});
        self.post(Some(session), body).await
    }
}

/// The replica's config: sealed sessions under `key`, a shared `5/min`
/// quota on `example__echo` in Redis, its log shipped to PostgreSQL.
fn replica_config(
    name: &str,
    port: u16,
    key: &Path,
    redis: &common::redis::Redis,
    postgres: &Postgres,
) -> (TestProxy, std::path::PathBuf) {
    let proxy = TestProxy::new()
        .with_listen(&format!("127.0.0.1:{port}"))
        .with_config(&format!("session_keys = [\"file:{}\"]\n", key.display()))
        .with_example_server("example")
        .with_example_server("other")
        .with_config(&format!(
            "[[ratelimit.rules]]\ntool = \"example__echo\"\nquota = \"5/min\"\n\n[ratelimit.shared]\nredis = \"{}\"\npassword = \"file:{}\"\n",
            redis.url(),
            redis.password_file.display()
        ))
        .with_config(&ship_section(postgres, name, 5));
    let config = proxy.write_config();
    (proxy, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_behind_haproxy_act_as_one_proxy() {
    let postgres = Postgres::start().await;
    let redis = common::redis::Redis::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("session.key");
    let (ok, stdout, stderr) =
        common::run_portcullis(["session-key", "--out", key.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("session_keys = [\"file:"), "{stdout}");
    assert_eq!(common::mode_of(&key).0, 0o600, "the owner's alone");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.trim_end().len() == 64 && text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    let (again, _, stderr) =
        common::run_portcullis(["session-key", "--out", key.to_str().unwrap()]);
    assert!(!again && stderr.contains("never overwritten"), "{stderr}");
    let check =
        TestProxy::new().with_config(&format!("session_keys = [\"file:{}\"]\n", key.display()));
    let (ok, stdout, stderr) =
        common::run_portcullis(["doctor", "--config", check.write_config().to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("ok    session keys: 1 key"), "{stdout}");
    let names = ["replica-1", "replica-2", "replica-3"];
    let mut replicas = HashMap::new();
    let mut backends = Vec::new();
    for name in names {
        let port = common::free_port();
        let (proxy, config) = replica_config(name, port, &key, &redis, &postgres);
        let served = serve_config(&config).await;
        backends.push((name, port));
        replicas.insert(name.to_owned(), (proxy, config, Some(served)));
    }
    let haproxy = common::haproxy::Haproxy::start(&backends).await;
    let client = Balanced {
        http: reqwest::Client::new(),
        url: haproxy.url(),
    };

    // A session on each replica (new sessions are spread round robin).
    let mut sessions: Vec<(String, String)> = Vec::new();
    for _ in 0..30 {
        let (id, replica) = client.begin().await;
        if !sessions.iter().any(|(_, r)| *r == replica) {
            sessions.push((id, replica));
        }
        if sessions.len() == 3 {
            break;
        }
    }
    let mut began_on: Vec<&str> = sessions.iter().map(|(_, r)| r.as_str()).collect();
    began_on.sort();
    assert_eq!(began_on, names, "a session on each replica");

    // The quota holds through the balancer: 5 a minute, whichever replica.
    let mut acked = Vec::new();
    let mut passed = 0;
    for id in 1..=15u64 {
        let (session, replica) = &sessions[id as usize % 3];
        let answer = client.echo(session, "example", id).await.unwrap();
        assert_eq!(&answer.replica, replica, "a session sticks to its replica");
        if answer.body["result"].is_object() {
            passed += 1;
            acked.push(id);
        } else {
            let message = answer.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("tool quota of 5/min reached"),
                "{}",
                answer.body
            );
        }
    }
    assert_eq!(passed, 5, "exactly 5 of 15 pass across three replicas");

    // One client's session, calling without pause; its replica SIGKILLed.
    let (session, home) = sessions[0].clone();
    let worker = {
        let client = Balanced {
            http: reqwest::Client::new(),
            url: haproxy.url(),
        };
        let (session, home) = (session.clone(), home.clone());
        tokio::spawn(async move {
            let (mut served, mut failed) = (Vec::new(), Vec::new());
            let mut elsewhere = 0;
            for id in 1000u64.. {
                if elsewhere == 20 {
                    break;
                }
                let Some(answer) = client.echo(&session, "other", id).await else {
                    failed.push(id);
                    continue;
                };
                // A balancer's own error page is no JSON: its body is null.
                let text = answer.body.pointer("/result/content/0/text");
                if text.and_then(Value::as_str) == Some(format!("other: call {id}").as_str()) {
                    elsewhere += usize::from(answer.replica != home);
                    served.push((id, answer.replica));
                } else {
                    // Only a call cut off by the kill may fail.
                    assert!(answer.status >= 500, "{} {}", answer.status, answer.body);
                    failed.push(id);
                }
            }
            (served, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, config, served) = replicas.get_mut(&home).unwrap();
    let mut killed = served.take().unwrap();
    killed.child.start_kill().unwrap();
    let _ = killed.child.wait().await;
    let config = config.clone();
    let (served, failed) = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the session goes on on another replica")
        .unwrap();
    let before: Vec<_> = served.iter().filter(|(_, r)| *r == home).collect();
    let after: Vec<_> = served.iter().filter(|(_, r)| *r != home).collect();
    assert!(
        !before.is_empty() && after.len() >= 20,
        "served by {home}, then by another"
    );
    // The call in flight at the kill, at most: a connection refused
    // meanwhile is tried on another replica by the balancer.
    assert!(failed.len() <= 2, "{failed:?}");
    // While its replica is down, the session is served by one other
    // replica, always the same.
    let others: std::collections::BTreeSet<&str> = after.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(others.len(), 1, "{others:?}");
    acked.extend(served.iter().map(|(id, _)| *id));

    // Restarted on its store: what it had not shipped goes now. Then
    // every replica stops cleanly.
    let restarted = serve_config(&config).await;
    // Once the balancer has it up again (a new session begins there)...
    let mut back = false;
    for _ in 0..60 {
        if client.begin().await.1 == home {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "{home} is served again");
    let answer = client.echo(&session, "other", 500).await.unwrap();
    assert_eq!(common::first_text(&answer.body), "other: call 500");
    // The session stays where it went: its state is there now.
    let interim = others.iter().next().unwrap().to_string();
    assert_eq!(answer.replica, interim, "it did not move back to {home}");
    acked.push(500);
    restarted.terminate().await;
    for (_, _, served) in replicas.values_mut() {
        if let Some(served) = served.take() {
            served.terminate().await;
        }
    }
    drop(haproxy);

    // Every acknowledged call is in the database once, whichever replica
    // served it; the session's calls carry one session id on every replica.
    let db = postgres.connect().await;
    let mut seen: HashMap<u64, Vec<(String, Value)>> = HashMap::new();
    let mut resumed = 0;
    for name in names {
        for (_, record) in shipped(&db, name, "serve").await {
            if record["kind"] == "exchange" && record["method"] == "tools/call" {
                let id = record["request_id"].as_u64().unwrap();
                seen.entry(id).or_default().push((name.to_owned(), record));
            } else if record["kind"] == "session_start" && record["detail"]["resumed"] == true {
                resumed += 1;
            }
        }
    }
    assert!(resumed >= 1, "a replica resumed the session");
    for id in &acked {
        let records = seen.get(id).map_or(0, Vec::len);
        assert_eq!(records, 1, "call {id} is in the database once");
    }
    // A call cut off by the kill was never sent again elsewhere.
    for id in &failed {
        assert!(seen.get(id).map_or(0, Vec::len) <= 1, "call {id} ran twice");
    }
    let session_ids: std::collections::BTreeSet<&str> = served
        .iter()
        .filter_map(|(id, _)| seen.get(id))
        .flat_map(|records| records.iter().map(|(_, r)| r["session"].as_str().unwrap()))
        .collect();
    assert_eq!(session_ids.len(), 1, "{session_ids:?}");
    let replicas_of_session: std::collections::BTreeSet<&str> = served
        .iter()
        .filter_map(|(id, _)| seen.get(id))
        .flat_map(|records| records.iter().map(|(name, _)| name.as_str()))
        .collect();
    assert!(replicas_of_session.len() >= 2, "{replicas_of_session:?}");

    // The chains verify in the database.
    let url = postgres.url();
    let (ok, stdout, stderr) = audit(&config, &["verify", "--store", &url]);
    assert!(ok, "{stdout}{stderr}");
    for name in names {
        assert!(
            stdout.contains(&format!("{name}/serve: intact")),
            "{stdout}"
        );
    }
}

#[tokio::test]
async fn a_replica_with_a_session_key_it_cannot_use_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (Some("00ff\n"), "32 bytes written as 64 hex digits"),
        (None, "cannot read secret file"),
    ] {
        let key = dir.path().join("session.key");
        let _ = std::fs::remove_file(&key);
        if let Some(text) = text {
            std::fs::write(&key, text).unwrap();
        }
        let proxy =
            TestProxy::new().with_config(&format!("session_keys = [\"file:{}\"]\n", key.display()));
        let config = proxy.write_config();
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(common::portcullis_bin())
                .args(["serve", "--config"])
                .arg(&config)
                .output(),
        )
        .await
        .expect("serve stops at once")
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("proxy.session_keys[0]"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        // `doctor` says so before a start would.
        let (ok, stdout, stderr) =
            common::run_portcullis(["doctor", "--config", config.to_str().unwrap()]);
        assert!(!ok, "{stdout}{stderr}");
        assert!(
            stdout.contains("FAIL  session keys: `proxy.session_keys[0]`"),
            "{stdout}"
        );
    }
}

/// A `sleep` of `ms` through `session`: its reply.
async fn sleep_call(session: &common::HttpSession, id: i64, ms: u64) -> Value {
    session
        .call(
            id,
            "tools/call",
            serde_json::json!({"name": "example__sleep", "arguments": {"ms": ms}}),
        )
        .await
}

fn in_flight_refusal(reply: &Value) -> bool {
    reply["error"]["data"]["scope"] == "concurrency"
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_a_servers_places_in_flight_and_a_dead_replicas_come_back() {
    let mut redis = common::redis::Redis::start().await;
    let section = format!(
        "\n[[ratelimit.concurrency]]\nserver = \"example\"\nmax_in_flight = 2\n\n[ratelimit.shared]\nredis = \"{}\"\npassword = \"file:{}\"\nlease = \"2s\"\n",
        redis.url(),
        redis.password_file.display()
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let proxy = TestProxy::new()
            .with_example_server("example")
            .with_config(&section);
        let served = proxy.serve_http().await;
        let session = std::sync::Arc::new(common::HttpSession::connect(&served.url).await);
        replicas.push((proxy, Some(served), session));
    }
    // Two long calls on the first replica take the fleet's two places (one
    // refused while a probe held a place is made again).
    let long_call = |n: i64| {
        let session = replicas[0].2.clone();
        tokio::spawn(async move { sleep_call(&session, n, 60_000).await })
    };
    let mut long: Vec<_> = (100..102).map(long_call).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut id = 200;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for call in &mut long {
            if call.is_finished() {
                id += 1;
                let ended = std::mem::replace(call, long_call(id));
                let reply = ended.await.unwrap();
                assert!(in_flight_refusal(&reply), "{reply}");
            }
        }
        id += 1;
        let reply = sleep_call(&replicas[1].2, id, 1).await;
        if in_flight_refusal(&reply) && long.iter().all(|call| !call.is_finished()) {
            assert_eq!(reply["error"]["code"], -32015, "{reply}");
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("2 requests in flight"),
                "{reply}"
            );
            break;
        }
        assert!(
            in_flight_refusal(&reply) || common::first_text(&reply) == "slept 1 ms",
            "{reply}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the places were never taken"
        );
    }
    let reply = sleep_call(&replicas[2].2, 300, 1).await;
    assert!(
        in_flight_refusal(&reply),
        "the third replica counts them too: {reply}"
    );

    // The first replica dies holding both: they come back once their
    // leases run out (nobody renews them), not before.
    let mut dead = replicas[0].1.take().unwrap();
    dead.child.start_kill().unwrap();
    let _ = dead.child.wait().await;
    for call in long {
        call.abort();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        id += 1;
        let reply = sleep_call(&replicas[1].2, id, 1).await;
        if !in_flight_refusal(&reply) {
            assert_eq!(common::first_text(&reply), "slept 1 ms", "{reply}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dead replica's places never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Places given back at each call's end: many calls, one after another.
    for n in 0..5 {
        let reply = sleep_call(&replicas[2].2, 400 + n, 1).await;
        assert_eq!(common::first_text(&reply), "slept 1 ms", "{reply}");
    }

    // Redis gone: refused (the default), and said so.
    redis.stop();
    let reply = sleep_call(&replicas[1].2, 500, 1).await;
    assert!(in_flight_refusal(&reply), "{reply}");
    assert_eq!(reply["error"]["data"]["unavailable"], true, "{reply}");
    let served = replicas[1].1.take().unwrap();
    served
        .log
        .wait_for(&["CONCURRENCY LIMITS UNAVAILABLE"])
        .await;
    served.terminate().await;
    if let Some(served) = replicas[2].1.take() {
        served.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_reaches_redis_and_postgresql_over_tls_and_checks_their_certificates() {
    // A private CA, as `examples/replicas/make-certs.sh` makes one.
    let certs = tempfile::tempdir().unwrap();
    common::certs::ca(certs.path(), "fleet");
    common::certs::signed(certs.path(), "fleet", "server", common::certs::SERVER_EXT);
    let (ca, cert, key) = (
        certs.path().join("fleet-ca.pem"),
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
    );
    let redis = common::redis::Redis::start_tls(&cert, &key).await;
    let postgres = Postgres::start_tls(&cert, &key).await;
    // Redis's certificate is checked against the system's roots, which
    // `SSL_CERT_FILE` names (as the compose example does); PostgreSQL's
    // against `[audit.ship] ca`.
    let replica = |name: &str, with_ca: bool| {
        let ship_ca = if with_ca {
            format!("ca = \"{}\"\n", ca.display())
        } else {
            String::new()
        };
        TestProxy::new().with_example_server("example").with_config(&format!(
            "\n[[ratelimit.rules]]\ntool = \"example__echo\"\nquota = \"3/min\"\n\n[ratelimit.shared]\nredis = \"rediss://127.0.0.1:{}\"\npassword = \"file:{}\"\n\n[audit.ship]\nto = \"{}?sslmode=require\"\npassword = \"file:{}\"\nreplica = \"{name}\"\n{ship_ca}",
            redis.port,
            redis.password_file.display(),
            postgres.url(),
            postgres.password_file.display(),
        ))
    };
    let trusted = replica("trusted", true);
    let served = common::serve_config_env(
        &trusted.write_config(),
        &[],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    )
    .await;
    let session = common::HttpSession::connect(&served.url).await;
    let mut passed = 0;
    for id in 1..=5 {
        let reply = echo(&session, id).await;
        if reply["result"].is_object() {
            passed += 1;
        } else {
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("tool quota of 3/min reached"), "{reply}");
        }
    }
    assert_eq!(passed, 3, "the quota is kept in Redis, over TLS");
    let db = postgres.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let calls = shipped(&db, "trusted", "serve")
            .await
            .iter()
            .filter(|(_, r)| r["kind"] == "exchange" && r["method"] == "tools/call")
            .count();
        if calls == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shipped over TLS: {calls} of 5"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    served.terminate().await;

    // Without the CA: neither certificate is trusted, and nothing is sent
    // in clear instead.
    let untrusted = replica("untrusted", false);
    let served = common::serve_config(&untrusted.write_config()).await;
    let session = common::HttpSession::connect(&served.url).await;
    let reply = echo(&session, 1).await;
    assert_eq!(reply["error"]["data"]["unavailable"], true, "{reply}");
    served.log.wait_for(&["RATE LIMITS UNAVAILABLE"]).await;
    served.log.wait_for(&["AUDIT SHIPPING FAILING"]).await;
    served.terminate().await;
    assert!(shipped(&db, "untrusted", "serve").await.is_empty());
}
