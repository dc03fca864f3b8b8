//! Profiles through the real binary: `profile create|tools|show|ls`, and a
//! proxy run under one (`stdio --profile`): its servers only, a tool it
//! leaves out neither listed nor callable (and no policy asked about it),
//! every record naming the profile.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::process::Stdio;

use common::{RawClient, TestProxy, first_text};
use serde_json::{Value, json};
use tokio::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    common::run_portcullis(args)
}

/// `portcullis profile ARGS --config CONFIG`.
fn profile(args: &[&str], config: &str) -> (bool, String, String) {
    let mut all = vec!["profile"];
    all.extend_from_slice(args);
    all.extend(["--config", config]);
    run(&all)
}

/// `stdio --config CONFIG --client tester --profile PROFILE`.
fn stdio_args<'a>(config: &'a str, profile: &'a str) -> [&'a str; 7] {
    [
        "stdio",
        "--config",
        config,
        "--client",
        "tester",
        "--profile",
        profile,
    ]
}

fn under_profile(config: &str, profile: &str) -> RawClient {
    let mut command = Command::new(common::portcullis_bin());
    command
        .args(stdio_args(config, profile))
        .env("PORTCULLIS_LOG", "info")
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    RawClient::spawn(command)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_narrows_what_the_policies_then_decide() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example")
        .with_example_server("spare");
    // Everything is permitted: what the profile leaves out is refused
    // before any policy is asked.
    proxy.policy_folder(r#"@id("all") permit(principal, action, resource);"#);
    let config = proxy.write_config();
    let config = config.to_str().unwrap();

    let create = "create research --server example --description";
    let mut args: Vec<&str> = create.split(' ').collect();
    args.push("echo only");
    let (ok, stdout, stderr) = profile(&args, config);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("profiles/research.toml"), "{stdout}");
    let enable = "tools research --enable example__echo --enable example__add";
    let (ok, stdout, stderr) = profile(&enable.split(' ').collect::<Vec<_>>(), config);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("example: add, echo"), "{stdout}");
    let (ok, stdout, _) = profile(&["tools", "research", "--disable", "example__add"], config);
    assert!(ok && stdout.contains("example: echo"), "{stdout}");
    // Refused: a server the profile does not run, a name that is not one,
    // taking a tool from a server that lets every tool through.
    for (args, expected) in [
        (
            vec!["--enable", "spare__echo"],
            "does not run server `spare`",
        ),
        (vec!["--enable", "echo"], "is not SERVER__TOOL"),
    ] {
        let mut all = vec!["tools", "research"];
        all.extend(args);
        let (ok, _, stderr) = profile(&all, config);
        assert!(!ok && stderr.contains(expected), "{expected}: {stderr}");
    }
    let (ok, _, stderr) = profile(&["create", "whole", "--server", "spare"], config);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = profile(&["tools", "whole", "--disable", "spare__echo"], config);
    assert!(
        !ok && stderr.contains("lets every tool of `spare` through"),
        "{stderr}"
    );
    let (ok, stdout, _) = profile(&["ls"], config);
    assert!(
        ok && stdout.contains("research") && stdout.contains("whole"),
        "{stdout}"
    );
    let (ok, stdout, _) = profile(&["show", "research"], config);
    assert!(ok && stdout.contains("echo only"), "{stdout}");

    let mut client = under_profile(config, "research");
    client.initialize().await;
    let listed = client.call(1, "tools/list", json!({})).await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert_eq!(names, ["example__echo"], "{listed}");
    let echoed = client
        .call(
            2,
            "tools/call",
            json!({ "name": "example__echo", "arguments": { "text": "in" } }),
        )
        .await;
    assert_eq!(first_text(&echoed), "example: in");
    for (id, tool) in [(3, "example__add"), (4, "spare__echo")] {
        let refused = client
            .call(
                id,
                "tools/call",
                json!({ "name": tool, "arguments": { "a": 1, "b": 2, "text": "x" } }),
            )
            .await;
        assert!(refused.get("error").is_some(), "{tool}: {refused}");
        assert_ne!(
            refused["error"]["code"],
            json!(-32010),
            "no policy decides it: {refused}"
        );
    }
    client.finish().await;

    let records = common::records(
        proxy.dir().join("portcullis.toml").as_path(),
        &["--limit", "1000"],
    );
    assert!(
        records.iter().all(|r| r["profile"] == "research"),
        "every record names the profile: {records:?}"
    );
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for record in &calls[1..] {
        assert_ne!(record["decided_by"], "authz", "{record}");
        assert!(record["decision_id"].is_null(), "{record}");
    }
    // A profile naming what the config lacks stops the proxy at start.
    std::fs::write(
        proxy.dir().join("profiles/broken.toml"),
        "servers = [\"example\", \"ghost\"]\n",
    )
    .unwrap();
    let stdio = |name: &str| run(&stdio_args(config, name));
    let (ok, _, stderr) = stdio("broken");
    assert!(!ok && stderr.contains("names server `ghost`"), "{stderr}");
    let (ok, _, stderr) = stdio("absent");
    assert!(
        !ok && stderr.contains("cannot read profile `absent`"),
        "{stderr}"
    );
}
