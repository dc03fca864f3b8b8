//! What a server can make the proxy hold: a server that lists far past the
//! caps (100 000 tools, then empty pages with a next cursor for ever) is
//! cut at `[limits] max_list_items` and `max_list_bytes`, the cut logged
//! and recorded naming the server, the proxy's memory stays within what
//! the caps allow, and the other servers' clients keep calling.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{HttpSession, TestProxy};
use serde_json::json;

/// The proxy's resident memory and its peak, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn flood(name: &str, args: &[&str]) -> String {
    let server = common::repo_root().join("tests/fixtures/list_flood_server.py");
    let args: Vec<String> = std::iter::once(server.display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    format!(
        "[[servers]]\nname = \"{name}\"\ntimeout = \"120s\"\nprocess = {{ command = \"python3\", args = {args:?} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_listing_past_the_caps_is_cut_recorded_and_holds_no_more() {
    let proxy = TestProxy::new()
        .with_config("[limits]\nmax_list_items = 2000\nmax_list_bytes = 4194304")
        .with_example_server("example")
        // 100 000 tools over 40 pages, then empty pages with a cursor.
        .with_server_toml(&flood("many", &["--tools", "100000", "--endless"]))
        // Few tools, never a last page.
        .with_server_toml(&flood(
            "endless",
            &["--tools", "3", "--page", "1", "--endless"],
        ))
        // Fewer items than the cap, heavier than the bytes allowed.
        .with_server_toml(&flood(
            "heavy",
            &[
                "--tools",
                "500",
                "--page",
                "50",
                "--description-bytes",
                "20000",
            ],
        ));
    let config = proxy.write_config();
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let listed = session.call(1, "tools/list", json!({})).await;
    assert!(listed.get("result").is_some(), "{listed}");

    // Every server's list is cut where the caps say, and says so.
    for (server, cause) in [
        ("many", "max_list_items"),
        ("endless", "more than 100 pages"),
        ("heavy", "max_list_bytes"),
    ] {
        served
            .log
            .wait_for(&[
                "a server's list was cut",
                &format!("server={server}"),
                cause,
            ])
            .await;
    }
    // The other clients' server still serves.
    let echoed = session
        .call(
            2,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "still here"}}),
        )
        .await;
    assert_eq!(
        common::first_text(&echoed),
        "example: still here",
        "{echoed}"
    );
    // What is kept: at most 2000 of `many`'s tools, and of `heavy` what
    // fits in 1 MiB.
    let mut names = Vec::new();
    let mut cursor = None;
    for id in 10.. {
        let params = cursor.map_or_else(|| json!({}), |c| json!({ "cursor": c }));
        let page = session.call(id, "tools/list", params).await;
        names.extend(common::tool_names(&page));
        cursor = page["result"]["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let of = |server: &str| {
        names
            .iter()
            .filter(|n| n.starts_with(&format!("{server}__")))
            .count()
    };
    assert_eq!(of("many"), 2000);
    assert_eq!(of("endless"), 3);
    assert!(of("heavy") > 100 && of("heavy") < 300, "{}", of("heavy"));
    assert!(of("example") > 0);

    // The proxy holds what the caps allow (2000 + 100 + ~250 tools and a
    // megabyte), not the 100 000 it was sent: far below the 1.1 GiB the
    // same server made it hold before the caps.
    let (rss, peak) = memory_kib(served.pid());
    eprintln!("MEMORY rss {rss} KiB peak {peak} KiB");
    assert!(peak < 400 * 1024, "peak {peak} KiB, now {rss} KiB");
    served.terminate().await;

    // Each cut is recorded once, naming the server, the list and why.
    let records = common::records(&config, &["--kind", "list_cut"]);
    let servers: Vec<&str> = records
        .iter()
        .filter_map(|r| r["server"].as_str())
        .collect();
    for server in ["many", "endless", "heavy"] {
        assert_eq!(
            servers.iter().filter(|s| **s == server).count(),
            1,
            "{records:?}"
        );
    }
    let many = records.iter().find(|r| r["server"] == "many").unwrap();
    assert_eq!(many["method"], "tools/list");
    assert_eq!(many["decision"], "deny");
    assert_eq!(many["detail"]["kept"], 2000);
    assert_eq!(many["detail"]["cause"], "items");
    let endless = records.iter().find(|r| r["server"] == "endless").unwrap();
    assert_eq!(endless["detail"]["cause"], "pages");
}
