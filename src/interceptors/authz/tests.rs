//! Decisions, slicing and reloads of the policy store, on the repository's
//! schema.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::request::{Action, Query, Target, ToolAnnotations};
use super::store::{PolicyError, PolicyStore, Sources};
use super::{PolicyEngine, Reload};

fn schema_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema");
    std::fs::read_to_string(path).unwrap_or_default()
}

fn sources(policies: &[&str]) -> Sources {
    Sources {
        schema: (PathBuf::from("schema.cedarschema"), schema_text()),
        policies: policies
            .iter()
            .enumerate()
            .map(|(i, text)| (PathBuf::from(format!("p{i}.cedar")), (*text).to_owned()))
            .collect(),
    }
}

fn store(policies: &[&str]) -> PolicyStore {
    match PolicyStore::from_sources(&sources(policies)) {
        Ok(store) => store,
        Err(err) => panic!("policies do not load: {err}"),
    }
}

fn tool(name: &str, read_only: bool) -> Target {
    let server = name.split_once("__").map_or("", |(s, _)| s).to_owned();
    Target::Tool {
        name: name.to_owned(),
        server,
        annotations: ToolAnnotations {
            read_only,
            ..ToolAnnotations::default()
        },
    }
}

fn query<'a>(
    client: &'a str,
    groups: &'a [Arc<str>],
    action: Action,
    target: &'a Target,
    arguments: Option<&'a Map<String, Value>>,
) -> Query<'a> {
    Query {
        client,
        groups,
        attributes: None,
        action,
        target,
        arguments,
        transport: "http",
        session: "s1",
        time: SystemTime::now(),
    }
}

#[test]
fn default_deny_forbid_wins_and_ids_name_the_deciders() {
    let store = store(&[
        r#"@id("devs") permit(principal in Group::"devs", action == Action::"call_tool", resource in Server::"example");"#,
        r#"@id("no-crash") forbid(principal, action, resource == Tool::"example__crash");"#,
    ]);
    let devs: Vec<Arc<str>> = vec!["devs".into()];
    let echo = tool("example__echo", true);
    let crash = tool("example__crash", false);

    let allowed = store.decide(&query("d", &devs, Action::CallTool, &echo, None));
    assert!(allowed.allowed);
    assert_eq!(allowed.policies, ["devs"]);

    let forbidden = store.decide(&query("d", &devs, Action::CallTool, &crash, None));
    assert!(!forbidden.allowed);
    assert_eq!(forbidden.policies, ["no-crash"]);

    let nobody = store.decide(&query("x", &[], Action::CallTool, &echo, None));
    assert!(!nobody.allowed);
    assert!(nobody.policies.is_empty(), "default deny names no policy");
    assert_eq!(nobody.policy_set, store.id);
}

#[test]
fn an_evaluation_error_denies_even_when_a_permit_allows() {
    let store = store(&[
        r#"@id("all") permit(principal, action, resource);"#,
        r#"@id("overflow") forbid(principal, action, resource)
           when { context.arguments has count && context.arguments.count + 9223372036854775807 > 0 };"#,
    ]);
    let target = tool("example__add", false);
    let arguments = json!({"count": 5}).as_object().cloned();
    let decision = store.decide(&query(
        "c",
        &[],
        Action::CallTool,
        &target,
        arguments.as_ref(),
    ));
    assert!(!decision.allowed);
    assert_eq!(decision.policies, ["overflow"]);
    assert_eq!(decision.errors.len(), 1, "{:?}", decision.errors);
    // Without the argument the forbid's guard is false: allowed.
    let decision = store.decide(&query("c", &[], Action::CallTool, &target, None));
    assert!(decision.allowed);
}

#[test]
fn arguments_rules_see_declared_arguments_of_the_declared_type() {
    let store = store(&[
        r#"@id("workspace") permit(principal, action == Action::"call_tool", resource)
           when { context.arguments has path && context.arguments.path like "/workspace/*" };"#,
    ]);
    let target = tool("fs__read_file", true);
    let decide = |arguments: Value| {
        let arguments = arguments.as_object().cloned();
        store.decide(&query(
            "c",
            &[],
            Action::CallTool,
            &target,
            arguments.as_ref(),
        ))
    };
    assert!(decide(json!({"path": "/workspace/a.txt"})).allowed);
    assert!(!decide(json!({"path": "/etc/passwd"})).allowed);
    let wrong_type = decide(json!({"path": ["/workspace/a"], "secret": "x"}));
    assert!(!wrong_type.allowed);
    assert_eq!(wrong_type.dropped_arguments, ["path", "secret"]);
}

#[test]
fn policies_without_an_id_are_named_by_file_and_line_and_duplicates_are_refused() {
    let store = store(&["// a comment\n\npermit(principal, action, resource);\n"]);
    let target = tool("a__b", true);
    assert_eq!(
        store
            .decide(&query("c", &[], Action::CallTool, &target, None))
            .policies,
        ["p0.cedar:3"]
    );
    let twice = PolicyStore::from_sources(&sources(&[
        "@id(\"x\") permit(principal, action, resource);",
        "\n@id(\"x\") forbid(principal, action, resource);",
    ]));
    let Err(PolicyError::Invalid(diagnostics)) = twice else {
        panic!("a duplicate id must be refused");
    };
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(
        (diagnostics[0].file.as_path(), diagnostics[0].line),
        (Path::new("p1.cedar"), 2)
    );
    assert!(
        diagnostics[0].message.contains("used twice"),
        "{}",
        diagnostics[0]
    );
}

#[test]
fn errors_carry_file_line_and_column() {
    let cases: [(&str, &str, (usize, usize)); 3] = [
        (
            "permit(principal, action, resource)\n  when { 1 + };",
            "unexpected token",
            (2, 14),
        ),
        (
            "@id(\"t\")\npermit(principal, action, resource)\n  when { resource.nope };",
            "attribute `nope`",
            (3, 10),
        ),
        (
            "permit(principal in Grop::\"x\", action, resource);",
            "unrecognized entity type `Grop`",
            (1, 21),
        ),
    ];
    for (text, message, location) in cases {
        let Err(PolicyError::Invalid(diagnostics)) = PolicyStore::from_sources(&sources(&[text]))
        else {
            panic!("`{text}` must be refused");
        };
        let first = &diagnostics[0];
        assert!(first.message.contains(message), "{first}");
        assert_eq!((first.line, first.column), location, "{first}");
        assert_eq!(first.file, PathBuf::from("p0.cedar"));
    }
}

#[test]
fn client_attributes_from_the_config_reach_policies_and_must_fit_the_schema() {
    let store = store(&[r#"@id("data-team") permit(principal, action, resource)
           when { principal has team && principal.team == "data" };"#]);
    let target = tool("example__echo", true);
    let data = json!({"team": "data"}).as_object().cloned();
    let mut q = query("alice", &[], Action::CallTool, &target, None);
    q.attributes = data.as_ref();
    assert!(store.decide(&q).allowed);
    let ops = json!({"team": "ops"}).as_object().cloned();
    q.attributes = ops.as_ref();
    assert!(
        !store.decide(&q).allowed,
        "a different attribute, a different decision"
    );

    let client = |attributes: Value| crate::config::ClientConfig {
        name: "alice".into(),
        token_sha256: None,
        cert_sha256: None,
        groups: vec!["analysts".into()],
        attributes: attributes.as_object().cloned().unwrap_or_default(),
    };
    assert!(
        store
            .check_clients(&[client(json!({"team": "data"}))])
            .is_ok()
    );
    for bad in [json!({"team": 3}), json!({"clearance": 3})] {
        let err = store.check_clients(&[client(bad.clone())]);
        let Err(PolicyError::Clients { client, message }) = err else {
            panic!("{bad} must not fit the schema");
        };
        assert_eq!(client, "alice");
        assert!(!message.is_empty());
    }
}

#[test]
fn context_read_through_a_string_is_always_built() {
    // `ti\u{6d}e` spells `time` without the text showing it.
    let store = store(&[
        r#"@id("all") permit(principal, action, resource);"#,
        r#"@id("escaped") forbid(principal, action, resource) when { context has "ti\u{6d}e" };"#,
    ]);
    let target = tool("example__echo", true);
    let decision = store.decide(&query("c", &[], Action::CallTool, &target, None));
    assert!(!decision.allowed);
    assert_eq!(decision.policies, ["escaped"]);
}

#[test]
fn a_schema_that_renames_or_namespaces_the_model_is_refused() {
    let schema = schema_text();
    let cases = [
        (
            schema
                .replace("entity Server {", "entity McpServer {")
                .replace("[Server]", "[McpServer]")
                .replace("resource: Server", "resource: McpServer"),
            "`Server`",
        ),
        (
            format!("namespace Portcullis {{\n{schema}\n}}"),
            "namespace",
        ),
        (
            schema.replace(
                "action call_tool, list_tools\n  appliesTo { principal: Client, resource: Tool,",
                "action call_tool, list_tools\n  appliesTo { principal: Client, resource: Server,",
            ),
            "`call_tool`",
        ),
    ];
    for (text, expected) in cases {
        let sources = Sources {
            schema: (PathBuf::from("schema.cedarschema"), text),
            policies: vec![],
        };
        let Err(PolicyError::Invalid(diagnostics)) = PolicyStore::from_sources(&sources) else {
            panic!("a schema without the model ({expected}) must be refused");
        };
        assert!(
            diagnostics[0].message.contains(expected),
            "{}",
            diagnostics[0]
        );
    }
}

#[test]
fn symlinked_folders_are_read() {
    let dir = folder(ALLOW_ECHO);
    let shared = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(
        shared.path(),
        "guard.cedar",
        r#"@id("guard") forbid(principal, action, resource == Tool::"example__add");"#,
    );
    let linked = std::os::unix::fs::symlink(shared.path(), dir.path().join("shared"));
    assert!(linked.is_ok());
    let store = PolicyStore::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.policy_count(), 2);
}

// -- slicing ------------------------------------------------------------------

const SERVERS: [&str; 3] = ["s0", "s1", "s2"];

/// A policy valid under the schema, from a few numbers: (effect, principal,
/// resource kind, resource pick, action pick, condition).
fn policy_text(index: usize, spec: (u8, u8, u8, u8, u8, u8)) -> String {
    let (effect, principal, kind, pick, actions, condition) = spec;
    let effect = if effect % 3 == 0 { "forbid" } else { "permit" };
    let n = usize::from(pick) % 3;
    let principal = match principal % 5 {
        0 => "principal".to_owned(),
        1 => format!("principal == Client::\"c{}\"", pick % 4),
        2 => format!("principal in Group::\"g{}\"", pick % 4),
        3 => "principal is Client".to_owned(),
        _ => format!("principal is Client in Group::\"g{}\"", (pick / 2) % 4),
    };
    let (resource, allowed): (String, &[&str]) = match kind % 7 {
        0 => ("resource".into(), &[]),
        1 => (
            format!("resource == Tool::\"{}__t{}\"", SERVERS[n], pick % 2),
            &["call_tool", "list_tools"],
        ),
        2 => (format!("resource in Server::\"{}\"", SERVERS[n]), &[]),
        3 => (
            format!("resource is Tool in Server::\"{}\"", SERVERS[n]),
            &["call_tool", "list_tools"],
        ),
        4 => (
            format!("resource == Resource::\"u{}\"", pick % 3),
            &[
                "read_resource",
                "list_resources",
                "subscribe_resource",
                "complete",
            ],
        ),
        5 => (
            format!("resource == Prompt::\"{}__p{}\"", SERVERS[n], pick % 2),
            &["get_prompt", "list_prompts", "complete"],
        ),
        _ => (
            format!("resource == Server::\"{}\"", SERVERS[n]),
            &["sampling", "elicitation", "roots"],
        ),
    };
    let every: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
    let choices: &[&str] = if allowed.is_empty() { &every } else { allowed };
    let action = match actions % 3 {
        0 if allowed.is_empty() => "action".to_owned(),
        0 | 1 => format!(
            "action == Action::\"{}\"",
            choices[usize::from(actions) % choices.len()]
        ),
        _ => {
            let picked: Vec<String> = choices
                .iter()
                .enumerate()
                .filter(|(i, _)| (usize::from(actions) >> i) & 1 == 1 || *i == 0)
                .map(|(_, a)| format!("Action::\"{a}\""))
                .collect();
            format!("action in [{}]", picked.join(", "))
        }
    };
    let tool_typed = matches!(kind % 7, 1 | 3);
    let condition = match condition % 7 {
        0 => "",
        1 => " when { context.transport == \"http\" }",
        2 => " when { context.arguments has path && context.arguments.path like \"/w*\" }",
        3 => " unless { principal.name == \"c1\" }",
        4 => " when { context.time > datetime(\"2020-01-01T00:00:00Z\") }",
        5 if tool_typed => " when { resource.read_only && !resource.destructive }",
        _ => " when { principal in Group::\"g0\" }",
    };
    format!("@id(\"p{index}\")\n{effect}({principal}, {action}, {resource}){condition};\n")
}

/// (client, groups, action, target, arguments).
type Parts = (
    String,
    Vec<Arc<str>>,
    Action,
    Target,
    Option<Map<String, Value>>,
);

/// A request from a few numbers: (client, groups bitmask, action, target
/// pick, argument).
fn request_parts(spec: (u8, u8, u8, u8, u8)) -> Parts {
    let (client, groups, action, pick, argument) = spec;
    let client = format!("c{}", client % 5);
    let groups: Vec<Arc<str>> = (0..4)
        .filter(|g| (groups >> g) & 1 == 1)
        .map(|g| Arc::from(format!("g{g}").as_str()))
        .collect();
    let action = Action::ALL[usize::from(action) % Action::ALL.len()];
    let server = SERVERS[usize::from(pick) % 3].to_owned();
    let target = match action {
        Action::CallTool | Action::ListTools => Target::Tool {
            name: format!("{server}__t{}", pick % 2),
            server,
            annotations: ToolAnnotations {
                read_only: pick & 0x10 != 0,
                destructive: pick & 0x20 != 0,
                ..ToolAnnotations::default()
            },
        },
        Action::GetPrompt | Action::ListPrompts => Target::Prompt {
            name: format!("{server}__p{}", pick % 2),
            server,
        },
        Action::Complete if pick % 2 == 0 => Target::Prompt {
            name: format!("{server}__p{}", pick % 3),
            server,
        },
        Action::Sampling | Action::Elicitation | Action::Roots => Target::Server { name: server },
        _ => Target::Resource {
            uri: format!("u{}", pick % 3),
            server,
        },
    };
    let arguments = match argument % 3 {
        0 => None,
        1 => json!({"path": "/w/file"}).as_object().cloned(),
        _ => json!({"path": "/etc/passwd"}).as_object().cloned(),
    };
    (client, groups, action, target, arguments)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The slice decides exactly as the whole set: same decision, same
    /// deciding policies, same errors.
    #[test]
    fn sliced_decisions_equal_full_decisions(
        policies in prop::collection::vec(any::<(u8, u8, u8, u8, u8, u8)>(), 1..40),
        requests in prop::collection::vec((any::<(u8, u8, u8, u8, u8)>(), any::<bool>()), 1..20),
    ) {
        let texts: Vec<String> = policies
            .iter()
            .enumerate()
            .map(|(i, spec)| policy_text(i, *spec))
            .collect();
        let joined = texts.join("\n");
        let store = match PolicyStore::from_sources(&sources(&[joined.as_str()])) {
            Ok(store) => store,
            Err(err) => return Err(TestCaseError::fail(format!("generated policies must validate: {err}\n{joined}"))),
        };
        for (spec, http) in requests {
            let (client, groups, action, target, arguments) = request_parts(spec);
            let mut q = query(&client, &groups, action, &target, arguments.as_ref());
            q.transport = if http { "http" } else { "stdio" };
            let sliced = store.decide(&q);
            let full = store.decide_unsliced(&q);
            prop_assert_eq!(&sliced, &full, "request {:?}\npolicies:\n{}", q, joined);
            // Asked twice (the second time from the cache): the same.
            prop_assert_eq!(&store.decide(&q), &full);
        }
    }
}

// -- reloads ------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) {
    let temporary = dir.join(format!(".{name}.tmp"));
    let written =
        std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, dir.join(name)));
    assert!(written.is_ok(), "cannot write {name}: {written:?}");
}

fn folder(policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    write(dir.path(), "schema.cedarschema", &schema_text());
    write(dir.path(), "main.cedar", policy);
    dir
}

const ALLOW_ECHO: &str = r#"@id("allow-echo") permit(principal, action == Action::"call_tool", resource == Tool::"example__echo");"#;
const ALLOW_ADD: &str = r#"@id("allow-add") permit(principal, action == Action::"call_tool", resource == Tool::"example__add");"#;

fn engine(dir: &Path) -> PolicyEngine {
    PolicyEngine::load(dir, &[]).unwrap_or_else(|err| panic!("{err}"))
}

fn allowed(engine: &PolicyEngine, name: &str) -> bool {
    let target = tool(name, false);
    engine
        .current()
        .decide(&query("c", &[], Action::CallTool, &target, None))
        .allowed
}

#[test]
fn a_valid_change_applies_and_a_broken_one_keeps_the_last_good_set() {
    let dir = folder(ALLOW_ECHO);
    let engine = engine(dir.path());
    assert!(allowed(&engine, "example__echo") && !allowed(&engine, "example__add"));
    assert_eq!(engine.reload().ok(), Some(Reload::Unchanged));

    write(dir.path(), "main.cedar", ALLOW_ADD);
    let first = engine.current().id.clone();
    let Ok(Reload::Applied(id)) = engine.reload() else {
        panic!("a valid change must apply");
    };
    assert_ne!(id, first);
    assert!(!allowed(&engine, "example__echo") && allowed(&engine, "example__add"));

    // A syntax error, then a schema error, then a missing schema: each is
    // rejected and the last good set stays in force.
    for (file, text) in [
        ("main.cedar", "permit(principal, action, resource"),
        (
            "main.cedar",
            "permit(principal, action, resource) when { resource.nope };",
        ),
        (
            "extra.cedar",
            "permit(principal == Nobody::\"x\", action, resource);",
        ),
    ] {
        write(dir.path(), file, text);
        assert!(
            matches!(engine.reload(), Err(PolicyError::Invalid(_))),
            "{text}"
        );
        assert_eq!(engine.current().id, id);
        assert!(allowed(&engine, "example__add") && !allowed(&engine, "example__echo"));
        let _ = std::fs::remove_file(dir.path().join("extra.cedar"));
        write(dir.path(), "main.cedar", ALLOW_ADD);
    }
    // Emptying the folder is refused too: a reload never drops to deny-all.
    let _ = std::fs::remove_file(dir.path().join("main.cedar"));
    assert!(matches!(engine.reload(), Err(PolicyError::Invalid(_))));
    assert!(allowed(&engine, "example__add"));
    let _ = std::fs::remove_file(dir.path().join("schema.cedarschema"));
    write(dir.path(), "main.cedar", ALLOW_ECHO);
    assert!(engine.reload().is_err());
    assert!(
        allowed(&engine, "example__add"),
        "never deny-all by accident"
    );
}

#[test]
fn concurrent_decisions_during_reloads_each_come_from_one_set() {
    // Set A allows echo by `a-echo` and forbids add by `a-add`; set B the
    // reverse with its own ids. A decision mixing the two would name a
    // policy of one set under the other's id, or allow both or neither.
    let set_a = r#"@id("a-echo") permit(principal, action, resource == Tool::"example__echo");
                   @id("a-add") forbid(principal, action, resource == Tool::"example__add");
                   @id("a-all") permit(principal, action, resource == Tool::"example__add");"#;
    let set_b = r#"@id("b-add") permit(principal, action, resource == Tool::"example__add");
                   @id("b-echo") forbid(principal, action, resource == Tool::"example__echo");
                   @id("b-all") permit(principal, action, resource == Tool::"example__echo");"#;
    let dir = folder(set_a);
    let engine = Arc::new(engine(dir.path()));
    let id_a = engine.current().id.clone();
    write(dir.path(), "main.cedar", set_b);
    let _ = engine.reload();
    let id_b = engine.current().id.clone();
    assert_ne!(id_a, id_b);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deciders: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            let stop = stop.clone();
            let (id_a, id_b) = (id_a.clone(), id_b.clone());
            std::thread::spawn(move || {
                let echo = tool("example__echo", false);
                let add = tool("example__add", false);
                let mut decisions = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let store = engine.current();
                    let e = store.decide(&query("c", &[], Action::CallTool, &echo, None));
                    let a = store.decide(&query("c", &[], Action::CallTool, &add, None));
                    let consistent = if e.policy_set == id_a {
                        e.allowed
                            && e.policies == ["a-echo"]
                            && !a.allowed
                            && a.policies == ["a-add"]
                    } else {
                        e.policy_set == id_b
                            && !e.allowed
                            && e.policies == ["b-echo"]
                            && a.allowed
                            && (a.policies == ["b-add"])
                    };
                    assert!(consistent, "mixed decision: {e:?} {a:?}");
                    assert_eq!(e.policy_set, a.policy_set);
                    decisions += 1;
                }
                decisions
            })
        })
        .collect();
    for round in 0..40 {
        write(
            dir.path(),
            "main.cedar",
            if round % 2 == 0 { set_a } else { set_b },
        );
        assert!(engine.reload().is_ok());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: usize = deciders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    assert!(total > 0, "the deciders ran");
}

#[test]
fn a_refused_reload_is_shown_until_the_folder_loads_again() {
    let dir = folder(ALLOW_ECHO);
    let engine = engine(dir.path());
    let in_force = engine.current().id.clone();
    let poll = |engine: &PolicyEngine| engine.report(engine.reload(), engine.current().id.clone());
    poll(&engine);
    assert_eq!(engine.rejection(), None);

    write(
        dir.path(),
        "broken.cedar",
        "permit(principal,\n  action, resource",
    );
    poll(&engine);
    let Some(first) = engine.rejection() else {
        panic!("a broken file is a rejection");
    };
    assert!(
        first.message.contains("broken.cedar:2:"),
        "{}",
        first.message
    );
    assert_eq!(engine.current().id, in_force, "the last good set stays");
    // Polled again, the same rejection keeps the time it was first met.
    poll(&engine);
    assert_eq!(engine.rejection(), Some(first));

    // Taken out: the folder is the set in force again.
    let _ = std::fs::remove_file(dir.path().join("broken.cedar"));
    poll(&engine);
    assert_eq!(engine.rejection(), None);
    // Broken, then fixed by a valid change.
    write(dir.path(), "main.cedar", "permit(");
    poll(&engine);
    assert!(engine.rejection().is_some());
    write(dir.path(), "main.cedar", ALLOW_ADD);
    poll(&engine);
    assert_eq!(engine.rejection(), None);
    assert_ne!(engine.current().id, in_force);
}

#[test]
fn a_set_lists_its_policies_as_written_in_file_order() {
    let store = store(&[
        "// the echo tool\n@id(\"echo\")\npermit(principal, action, resource == Tool::\"example__echo\");",
        "@id(\"no-add\") forbid(principal, action, resource == Tool::\"example__add\");\n\npermit(principal, action == Action::\"list_tools\", resource);",
    ]);
    let listed: Vec<(&str, &str, String, usize)> = store
        .policies()
        .iter()
        .map(|p| {
            (
                p.id,
                p.origin.effect,
                p.origin.file.display().to_string(),
                p.origin.line,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("echo", "permit", "p0.cedar".into(), 2),
            ("no-add", "forbid", "p1.cedar".into(), 1),
            ("p1.cedar:3", "permit", "p1.cedar".into(), 3),
        ]
    );
    let texts: Vec<String> = store.policies().into_iter().map(|p| p.text).collect();
    assert_eq!(
        texts[0],
        "@id(\"echo\")\npermit(principal, action, resource == Tool::\"example__echo\");"
    );
    assert!(
        texts[1].starts_with("@id(\"no-add\") forbid("),
        "{}",
        texts[1]
    );
    assert!(store.loaded_at <= SystemTime::now());
}

// -- who may use a server -----------------------------------------------------

/// Tools listed by servers, namespaced `server__tool`.
#[derive(Debug)]
struct Tools(Vec<Value>);

impl crate::chain::Directory for Tools {
    fn tool_server(&self, namespaced: &str) -> Option<&str> {
        let server = namespaced.split_once("__").map(|(server, _)| server)?;
        ["a", "b", "c"].into_iter().find(|known| *known == server)
    }
    fn prompt_server(&self, _: &str) -> Option<&str> {
        None
    }
    fn resource_server(&self, _: &str) -> Option<&str> {
        None
    }
    fn template_server(&self, _: &str) -> Option<&str> {
        None
    }
    fn tool_definition(&self, _: &str) -> Option<crate::chain::Definition> {
        None
    }
    fn prompt_definition(&self, _: &str) -> Option<crate::chain::Definition> {
        None
    }
    fn offered(&self) -> crate::chain::Offered<'_> {
        crate::chain::Offered {
            tools: &self.0,
            ..Default::default()
        }
    }
}

fn tools_of(names: &[&str]) -> Arc<dyn crate::chain::Directory> {
    Arc::new(Tools(
        names.iter().map(|name| json!({ "name": name })).collect(),
    ))
}

const ALICE_LISTS_A: &str = r#"@id("alice-lists-a") permit(principal == Client::"alice", action == Action::"list_tools", resource in Server::"a");"#;
const BOB_LISTS_B: &str = r#"@id("bob-lists-b") permit(principal == Client::"bob", action == Action::"list_tools", resource in Server::"b");"#;

#[test]
fn a_client_may_use_a_server_whose_lists_it_sees_and_reloads_or_new_catalogs_decide_again() {
    use super::ServerAccess;
    use crate::chain::{ClientIdentity, Transport};
    let dir = folder(ALICE_LISTS_A);
    let engine = Arc::new(engine(dir.path()));
    let access = ServerAccess::new(engine.clone());
    let alice = ClientIdentity::new("alice", &[]);
    let bob = ClientIdentity::new("bob", &[]);
    let catalog = tools_of(&["a__read", "b__write"]);
    let may = |who: &ClientIdentity, server: &str, catalog: &Arc<dyn crate::chain::Directory>| {
        access.may_use(who, Transport::Http, server, catalog)
    };
    assert!(may(&alice, "a", &catalog));
    assert!(!may(&alice, "b", &catalog));
    assert!(!may(&bob, "a", &catalog));
    assert!(!may(&bob, "b", &catalog));
    // A server that lists nothing is used by nobody.
    assert!(!may(&alice, "c", &catalog));
    assert_eq!(access.cached(), 5);
    assert!(may(&alice, "a", &catalog));
    assert_eq!(access.cached(), 5, "answered from the cache");

    // A reload decides again.
    write(
        dir.path(),
        "main.cedar",
        &format!("{ALICE_LISTS_A}\n{BOB_LISTS_B}"),
    );
    assert!(matches!(engine.reload(), Ok(Reload::Applied(_))));
    assert!(may(&bob, "b", &catalog));
    assert_eq!(access.cached(), 1, "the old set's decisions are gone");

    // So does a new catalog (by identity, not by content): `b` no longer
    // lists anything.
    let without_b = tools_of(&["a__read"]);
    assert!(!may(&bob, "b", &without_b));
    assert_eq!(access.cached(), 1);
    let same_content = tools_of(&["a__read"]);
    assert!(may(&alice, "a", &same_content));
    assert_eq!(access.cached(), 1, "a new catalog starts afresh");

    // Without authz every client may use every server.
    let everyone = ServerAccess::everyone();
    assert!(everyone.may_use(&bob, Transport::Stdio, "a", &catalog));
}

#[test]
fn a_notification_no_call_owns_reaches_only_a_client_that_may_use_its_server() {
    use crate::chain::{
        ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport, Verdict,
    };
    let dir = folder(ALICE_LISTS_A);
    let authz = super::Authz::new(Arc::new(engine(dir.path())), "__");
    let catalog = tools_of(&["a__read"]);
    let notification = |client: &str, server: Option<&str>, call: Option<Value>| {
        let mut context = Context::new(
            "s".into(),
            ClientIdentity::new(client, &[]),
            Transport::Http,
            "notifications/message",
        );
        context.server = server.map(Arc::from);
        context.request_id = call;
        context.directory = Some(catalog.clone());
        Exchange::new(
            json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}),
            Direction::ServerToClient,
            Phase::Notification,
            context,
        )
    };
    let verdict = |mut exchange: Exchange| authz.on_notification(&mut exchange);
    assert_eq!(
        verdict(notification("alice", Some("a"), None)),
        Verdict::Continue
    );
    let Verdict::Deny(denial) = verdict(notification("bob", Some("a"), None)) else {
        panic!("bob may not use `a`");
    };
    assert!(denial.reason.contains("`a`"), "{}", denial.reason);
    // Tied to one of bob's calls: the call was decided.
    assert_eq!(
        verdict(notification("bob", Some("a"), Some(json!(7)))),
        Verdict::Continue
    );
    // The proxy's own (no server): not decided here.
    assert_eq!(verdict(notification("bob", None, None)), Verdict::Continue);
}

#[test]
fn a_denial_reason_is_built_from_the_scrubbed_uri() {
    use crate::chain::{
        ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport, Verdict,
    };
    let dir = folder(ALICE_LISTS_A);
    let authz =
        super::Authz::new(Arc::new(engine(dir.path())), "__").scrub_with(Arc::new(|text: &str| {
            text.replace("hunter2", "[REDACTED:test]")
        }));
    let mut context = Context::new(
        "s".into(),
        ClientIdentity::new("bob", &[]),
        Transport::Http,
        "resources/read",
    );
    context.server = Some(Arc::from("a"));
    context.target = Some("file:///secrets/hunter2?key=hunter2".into());
    let mut exchange = Exchange::new(
        json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///secrets/hunter2?key=hunter2"}}),
        Direction::ClientToServer,
        Phase::Request,
        context,
    );
    let Verdict::Deny(denial) = authz.on_request(&mut exchange) else {
        panic!("bob may not read");
    };
    assert!(!denial.reason.contains("hunter2"), "{}", denial.reason);
    assert!(
        denial
            .reason
            .contains("`file:///secrets/[REDACTED:test]?key=[REDACTED:test]`"),
        "{}",
        denial.reason
    );
}
