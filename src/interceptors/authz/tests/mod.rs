//! Decisions, slicing and reloads of the policy store, on the repository's
//! schema: the decisions here, with the helpers every part uses; slicing,
//! reloads and who may use a server each in a file of its own.

mod access;
mod answers;
mod reloads;
mod slicing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::request::{Action, Query, Target, ToolAnnotations};
use super::{PolicyEngine, PolicyError, PolicyStore, Reload, Sources};
use crate::config::{Label, Labels};
use crate::flow::Flow;

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
        labels: Labels::NONE,
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
        protocol: "2025-11-25",
        session: "s1",
        scopes: &[],
        time: SystemTime::now(),
        script: None,
        answer: None,
        flow: None,
    }
}

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

#[test]
fn discovery_actions_are_decided_only_where_the_schema_declares_them() {
    let target = Target::Catalogued {
        name: "time".into(),
        catalog: "team".into(),
        image: "example/time:1".into(),
    };
    let groups: Vec<Arc<str>> = Vec::new();
    // Declared (the repository's schema): the catalog attribute decides.
    let declared = store(&[
        r#"permit(principal, action == Action::"add_server", resource) when { resource has catalog && resource.catalog == "team" };"#,
    ]);
    let decided = declared.decide(&query("c", &groups, Action::AddServer, &target, None));
    assert!(decided.allowed, "{decided:?}");
    let other = Target::Catalogued {
        name: "time".into(),
        catalog: "elsewhere".into(),
        image: "example/time:1".into(),
    };
    assert!(
        !declared
            .decide(&query("c", &groups, Action::AddServer, &other, None))
            .allowed,
        "decided by this catalog, not the first one asked about"
    );
    // A schema that leaves them out loads, and a policy with no action
    // constraint permits neither.
    let text: String = schema_text()
        .split("action find_servers, add_server")
        .next()
        .unwrap_or_default()
        .to_owned();
    let sources = Sources {
        schema: (PathBuf::from("schema.cedarschema"), text),
        policies: vec![(
            PathBuf::from("all.cedar"),
            "permit(principal, action, resource);".into(),
        )],
    };
    let without = PolicyStore::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
    for action in [Action::FindServers, Action::AddServer, Action::SignIn] {
        let decided = without.decide(&query("c", &groups, action, &target, None));
        assert!(!decided.allowed, "{action:?}: {decided:?}");
    }
    assert!(
        without
            .decide(&query(
                "c",
                &groups,
                Action::Sampling,
                &Target::Server {
                    name: "time".into()
                },
                None
            ))
            .allowed
    );
}

#[test]
fn a_refusal_is_one_to_ask_about_only_when_every_deciding_forbid_says_so() {
    let policies = r#"
@id("all") permit (principal, action, resource);
@id("asks") @ask("A page reached the agent.")
forbid (principal, action == Action::"call_tool", resource)
when { context.flow.untrusted };
@id("hard")
forbid (principal, action == Action::"call_tool", resource == Tool::"a__destroy")
when { context.flow.untrusted };
"#;
    let store = store(&[policies]);
    let flow = Flow::of_names([(Label::Untrusted, "web__fetch")]);
    let decide = |name: &str, flow: Option<&Flow>| {
        let target = tool(name, false);
        let mut q = query("c", &[], Action::CallTool, &target, None);
        q.flow = flow;
        store.decide(&q)
    };
    let asked = decide("a__send", Some(&flow));
    assert_eq!(asked.verdict(), "ask");
    assert_eq!(asked.ask.as_deref(), Some("A page reached the agent."));
    assert!(asked.read_flow);
    // A forbid without `@ask` among the deciders: a plain refusal.
    let hard = decide("a__destroy", Some(&flow));
    assert_eq!(hard.verdict(), "deny");
    assert_eq!(hard.policies, ["asks", "hard"]);
    // No flow: allowed, nothing to ask.
    assert_eq!(decide("a__send", None).verdict(), "allow");
    // No permit: the `@ask` forbid decides, but a missing permit is never
    // the person's to override.
    let unpermitted = PolicyStore::from_sources(&sources(&[policies
        .replace(r#"@id("all") permit (principal, action, resource);"#, "")
        .as_str()]))
    .unwrap();
    let target = tool("a__send", false);
    let mut q = query("c", &[], Action::CallTool, &target, None);
    q.flow = Some(&flow);
    let refused = unpermitted.decide(&q);
    assert_eq!(refused.policies, ["asks"]);
    assert_eq!(refused.verdict(), "deny", "{refused:?}");

    // `@ask` on a permit, or empty, is refused at load.
    for bad in [
        r#"@id("p") @ask("why") permit (principal, action, resource);"#,
        r#"@id("f") @ask("  ") forbid (principal, action, resource);"#,
    ] {
        let Err(PolicyError::Invalid(found)) = PolicyStore::from_sources(&sources(&[bad])) else {
            panic!("{bad} must be refused");
        };
        assert!(found[0].message.contains("`@ask`"), "{found:?}");
    }
}
