//! WASM plugins through the real proxy: the example plugins (built from
//! their sources, or the checked-in builds) acting on real calls, hostile
//! plugins contained, `plugin check`.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use common::wasm_fixtures::{self, Behaviour};
use common::*;
use serde_json::{Value, json};

fn toml_path(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn echo(text: &str, server: &str) -> Value {
    json!({"name": format!("{server}__echo"), "arguments": {"text": text}})
}

fn texts(reply: &Value) -> Vec<String> {
    reply["result"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {reply}"))
        .iter()
        .map(|item| item["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn the_example_plugins_deny_rewrite_and_mask_real_calls() {
    let deny = example_plugin("deny-pattern");
    let notice = example_plugin("add-notice");
    let mask = example_plugin("mask-pii");
    let proxy = TestProxy::new()
        .with_config(&format!(
            // Each plugin gets the longest budget a call may have (the
            // default 10 ms is for a production machine, not a loaded one).
            r#"
[[chain]]
kind = "wasm"
path = {deny}
timeout = "1s"
methods = ["tools/call"]
phases = ["request"]
config = {{ patterns = ['rm\s+-rf', '(?i)drop\s+table'] }}

[[chain]]
kind = "wasm"
path = {notice}
timeout = "1s"
methods = ["tools/call"]
phases = ["response"]
tools = ["example__echo"]
config = {{ notice = "Checked by Portcullis." }}

[[chain]]
kind = "wasm"
path = {mask}
timeout = "1s"
phases = ["response"]
"#,
            deny = toml_path(&deny),
            notice = toml_path(&notice),
            mask = toml_path(&mask),
        ))
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    // deny-pattern: the pattern matches a decoded string (the escape does
    // not hide it), the call never reaches the server.
    let refused = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "please r\u{006d} -rf /"}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], json!(4003), "{refused}");
    assert_eq!(
        refused["error"]["message"],
        json!("denied by wasm:deny_pattern: the arguments match a forbidden pattern")
    );
    assert_eq!(
        refused["error"]["data"]["interceptor"],
        json!("wasm:deny_pattern")
    );
    let refused = client
        .call(2, "tools/call", echo("x; DROP  TABLE users", "example"))
        .await;
    assert_eq!(refused["error"]["code"], json!(4003), "{refused}");

    // mask-pii, then add-notice (responses run the chain in reverse).
    let masked = client
        .call(
            3,
            "tools/call",
            echo(
                "write to ada.lovelace@example.org or call +44 20 7946 0958",
                "example",
            ),
        )
        .await;
    assert_eq!(
        texts(&masked),
        [
            "example: write to [email] or call [phone]",
            "Checked by Portcullis."
        ],
        "{masked}"
    );
    // add-notice is limited to echo; the sum is no phone number.
    let sum = client
        .call(
            4,
            "tools/call",
            json!({"name": "example__add", "arguments": {"a": 20, "b": 22}}),
        )
        .await;
    assert_eq!(
        sum["result"]["structuredContent"]["sum"],
        json!(42),
        "{sum}"
    );
    assert_eq!(texts(&sum).len(), 1, "{sum}");
    client.finish().await;

    // The audit log names the deciding plugin and keeps each plugin's notes.
    let exchanges = records(&config, &["--kind", "exchange", "--tool", "example__echo"]);
    let calls: Vec<&Value> = exchanges
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 3, "{exchanges:?}");
    assert_eq!(calls[0]["decision"], json!("deny"));
    assert_eq!(calls[0]["decided_by"], json!("wasm:deny_pattern"));
    assert_eq!(
        calls[0]["detail"]["plugins"]["deny_pattern"]["pattern"],
        json!("0")
    );
    assert_eq!(
        calls[1]["detail"]["plugins"]["deny_pattern"]["pattern"],
        json!("1")
    );
    assert_eq!(calls[2]["decision"], json!("allow"));
    let notes = &calls[2]["detail"]["plugins"];
    assert_eq!(notes["mask_pii"]["emails"], json!("1"), "{notes}");
    assert_eq!(notes["mask_pii"]["phones"], json!("1"), "{notes}");
    assert_eq!(notes["add_notice"]["notice"], json!("added"), "{notes}");
    // Each plugin's load is recorded with the hash of what ran.
    let loaded = records(&config, &["--kind", "plugin_loaded"]);
    assert_eq!(loaded.len(), 3, "{loaded:?}");
    let deny_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&deny).unwrap(),
    ));
    assert_eq!(loaded[0]["target"], json!("deny_pattern"));
    assert_eq!(loaded[0]["detail"]["sha256"], json!(deny_hash));
}

#[tokio::test]
async fn hostile_plugins_are_contained_audited_and_the_proxy_keeps_serving() {
    let proxy = TestProxy::new();
    let dir = proxy.dir().to_owned();
    // One hostile plugin per server's echo; `example__add` goes through
    // none of them.
    let cases = [
        ("looping", Behaviour::Loop, "ran out of time", "deny"),
        (
            "bomb",
            Behaviour::MemoryBomb,
            "over its memory limit",
            "deny",
        ),
        ("trapping", Behaviour::Trap, "unreachable", "deny"),
        ("garbage", Behaviour::Garbage, "not JSON", "deny"),
        (
            "oversized",
            Behaviour::Oversized,
            "an outcome larger than",
            "deny",
        ),
        ("lenient", Behaviour::Trap, "unreachable", "continue"),
    ];
    let mut chain = String::new();
    let mut proxy = proxy.with_example_server("example");
    for (name, behaviour, _, on_error) in cases {
        let path = wasm_fixtures::write(&dir, name, behaviour, "0.1.0");
        // The longest budget a call may have, so that each plugin fails the
        // way it is built to on a loaded machine too; the looping one keeps
        // the default, which it runs out of all the same.
        let timeout = if name == "looping" {
            ""
        } else {
            "timeout = \"1s\"\n"
        };
        chain.push_str(&format!(
            "[[chain]]\nkind = \"wasm\"\npath = {}\n{timeout}tools = [\"{name}__echo\"]\non_error = \"{on_error}\"\nbreaker = {{ failures = 2, cooldown = \"1h\" }}\n\n",
            toml_path(&path)
        ));
        proxy = proxy.with_example_server(name);
    }
    let proxy = proxy.with_config(&chain);
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let mut id = 1;
    for (name, _, reason, on_error) in cases {
        let reply = client.call(id, "tools/call", echo("hello", name)).await;
        id += 1;
        if on_error == "deny" {
            assert_eq!(reply["error"]["code"], json!(-32016), "{name}: {reply}");
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with(&format!("denied by wasm:{name}: plugin `{name}` failed: "))
                    && message.contains(reason),
                "{name}: {message}"
            );
        } else {
            // Passed on, though the plugin failed on the call and on its
            // result.
            assert_eq!(texts(&reply), [format!("{name}: hello")], "{name}: {reply}");
        }
        // The next call, to another tool, still works.
        let sum = client
            .call(
                id,
                "tools/call",
                json!({"name": "example__add", "arguments": {"a": 1, "b": 2}}),
            )
            .await;
        id += 1;
        assert_eq!(
            sum["result"]["structuredContent"]["sum"],
            json!(3),
            "after {name}: {sum}"
        );
    }
    // A second failure in a row opens the breaker; the third call is refused
    // without running the plugin.
    let second = client
        .call(id, "tools/call", echo("again", "trapping"))
        .await;
    id += 1;
    assert_eq!(
        second["error"]["data"]["plugin_error"],
        json!("trap"),
        "{second}"
    );
    let third = client
        .call(id, "tools/call", echo("again", "trapping"))
        .await;
    assert_eq!(third["error"]["code"], json!(-32016), "{third}");
    assert_eq!(
        third["error"]["data"]["plugin_error"],
        json!("circuit-open"),
        "{third}"
    );
    client
        .wait_for_log(&["PLUGIN CIRCUIT OPEN", "wasm:trapping"])
        .await;
    client.finish().await;

    // Audited: each failure in its exchange, the breaker as an event.
    for (name, _, reason, on_error) in cases {
        let tool = format!("{name}__echo");
        let exchanges = records(&config, &["--kind", "exchange", "--tool", &tool]);
        let call = exchanges
            .iter()
            .find(|r| r["method"] == "tools/call")
            .unwrap_or_else(|| panic!("{name}: {exchanges:?}"));
        if on_error == "deny" {
            assert_eq!(call["decision"], json!("deny"), "{name}: {call}");
            assert_eq!(call["decided_by"], json!(format!("wasm:{name}")));
            assert!(
                call["reason"].as_str().unwrap_or_default().contains(reason),
                "{call}"
            );
        } else {
            assert_eq!(call["decision"], json!("allow"), "{call}");
            let error = call["detail"]["plugins"][name]["error"]
                .as_str()
                .unwrap_or_default();
            assert!(error.contains(reason), "{call}");
        }
    }
    // `trapping` failed on two calls; `lenient` on one call's request and
    // its result.
    let opened = records(&config, &["--kind", "plugin_circuit_open"]);
    let mut targets: Vec<&str> = opened.iter().filter_map(|r| r["target"].as_str()).collect();
    targets.sort_unstable();
    assert_eq!(targets, ["lenient", "trapping"], "{opened:?}");
    for record in &opened {
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("2 failures in a row (last: trapped (unreachable"),
            "{reason}"
        );
    }
}

#[test]
fn a_plugin_the_proxy_cannot_use_stops_it_from_starting_with_the_reason() {
    let proxy = TestProxy::new().with_example_server("example");
    let future = wasm_fixtures::write(proxy.dir(), "future", Behaviour::Continue, "0.2.0");
    let deny = example_plugin("deny-pattern");
    let cases = [
        (
            format!("[[chain]]\nkind = \"wasm\"\npath = {}\n", toml_path(&future)),
            "exports portcullis:interceptor/handler@0.2.0, but this proxy speaks portcullis:interceptor/handler@0.1.0".to_owned(),
        ),
        (
            format!("[[chain]]\nkind = \"wasm\"\npath = {}\n", toml_path(&deny)),
            "`configure` refused the config: `patterns` must be a non-empty list".to_owned(),
        ),
        (
            format!(
                "[[chain]]\nkind = \"wasm\"\npath = {}\nsha256 = \"{}\"\nconfig = {{ patterns = [\"x\"] }}\n",
                toml_path(&deny),
                "ab".repeat(32)
            ),
            "but the config pins abab".to_owned(),
        ),
        (
            "[[chain]]\nkind = \"wasm\"\npath = \"plugin.wasm\"\non_error = \"shrug\"\n".to_owned(),
            "portcullis.toml:8:12: `chain[0].on_error`: unknown variant `shrug`, expected `deny` or `continue`".to_owned(),
        ),
        (
            "[[chain]]\nkind = \"limits\"\npath = \"plugin.wasm\"\n".to_owned(),
            "`chain[0].path`: only `wasm` entries take `path`".to_owned(),
        ),
    ];
    for (chain, expected) in cases {
        let proxy = TestProxy::new()
            .with_example_server("example")
            .with_config(&chain);
        let config = proxy.write_config();
        let stderr = serve_refused(&config);
        assert!(
            stderr.contains(&expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn plugin_check_shows_what_a_plugin_would_do() {
    // `--timeout 1s`: the longest budget a call may have, not the default
    // 10 ms, which a loaded machine can miss.
    let (ok, stdout, stderr) = run_portcullis([
        "plugin".as_ref(),
        "check".as_ref(),
        example_plugin("mask-pii").as_os_str(),
        "--timeout".as_ref(),
        "1s".as_ref(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("interface  portcullis:interceptor/handler@0.1.0 (ok)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[email]") && stdout.contains("[phone]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("annotations: emails=1, phones=1"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run_portcullis([
        "plugin".as_ref(),
        "check".as_ref(),
        example_plugin("deny-pattern").as_os_str(),
        "--config".as_ref(),
        r#"{"patterns": ["rm\\s+-rf"], "code": 4101}"#.as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
        "--timeout".as_ref(),
        "1s".as_ref(),
    ]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["messages"][0]["outcome"]["verdict"], json!("deny"));
    assert_eq!(report["messages"][0]["outcome"]["code"], json!(4101));
    assert_eq!(
        report["messages"][1]["outcome"]["verdict"],
        json!("continue")
    );
    assert_eq!(report["counters"]["denied"], json!(1));

    let (ok, _, stderr) = run_portcullis([
        "plugin".as_ref(),
        "check".as_ref(),
        example_plugin("deny-pattern").as_os_str(),
        "--timeout".as_ref(),
        "1s".as_ref(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("`patterns` must be a non-empty list"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let looping = wasm_fixtures::write(dir.path(), "looping", Behaviour::Loop, "0.1.0");
    // The default budget: a loop runs out of any.
    let (ok, stdout, stderr) =
        run_portcullis(["plugin".as_ref(), "check".as_ref(), looping.as_os_str()]);
    assert!(!ok);
    assert!(
        stdout.contains("failed") && stdout.contains("ran out of time"),
        "{stdout}"
    );
    assert!(
        stderr.contains("the plugin failed on a sample message"),
        "{stderr}"
    );
}

#[test]
fn the_checked_in_example_builds_load() {
    // Building from source (when the target is installed) also checks that
    // the checked-in builds are what the sources build to.
    for name in ["noop", "deny-pattern", "add-notice", "mask-pii"] {
        let path = example_plugin(name);
        let checked_in = repo_root()
            .join("plugins/examples")
            .join(name)
            .join(format!("{}.wasm", name.replace('-', "_")));
        for file in [&path, &checked_in] {
            let (ok, stdout, stderr) = run_portcullis([
                "plugin".as_ref(),
                "check".as_ref(),
                file.as_os_str(),
                "--config".as_ref(),
                r#"{"patterns": ["x"]}"#.as_ref(),
                "--timeout".as_ref(),
                "1s".as_ref(),
            ]);
            assert!(ok, "{}: {stdout}{stderr}", file.display());
        }
    }
}

#[test]
fn doctor_loads_every_plugin_as_start_up_would() {
    let proxy = TestProxy::new().with_example_server("example");
    let future = wasm_fixtures::write(proxy.dir(), "future", Behaviour::Continue, "0.2.0");
    let noop = example_plugin("noop");
    let proxy = proxy.with_config(&format!(
        "[[chain]]\nkind = \"wasm\"\npath = {}\n\n[[chain]]\nkind = \"wasm\"\npath = {}\n",
        toml_path(&noop),
        toml_path(&future)
    ));
    let config = proxy.write_config();
    let (ok, stdout, stderr) =
        run_portcullis(["doctor".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(
        !ok,
        "a plugin of another version fails the doctor: {stdout}{stderr}"
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|line| line.contains(&format!("plugin {name}")))
            .unwrap_or_else(|| panic!("no line for {name}: {stdout}"))
            .to_owned()
    };
    assert!(
        line("noop").starts_with("ok")
            && line("noop").contains("speaks portcullis:interceptor/handler@0.1.0"),
        "{stdout}"
    );
    assert!(
        line("future").starts_with("FAIL") && line("future").contains("@0.2.0"),
        "{stdout}"
    );
}
