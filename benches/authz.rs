//! What Cedar authorization costs per call: the interceptor chain on a
//! `tools/call` request without `authz` (the baseline), with 10 policies and
//! with 1,000 policies; the same 1,000 evaluated unsliced (what Cedar alone
//! would do); a decision with the flow (`context.flow` built and read by
//! the example set's flow rules) against one without; and filtering a
//! 100-tool `tools/list` reply.
//!
//! `cargo bench --bench authz` (options after `--`: `--iterations N` per
//! sample, default 200; `--samples N`, default 300).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::chain::{
    Chain, ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport,
};
use portcullis::config::{Label, Labels, LimitsConfig};
use portcullis::flow::Flow;
use portcullis::gateway::{Catalog, ServerLists};
use portcullis::interceptors::authz::{Action, Query, Target, ToolAnnotations};
use portcullis::interceptors::{Authz, Limits, PolicyEngine};
use serde_json::{Value, json};

const SERVERS: usize = 50;
const TOOLS_PER_SERVER: usize = 20;

/// `count` policies of the shapes a real deployment has: per-client and
/// per-group grants on servers, tool-level forbids, annotation and argument
/// rules.
fn policies(count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let server = i % SERVERS;
        let policy = match i % 5 {
            0 => format!(
                "@id(\"client-{i}\") permit(principal == Client::\"c{}\", action in [Action::\"call_tool\", Action::\"list_tools\"], resource in Server::\"s{server}\");",
                i % 200
            ),
            1 => format!(
                "@id(\"group-{i}\") permit(principal in Group::\"g{}\", action in [Action::\"call_tool\", Action::\"list_tools\"], resource in Server::\"s{server}\") when {{ resource.read_only }};",
                i % 40
            ),
            2 => format!(
                "@id(\"tool-{i}\") forbid(principal, action == Action::\"call_tool\", resource == Tool::\"s{server}__t{}\") unless {{ principal in Group::\"admins\" }};",
                i % TOOLS_PER_SERVER
            ),
            3 => format!(
                "@id(\"args-{i}\") forbid(principal in Group::\"g{}\", action == Action::\"call_tool\", resource in Server::\"s{server}\") when {{ context.arguments has path && context.arguments.path like \"/etc/*\" }};",
                i % 40
            ),
            _ => format!(
                "@id(\"resource-{i}\") permit(principal in Group::\"g{}\", action == Action::\"read_resource\", resource in Server::\"s{server}\");",
                i % 40
            ),
        };
        text.push_str(&policy);
        text.push('\n');
    }
    text
}

fn engine(dir: &Path, count: usize) -> Arc<PolicyEngine> {
    engine_with(dir, count, "")
}

/// `count` policies and `more` (the flow rules).
fn engine_with(dir: &Path, count: usize, more: &str) -> Arc<PolicyEngine> {
    std::fs::create_dir_all(dir).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        repo.join("policies/schema.cedarschema"),
        dir.join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(dir.join("bench.cedar"), policies(count) + more).unwrap();
    let engine = PolicyEngine::load(dir, &[]).unwrap_or_else(|err| panic!("{err}"));
    let added = more.matches("@id(").count();
    assert_eq!(engine.current().policy_count(), count + added);
    Arc::new(engine)
}

/// A flow as a busy session has it: an outsider's page and four private
/// reads.
fn busy_flow() -> Flow {
    Flow::of_names([
        (Label::Untrusted, "web__fetch_page"),
        (Label::Private, "git__git_log"),
        (Label::Private, "git__git_show"),
        (Label::Private, "db__query"),
        (Label::Private, "mail__read"),
    ])
}

fn catalog() -> Arc<Catalog> {
    let names: Vec<Arc<str>> = (0..SERVERS)
        .map(|s| Arc::from(format!("s{s}").as_str()))
        .collect();
    let mut catalog = Catalog::new(SERVERS);
    for server in 0..SERVERS {
        let tools = (0..TOOLS_PER_SERVER)
            .map(|t| {
                json!({"name": format!("t{t}"), "description": "a tool",
                       "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
                       "annotations": {"readOnlyHint": t % 2 == 0}})
            })
            .collect();
        let lists = ServerLists {
            tools,
            ..ServerLists::default()
        };
        catalog = catalog
            .with_server(server, Some(Arc::new(lists)), &names, "__")
            .0;
    }
    Arc::new(catalog)
}

fn call_exchange(catalog: &Arc<Catalog>) -> Exchange {
    let client = ClientIdentity::new("c5", &["g5".to_owned(), "g7".to_owned()]);
    let message = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "s5__t4", "arguments": {"path": "/workspace/src/main.rs", "other": 1}}});
    let mut context = Context::new(
        Arc::from("session-1"),
        client,
        Transport::Http,
        "tools/call",
    );
    context.server = Some(Arc::from("s5"));
    context.target = Some("t4".to_owned());
    context.request_id = Some(json!(7));
    context.definition = catalog.tool_definition("s5__t4");
    context.directory = Some(catalog.clone());
    Exchange::new(message, Direction::ClientToServer, Phase::Request, context)
}

fn list_exchange(catalog: &Arc<Catalog>) -> Exchange {
    let mut exchange = call_exchange(catalog);
    exchange.context.method = portcullis::protocol::Method::ToolsList;
    exchange.context.server = None;
    exchange.context.target = None;
    exchange.context.definition = None;
    exchange.phase = Phase::Response;
    let tools: Vec<Value> = catalog.tools.iter().take(100).cloned().collect();
    exchange.message = json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}});
    exchange
}

/// Time per iteration of `work`, as samples of `iterations` each.
fn run_chain(chain: &Chain, template: &Exchange) {
    let mut exchange = template.clone();
    let result = chain.run(&mut exchange);
    std::hint::black_box(result.is_ok());
}

fn main() {
    let (iterations, samples) = common::sampling_args(200, 300);
    let dir = tempfile::tempdir().unwrap();
    let small = engine(&dir.path().join("p10"), 10);
    let large = engine(&dir.path().join("p1000"), 1000);
    let catalog = catalog();
    let call = call_exchange(&catalog);
    let list = list_exchange(&catalog);

    let limits: Arc<dyn Interceptor> = Arc::new(Limits::new(LimitsConfig::default()));
    let baseline_chain = Chain::new(vec![limits.clone()]);
    let chain_with = |engine: &Arc<PolicyEngine>| {
        Chain::new(vec![
            limits.clone(),
            Arc::new(Authz::new(engine.clone(), "__")) as Arc<dyn Interceptor>,
        ])
    };
    let small_chain = chain_with(&small);
    let large_chain = chain_with(&large);

    // Sanity: the benchmarked call is decided (allowed by `client-…`).
    let mut probe = call.clone();
    assert!(
        large_chain.run(&mut probe).is_ok(),
        "the call must be allowed"
    );

    let baseline =
        common::measure_calls("chain without authz (limits)", samples, iterations, || {
            run_chain(&baseline_chain, &call)
        });
    let with_10 =
        common::measure_calls("chain with authz, 10 policies", samples, iterations, || {
            run_chain(&small_chain, &call)
        });
    let with_1000 = common::measure_calls(
        "chain with authz, 1,000 policies",
        samples,
        iterations,
        || run_chain(&large_chain, &call),
    );
    let store = large.current();
    let target = Target::Tool {
        name: "s5__t4".into(),
        server: "s5".into(),
        annotations: ToolAnnotations::from_definition(
            &json!({"annotations": {"readOnlyHint": true}}),
        ),
        labels: Labels::of(&[Label::Untrusted, Label::Sink]),
    };
    let groups: Vec<Arc<str>> = vec![Arc::from("g5"), Arc::from("g7")];
    let arguments = json!({"path": "/workspace/src/main.rs"});
    let query = Query {
        client: "c5",
        groups: &groups,
        attributes: None,
        action: Action::CallTool,
        target: &target,
        arguments: arguments.as_object(),
        transport: "http",
        protocol: "2025-11-25",
        session: "session-1",
        scopes: &[],
        time: SystemTime::now(),
        script: None,
        answer: None,
        flow: None,
    };
    assert_eq!(store.decide(&query), store.decide_unsliced(&query));
    let unsliced = common::measure_calls(
        "decision alone, 1,000 policies unsliced",
        samples / 3,
        iterations / 4,
        || {
            std::hint::black_box(store.decide_unsliced(&query).allowed);
        },
    );
    let sliced = common::measure_calls(
        "decision alone, 1,000 policies sliced",
        samples,
        iterations,
        || {
            std::hint::black_box(store.decide(&query).allowed);
        },
    );
    // The flow: the same 1,000 policies with the example set's flow rules
    // (policies/flow.cedar), decided with a busy session's flow (the
    // context's `flow` built and read), against the set without them (no
    // `flow` built).
    let flow_rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/flow.cedar"))
            .unwrap();
    let with_flow_rules = engine_with(&dir.path().join("p1000flow"), 1000, &flow_rules);
    let flow_store = with_flow_rules.current();
    let flow = busy_flow();
    let flowing = Query {
        flow: Some(&flow),
        ..query.clone()
    };
    let flow_decision = flow_store.decide(&flowing);
    assert!(flow_decision.read_flow && !flow_decision.allowed);
    assert_eq!(flow_decision, flow_store.decide_unsliced(&flowing));
    let without_flow = common::measure_calls(
        "decision, 1,000 policies, no flow rule",
        samples,
        iterations,
        || {
            std::hint::black_box(store.decide(&flowing).allowed);
        },
    );
    let with_flow = common::measure_calls(
        "decision, 1,000 policies + the example flow rules, flow read",
        samples,
        iterations,
        || {
            std::hint::black_box(flow_store.decide(&flowing).allowed);
        },
    );
    let list_baseline = common::measure_calls(
        "tools/list reply (100 tools), no authz",
        samples / 3,
        iterations / 10,
        || run_chain(&baseline_chain, &list),
    );
    let list_filtered = common::measure_calls(
        "tools/list reply (100 tools), authz 1,000 policies",
        samples / 3,
        iterations / 10,
        || run_chain(&large_chain, &list),
    );

    println!(
        "\nslice for the benchmarked call: {} of {} policies",
        store.slice_size(&query),
        store.policy_count()
    );
    common::print_table(
        "tools/call through the chain",
        "p50 vs without authz",
        &[&baseline, &with_10, &with_1000, &sliced, &unsliced],
        &baseline,
    );
    common::print_table(
        "a decision with the flow",
        "p50 vs without the flow rule",
        &[&without_flow, &with_flow],
        &without_flow,
    );
    common::print_table(
        "tools/list reply through the chain",
        "p50 vs without authz",
        &[&list_baseline, &list_filtered],
        &list_baseline,
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nauthz adds {:.1} µs per call with 10 policies and {:.1} µs with 1,000 (goal: under 20 µs at 1,000)",
        us(with_10.p50) - us(baseline.p50),
        us(with_1000.p50) - us(baseline.p50)
    );
}
