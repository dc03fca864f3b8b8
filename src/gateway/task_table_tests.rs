//! The task table and the framing of what servers say of tasks.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::failure::Failure;
use super::session::MAX_TASKS_PER_CLIENT;
use super::task_table::{Created, EXTENSION, Tasks, acknowledgement, declared, framed_get};
use crate::chain::ClientIdentity;
use crate::protocol;

/// A client by name, with no groups.
fn who(name: &str) -> ClientIdentity {
    ClientIdentity::new(name, &[])
}

fn created(client: &str, server: usize) -> Created {
    Created {
        client: Arc::from(client),
        owner: who(client),
        server,
        tool: "slow".into(),
        listed: "s__slow".into(),
        arguments: None,
        generation: Some(0),
        shared: true,
    }
}

fn task_reply(id: &str, ttl: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": 1, "result": { "resultType": "task", "taskId": id,
        "status": "working", "createdAt": "2026-11-26T00:00:00Z",
        "lastUpdatedAt": "2026-11-26T00:00:00Z", "ttlMs": ttl, "pollIntervalMs": 1,
        "_meta": { "x": 1 }, "extra": "dropped" } })
}

fn id_of(reply: &Value) -> String {
    reply["result"]["taskId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_task_gets_the_proxys_id_and_only_its_creator_finds_it() {
    let tasks = Tasks::default();
    let reply = tasks
        .create(created("alice", 0), &task_reply("1", json!(60000)))
        .unwrap_or_else(|e| panic!("{e}"));
    let result = &reply["result"];
    let id = id_of(&reply);
    assert!(id.starts_with("portcullis-task-") && id.len() > 30, "{id}");
    assert_eq!(result["resultType"], "task");
    assert_eq!(result["status"], "working");
    assert_eq!(result["ttlMs"], 60000);
    // A poll interval the client would hammer the proxy with is raised.
    assert_eq!(result["pollIntervalMs"], 100);
    assert!(result.get("_meta").is_none() && result.get("extra").is_none());
    let found = tasks.find(&who("alice"), &id).map(|task| task.server_task);
    assert_eq!(found.as_deref(), Some("1"));
    assert!(tasks.find(&who("bob"), &id).is_none());
    assert!(tasks.find(&who("alice"), "1").is_none());
    // The same name in other groups (a token after a change at the
    // identity provider) is not the identity that created it.
    let moved = ClientIdentity::new("alice", &["payroll".to_owned()]);
    assert!(tasks.find(&moved, &id).is_none());
    tasks.forget(&moved, &id);
    // A task kept for ever by its server is kept a day by the proxy.
    let forever = tasks
        .create(created("alice", 0), &task_reply("2", Value::Null))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forever["result"]["ttlMs"], 86_400_000);
    tasks.forget(&who("bob"), &id);
    assert!(tasks.find(&who("alice"), &id).is_some());
    tasks.forget(&who("alice"), &id);
    assert!(tasks.find(&who("alice"), &id).is_none());
}

#[test]
fn a_client_runs_a_bounded_number_of_tasks_per_server_and_finished_ones_make_room() {
    let tasks = Tasks::default();
    let mut ids = Vec::new();
    for n in 0..MAX_TASKS_PER_CLIENT {
        let made = tasks.create(
            created("alice", 0),
            &task_reply(&n.to_string(), json!(60000)),
        );
        ids.push(id_of(&made.unwrap_or_else(|e| panic!("{e}"))));
    }
    let over = tasks.create(created("alice", 0), &task_reply("x", json!(60000)));
    assert!(matches!(over, Err(Failure::TooManyTasks)));
    // Another server's, another client's: their own count.
    assert!(
        tasks
            .create(created("alice", 1), &task_reply("x", json!(60000)))
            .is_ok()
    );
    assert!(
        tasks
            .create(created("bob", 0), &task_reply("x", json!(60000)))
            .is_ok()
    );
    // One finished, one given up: room for two more.
    let done = tasks.polled(&who("alice"), &ids[0], "completed", std::iter::empty());
    assert!(done.is_ok_and(|left| left <= Duration::from_secs(600)));
    tasks.cancel_asked(&who("alice"), &ids[1]);
    for n in 0..2 {
        let made = tasks.create(
            created("alice", 0),
            &task_reply(&format!("y{n}"), json!(60000)),
        );
        assert!(made.is_ok());
    }
    assert!(
        tasks
            .create(created("alice", 0), &task_reply("z", json!(60000)))
            .is_err()
    );
    // An expired task no longer counts, and is gone at the next creation.
    let before = tasks.len();
    assert!(
        tasks
            .create(created("carol", 0), &task_reply("c", json!(0)))
            .is_ok()
    );
    assert!(
        tasks
            .create(created("dave", 0), &task_reply("d", json!(60000)))
            .is_ok()
    );
    assert_eq!(tasks.len(), before + 1);
}

#[test]
fn an_id_its_server_gives_again_names_the_new_task_alone() {
    let tasks = Tasks::default();
    let first = tasks.create(created("alice", 0), &task_reply("1", json!(60000)));
    let first = id_of(&first.unwrap_or_else(|e| panic!("{e}")));
    // The server (shared by every client) gives "1" again, to Bob: Alice's
    // old id no longer reaches it.
    let second = tasks.create(created("bob", 0), &task_reply("1", json!(60000)));
    let second = id_of(&second.unwrap_or_else(|e| panic!("{e}")));
    assert!(tasks.find(&who("alice"), &first).is_none());
    assert!(tasks.find(&who("bob"), &second).is_some());
    // One instance per client: each client's "1" is its own.
    let per_client = |client: &str| Created {
        shared: false,
        ..created(client, 1)
    };
    let a = tasks.create(per_client("alice"), &task_reply("1", json!(60000)));
    let b = tasks.create(per_client("bob"), &task_reply("1", json!(60000)));
    let (a, b) = (
        id_of(&a.unwrap_or_else(|e| panic!("{e}"))),
        id_of(&b.unwrap_or_else(|e| panic!("{e}"))),
    );
    assert!(tasks.find(&who("alice"), &a).is_some() && tasks.find(&who("bob"), &b).is_some());
    assert_eq!(tasks.running_servers().len(), 2);
}

#[test]
fn malformed_tasks_and_a_finished_task_starting_again_are_refused() {
    let tasks = Tasks::default();
    for bad_result in [
        json!({ "resultType": "task", "status": "working", "ttlMs": 1 }),
        json!({ "resultType": "task", "taskId": "", "status": "working", "ttlMs": 1 }),
        json!({ "resultType": "task", "taskId": "a", "status": "sleeping", "ttlMs": 1 }),
        json!({ "resultType": "task", "taskId": "a", "status": "working" }),
        json!({ "resultType": "task", "taskId": "a", "status": "working", "ttlMs": "1" }),
        json!({ "resultType": "task", "taskId": "a", "status": "completed", "ttlMs": 1 }),
        json!({ "resultType": "task", "taskId": "a", "status": "working", "ttlMs": 1,
            "statusMessage": 7 }),
    ] {
        let reply = json!({ "jsonrpc": "2.0", "id": 1, "result": bad_result });
        let refused = tasks
            .create(created("dave", 0), &reply)
            .err()
            .map(|f| f.code());
        assert_eq!(refused, Some(protocol::code::INTERNAL_ERROR), "{reply}");
    }
    let made = tasks.create(created("dave", 0), &task_reply("a", json!(60000)));
    let id = id_of(&made.unwrap_or_else(|e| panic!("{e}")));
    assert!(
        tasks
            .polled(&who("dave"), &id, "failed", std::iter::empty())
            .is_ok()
    );
    assert!(
        tasks
            .polled(&who("dave"), &id, "failed", std::iter::empty())
            .is_ok()
    );
    assert!(
        tasks
            .polled(&who("dave"), &id, "working", std::iter::empty())
            .is_err()
    );
    assert!(
        tasks
            .polled(&who("eve"), &id, "failed", std::iter::empty())
            .is_err()
    );
}

#[test]
fn only_the_questions_of_the_last_poll_not_yet_answered_may_be_answered() {
    let tasks = Tasks::default();
    let made = tasks.create(created("alice", 0), &task_reply("a", json!(60000)));
    let id = id_of(&made.unwrap_or_else(|e| panic!("{e}")));
    let answers = |keys: &[&str]| {
        keys.iter()
            .map(|key| ((*key).to_owned(), json!({})))
            .collect::<serde_json::Map<_, _>>()
    };
    let answerable = |keys: &[&str]| {
        let task = tasks
            .find(&who("alice"), &id)
            .unwrap_or_else(|| panic!("the task"));
        Tasks::answerable(&task, &answers(keys))
    };
    assert!(!answerable(&["q"]));
    let asked = ["q".to_owned(), "r".to_owned()];
    assert!(
        tasks
            .polled(&who("alice"), &id, "input_required", asked.into_iter())
            .is_ok()
    );
    assert!(answerable(&["q", "r"]) && !answerable(&["s"]));
    tasks.answered(&who("alice"), &id, ["q".to_owned()].iter());
    assert!(!answerable(&["q"]) && answerable(&["r"]));
    assert!(
        tasks
            .polled(&who("alice"), &id, "working", std::iter::empty())
            .is_ok()
    );
    assert!(!answerable(&["r"]));
}

#[test]
fn a_polled_task_carries_the_payload_of_its_status_alone() {
    let get = |result: Value| json!({ "jsonrpc": "2.0", "id": 2, "result": result });
    let polled = framed_get(
        &get(
            json!({ "resultType": "complete", "taskId": "s1", "status": "completed",
            "ttlMs": 5, "result": { "content": [], "resultType": "input_required",
                "inputRequests": { "a": {} }, "_meta": { "io.modelcontextprotocol/x": 1, "y": 2 } },
            "error": { "code": 1 }, "inputRequests": { "a": {} } }),
        ),
        "p1",
    );
    let Ok(Some((done, status, asked))) = polled else {
        panic!("a completed task");
    };
    assert_eq!((status, asked), ("completed", None));
    assert_eq!(done["result"]["taskId"], "p1");
    assert_eq!(
        done["result"]["result"],
        json!({ "content": [], "_meta": { "y": 2 } })
    );
    assert!(done["result"].get("error").is_none());
    assert!(done["result"].get("inputRequests").is_none());
    let polled = framed_get(
        &get(json!({ "taskId": "s1", "status": "failed", "ttlMs": 5,
            "error": { "code": -32000, "message": "m", "x": 1 } })),
        "p1",
    );
    let Ok(Some((failed, _, _))) = polled else {
        panic!("a failed task");
    };
    assert_eq!(
        failed["result"]["error"],
        json!({ "code": -32000, "message": "m" })
    );
    let polled = framed_get(
        &get(
            json!({ "taskId": "s1", "status": "input_required", "ttlMs": 5,
            "inputRequests": { "a": { "method": "roots/list" } } }),
        ),
        "p1",
    );
    let Ok(Some((_, _, asked))) = polled else {
        panic!("a task asking");
    };
    assert_eq!(asked.map(|a| a.len()), Some(1));
    for bad_result in [
        json!({ "taskId": "s1", "status": "completed", "ttlMs": 5 }),
        json!({ "taskId": "s1", "status": "failed", "ttlMs": 5, "error": "x" }),
        json!({ "taskId": "s1", "status": "failed", "ttlMs": 5, "error": { "code": "1" } }),
        json!({ "taskId": "s1", "status": "input_required", "ttlMs": 5,
            "inputRequests": {} }),
        json!({ "taskId": "s1", "status": "input_required", "ttlMs": 5,
            "inputRequests": { "": { "method": "roots/list" } } }),
    ] {
        assert!(
            framed_get(&get(bad_result.clone()), "p1").is_err(),
            "{bad_result}"
        );
    }
    let error = json!({ "jsonrpc": "2.0", "id": 2, "error": { "code": -32602, "message": "x" } });
    assert!(matches!(framed_get(&error, "p1"), Ok(None)));
    assert_eq!(
        acknowledgement(&json!({ "jsonrpc": "2.0", "id": 3, "result": { "x": 1 } })),
        json!({ "jsonrpc": "2.0", "id": 3, "result": {} })
    );
}

#[test]
fn the_extension_is_declared_only_as_an_object() {
    assert!(declared(&json!({ "extensions": { EXTENSION: {} } })));
    assert!(!declared(&json!({ "extensions": { EXTENSION: true } })));
    assert!(!declared(&json!({ "extensions": {} })));
    assert!(!declared(&json!({})));
}
