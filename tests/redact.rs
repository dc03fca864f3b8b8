//! Secret scanning: the rule corpus (every rule's true positives and
//! near-misses, a benign corpus with zero findings, recall and false
//! positives reported per rule), gitleaks' default rules and samples
//! (`redact/gitleaks.rs`), property tests of the interceptor, and redaction
//! and denial end to end through the real proxy.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;
#[path = "redact/corpus.rs"]
mod corpus;
#[path = "redact/gitleaks.rs"]
mod gitleaks;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use common::{TestProxy, first_text};
use corpus::{Rng, alphabet, corpus, expand, seed};
use portcullis::chain::{
    ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport, Verdict,
};
use portcullis::config::RedactConfig;
use portcullis::interceptors::redact::{self, Redact, Scanner};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The corpus: `tests/redact/corpus.toml`, templates expanded with a seeded
// generator (`PORTCULLIS_CORPUS_SEED` picks another seed).

/// Built once per test binary: compiling ~200 regexes is slow in debug builds.
fn builtin_scanner() -> &'static Scanner {
    interceptor().scanner()
}

fn interceptor() -> &'static Redact {
    static INTERCEPTOR: std::sync::LazyLock<Redact> =
        std::sync::LazyLock::new(|| Redact::new(&RedactConfig::default()).unwrap());
    &INTERCEPTOR
}

fn positive_templates() -> &'static [String] {
    static TEMPLATES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        corpus()
            .case
            .into_iter()
            .flat_map(|c| c.positives)
            .collect()
    });
    &TEMPLATES
}

fn findings(scanner: &Scanner, text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    scanner.scan(text.as_bytes(), &mut found);
    found
        .iter()
        .map(|f| {
            (
                scanner.rule_id(f.rule).to_string(),
                text[f.start..f.end].to_owned(),
            )
        })
        .collect()
}

fn redacted(scanner: &Scanner, text: &str) -> String {
    let mut found = Vec::new();
    scanner.scan(text.as_bytes(), &mut found);
    scanner.redact(text, &found)
}

/// Writes the per-rule report where CI prints it from, and to the output.
fn report(name: &str, text: &str) {
    println!("{text}");
    let dir = common::repo_root().join("target");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(name), text);
}

#[test]
fn every_rule_catches_its_positives_and_spares_its_near_misses() {
    let scanner = builtin_scanner();
    let corpus = corpus();
    let mut rng = Rng(seed());
    let mut failures = Vec::new();
    // rule → (caught, positives, flagged, negatives)
    let mut stats: BTreeMap<String, (usize, usize, usize, usize)> = BTreeMap::new();
    for case in &corpus.case {
        assert!(
            scanner.rules().iter().any(|r| *r.id == case.rule),
            "the corpus names `{}`, which no rule has",
            case.rule
        );
        let entry = stats.entry(case.rule.clone()).or_default();
        for template in &case.positives {
            let (text, random) = expand(template, &mut rng);
            entry.1 += 1;
            let found = findings(scanner, &text);
            let out = redacted(scanner, &text);
            let leaked: Vec<_> = random
                .iter()
                .filter(|segment| segment.len() >= 8 && out.contains(segment.as_str()))
                .collect();
            if found.iter().any(|(rule, _)| *rule == case.rule) && leaked.is_empty() {
                entry.0 += 1;
            } else {
                failures.push(format!(
                    "{}: positive {template:?} -> {text:?}: found {found:?}, redacted {out:?}",
                    case.rule
                ));
            }
            // Redacting twice is redacting once.
            let again = findings(scanner, &out);
            if !again.is_empty() {
                failures.push(format!(
                    "{}: the redacted {out:?} still has findings {again:?}",
                    case.rule
                ));
            }
        }
        for template in &case.negatives {
            let (text, _) = expand(template, &mut rng);
            entry.3 += 1;
            let found = findings(scanner, &text);
            if !found.is_empty() {
                entry.2 += 1;
                failures.push(format!(
                    "{}: near-miss {template:?} -> {text:?} found {found:?}",
                    case.rule
                ));
            }
        }
    }
    for rule in scanner.rules() {
        match stats.get(&*rule.id) {
            Some((_, positives, _, negatives)) if *positives >= 2 && *negatives >= 2 => {}
            _ => failures.push(format!(
                "{}: the corpus needs at least 2 positives and 2 near-misses",
                rule.id
            )),
        }
    }
    let mut table = format!(
        "redaction corpus (seed {}): {} rules\n{:<34} {:>8} {:>16}\n",
        seed(),
        scanner.rules().len(),
        "rule",
        "recall",
        "false positives"
    );
    let (mut caught, mut positives, mut flagged, mut negatives) = (0, 0, 0, 0);
    for (rule, (c, p, f, n)) in &stats {
        let _ = writeln!(table, "{rule:<34} {c:>3}/{p:<4} {f:>9}/{n:<4}");
        caught += c;
        positives += p;
        flagged += f;
        negatives += n;
    }
    let _ = writeln!(
        table,
        "{:<34} {caught:>3}/{positives:<4} {flagged:>9}/{negatives:<4}",
        "total"
    );
    report("redact-corpus-report.txt", &table);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Texts that carry no secret: the repository's own code, its lock file,
/// hashes, ids, base64 images, prose and JSON documents.
fn benign_corpus() -> Vec<(String, String)> {
    let mut rng = Rng(7);
    let mut texts = Vec::new();
    let root = common::repo_root();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // The redaction module's own tests plant secrets on purpose.
                if !path.ends_with("redact") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(&root).unwrap().display().to_string();
                texts.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    texts.push((
        "Cargo.lock".into(),
        std::fs::read_to_string(root.join("Cargo.lock")).unwrap(),
    ));
    let hex = alphabet("hex");
    let many = |rng: &mut Rng, f: &dyn Fn(&mut Rng) -> String| {
        (0..300).map(|_| f(rng)).collect::<Vec<_>>().join("\n")
    };
    texts.push((
        "git SHAs".into(),
        many(&mut rng, &|r| format!("commit {}", r.pick(hex, 40))),
    ));
    texts.push((
        "sha256/sha512 digests".into(),
        many(&mut rng, &|r| {
            format!("sha256:{} sha512={}", r.pick(hex, 64), r.pick(hex, 128))
        }),
    ));
    texts.push((
        "UUIDs".into(),
        many(&mut rng, &|r| {
            format!(
                "{}-{}-4{}-a{}-{}",
                r.pick(hex, 8),
                r.pick(hex, 4),
                r.pick(hex, 3),
                r.pick(hex, 3),
                r.pick(hex, 12)
            )
        }),
    ));
    texts.push((
        "npm integrity".into(),
        many(&mut rng, &|r| {
            format!(
                "\"integrity\": \"sha512-{}==\"",
                r.pick(alphabet("base64"), 86)
            )
        }),
    ));
    texts.push((
        "base64 image".into(),
        format!(
            "data:image/png;base64,iVBORw0KGgo{}",
            rng.pick(alphabet("base64"), 16 * 1024)
        ),
    ));
    texts.push(("prose".into(), LOREM.repeat(20)));
    texts.push((
        "JSON documents".into(),
        serde_json::to_string_pretty(&json!({
            "name": "demo", "version": "1.2.3",
            "dependencies": {"left-pad": "^1.3.0"},
            "config": {"password_min_length": 12, "token_ttl": "15m", "api_key_header": "X-Api-Key",
                        "secret_ref": "${DB_PASSWORD}", "auth": "Authorization: Bearer <token>"},
            "tools": [{"name": "get_token", "description": "Returns a short-lived token for the API",
                       "inputSchema": {"type": "object", "properties": {"api_key": {"type": "string"}}}}],
        }))
        .unwrap(),
    ));
    texts
}

const LOREM: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. The token \
bucket refills every second; reset your password from the settings page, and keep the \
secret key out of source control. Use an API key from the dashboard (see docs). \
Passwords must be at least twelve characters long. Authorization is checked per call.\n";

#[test]
fn benign_texts_have_no_findings() {
    let scanner = builtin_scanner();
    let mut table = String::from("benign corpus\n");
    let mut failures = Vec::new();
    for (name, text) in benign_corpus() {
        let found = findings(scanner, &text);
        let _ = writeln!(
            table,
            "{name:<50} {:>9} bytes {:>3} findings",
            text.len(),
            found.len()
        );
        if !found.is_empty() {
            failures.push(format!("{name}: {found:?}"));
        }
    }
    report("redact-benign-report.txt", &table);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Property tests of the interceptor.

/// The corpus's positive templates, expanded with `seed`.
fn planted(seed: u64, count: usize) -> Vec<(String, Vec<String>)> {
    let templates = positive_templates();
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let template = &templates[rng.below(templates.len())];
            expand(template, &mut rng)
        })
        .collect()
}

fn words() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[a-z]{1,10}",
            "[0-9a-f]{40}",
            "[A-Za-z0-9_]{3,12}\\(\\)",
            Just("token".to_owned()),
            Just("password:".to_owned()),
            Just("key=".to_owned()),
            Just("\n".to_owned()),
            Just("é ü 😀".to_owned()),
        ],
        0..30,
    )
    .prop_map(|words| words.join(" "))
}

fn response_exchange(result: Value) -> Exchange {
    Exchange::new(
        json!({"jsonrpc": "2.0", "id": 1, "result": result}),
        Direction::ClientToServer,
        Phase::Response,
        Context::new(
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Stdio,
            "tools/call",
        ),
    )
}

/// Same JSON shape: the same keys and non-string values everywhere.
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_shape(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_shape(va, vb))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_message_without_findings_is_left_alone(texts in prop::collection::vec(words(), 1..6)) {
        let interceptor = interceptor();
        let scanner = interceptor.scanner();
        // Adjacent text blocks are also read across their joins.
        let clean = texts.iter().all(|t| findings(scanner, t).is_empty())
            && findings(scanner, &texts.concat()).is_empty();
        let result = json!({
            "content": texts.iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>(),
            "structuredContent": {"items": texts},
        });
        let mut exchange = response_exchange(result);
        let before = exchange.message.clone();
        prop_assert_eq!(interceptor.see(&mut exchange), Verdict::Continue);
        if clean {
            prop_assert_eq!(&exchange.message, &before);
            prop_assert!(exchange.annotations.is_empty());
        }
    }

    #[test]
    fn redaction_is_idempotent_and_keeps_the_message_valid(
        texts in prop::collection::vec(words(), 1..4),
        seed in any::<u64>(),
    ) {
        let interceptor = interceptor();
        let secrets = planted(seed, texts.len() * 2);
        let mut strings = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            strings.push(format!("{text} {} {text}", secrets[2 * i].0));
            strings.push(secrets[2 * i + 1].0.clone());
        }
        let result = json!({
            "content": strings.iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>(),
            "structuredContent": {"nested": [{"value": strings}]},
            "isError": false,
        });
        let mut exchange = response_exchange(result);
        let before = exchange.message.clone();
        prop_assert_eq!(interceptor.see(&mut exchange), Verdict::Continue);
        let once = exchange.message.clone();
        // Every planted secret is gone, everywhere.
        let serialized = serde_json::to_string(&once).unwrap();
        for (_, random) in &secrets {
            for segment in random.iter().filter(|s| s.len() >= 8) {
                prop_assert!(!serialized.contains(segment.as_str()), "{} survived in {}", segment, serialized);
            }
        }
        // Still valid JSON with the same shape: a valid MCP result.
        let reparsed: Value = serde_json::from_str(&serialized).unwrap();
        prop_assert_eq!(&reparsed, &once);
        prop_assert!(same_shape(&before, &once));
        prop_assert!(!exchange.annotations.is_empty());
        // Twice is once.
        let mut again = response_exchange(Value::Null);
        again.message = once.clone();
        prop_assert_eq!(interceptor.see(&mut again), Verdict::Continue);
        prop_assert_eq!(&again.message, &once);
        prop_assert!(again.annotations.is_empty());
    }

    #[test]
    fn the_keyword_prefilter_finds_what_every_regex_on_everything_finds(
        texts in prop::collection::vec(words(), 1..4),
        seed in any::<u64>(),
    ) {
        let scanner = builtin_scanner();
        let secrets = planted(seed, texts.len());
        let text: String = texts
            .iter()
            .zip(&secrets)
            .map(|(t, (s, _))| format!("{t} {s}\n"))
            .collect();
        let (mut fast, mut slow) = (Vec::new(), Vec::new());
        scanner.scan(text.as_bytes(), &mut fast);
        scanner.scan_every_rule(text.as_bytes(), &mut slow);
        prop_assert_eq!(fast, slow);
    }
}

// ---------------------------------------------------------------------------
// Through the real proxy.

/// A GitHub token no test corpus seed produces.
fn github_token() -> String {
    format!("ghp_{}", Rng(99).pick(alphabet("alnum"), 36))
}

/// A stdio session with the example server behind a proxy with `redact`
/// config, initialized.
async fn session(redact: &str) -> (TestProxy, PathBuf, common::RawClient) {
    let proxy = TestProxy::new()
        .with_config(&format!("\n[redact]\n{redact}\n"))
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    (proxy, config, client)
}

#[tokio::test]
async fn secrets_are_redacted_both_ways_and_the_audit_keeps_only_counts() {
    let token = github_token();
    // Requests only counted, so the server echoes the token back and the
    // response side has something to redact.
    let (proxy, config, mut client) = session("requests = \"log\"\nresponses = \"redact\"").await;

    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": format!("deploy with {token}")}}),
        )
        .await;
    assert_eq!(
        first_text(&reply),
        "example: deploy with [REDACTED:github-pat-classic]"
    );
    // A JSON-RPC error from the server is scanned too.
    let reply = client
        .call(
            2,
            "tools/call",
            json!({"name": "example__fail_rpc", "arguments": {"message": format!("bad credentials {token}")}}),
        )
        .await;
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains(&token), "{reply}");
    assert!(message.contains("[REDACTED:github-pat-classic]"), "{reply}");
    client.finish().await;

    let records = common::records(&config, &["--kind", "exchange"]);
    let echo = records
        .iter()
        .find(|r| r["target"] == "echo")
        .expect("the echo call is recorded");
    assert_eq!(echo["decision"], "allow");
    // `log` passes the token on: the hash is of what the server received.
    assert_eq!(
        echo["arguments_sha256"],
        json!(portcullis::audit::sha256_canonical(
            &json!({"text": format!("deploy with {token}")})
        ))
    );
    assert_eq!(
        echo["redactions"],
        json!([
            {"count": 1, "direction": "request", "rule": "github-pat-classic"},
            {"count": 1, "direction": "response", "rule": "github-pat-classic"}
        ])
    );
    let bytes = common::all_bytes(&proxy.dir().join(".portcullis"));
    assert!(!bytes.is_empty());
    assert!(
        !common::contains(&bytes, &token),
        "the token reached the audit store"
    );
}

#[tokio::test]
async fn a_secret_in_arguments_is_denied_before_the_server_sees_it() {
    let token = github_token();
    let (proxy, config, mut client) = session("requests = \"deny\"").await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": token}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], json!(-32010), "{reply}");
    assert_eq!(reply["error"]["data"]["interceptor"], "redact");
    assert_eq!(reply["error"]["data"]["rule"], "github-pat-classic");
    assert!(!reply.to_string().contains(&token));
    // A call without a secret goes through.
    let reply = client
        .call(
            2,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "hello"}}),
        )
        .await;
    assert_eq!(first_text(&reply), "example: hello");
    client.finish().await;

    let records = common::records(&config, &[]);
    let denied = records
        .iter()
        .find(|r| r["request_id"] == json!(1) && r["kind"] == "exchange")
        .expect("the denied call is recorded");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["decided_by"], "redact");
    // The hash is of the arguments as the chain left them, not of the secret.
    assert_eq!(
        denied["arguments_sha256"],
        json!(portcullis::audit::sha256_canonical(
            &json!({"text": "[REDACTED:github-pat-classic]"})
        ))
    );
    assert_eq!(
        denied["redactions"],
        json!([{"count": 1, "direction": "request", "rule": "github-pat-classic"}])
    );
    let bytes = common::all_bytes(&proxy.dir().join(".portcullis"));
    assert!(!common::contains(&bytes, &token));
}

#[test]
fn the_scan_command_prints_findings_with_masked_previews() {
    let token = github_token();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    std::fs::write(
        &file,
        format!("# deploy settings\nexport GITHUB_TOKEN={token}\nREGION=eu-west-1\n"),
    )
    .unwrap();
    let (ok, stdout, stderr) =
        common::run_portcullis(["redact".as_ref(), "scan".as_ref(), file.as_os_str()]);
    assert!(!ok, "findings make the command fail");
    assert!(stderr.contains("1 secret(s) found"), "{stderr}");
    assert!(stdout.contains(":2:21"), "line and column: {stdout}");
    assert!(stdout.contains("github-pat-classic"), "{stdout}");
    assert!(
        !stdout.contains(&token[4..]),
        "the secret is masked: {stdout}"
    );

    // A custom rule file and an allowlist from a config.
    std::fs::write(
        dir.path().join("extra.toml"),
        "[[rule]]\nid = \"acme-key\"\ndescription = \"ACME key\"\nkeywords = [\"acme-\"]\nregex = '''\\bacme-[0-9]{6}\\b'''\nseverity = \"low\"\n",
    )
    .unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!("[redact]\nextra_rules = \"extra.toml\"\nallow = [{token:?}]\n"),
    )
    .unwrap();
    std::fs::write(&file, format!("{token}\nkey acme-123456\n")).unwrap();
    let (ok, stdout, _) = common::run_portcullis([
        "redact".as_ref(),
        "scan".as_ref(),
        file.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]);
    assert!(!ok);
    let found: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found[0]["rule"], "acme-key");
    assert_eq!(found[0]["line"], 2);

    // A broken custom rule is refused with file and line.
    std::fs::write(
        dir.path().join("extra.toml"),
        "\n[[rule]]\nid = \"acme-key\"\ndescription = \"ACME key\"\nkeywords = [\"acme-\"]\nregex = '''(unclosed'''\nseverity = \"low\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = common::run_portcullis([
        "redact".as_ref(),
        "scan".as_ref(),
        file.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("extra.toml:6:9: `rule[0].regex` (rule `acme-key`)"),
        "{stderr}"
    );

    // A clean file passes.
    std::fs::write(&file, "nothing to see\n").unwrap();
    let (ok, _, stderr) =
        common::run_portcullis(["redact".as_ref(), "scan".as_ref(), file.as_os_str()]);
    assert!(ok, "{stderr}");
}

#[test]
fn the_example_configs_and_the_example_rule_file_load() {
    let root = common::repo_root();
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config =
                portcullis::config::Config::load(&path).unwrap_or_else(|err| panic!("{err}"));
            Redact::new(&config.redact).unwrap_or_else(|err| panic!("{err}"));
        }
    }
    let config = portcullis::config::Config::load(&root.join("examples/quickstart.toml")).unwrap();
    let scanner = redact::scanner(&config.redact).unwrap();
    let token = format!("acme_live_{}", Rng(1).pick(alphabet("alnum"), 32));
    assert_eq!(
        findings(&scanner, &format!("ACME_TOKEN={token}")),
        [("acme-internal-api-token".to_owned(), token)]
    );
    assert_eq!(
        findings(&scanner, "svc://billing:Qx7-mP2!zR9wLk4@db.internal/"),
        [(
            "acme-service-password".to_owned(),
            "Qx7-mP2!zR9wLk4".to_owned()
        )]
    );
}
