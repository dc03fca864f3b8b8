//! Long operations show their progress on a terminal, and only there: the
//! real binary run under a pseudo-terminal (`script`, util-linux) draws a
//! status line on stderr; run with pipes, it prints exactly what it printed
//! before.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

/// `portcullis ARGS` under a pseudo-terminal: everything it wrote to its
/// terminal, and whether it succeeded.
fn on_a_terminal(args: &str) -> (bool, String) {
    let command = format!("{} {args}", portcullis_bin());
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("PORTCULLIS_PROGRESS")
        .output()
        .expect("`script` (util-linux) runs the proxy under a pseudo-terminal");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A data folder with a few records (a stdio session with calls).
async fn store_with_records(proxy: &TestProxy) -> std::path::PathBuf {
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    for id in 1..=5 {
        let reply = client
            .call(
                id,
                "tools/call",
                json!({"name": "example__echo", "arguments": {"text": "hi"}}),
            )
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
    }
    client.finish().await;
    proxy.dir().join("portcullis.toml")
}

fn path(config: &Path) -> &str {
    let text = config.to_str().unwrap();
    assert!(!text.contains(char::is_whitespace), "{text}");
    text
}

/// The status line: drawn in place (carriage return, erase line).
const REDRAW: &str = "\r\x1b[2K";

#[tokio::test(flavor = "multi_thread")]
async fn verify_export_and_doctor_show_progress_on_a_terminal_only() {
    let proxy = TestProxy::new().with_example_server("example");
    let config = store_with_records(&proxy).await;
    let config = path(&config);

    let (ok, screen) = on_a_terminal(&format!("audit verify --config {config}"));
    assert!(ok, "{screen}");
    assert!(screen.contains(REDRAW), "no status line: {screen:?}");
    assert!(
        screen.contains("verifying `stdio-tester`: 0 of "),
        "{screen:?}"
    );
    assert!(screen.contains("intact"), "{screen:?}");

    let export = proxy.dir().join("export.jsonl");
    let (ok, screen) = on_a_terminal(&format!(
        "audit export --config {config} --output {}",
        path(&export)
    ));
    assert!(ok, "{screen}");
    assert!(screen.contains("exporting `stdio-tester`"), "{screen:?}");
    let exported = std::fs::read_to_string(&export).unwrap();
    assert!(exported.lines().count() >= 5, "{exported}");
    assert!(!exported.contains('\x1b'), "the export itself is clean");

    let (ok, screen) = on_a_terminal(&format!("doctor --config {config}"));
    assert!(ok, "{screen}");
    assert!(screen.contains("checking server `example`"), "{screen:?}");
    assert!(screen.contains("UNSANDBOXED"), "{screen:?}");
    // Each result line starts on a cleared line, never after a half-drawn
    // status.
    for line in screen.split("\r\n").filter(|l| l.contains("UNSANDBOXED")) {
        let start = line.rfind(REDRAW).map_or(0, |at| at + REDRAW.len());
        assert!(line[start..].starts_with("warn"), "{line:?}");
    }

    // With pipes (a log, a script, CI) nothing is drawn.
    for args in [
        vec!["audit", "verify", "--config", config],
        vec!["doctor", "--config", config],
    ] {
        let (ok, stdout, stderr) = run_portcullis(&args);
        assert!(ok, "{args:?}: {stderr}");
        assert!(
            !stdout.contains('\x1b') && !stderr.contains('\x1b'),
            "{args:?}: {stdout:?} {stderr:?}"
        );
    }
}
