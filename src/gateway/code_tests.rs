//! `portcullis__code` in-process: a script's calls are the client's own
//! requests through the pipeline (the chain sees each, each is recorded
//! under the script's id), the tool is described with the client's tools,
//! a refusal is an exception, the client's cancel stops the script and its
//! call at the server, progress is told, and scripts at once are bounded.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Session;
use super::harness::{Harness, next, request, spawn_handle, within};
use crate::upstream::scripted::ScriptedServer;

const CONFIG: &str = "[[clients]]\nname = \"alice\"\n[[clients]]\nname = \"bob\"\n\
    [[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n\
    [[servers]]\nname = \"notes\"\nprocess = { command = \"scripted\" }\n\
    [code_mode]\nenabled = true\nmax_scripts = 2\nmax_scripts_per_client = 1\n";

fn tool(name: &str, properties: Value) -> Value {
    json!({ "name": name, "description": format!("The {name} tool"),
            "inputSchema": { "type": "object", "properties": properties, "required": ["text"] } })
}

async fn up() -> (Harness, ScriptedServer, ScriptedServer) {
    let harness = Harness::new(CONFIG);
    let starting = harness.start();
    let text = json!({ "text": { "type": "string" } });
    let files = harness
        .serve(
            "files",
            json!([tool("read", text.clone()), tool("write", text.clone())]),
        )
        .await;
    let notes = harness.serve("notes", json!([tool("read", text)])).await;
    if let Err(err) = starting.await {
        panic!("the gateway did not start: {err}");
    }
    (harness, files, notes)
}

fn script(id: i64, source: &str) -> Value {
    request(
        id,
        "tools/call",
        json!({ "name": "portcullis__code", "arguments": { "script": source } }),
    )
}

/// The code tool is listed with the client's tools as signatures, and a
/// script chains calls of two servers: each reaches its server as a
/// `tools/call` with its own name and the script's arguments, passes the
/// chain, and is recorded with the script's id as its parent; the script's
/// record holds its id, source, calls and end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_calls_are_the_clients_own_exchanges() {
    let (harness, mut files, mut notes) = up().await;
    let (session, _inbox) = harness.initialized_session("alice").await;
    let listed = harness
        .handle(&session, request(1, "tools/list", json!({})))
        .await
        .unwrap_or_default();
    let tools = listed["result"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let code = tools
        .iter()
        .find(|tool| tool["name"] == "portcullis__code")
        .cloned()
        .unwrap_or_default();
    let description = code["description"].as_str().unwrap_or_default();
    for signature in [
        "tools.files__read(arguments: { text: string }): Promise<unknown>",
        "tools.files__write(arguments: { text: string }): Promise<unknown>",
        "tools.notes__read(arguments: { text: string }): Promise<unknown>",
        "/** The read tool */",
    ] {
        assert!(
            description.contains(signature),
            "{signature}: {description}"
        );
    }
    assert!(
        !description.contains("tools.portcullis__code"),
        "{description}"
    );

    let source = "const a = await tools.files__read({ text: 'first' });\n\
                  let refused = null;\n\
                  try { await tools.files__write({ text: a }); } catch (e) { refused = e.message; }\n\
                  const b = await tools.notes__read({ text: a + '!' });\n\
                  console.log('done');\n\
                  return { a, b, refused };";
    let running = spawn_handle(&harness, &session, script(2, source));
    let read = within("files' read", files.next_received()).await;
    assert_eq!(
        read["params"],
        json!({ "name": "read", "arguments": { "text": "first" } })
    );
    files
        .reply(
            &read,
            json!({ "content": [{ "type": "text", "text": "A" }] }),
        )
        .await;
    let write = within("files' write", files.next_received()).await;
    assert_eq!(write["params"]["arguments"], json!({ "text": "A" }));
    files
        .reply_error(&write, -32000, "the disk is read-only")
        .await;
    let noted = within("notes' read", notes.next_received()).await;
    assert_eq!(noted["params"]["arguments"], json!({ "text": "A!" }));
    notes
        .reply(
            &noted,
            json!({ "content": [], "structuredContent": { "n": 7 } }),
        )
        .await;
    let reply = within("the script's end", running)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let result = &reply["result"];
    assert_eq!(result["isError"], false, "{reply}");
    assert_eq!(result["structuredContent"]["result"]["a"], "A", "{reply}");
    assert_eq!(
        result["structuredContent"]["result"]["b"],
        json!({ "n": 7 }),
        "{reply}"
    );
    assert!(
        result["structuredContent"]["result"]["refused"]
            .as_str()
            .is_some_and(|said| said.contains("read-only")),
        "{reply}"
    );
    assert_eq!(
        result["structuredContent"]["logs"],
        json!(["done"]),
        "{reply}"
    );

    check_records(&harness, source).await;
}

/// What the chain saw and the audit log kept of the script of
/// [`a_scripts_calls_are_the_clients_own_exchanges`]: each call a request of
/// the client's, recorded under the script's id.
async fn check_records(harness: &Harness, source: &str) {
    // The chain saw each call as a request of the client's.
    let seen: Vec<Value> = harness
        .requests_seen()
        .into_iter()
        .filter(|message| message["method"] == "tools/call")
        .map(|message| message["params"]["name"].clone())
        .collect();
    assert_eq!(
        seen,
        [
            "portcullis__code",
            "files__read",
            "files__write",
            "notes__read"
        ]
        .map(Value::from)
    );
    let calls: Vec<_> = harness
        .exchanges()
        .await
        .into_iter()
        .filter(|record| record.method == "tools/call")
        .collect();
    assert_eq!(calls.len(), 4, "{calls:?}");
    let outer = calls.last().cloned().unwrap_or_else(|| panic!("no record"));
    let code = outer.detail.clone().unwrap_or_default()["code"].clone();
    let id = code["script"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id.len(), 16, "{code}");
    assert_eq!(code["calls"], 3, "{code}");
    assert_eq!(code["ended"], "returned", "{code}");
    assert_eq!(code["source"], source, "{code}");
    for (n, inner) in calls.iter().take(3).enumerate() {
        let detail = inner.detail.clone().unwrap_or_default();
        assert_eq!(detail["code"]["parent"], id.as_str(), "{detail}");
        assert_eq!(inner.client, "alice");
        assert_eq!(inner.request_id, Some(Value::from(format!("{id}.{n}"))));
    }
    assert!(calls.get(1).is_some_and(|r| r.is_error), "{calls:?}");
}

/// The client's cancel of the script's call stops the script, and its
/// call in flight is cancelled at its server; no reply comes. Progress
/// is told as calls are answered. One script of a client at a time here:
/// its second is refused while the first runs, another client's runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_script_stops_with_its_calls_and_scripts_are_bounded() {
    let (harness, mut files, _notes) = up().await;
    let (session, mut inbox) = harness.initialized_session("alice").await;
    let mut asked = script(
        5,
        "await tools.files__read({ text: 'one' }); await tools.files__read({ text: 'two' }); return 1;",
    );
    asked["params"]["_meta"] = json!({ "progressToken": "p5" });
    let running = spawn_handle(&harness, &session, asked);
    let first = within("the first read", files.next_received()).await;
    files
        .reply(
            &first,
            json!({ "content": [{ "type": "text", "text": "1" }] }),
        )
        .await;
    let told = next(&mut inbox).await;
    assert_eq!(told["method"], "notifications/progress", "{told}");
    assert_eq!(told["params"]["progressToken"], "p5", "{told}");
    assert_eq!(told["params"]["progress"], 1, "{told}");
    let second = within("the second read", files.next_received()).await;

    let refused = harness
        .handle(&session, script(6, "return 2;"))
        .await
        .unwrap_or_default();
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|said| said.contains("this client runs 1 scripts already")),
        "{refused}"
    );
    // Another client's script runs meanwhile.
    let (bobs, _bobs_inbox) = harness.initialized_session("bob").await;
    let served = harness
        .handle(&bobs, script(1, "return 3;"))
        .await
        .unwrap_or_default();
    assert_eq!(
        served["result"]["structuredContent"]["result"], 3,
        "{served}"
    );

    let cancel = crate::protocol::notification(
        "notifications/cancelled",
        json!({ "requestId": 5, "reason": "the user stopped it" }),
    );
    harness.handle(&session, cancel).await;
    let cancelled = within("the cancel at the server", files.next_received()).await;
    assert_eq!(
        cancelled["method"], "notifications/cancelled",
        "{cancelled}"
    );
    assert_eq!(
        cancelled["params"]["requestId"], second["id"],
        "{cancelled}"
    );
    let reply = within("the script's end", running).await.ok().flatten();
    assert!(reply.is_none(), "{reply:?}");
    let records = harness.exchanges().await;
    let outer = records
        .iter()
        .find(|record| record.request_id == Some(json!(5)))
        .unwrap_or_else(|| panic!("no record of the script: {records:?}"));
    assert_eq!(
        outer.detail.clone().unwrap_or_default()["code"]["ended"],
        "cancelled"
    );
    // The place is free again.
    let again = harness
        .handle(&session, script(7, "return 2;"))
        .await
        .unwrap_or_default();
    assert_eq!(again["result"]["structuredContent"]["result"], 2, "{again}");
    drop(session);
}

/// A stopped script (a limit) is the call's error result, in words that
/// name the limit; the proxy serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_past_a_limit_is_an_error_result() {
    let (harness, _files, _notes) = up().await;
    let (session, _inbox) = harness.initialized_session("alice").await;
    let stopped = harness
        .handle(&session, script(1, "for (;;) {}"))
        .await
        .unwrap_or_default();
    assert_eq!(stopped["result"]["isError"], true, "{stopped}");
    let said = stopped["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        said.contains("instructions") || said.contains("time"),
        "{said}"
    );
    let threw = harness
        .handle(&session, script(2, "throw new TypeError('no');"))
        .await
        .unwrap_or_default();
    let said = threw["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        said.contains("TypeError: no") || said.contains("no"),
        "{said}"
    );
    assert_eq!(threw["result"]["isError"], true, "{threw}");
    let unknown = harness
        .handle(&session, script(3, "return await tools.other__tool({});"))
        .await
        .unwrap_or_default();
    assert_eq!(unknown["result"]["isError"], true, "{unknown}");
    let _: &Arc<Session> = &session;
}

#[test]
fn signatures_are_written_from_schemas() {
    let tool = json!({
        "name": "repo__search",
        "description": "Search */ the\n code",
        "inputSchema": { "type": "object", "properties": {
            "query": { "type": "string" },
            "limit": { "type": "integer" },
            "kind": { "enum": ["file", "commit"] },
            "tags": { "type": "array", "items": { "type": "string" } },
            "odd-name": { "type": ["string", "null"] },
        }, "required": ["query"] },
        "outputSchema": { "type": "object", "properties": { "hits": { "type": "array" } } },
    });
    let written = super::code::described(&[tool, json!({ "name": "x-y" })]);
    assert!(
        written.contains("/** Search * / the code */\ntools.repo__search(arguments: { query: string; limit?: number; kind?: \"file\" | \"commit\"; tags?: Array<string>; \"odd-name\"?: string | null }): Promise<{ hits?: Array<unknown> }>"),
        "{written}"
    );
    assert!(
        written.contains("tools[\"x-y\"](arguments: {}): Promise<unknown>"),
        "{written}"
    );
}
