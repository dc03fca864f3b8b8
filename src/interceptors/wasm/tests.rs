//! The host against hostile components (tests/common/wasm_fixtures.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/common/wasm_fixtures.rs"]
mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::Behaviour;
use serde_json::json;

use super::*;
use crate::chain::{ClientIdentity, Context, Transport};

fn plugin_config(path: &std::path::Path) -> PluginConfig {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("fixture");
    // A deadline far from what a call needs: a test must not depend on
    // how busy the machine is (a looping fixture runs out of it anyway).
    PluginConfig {
        pool: 2,
        breaker_failures: 100,
        timeout: Duration::from_secs(10),
        ..PluginConfig::new(name, path)
    }
}

fn load(config: &PluginConfig) -> Result<Plugin, LoadError> {
    let runtime = Runtime::new(&[config])?;
    Plugin::load(runtime, config, 4 * 1024 * 1024, "__")
}

fn fixture(dir: &tempfile::TempDir, behaviour: Behaviour) -> PluginConfig {
    let name = format!("{behaviour:?}").to_lowercase();
    plugin_config(&fixtures::write(dir.path(), &name, behaviour, "0.1.0"))
}

fn call(phase: Phase) -> Exchange {
    let message = match phase {
        Phase::Response => json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}),
        _ => {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}})
        }
    };
    Exchange::new(
        message,
        Direction::ClientToServer,
        phase,
        Context {
            server: Some(Arc::from("example")),
            target: Some("echo".into()),
            request_id: Some(json!(1)),
            ..Context::new(
                Arc::from("session-1"),
                ClientIdentity::new("tester", &["analysts".to_owned()]),
                Transport::Stdio,
                "tools/call",
            )
        },
    )
}

fn denial(verdict: Verdict) -> Denial {
    match verdict {
        Verdict::Deny(denial) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn a_plain_plugin_continues_annotates_and_reuses_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = load(&fixture(&dir, Behaviour::Continue)).unwrap();
    for _ in 0..5 {
        let mut exchange = call(Phase::Request);
        assert_eq!(plugin.run(&mut exchange), Verdict::Continue);
        assert_eq!(exchange.annotations.len(), 1);
        assert_eq!(&*exchange.annotations[0].interceptor, "wasm:continue");
        assert_eq!(exchange.annotations[0].key, "fixture");
        assert_eq!(exchange.annotations[0].value, "ok");
    }
    // One instance served every call.
    assert_eq!(plugin.live.load(Ordering::Acquire), 1);
}

#[test]
fn per_call_instances_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fixture(&dir, Behaviour::Continue);
    config.instance = InstanceMode::PerCall;
    let plugin = load(&config).unwrap();
    for _ in 0..3 {
        assert_eq!(plugin.run(&mut call(Phase::Request)), Verdict::Continue);
        assert_eq!(plugin.live.load(Ordering::Acquire), 0);
    }
}

#[test]
fn each_hostile_plugin_is_contained_and_denied_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Behaviour::Loop, "trap", "ran out of time"),
        (Behaviour::MemoryBomb, "trap", "over its memory limit"),
        (Behaviour::Trap, "trap", "unreachable"),
        (Behaviour::Garbage, "invalid", "not JSON"),
        (
            Behaviour::Oversized,
            "invalid",
            "an outcome larger than 4194304 bytes",
        ),
        (Behaviour::ReservedCode, "invalid", "denial code -32600"),
        (Behaviour::Retarget, "invalid", "changes `params/name`"),
        (
            Behaviour::AnnotationFlood,
            "invalid",
            "1000 annotations (at most 16)",
        ),
        (
            Behaviour::ErrorKey,
            "invalid",
            "annotation `error` is the proxy's own",
        ),
    ];
    for (behaviour, kind, reason) in cases {
        let mut config = fixture(&dir, behaviour);
        if behaviour == Behaviour::Loop {
            // It never ends: a short deadline keeps the test short.
            config.timeout = Duration::from_millis(50);
        }
        let plugin = load(&config).unwrap();
        for _ in 0..2 {
            let denial = denial(plugin.run(&mut call(Phase::Request)));
            assert_eq!(denial.code, protocol::code::PLUGIN_FAILED, "{behaviour:?}");
            assert!(
                denial.reason.contains(reason),
                "{behaviour:?}: {}",
                denial.reason
            );
            assert_eq!(denial.data["plugin_error"], json!(kind), "{behaviour:?}");
            // The failed instance was thrown away.
            assert_eq!(plugin.live.load(Ordering::Acquire), 0, "{behaviour:?}");
        }
    }
}

#[test]
fn on_error_continue_passes_the_message_and_notes_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fixture(&dir, Behaviour::Trap);
    config.on_error = OnError::Continue;
    let plugin = load(&config).unwrap();
    let mut exchange = call(Phase::Request);
    let before = exchange.message.clone();
    assert_eq!(plugin.run(&mut exchange), Verdict::Continue);
    assert_eq!(exchange.message, before);
    assert_eq!(exchange.annotations[0].key, "error");
    assert!(exchange.annotations[0].value.contains("unreachable"));
}

#[test]
fn fuel_bounds_a_loop_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fixture(&dir, Behaviour::Loop);
    config.fuel = Some(100_000);
    config.timeout = Duration::from_secs(5);
    let plugin = load(&config).unwrap();
    let denial = denial(plugin.run(&mut call(Phase::Request)));
    assert!(
        denial.reason.contains("ran out of fuel"),
        "{}",
        denial.reason
    );
}

#[test]
fn a_plugin_sees_only_its_methods_and_phases() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fixture(&dir, Behaviour::Trap);
    config.methods = vec!["*/list".into()];
    let plugin = load(&config).unwrap();
    assert_eq!(plugin.run(&mut call(Phase::Request)), Verdict::Continue);
    config.methods = vec!["tools/*".into()];
    config.phases.request = false;
    let plugin = load(&config).unwrap();
    assert_eq!(plugin.run(&mut call(Phase::Request)), Verdict::Continue);
    assert!(matches!(
        plugin.run(&mut call(Phase::Response)),
        Verdict::Deny(_)
    ));
    config.phases.request = true;
    config.tools = vec!["example__add".into(), "other__*".into()];
    let plugin = load(&config).unwrap();
    assert_eq!(plugin.run(&mut call(Phase::Request)), Verdict::Continue);
    config.tools = vec!["example__*".into()];
    let plugin = load(&config).unwrap();
    assert!(matches!(
        plugin.run(&mut call(Phase::Request)),
        Verdict::Deny(_)
    ));
}

#[test]
fn repeated_failures_open_the_breaker_and_a_success_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fixture(&dir, Behaviour::TrapOnRequest);
    config.breaker_failures = 2;
    // Never over by itself during the test: `end_cooldown` ends it.
    config.breaker_cooldown = Duration::from_secs(3600);
    let plugin = load(&config).unwrap();
    let mut events = plugin.subscribe();
    for _ in 0..2 {
        assert_eq!(
            denial(plugin.run(&mut call(Phase::Request))).data["plugin_error"],
            json!("trap")
        );
    }
    match events.try_recv() {
        Ok(PluginEvent::BreakerOpened {
            plugin, failures, ..
        }) => {
            assert_eq!(plugin, "traponrequest");
            assert_eq!(failures, 2);
        }
        other => panic!("expected the breaker to open, got {other:?}"),
    }
    // Open: not even a response (which it would pass) is let through.
    let open = denial(plugin.run(&mut call(Phase::Response)));
    assert_eq!(open.data["plugin_error"], json!("circuit-open"));
    plugin.end_cooldown();
    // After the cool-down one trial goes through; it fails, so the circuit
    // opens again at once.
    assert_eq!(
        denial(plugin.run(&mut call(Phase::Request))).data["plugin_error"],
        json!("trap")
    );
    assert!(matches!(
        events.try_recv(),
        Ok(PluginEvent::BreakerOpened { .. })
    ));
    assert_eq!(
        denial(plugin.run(&mut call(Phase::Response))).data["plugin_error"],
        json!("circuit-open")
    );
    plugin.end_cooldown();
    // A trial that succeeds closes it.
    assert_eq!(plugin.run(&mut call(Phase::Response)), Verdict::Continue);
    assert_eq!(
        events.try_recv().ok(),
        Some(PluginEvent::BreakerClosed {
            plugin: "traponrequest".into()
        })
    );
}

#[test]
fn a_wrong_interface_version_or_a_missing_file_is_a_clear_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "future", Behaviour::Continue, "0.2.0");
    let err = load(&plugin_config(&path)).err().map(|e| e.to_string());
    let err = err.expect("refused");
    assert!(
        err.contains("exports portcullis:interceptor/handler@0.2.0")
            && err.contains("this proxy speaks portcullis:interceptor/handler@0.1.0"),
        "{err}"
    );
    let err = load(&plugin_config(&dir.path().join("missing.wasm")))
        .err()
        .map(|e| e.to_string())
        .expect("refused");
    assert!(err.contains("cannot read"), "{err}");
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = load(&plugin_config(&dir.path().join("core.wasm")))
        .err()
        .map(|e| e.to_string())
        .expect("refused");
    assert!(err.contains("is not a WebAssembly component"), "{err}");
    let mut pinned = fixture(&dir, Behaviour::Continue);
    pinned.sha256 = Some("0".repeat(64));
    let err = load(&pinned).err().map(|e| e.to_string()).expect("refused");
    assert!(err.contains("but the config pins"), "{err}");
}

#[test]
fn a_plugin_may_not_change_what_routing_and_authorization_went_by() {
    let before = json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/get",
        "params": {"taskId": "portcullis-task-1"}});
    let same = before.clone();
    assert!(same_envelope(&before, &same, Phase::Request).is_ok());
    for after in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"taskId": "other"}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": "x"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {}}),
    ] {
        let refused = same_envelope(&before, &after, Phase::Request);
        assert!(
            refused
                .as_ref()
                .is_err_and(|reason| reason.contains("taskId")),
            "{after}: {refused:?}"
        );
    }
}
