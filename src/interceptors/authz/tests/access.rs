//! Who may use a server: a client whose lists show it, decided again on a
//! reload or a new catalog; notifications no call owns, and denial reasons.

use super::*;

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
    use crate::chain::{ClientIdentity, Transport};
    use crate::interceptors::authz::ServerAccess;
    let dir = folder(ALICE_LISTS_A);
    let engine = Arc::new(engine(dir.path()));
    let access = ServerAccess::new(engine.clone(), Default::default());
    let alice = ClientIdentity::new("alice", &[]);
    let bob = ClientIdentity::new("bob", &[]);
    let catalog = tools_of(&["a__read", "b__write"]);
    let may = |who: &ClientIdentity, server: &str, catalog: &Arc<dyn crate::chain::Directory>| {
        access.may_use(who, (Transport::Http, "2025-11-25"), server, catalog)
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
    assert!(everyone.may_use(&bob, (Transport::Stdio, "2025-11-25"), "a", &catalog));
}

#[test]
fn a_notification_no_call_owns_reaches_only_a_client_that_may_use_its_server() {
    use crate::chain::{
        ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport, Verdict,
    };
    let dir = folder(ALICE_LISTS_A);
    let authz = crate::interceptors::authz::Authz::new(Arc::new(engine(dir.path())), "__");
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
    let authz = crate::interceptors::authz::Authz::new(Arc::new(engine(dir.path())), "__")
        .scrub_with(Arc::new(|text: &str| {
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
    let Verdict::Deny(denial) = authz.see(&mut exchange) else {
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
