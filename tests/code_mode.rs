//! Code mode through the real binary: `portcullis__code` offered only as
//! Cedar's `use_code` permits, described with the client's own tools, and
//! run with the official Python SDK as the client, over streamable HTTP and
//! stdio, in 2025-11-25 and 2026-07-28, and from `portcullis tools call`.
//! A script chains tools of real servers (the example server,
//! `mcp-server-time`, the raw fixture that mirrors what it received); a
//! denied call is refused inside, caught and recorded under the script,
//! never reaching its server; a secret a tool hands out is redacted on the
//! inner request that carries it on. Hostile scripts (a loop, a memory
//! bomb, recursion, a huge output, a flood past the quota, `require`,
//! `fetch`, `import`, `eval` of host objects, tampering with the tool API)
//! are each stopped with a clear error while another client is served.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{AUDITOR_TOKEN, HttpSession, OTHER_TOKEN, TOKEN, TestProxy, first_text};
use serde_json::{Value, json};

/// A GitHub token the default rules find (built here: the source holds
/// none).
fn leaked_token() -> String {
    format!("ghp_{}", "R8xT2mQ9vL4nK7pW3sZ6yB1cD5fG0hJ8aE2u")
}

/// `tester` may use code mode, `other` may not; both may list and call
/// every tool but `raw__mirror` with words that are forbidden, and a
/// script may not convert times (`context has script`).
const POLICIES: &str = r#"
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource);
permit(principal == Client::"tester", action == Action::"use_code", resource);
forbid(principal, action == Action::"call_tool", resource == Tool::"raw__mirror")
    when { context.arguments has text && context.arguments.text like "*forbidden*" };
// Converting times is for the client's own calls, not for its scripts'.
forbid(principal, action == Action::"call_tool", resource == Tool::"time__convert_time")
    when { context has script };
"#;

/// The example server (with a credential it hands out), the time server
/// and the raw mirror, under the policies, code mode on, and the quota
/// `example__add` 5 a minute. Responses are not redacted (`log`), so a
/// script gets what a tool returns; requests are.
fn proxy() -> TestProxy {
    let proxy = TestProxy::new();
    std::fs::write(proxy.dir().join("leak.txt"), leaked_token()).unwrap();
    let policies = proxy.policy_folder(POLICIES);
    let example = format!(
        "[[servers]]\nname = \"example\"\nprocess = {{ command = {:?}, args = [\"--name\", \"example\", \"--reveal-env\", \"LEAKY_TOKEN\"] }}\nsecrets = {{ LEAKY_TOKEN = \"file:leak.txt\" }}\n",
        common::example_server_bin()
    );
    proxy
        .with_server_toml(&example)
        .with_time_server("time")
        .with_raw_server("raw")
        .with_config(&format!(
            "policies = {:?}\n\n[code_mode]\nenabled = true\nwall_time = \"20s\"\ncalls = 30\n\n[redact]\nresponses = \"log\"\n\n[[ratelimit.rules]]\ntool = \"example__add\"\nquota = \"5/min\"\n",
            policies.display().to_string()
        ))
}

/// Chains three tools of two servers, has a call refused (caught), and
/// carries a credential one tool gave on to another server.
const CHAIN: &str = r#"
const now = await tools.time__get_current_time({ timezone: 'Asia/Tokyo' });
const echoed = await tools.example__echo({ text: 'at ' + now.timezone });
const leaked = await tools.example__env_value({});
const mirrored = await tools.raw__mirror({ token: leaked });
let refused = null;
try { await tools.raw__mirror({ text: 'forbidden words' }); } catch (e) { refused = e.message; }
console.log('chained');
return {
  zone: now.timezone, echoed, refused,
  leaked_whole: leaked.startsWith('ghp_') && leaked.length === 40,
  mirror_got: mirrored.received.params.arguments.token,
};
"#;

fn code_call(script: &str) -> String {
    format!("call:portcullis__code:{}", json!({ "script": script }))
}

/// The Python SDK client's document: the tool list, then `script` run.
async fn python(transport: Vec<String>, mode: &str, script: &str) -> Value {
    let mut command = common::python_client();
    let (head, tail) = match transport.iter().position(|a| a == "--") {
        Some(split) => transport.split_at(split),
        None => (&transport[..], &[][..]),
    };
    command.args(head);
    command.args(["--mode", mode, "--no-validate"]);
    command.args(["--op", "list_tools", "--op", &code_call(script)]);
    command.args(tail);
    common::python_client_output(command).await
}

/// What a run of [`CHAIN`] must have given, seen by the client.
fn check_chain(doc: &Value) {
    let listed = &doc["results"][0]["result"]["tools"];
    let code = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|tool| tool["name"] == "portcullis__code")
        .unwrap_or_else(|| panic!("no code tool in {listed}"));
    let described = code["description"].as_str().unwrap();
    for signature in [
        "tools.time__get_current_time(arguments: { timezone: string }",
        "tools.example__echo(arguments: { text: string }",
        "tools.example__add(arguments: { a: number; b: number }): Promise<{ sum: number }>",
        "tools.raw__mirror(",
    ] {
        assert!(described.contains(signature), "{signature} in {described}");
    }
    let ran = &doc["results"][1];
    assert_eq!(ran["ok"], true, "{doc}");
    let result = &ran["result"]["structuredContent"];
    assert_eq!(ran["result"]["isError"], false, "{doc}");
    let returned = &result["result"];
    assert_eq!(returned["zone"], "Asia/Tokyo", "{doc}");
    assert_eq!(returned["echoed"], "example: at Asia/Tokyo", "{doc}");
    assert_eq!(returned["leaked_whole"], true, "{doc}");
    // The credential went on redacted: the mirror received the mark.
    let got = returned["mirror_got"].as_str().unwrap();
    assert!(got.starts_with("[REDACTED:"), "{doc}");
    assert!(!doc.to_string().contains(&leaked_token()), "{doc}");
    let refused = returned["refused"].as_str().unwrap();
    assert!(
        refused.contains("call_tool on `raw__mirror` is not permitted"),
        "{refused}"
    );
    assert_eq!(result["logs"], json!(["chained"]), "{doc}");
}

/// The records of the script `reply`'s run made: the script's, and each
/// of its calls (its parent), as the auditor's API gives them.
async fn script_records(base: &str) -> (Value, Vec<Value>) {
    let mut records = common::admin_records(base, "kind=exchange&limit=1000", AUDITOR_TOKEN).await;
    records.retain(|record| record["method"] == "tools/call");
    let script = records
        .iter()
        .rev()
        .find(|record| record["target"] == "code")
        .cloned()
        .unwrap_or_else(|| panic!("no record of the script: {records:?}"));
    let id = script["detail"]["code"]["script"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = records
        .into_iter()
        .filter(|record| record["detail"]["code"]["parent"] == id.as_str())
        .collect();
    (script, calls)
}

fn check_records(script: &Value, calls: &[Value]) {
    let code = &script["detail"]["code"];
    assert_eq!(code["ended"], "returned", "{script}");
    assert_eq!(code["calls"], 5, "{script}");
    assert!(
        code["source"]
            .as_str()
            .unwrap()
            .contains("time__get_current_time"),
        "{script}"
    );
    assert_eq!(script["client"], "tester");
    let targets: Vec<(&str, &str)> = calls
        .iter()
        .map(|record| {
            (
                record["target"].as_str().unwrap(),
                record["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            ("get_current_time", "allow"),
            ("echo", "allow"),
            ("env_value", "allow"),
            ("mirror", "allow"),
            ("mirror", "deny"),
        ],
        "{calls:?}"
    );
    let denied = &calls[4];
    assert_eq!(denied["decided_by"], "authz", "{denied}");
    // Refused before the relay: the server never had it.
    assert!(denied["upstream_us"].is_null(), "{denied}");
    // The carried credential is counted as redacted on its way out.
    let carried = &calls[3];
    assert!(
        carried["redactions"]
            .as_array()
            .is_some_and(|found| !found.is_empty()),
        "{carried}"
    );
    for call in calls {
        assert_eq!(call["client"], "tester", "{call}");
    }
}

async fn over_http(mode: &str) {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let doc = python(
        vec![
            "http".into(),
            served.url.clone(),
            "--token".into(),
            TOKEN.into(),
        ],
        mode,
        CHAIN,
    )
    .await;
    check_chain(&doc);
    let (script, calls) = script_records(&served.base).await;
    check_records(&script, &calls);
    // `other` is not offered the tool, and may not call it.
    let other = HttpSession::connect_as(&served.url, OTHER_TOKEN).await;
    let listed = other.call(1, "tools/list", json!({})).await;
    assert!(!listed.to_string().contains("portcullis__code"), "{listed}");
    let refused = other
        .call(
            2,
            "tools/call",
            json!({ "name": "portcullis__code", "arguments": { "script": "return 1;" } }),
        )
        .await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("use_code"),
        "{refused}"
    );
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_over_http_in_2025_11_25_is_every_call_under_policy() {
    over_http("legacy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_over_http_in_2026_07_28_is_every_call_under_policy() {
    over_http("2026-07-28").await;
}

async fn over_stdio(mode: &str) {
    let proxy = proxy();
    let config = proxy.write_config();
    let doc = python(
        vec![
            "stdio".into(),
            "--".into(),
            common::portcullis_bin().into(),
            "stdio".into(),
            "--config".into(),
            config.display().to_string(),
            "--client".into(),
            "tester".into(),
        ],
        mode,
        CHAIN,
    )
    .await;
    check_chain(&doc);
    let mut records = common::records(&config, &["--kind", "exchange", "--limit", "1000"]);
    records.retain(|record| record["method"] == "tools/call");
    let script = records
        .iter()
        .find(|record| record["target"] == "code")
        .cloned()
        .unwrap_or_else(|| panic!("{records:?}"));
    let id = script["detail"]["code"]["script"].clone();
    let calls: Vec<Value> = records
        .into_iter()
        .filter(|record| record["detail"]["code"]["parent"] == id)
        .collect();
    check_records(&script, &calls);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_over_stdio_in_2025_11_25_is_every_call_under_policy() {
    over_stdio("legacy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_over_stdio_in_2026_07_28_is_every_call_under_policy() {
    over_stdio("2026-07-28").await;
}

/// `portcullis tools call portcullis__code` runs a script as the client
/// it names.
#[tokio::test(flavor = "multi_thread")]
async fn tools_call_runs_a_script() {
    let proxy = proxy();
    let config = proxy.write_config();
    let arguments = json!({ "script": "const r = await tools.example__add({ a: 2, b: 3 }); return r.sum * 10;" });
    let (ok, stdout, stderr) = common::run_portcullis([
        "tools",
        "call",
        "portcullis__code",
        "--config",
        &config.display().to_string(),
        "--client",
        "tester",
        "--args",
        &arguments.to_string(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("50"), "{stdout}");
}

/// Each hostile script is stopped, or refused, with words naming why; the
/// proxy goes on serving: another client's call while a script spins, and
/// the next script.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_scripts_are_stopped_and_the_proxy_serves_on() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let other = HttpSession::connect_as(&served.url, OTHER_TOKEN).await;
    let ids = std::sync::atomic::AtomicI64::new(10);
    let run = async |script: &str| -> Value {
        let id = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        session
            .call(
                id,
                "tools/call",
                json!({ "name": "portcullis__code", "arguments": { "script": script } }),
            )
            .await
    };
    let said = |reply: &Value| -> String {
        let result = &reply["result"];
        if result["isError"] == true {
            first_text(reply)
        } else {
            result["structuredContent"]["result"].to_string()
        }
    };

    // An endless loop, while another client is served.
    let spinning = {
        let (url, script) = (served.url.clone(), "for (;;) {}");
        tokio::spawn(async move {
            let session = HttpSession::connect(&url).await;
            session
                .call(
                    1,
                    "tools/call",
                    json!({ "name": "portcullis__code", "arguments": { "script": script } }),
                )
                .await
        })
    };
    let echoed = other
        .call(
            1,
            "tools/call",
            json!({ "name": "example__echo", "arguments": { "text": "still here" } }),
        )
        .await;
    assert_eq!(first_text(&echoed), "example: still here", "{echoed}");
    let spun = spinning.await.unwrap();
    assert!(said(&spun).contains("instructions (fuel)"), "{spun}");

    let cases: [(&str, &str); 10] = [
        (
            "const a = []; for (;;) a.push(new Array(1e5).fill(1.5));",
            "out of memory",
        ),
        (
            "function f(n) { return f(n + 1) + 1; } return f(0);",
            "RangeError",
        ),
        ("return 'x'.repeat(5e6);", "over the limit"),
        ("return typeof require;", "\"undefined\""),
        ("return typeof fetch;", "\"undefined\""),
        (
            "const m = await import('os'); return 1;",
            "could not load module 'os'",
        ),
        (
            "return [typeof eval('tools'), typeof Function('return this')().process, typeof std, typeof os].join();",
            "\"object,undefined,undefined,undefined\"",
        ),
        // A function put under another name is still the tool it was; a
        // name the script was not given is refused by the host.
        (
            "tools.portcullis__code = tools.example__echo; const r = await tools.portcullis__code({ text: 'x' }); return r;",
            "\"example: x\"",
        ),
        (
            "JSON.stringify = () => '{\"text\":\"forbidden\"}'; return await tools.example__echo({ text: 'fine' });",
            "\"example: fine\"",
        ),
        // Arguments shaped by a script's `toJSON` are decided as sent.
        (
            "Object.prototype.toJSON = function () { return { text: 'forbidden' }; }; let said; try { await tools.raw__mirror({ text: 'fine' }); said = 'served'; } catch (e) { said = e.message; } delete Object.prototype.toJSON; return said;",
            "is not permitted",
        ),
    ];
    for (script, expected) in cases {
        let reply = run(script).await;
        assert!(said(&reply).contains(expected), "{script}: {reply}");
    }
    // Calls past the quota are refused inside, each an exception.
    let flood = run(
        "let served = 0, refused = ''; for (let i = 0; i < 12; i++) { try { await tools.example__add({ a: i, b: 1 }); served++; } catch (e) { refused = e.message; } } return [served, refused];",
    )
    .await;
    let counted = &flood["result"]["structuredContent"]["result"];
    assert_eq!(counted[0], 5, "{flood}");
    assert!(
        counted[1].as_str().unwrap().contains("ratelimit"),
        "{flood}"
    );
    // The budget of calls: 30 here.
    let budget = run(
        "let n = 0; try { for (;;) { await tools.example__echo({ text: 'n' }); n++; } } catch (e) { return [n, e.message]; }",
    )
    .await;
    let spent = &budget["result"]["structuredContent"]["result"];
    assert_eq!(spent[0], 30, "{budget}");
    assert!(
        spent[1].as_str().unwrap().contains("refused by the host"),
        "{budget}"
    );
    // A rule on scripts alone: the script is refused what the client
    // itself is served.
    let convert =
        json!({ "source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo" });
    let inside = run(&format!(
        "try {{ await tools.time__convert_time({convert}); return 'served'; }} catch (e) {{ return e.message; }}"
    ))
    .await;
    assert!(
        said(&inside).contains("call_tool on `time__convert_time` is not permitted"),
        "{inside}"
    );
    let direct = session
        .call(
            99,
            "tools/call",
            json!({ "name": "time__convert_time", "arguments": convert }),
        )
        .await;
    assert_eq!(direct["result"]["isError"], false, "{direct}");
    // And the proxy still runs scripts.
    let fine = run("return 6 * 7;").await;
    assert_eq!(said(&fine), "42", "{fine}");
    served.terminate().await;
}
