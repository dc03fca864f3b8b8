//! The slice of policies that can apply decides exactly as the whole set
//! (a property test over generated policies and requests).

use super::*;

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
    let condition = match condition % 9 {
        0 => "",
        1 => " when { context.transport == \"http\" }",
        2 => " when { context.arguments has path && context.arguments.path like \"/w*\" }",
        3 => " unless { principal.name == \"c1\" }",
        4 => " when { context.time > datetime(\"2020-01-01T00:00:00Z\") }",
        5 if tool_typed => " when { resource.read_only && !resource.destructive }",
        6 => " when { context.flow.untrusted }",
        7 if tool_typed => {
            " when { resource.labels.contains(\"sink\") && context.flow.private_from.contains(\"s1__t0\") }"
        }
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
    let labels = Label::ALL
        .into_iter()
        .filter(|label| (pick >> (5 + *label as u8)) & 1 == 1)
        .fold(Labels::NONE, Labels::with);
    let target = match action {
        Action::CallTool | Action::ListTools => Target::Tool {
            name: format!("{server}__t{}", pick % 2),
            server,
            annotations: ToolAnnotations {
                read_only: pick & 0x10 != 0,
                destructive: pick & 0x20 != 0,
                ..ToolAnnotations::default()
            },
            labels,
        },
        Action::GetPrompt | Action::ListPrompts => Target::Prompt {
            name: format!("{server}__p{}", pick % 2),
            server,
            labels,
        },
        Action::Complete if pick % 2 == 0 => Target::Prompt {
            name: format!("{server}__p{}", pick % 3),
            server,
            labels,
        },
        Action::Sampling
        | Action::Elicitation
        | Action::Roots
        | Action::FindServers
        | Action::AddServer
        | Action::SignIn => Target::Server { name: server },
        _ => Target::Resource {
            uri: format!("u{}", pick % 3),
            server,
            labels,
        },
    };
    let arguments = match argument % 3 {
        0 => None,
        1 => json!({"path": "/w/file"}).as_object().cloned(),
        _ => json!({"path": "/etc/passwd"}).as_object().cloned(),
    };
    (client, groups, action, target, arguments)
}

/// A flow from a number: untrusted from `s0__t0` or `s2__t1`, private from
/// `s1__t0`, or nothing.
fn flow_of(bits: u8) -> Option<Flow> {
    let pairs = [
        (1, Label::Untrusted, "s0__t0"),
        (2, Label::Untrusted, "s2__t1"),
        (4, Label::Private, "s1__t0"),
    ];
    let flow = Flow::of_names(
        pairs
            .into_iter()
            .filter(|(bit, _, _)| bits & bit != 0)
            .map(|(_, label, name)| (label, name)),
    );
    (!flow.is_empty()).then_some(flow)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The slice decides exactly as the whole set: same decision, same
    /// deciding policies, same errors.
    #[test]
    fn sliced_decisions_equal_full_decisions(
        policies in prop::collection::vec(any::<(u8, u8, u8, u8, u8, u8)>(), 1..40),
        requests in prop::collection::vec((any::<(u8, u8, u8, u8, u8)>(), any::<bool>()), 1..20),
        flows in prop::collection::vec(any::<u8>(), 20),
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
        for ((spec, http), given) in requests.into_iter().zip(flows) {
            let (client, groups, action, target, arguments) = request_parts(spec);
            let flow = flow_of(given);
            let mut q = query(&client, &groups, action, &target, arguments.as_ref());
            q.transport = if http { "http" } else { "stdio" };
            q.flow = flow.as_ref();
            let sliced = store.decide(&q);
            let full = store.decide_unsliced(&q);
            prop_assert_eq!(&sliced, &full, "request {:?}\npolicies:\n{}", q, joined);
            // Asked twice (the second time from the cache): the same.
            prop_assert_eq!(&store.decide(&q), &full);
        }
    }
}
