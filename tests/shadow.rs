//! Shadow policies through the real binary: a candidate set
//! (`[proxy] shadow_policies`) decided beside the enforced one never
//! enforces. Five calls of the example server's `echo`, which the candidate
//! would refuse one of, are all served; each record holds both decisions,
//! the one difference is marked, found by the auditors' filter
//! (`shadow=differs`) and counted in metrics; `policy replay` of the
//! candidate over the log reports the same one.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::{AUDITOR_TOKEN, HttpSession, TestProxy, first_text};
use serde_json::{Value, json};

const ENFORCED: &str = r#"@id("everyone") permit (principal, action, resource);"#;

/// The candidate: the same, but no echo of the word `three`.
const CANDIDATE: &str = r#"
@id("everyone") permit (principal, action, resource);
@id("no-three")
forbid (principal, action == Action::"call_tool", resource == Tool::"example__echo")
when { context.arguments has text && context.arguments.text == "three" };
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_set_decides_beside_never_enforces_and_its_differences_are_counted() {
    let proxy = TestProxy::new().with_example_server("example");
    let enforced = proxy.policy_folder(ENFORCED);
    let candidate = proxy.dir().join("candidate");
    std::fs::create_dir_all(&candidate).unwrap();
    std::fs::copy(
        common::repo_root().join("policies/schema.cedarschema"),
        candidate.join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(candidate.join("main.cedar"), CANDIDATE).unwrap();
    let proxy = proxy.with_config(&format!(
        "policies = {:?}\nshadow_policies = {:?}\n\n[audit]\narguments = \"redacted\"\n",
        enforced.display().to_string(),
        candidate.display().to_string()
    ));
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    for (id, word) in (1..).zip(["one", "two", "three", "four", "five"]) {
        let reply = session
            .call(
                id,
                "tools/call",
                json!({"name": "example__echo", "arguments": {"text": word}}),
            )
            .await;
        assert_eq!(first_text(&reply), format!("example: {word}"), "{reply}");
    }

    let records =
        common::admin_records(&served.base, "kind=exchange&limit=1000", AUDITOR_TOKEN).await;
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 5, "{calls:?}");
    let differing: Vec<&&Value> = calls
        .iter()
        .filter(|r| r["detail"]["shadow"]["differs"] == true)
        .collect();
    assert_eq!(differing.len(), 1, "{calls:?}");
    let differs = differing[0];
    assert_eq!(differs["decision"], "allow", "served: {differs}");
    assert_eq!(differs["detail"]["shadow"]["decision"], "deny", "{differs}");
    assert_eq!(differs["detail"]["shadow"]["policies"], json!(["no-three"]));
    assert_ne!(
        differs["detail"]["shadow"]["policy_set"], differs["policy_set"],
        "{differs}"
    );
    for call in &calls {
        assert!(call["detail"]["shadow"]["decision"].is_string(), "{call}");
    }

    // Auditors ask for the differences alone.
    let found = common::admin_records(
        &served.base,
        "kind=exchange&shadow=differs&limit=1000",
        AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["seq"], differs["seq"]);

    // The console shows the difference in the calls it lists, and both
    // decisions side by side on the exchange's page.
    let listed = common::console_page(&served.base, "/admin/?shadow=differs").await;
    let seq = differs["seq"].as_u64().unwrap();
    assert!(
        listed.contains(&format!("data-seq=\"{seq}\""))
            && listed.contains("<td class=\"shadow\">deny</td>"),
        "{listed}"
    );
    assert_eq!(listed.matches("<tr data-seq=").count(), 1, "{listed}");
    let page = common::console_page(&served.base, &format!("/admin/exchange/{seq}")).await;
    for expected in [
        "The shadow set decided otherwise.",
        "<td class=\"enforced-decision\">allow</td>",
        "<td class=\"shadow-decision\">deny</td>",
        "<td class=\"shadow-policies\">no-three</td>",
        "<td class=\"enforced-policies\">everyone</td>",
    ] {
        assert!(page.contains(expected), "{expected}: {page}");
    }
    let same = calls
        .iter()
        .find(|r| r["detail"]["shadow"]["differs"] == false)
        .unwrap();
    let page =
        common::console_page(&served.base, &format!("/admin/exchange/{}", same["seq"])).await;
    assert!(page.contains("The shadow set decided the same."), "{page}");

    let metrics = common::metrics_text(&served.base).await;
    assert!(
        metrics.contains("portcullis_shadow_decisions_total 5"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("portcullis_shadow_differences_total{enforced=\"allow\",shadow=\"deny\"} 1"),
        "{metrics}"
    );
    served.terminate().await;

    // Replayed over the log, the candidate changes that one decision.
    let config = proxy.write_config();
    let (ok, stdout, stderr) = common::run_portcullis([
        "policy",
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--policies",
        candidate.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("5 decisions replayed, 1 would change")
            && stdout.contains("0 of them without their arguments"),
        "{stdout}"
    );
    let changed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("example/echo"))
        .collect();
    assert_eq!(changed.len(), 1, "{stdout}");
    assert!(
        changed[0].contains("allow")
            && changed[0].contains("deny")
            && changed[0].contains("no-three"),
        "{stdout}"
    );
    assert!(
        changed[0].starts_with(&differs["seq"].to_string()),
        "{stdout}"
    );
}
