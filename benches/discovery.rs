//! `[discovery]`, against baselines measured in the same run:
//! - `portcullis__find` over a catalog of 1,000 servers: the search alone
//!   (BM25, `portcullis::search`) per query, against a linear scan of the
//!   same catalog for the query's words (lowercase substring per field);
//!   and the whole tool call through the proxy over stdio (the chain, the
//!   record, a `find_servers` decision per result), against `ping`
//!   answered by the proxy on the same connection;
//! - `portcullis__add` until the added server's first call is answered
//!   (each run a fresh proxy, the container not running), against the
//!   engine's own `docker run --rm -i` + initialize + the same call.
//!
//! Run: `cargo bench --bench discovery` (options after `--`: `--queries N`,
//! `--adds N`). Needs the Docker engine; builds the example image first with
//! `scripts/build-test-image.sh`.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use common::{StdioClient, bare_engine_start, build_image, print_ms_table, print_table, stats};
use portcullis::search::{Index, server_fields};
use serde_json::json;
use tokio::process::Command;

/// Servers in the big catalog.
const SERVERS: usize = 1000;

/// Words the catalog and the queries are made of.
const WORDS: &[&str] = &[
    "github",
    "issues",
    "pull",
    "requests",
    "repository",
    "code",
    "search",
    "files",
    "read",
    "write",
    "database",
    "postgres",
    "sql",
    "query",
    "tables",
    "slack",
    "messages",
    "channels",
    "calendar",
    "events",
    "email",
    "inbox",
    "send",
    "browser",
    "pages",
    "fetch",
    "web",
    "markdown",
    "time",
    "zone",
    "convert",
    "weather",
    "forecast",
    "maps",
    "routes",
    "places",
    "notes",
    "documents",
    "drive",
    "sheets",
    "cells",
    "tickets",
    "jira",
    "sprints",
    "boards",
    "logs",
    "metrics",
    "alerts",
    "incidents",
    "deploy",
    "containers",
    "kubernetes",
    "pods",
    "images",
    "registry",
    "secrets",
    "vault",
    "keys",
    "payments",
    "invoices",
    "customers",
    "orders",
    "stock",
    "prices",
    "news",
    "papers",
    "arxiv",
    "wiki",
    "pages",
    "translate",
    "language",
    "speech",
    "audio",
    "video",
    "transcribe",
    "summarize",
    "charts",
    "graphs",
    "memory",
    "knowledge",
    "entities",
    "relations",
    "shell",
    "commands",
    "terminal",
    "git",
    "commits",
    "branches",
];

/// A deterministic stream of word choices.
struct Words(u64);

impl Words {
    fn next(&mut self) -> &'static str {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        WORDS[(self.0 >> 33) as usize % WORDS.len()]
    }

    fn sentence(&mut self, count: usize) -> String {
        (0..count)
            .map(|_| self.next())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One server of the catalog: name, title, description, tools (name,
/// description).
struct Server {
    name: String,
    title: String,
    description: String,
    tools: Vec<(String, String)>,
}

fn servers() -> Vec<Server> {
    let mut words = Words(7);
    (0..SERVERS)
        .map(|n| {
            let (a, b) = (words.next(), words.next());
            Server {
                name: format!("{a}-{b}-{n}"),
                title: format!("{a} {b}"),
                description: words.sentence(14),
                tools: (0..6)
                    .map(|_| {
                        (
                            format!("{}_{}", words.next(), words.next()),
                            words.sentence(9),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The catalog in Docker's format; every server names `image`.
fn catalog_yaml(servers: &[Server], image: &str) -> String {
    let mut text = String::from("version: 2\nname: big\nregistry:\n");
    for server in servers {
        text.push_str(&format!(
            "  {}:\n    image: {image}\n    title: {}\n    description: {}\n    tools:\n",
            server.name, server.title, server.description
        ));
        for (name, description) in &server.tools {
            text.push_str(&format!(
                "      - name: {name}\n        description: {description}\n"
            ));
        }
    }
    text
}

fn queries(count: usize) -> Vec<String> {
    let mut words = Words(11);
    (0..count).map(|n| words.sentence(2 + n % 3)).collect()
}

/// The linear scan: every server holding a word of the query, in any field.
fn scan(servers: &[Server], query: &str) -> usize {
    let terms: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    servers
        .iter()
        .filter(|server| {
            terms.iter().any(|term| {
                server.name.to_lowercase().contains(term)
                    || server.title.to_lowercase().contains(term)
                    || server.description.to_lowercase().contains(term)
                    || server.tools.iter().any(|(name, description)| {
                        name.to_lowercase().contains(term)
                            || description.to_lowercase().contains(term)
                    })
            })
        })
        .count()
}

fn main() {
    let mut queries_run = 2000usize;
    let mut adds = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--queries" => {
                queries_run = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(queries_run)
            }
            "--adds" => adds = args.next().and_then(|n| n.parse().ok()).unwrap_or(adds),
            _ => {} // cargo bench passes `--bench`
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(queries_run, adds));
}

fn in_process(servers: &[Server], queries: &[String]) {
    let index = Index::new(servers.iter().map(|server| {
        server_fields(
            &server.name,
            &server.title,
            &server.description,
            &server.tools,
        )
    }));
    let time = |label: &str, work: &dyn Fn(&str) -> usize| {
        let mut samples = Vec::with_capacity(queries.len());
        let start = Instant::now();
        let mut found = 0;
        for query in queries {
            let begin = Instant::now();
            found += work(query);
            samples.push(begin.elapsed());
        }
        assert!(found > 0, "{label}: the queries find nothing");
        stats(label, samples, start.elapsed())
    };
    let linear = time("linear scan (substring per field)", &|query| {
        scan(servers, query)
    });
    let ranked = time("BM25 index, top 10", &|query| {
        index.search(query, 10, |_| true).len()
    });
    print_table(
        &format!("search over {SERVERS} servers ({} queries)", queries.len()),
        "vs linear scan p50",
        &[&linear, &ranked],
        &linear,
    );
}

async fn through_proxy(config: &std::path::Path, queries: &[String]) {
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let mut command = Command::new(portcullis);
    command
        .args(["stdio", "--config"])
        .arg(config)
        .args(["--client", "bench"]);
    let mut client = StdioClient::spawn(command).await;
    for query in queries.iter().take(100) {
        client
            .request(
                "tools/call",
                json!({"name": "portcullis__find", "arguments": {"query": query}}),
            )
            .await;
    }
    let mut pings = Vec::new();
    let mut finds = Vec::new();
    let start = Instant::now();
    for query in queries {
        let begin = Instant::now();
        client.request("ping", json!({})).await;
        pings.push(begin.elapsed());
        let begin = Instant::now();
        let reply = client
            .request(
                "tools/call",
                json!({"name": "portcullis__find", "arguments": {"query": query}}),
            )
            .await;
        finds.push(begin.elapsed());
        assert_eq!(reply["result"]["isError"], false, "{reply}");
    }
    let elapsed = start.elapsed();
    client.finish().await;
    let ping = stats("`ping` (answered by the proxy)", pings, elapsed);
    let find = stats("`portcullis__find` (top 10)", finds, elapsed);
    print_table(
        &format!("through the proxy, stdio, {SERVERS} servers"),
        "vs ping p50",
        &[&ping, &find],
        &ping,
    );
    println!(
        "\n`portcullis__find` p50 {:.0} µs, of which the proxy's own round trip (ping) {:.0} µs (goal: under 1 ms per query)",
        find.p50.as_secs_f64() * 1e6,
        ping.p50.as_secs_f64() * 1e6
    );
}

async fn add_to_first_call(dir: &std::path::Path, image: &str, adds: usize) {
    std::fs::write(
        dir.join("one.yaml"),
        format!("registry:\n  echoer:\n    image: {image}\n    command: [\"--name\", \"echoer\"]\n    tools:\n      - name: echo\n"),
    )
    .unwrap();
    let config = dir.join("add.toml");
    std::fs::write(
        &config,
        "[[clients]]\nname = \"bench\"\n\n[[catalogs]]\nname = \"one\"\npath = \"one.yaml\"\n\n[discovery]\ncatalogs = [\"one\"]\n",
    )
    .unwrap();
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    bare_engine_start(image).await;
    let mut bare = Vec::new();
    for _ in 0..adds {
        bare.push(bare_engine_start(image).await);
    }
    let mut added = Vec::new();
    for _ in 0..=adds {
        let mut command = Command::new(portcullis);
        command
            .args(["stdio", "--config"])
            .arg(&config)
            .args(["--client", "bench"]);
        let mut client = StdioClient::spawn(command).await;
        let begin = Instant::now();
        let reply = client
            .request(
                "tools/call",
                json!({"name": "portcullis__add", "arguments": {"name": "echoer"}}),
            )
            .await;
        assert_eq!(reply["result"]["isError"], false, "{reply}");
        let reply = client
            .request(
                "tools/call",
                json!({"name": "echoer__echo", "arguments": {"text": "hello"}}),
            )
            .await;
        added.push(begin.elapsed());
        assert_eq!(
            reply["result"]["content"][0]["text"], "echoer: hello",
            "{reply}"
        );
        client.finish().await;
    }
    added.remove(0); // the first includes the page cache's warm-up
    let bare = stats(
        "engine: `docker run --rm -i` + call",
        bare,
        Duration::from_secs(1),
    );
    let added = stats(
        "proxy: `portcullis__add` + first call",
        added,
        Duration::from_secs(1),
    );
    print_ms_table(
        &format!("add to first call ({adds} runs)"),
        "vs engine p50",
        &[&bare, &added],
        &bare,
    );
}

async fn run(queries_run: usize, adds: usize) {
    let servers = servers();
    let queries = queries(queries_run);
    in_process(&servers, &queries);

    let image = build_image();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.yaml"), catalog_yaml(&servers, &image)).unwrap();
    let config = dir.path().join("find.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\ndata_dir = {:?}\n\n[[clients]]\nname = \"bench\"\n\n[[catalogs]]\nname = \"big\"\npath = \"big.yaml\"\n\n[discovery]\ncatalogs = [\"big\"]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    through_proxy(&config, &queries).await;
    add_to_first_call(dir.path(), &image, adds).await;
}
