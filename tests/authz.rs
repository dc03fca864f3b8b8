//! Cedar authorization through the real proxy and real upstreams (the example
//! server and `mcp-server-time` from PyPI): allowed and denied calls, lists
//! filtered per client, argument and annotation rules, server→client
//! sampling, hot reload, and the `policy` commands.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{HttpSession, OTHER_TOKEN, TestProxy, first_text, portcullis_bin, repo_root};
use serde_json::{Value, json};

/// The test clients: `tester` (group `dev`) and `other` (no group).
const POLICIES: &str = r#"
@id("dev-example")
permit (
  principal in Group::"dev",
  action in [Action::"call_tool", Action::"list_tools"],
  resource in Server::"example"
);

// Tools without readOnlyHint are destructive by the spec's defaults.
@id("no-destructive")
forbid (principal, action in [Action::"call_tool", Action::"list_tools"], resource is Tool)
when { resource.destructive && !resource.read_only && resource != Tool::"example__sample" };

@id("no-secrets-in-echo")
forbid (principal, action == Action::"call_tool", resource == Tool::"example__echo")
when { context.arguments has text && context.arguments.text like "*secret*" };

@id("other-time-list")
permit (principal == Client::"other", action == Action::"list_tools", resource in Server::"time");

@id("other-time-europe")
permit (principal == Client::"other", action == Action::"call_tool", resource == Tool::"time__get_current_time")
when { context.arguments has timezone && context.arguments.timezone like "Europe/*" };
"#;

const SAMPLING: &str = r#"
@id("example-may-sample")
permit (principal, action == Action::"sampling", resource == Server::"example");
"#;

fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn proxy_with_policies(policies: &str) -> TestProxy {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\npolicy_poll = \"100ms\"")
        .with_example_server("example")
        .with_time_server("time");
    proxy.policy_folder(policies);
    proxy
}

fn names(reply: &Value, key: &str, field: &str) -> Vec<String> {
    let mut names: Vec<String> = reply["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {reply}"))
        .iter()
        .map(|item| item[field].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn assert_denied(reply: &Value) -> (String, String) {
    let error = &reply["error"];
    assert_eq!(error["code"], json!(-32010), "{reply}");
    assert_eq!(error["data"]["interceptor"], json!("authz"), "{reply}");
    let decision = error["data"]["decision_id"].as_str().unwrap().to_owned();
    assert_eq!(decision.len(), 16, "{reply}");
    assert!(
        error["message"].as_str().unwrap().contains(&decision),
        "the message names the decision: {reply}"
    );
    // Never the policy text.
    assert!(!error.to_string().contains("forbid"), "{reply}");
    let set = error["data"]["policy_set"].as_str().unwrap().to_owned();
    (decision, set)
}

/// `portcullis policy …`: (success, stdout, stderr).
fn policy(args: &[&str]) -> (bool, String, String) {
    common::run_portcullis(std::iter::once("policy").chain(args.iter().copied()))
}

/// A `tools/call` over an HTTP session.
async fn call_tool(session: &HttpSession, id: i64, name: &str, arguments: Value) -> Value {
    session
        .call(
            id,
            "tools/call",
            json!({"name": name, "arguments": arguments}),
        )
        .await
}

fn set_id(dir: &Path) -> String {
    let (ok, stdout, stderr) = policy(&["check", "--policies", dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    stdout.trim().rsplit(' ').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_decided_and_lists_filtered_per_client() {
    let proxy = proxy_with_policies(POLICIES);
    let http = proxy.serve_http().await;
    let tester = HttpSession::connect(&http.url).await;
    let other = HttpSession::connect_as(&http.url, OTHER_TOKEN).await;

    // Lists: `tester` sees the example server's read-only tool and the one
    // exempted from the destructive rule; `other` sees only the time tools.
    let tools = tester.call(1, "tools/list", json!({})).await;
    assert_eq!(
        names(&tools, "tools", "name"),
        ["example__echo", "example__sample"]
    );
    let tools = other.call(1, "tools/list", json!({})).await;
    assert_eq!(
        names(&tools, "tools", "name"),
        ["time__convert_time", "time__get_current_time"]
    );

    // Allowed.
    let reply = call_tool(&tester, 2, "example__echo", json!({"text": "hi"})).await;
    assert_eq!(first_text(&reply), "example: hi");

    // The argument rule: the same tool, a forbidden argument.
    let reply = call_tool(&tester, 3, "example__echo", json!({"text": "my secret"})).await;
    let (first, set) = assert_denied(&reply);
    assert_eq!(set, set_id(&proxy.dir().join("policies")));

    // The annotation rule: `add` declares no readOnlyHint.
    let reply = call_tool(&tester, 4, "example__add", json!({"a": 1, "b": 2})).await;
    let (second, _) = assert_denied(&reply);
    assert_ne!(first, second, "every decision has its own id");

    // Default deny: `tester` has no rule for the time server.
    let reply = call_tool(
        &tester,
        5,
        "time__get_current_time",
        json!({"timezone": "Europe/Paris"}),
    )
    .await;
    assert_denied(&reply);

    // `other`: the time tool only for European time zones (a real PyPI server).
    let reply = call_tool(
        &other,
        2,
        "time__get_current_time",
        json!({"timezone": "Europe/Paris"}),
    )
    .await;
    assert!(reply.get("result").is_some(), "{reply}");
    assert!(first_text(&reply).contains("Europe/Paris"), "{reply}");
    let reply = call_tool(
        &other,
        3,
        "time__get_current_time",
        json!({"timezone": "Asia/Tokyo"}),
    )
    .await;
    assert_denied(&reply);
    let reply = call_tool(&other, 4, "example__echo", json!({"text": "hi"})).await;
    assert_denied(&reply);
    http.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_is_denied_until_a_reloaded_policy_allows_it() {
    let proxy = proxy_with_policies(POLICIES);
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    // The server asks the client to sample; no policy lets it.
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__sample", "arguments": {"prompt": "hello?"}}),
        )
        .await;
    let text = first_text(&reply);
    assert!(text.contains("sampling failed"), "{reply}");
    assert!(text.contains("not permitted"), "{reply}");
    assert!(
        !client
            .backlog()
            .iter()
            .any(|m| m["method"] == json!("sampling/createMessage")),
        "the client must never see a denied sampling request"
    );

    // A valid change takes effect without a restart.
    write_atomically(
        &proxy.dir().join("policies/main.cedar"),
        &format!("{POLICIES}\n{SAMPLING}"),
    );
    client.wait_for_log(&["policies reloaded"]).await;
    // What the client may list may have changed: it is told so.
    for list in ["tools", "prompts", "resources"] {
        let method = format!("notifications/{list}/list_changed");
        client
            .recv_matching("a list change at the reload", |m| {
                m["method"] == json!(method)
            })
            .await;
    }
    client
        .send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"example__sample","arguments":{"prompt":"hello?"}}}))
        .await;
    let request = client
        .recv_matching("the sampling request", |m| {
            m["method"] == json!("sampling/createMessage")
        })
        .await;
    client
        .send(json!({"jsonrpc":"2.0","id":request["id"],"result":{"role":"assistant","content":{"type":"text","text":"hi there"},"model":"test-model"}}))
        .await;
    let reply = client.response(json!(2)).await;
    assert_eq!(first_text(&reply), "sampled: hi there");

    // A broken file is reported with file:line:col and changes nothing.
    std::fs::write(
        proxy.dir().join("policies/broken.cedar"),
        "permit(principal, action, resource)\n  when { resource.nope };\n",
    )
    .unwrap();
    let line = client.wait_for_log(&["policy reload rejected"]).await;
    let _ = line;
    client
        .wait_for_log(&["broken.cedar:2:10", "attribute `nope`"])
        .await;
    let reply = client
        .call(
            3,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "still"}}),
        )
        .await;
    assert_eq!(first_text(&reply), "example: still");
    let reply = client
        .call(
            4,
            "tools/call",
            json!({"name": "example__add", "arguments": {"a": 1, "b": 2}}),
        )
        .await;
    assert_denied(&reply);
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_during_reloads_each_get_one_sets_decision() {
    let allow =
        r#"@id("allow-echo") permit(principal, action, resource == Tool::"example__echo");"#;
    let forbid = r#"@id("allow-echo") permit(principal, action, resource == Tool::"example__echo");
@id("forbid-echo") forbid(principal, action, resource == Tool::"example__echo");"#;
    let proxy = proxy_with_policies(allow);
    let dir = proxy.dir().join("policies");
    let allow_id = set_id(&dir);
    write_atomically(&dir.join("main.cedar"), forbid);
    let forbid_id = set_id(&dir);
    write_atomically(&dir.join("main.cedar"), allow);
    let http = proxy.serve_http().await;

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toggler = {
        let dir = dir.clone();
        let done = done.clone();
        let url = http.url.clone();
        let forbid_id = forbid_id.clone();
        tokio::spawn(async move {
            // Each set stays until the proxy decides by it (its own probe
            // says so), then the next is written: every set is in force
            // for a while, without guessing how long a reload takes. (A
            // poll and a reload take about 200 ms in a debug build on a
            // busy machine: sixteen rounds are about as many reloads as
            // thirty writes 120 ms apart could get applied, in about the
            // same time.)
            let probe = HttpSession::connect(&url).await;
            let mut call = 0;
            for round in 0..16 {
                let forbidding = round % 2 == 0;
                let text = if forbidding { forbid } else { allow };
                write_atomically(&dir.join("main.cedar"), text);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    call += 1;
                    let reply = probe
                        .call(
                            call,
                            "tools/call",
                            json!({"name": "example__echo", "arguments": {"text": "probe"}}),
                        )
                        .await;
                    let allowed = reply.get("result").is_some();
                    if !allowed {
                        assert_eq!(assert_denied(&reply).1, forbid_id, "{reply}");
                    }
                    if allowed != forbidding {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "round {round}: the written set is not in force after 10 s"
                    );
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut workers = Vec::new();
    for worker in 0..6 {
        let url = http.url.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let session = HttpSession::connect(&url).await;
            let (mut allowed, mut denied) = (0, Vec::new());
            let mut call = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                call += 1;
                let reply = session
                    .call(call, "tools/call", json!({"name": "example__echo", "arguments": {"text": format!("{worker}-{call}")}}))
                    .await;
                if reply.get("result").is_some() {
                    assert_eq!(first_text(&reply), format!("example: {worker}-{call}"));
                    allowed += 1;
                } else {
                    let (_, set) = assert_denied(&reply);
                    denied.push(set);
                }
            }
            (allowed, denied)
        }));
    }
    let (mut allowed, mut denied) = (0, 0);
    let mut sets = std::collections::BTreeSet::new();
    for worker in workers {
        let (a, d) = worker.await.unwrap();
        allowed += a;
        denied += d.len();
        sets.extend(d);
    }
    toggler.await.unwrap();
    // Both sets were in force at some point, and every denial came from
    // the forbidding set, never from an unknown (mixed or partial) one.
    assert!(
        allowed > 0 && denied > 0,
        "allowed {allowed}, denied {denied}"
    );
    assert_eq!(
        sets.iter().map(String::as_str).collect::<Vec<_>>(),
        [forbid_id.as_str()],
        "denials must come from the forbidding set {forbid_id} (allowing set: {allow_id})"
    );
    http.terminate().await;
}

#[test]
fn the_proxy_refuses_to_start_on_a_broken_policy() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example");
    let dir = proxy.policy_folder("permit(principal, action, resource)\n  when { 1 + };\n");
    let config = proxy.write_config();
    let stderr = common::serve_refused(&config);
    assert!(
        stderr.contains(&format!("{}:2:14", dir.join("main.cedar").display())),
        "{stderr}"
    );
    assert!(stderr.contains("unexpected token"), "{stderr}");
}

#[test]
fn a_policy_without_authz_in_an_explicit_chain_is_refused() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\n\n[[chain]]\nkind = \"limits\"")
        .with_example_server("example");
    proxy.policy_folder("permit(principal, action, resource);");
    let config = proxy.write_config();
    let stderr = common::serve_refused(&config);
    assert!(stderr.contains("has no `authz` entry"), "{stderr}");
}

#[test]
fn policy_check_reports_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let schema = repo_root().join("policies/schema.cedarschema");

    // A missing schema.
    std::fs::write(
        dir.path().join("a.cedar"),
        "permit(principal, action, resource);\n",
    )
    .unwrap();
    let (ok, _, stderr) = policy(&["check", "--policies", &path]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{path}/schema.cedarschema:1:1: error: the schema is missing"
        )),
        "{stderr}"
    );

    // A syntax error.
    std::fs::copy(&schema, dir.path().join("schema.cedarschema")).unwrap();
    std::fs::write(
        dir.path().join("a.cedar"),
        "// one\npermit(principal, action resource);\n",
    )
    .unwrap();
    let (ok, _, stderr) = policy(&["check", "--policies", &path]);
    assert!(!ok);
    assert!(stderr.contains(&format!("{path}/a.cedar:2:")), "{stderr}");
    assert!(stderr.contains("error: unexpected token"), "{stderr}");

    // A schema validation error and an unknown entity type, in two files:
    // both reported.
    std::fs::write(
        dir.path().join("a.cedar"),
        "@id(\"typo\")\npermit(principal, action == Action::\"call_tool\", resource)\n  when { resource.readonly };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.cedar"),
        "permit(principal in Team::\"x\", action, resource);\n",
    )
    .unwrap();
    let (ok, _, stderr) = policy(&["check", "--policies", &path]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{path}/a.cedar:3:10: error: for policy `typo`, attribute `readonly`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}/b.cedar:1:21: error: for policy `b.cedar:1`, unrecognized entity type `Team`"
        )),
        "{stderr}"
    );

    // A schema error.
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "entity Client {\n  name: Strng,\n};\n",
    )
    .unwrap();
    let (ok, _, stderr) = policy(&["check", "--policies", &path]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{path}/schema.cedarschema:2:")),
        "{stderr}"
    );
}

#[test]
fn the_example_policies_pass_their_fixtures_and_a_wrong_expectation_fails() {
    let policies = repo_root().join("policies");
    let (ok, stdout, stderr) = policy(&["check", "--policies", policies.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    let (ok, stdout, stderr) = policy(&["test", "--policies", policies.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    // A fixture that expects the wrong decision fails, with its file:line.
    let fixtures = tempfile::tempdir().unwrap();
    std::fs::write(
        fixtures.path().join("wrong.toml"),
        "[[case]]\nname = \"wrong\"\nclient = \"alice\"\ngroups = [\"analysts\"]\naction = \"call_tool\"\ntool = \"example__add\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let (ok, stdout, _) = policy(&[
        "test",
        "--policies",
        policies.to_str().unwrap(),
        "--fixtures",
        fixtures.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("wrong.toml:1: expected allow, got deny"),
        "{stdout}"
    );

    // explain names the deciding policy and where it is.
    let (ok, stdout, stderr) = policy(&[
        "explain",
        "--policies",
        policies.to_str().unwrap(),
        "--client",
        "alice",
        "--groups",
        "analysts",
        "--action",
        "call_tool",
        "--tool",
        "example__add",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("decision:   DENY"), "{stdout}");
    assert!(
        stdout.contains("forbid  destructive-tools-admins-only")
            && stdout.contains("guardrails.cedar:"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_for_a_client_shows_what_policy_lets_it_see() {
    let proxy = proxy_with_policies(POLICIES);
    let config = proxy.write_config();
    let list = |client: Option<&'static str>| {
        let config = config.clone();
        async move {
            let mut command = tokio::process::Command::new(portcullis_bin());
            command
                .args(["tools", "list", "--format", "json", "--config"])
                .arg(&config);
            if let Some(client) = client {
                command.args(["--client", client]);
            }
            let output = command.output().await.unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let tools: Value = serde_json::from_slice(&output.stdout).unwrap();
            let mut names: Vec<String> = tools
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(
        list(Some("other")).await,
        ["time__convert_time", "time__get_current_time"]
    );
    assert_eq!(
        list(Some("tester")).await,
        ["example__echo", "example__sample"]
    );
    // Without a client: the operator's view, every tool the servers offer.
    let all = list(None).await;
    assert!(
        ["example__add", "example__echo", "time__get_current_time"]
            .iter()
            .all(|name| all.iter().any(|n| n == name)),
        "{all:?}"
    );
}

#[test]
fn client_attributes_the_schema_does_not_declare_stop_the_proxy() {
    let proxy = TestProxy::new()
        .with_config(
            "policies = \"policies\"\n\n[[clients]]\nname = \"attr\"\nattributes = { level = 3 }",
        )
        .with_example_server("example");
    proxy.policy_folder("permit(principal, action, resource);");
    let config = proxy.write_config();
    let stderr = common::serve_refused(&config);
    assert!(
        stderr.contains("client `attr`: its `[[clients]]` attributes do not fit the schema"),
        "{stderr}"
    );
    // `policy check --config` says the same.
    let (ok, _, stderr) = policy(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("client `attr`"), "{stderr}");
}
