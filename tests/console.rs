//! The web console in headless Chromium against the real proxy: an auditor
//! logs in, sees a denied call appear in the live view, opens its detail,
//! filters by client; a client's token is refused. Screenshots of each page
//! go to `target/console-screenshots/` (the README's come from there).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::browser::Browser;
use common::*;
use serde_json::{Value, json};

fn echo(text: &str) -> Value {
    json!({"name": "example__echo", "arguments": {"text": text}})
}

fn screenshots() -> std::path::PathBuf {
    repo_root().join("target/console-screenshots")
}

/// Logs in on the page shown (the login form) with `token`.
async fn log_in(browser: &mut Browser, token: &str) {
    browser
        .wait_for(
            "document.querySelector('input[name=token]') !== null",
            "the login form",
        )
        .await;
    browser
        .eval(&format!(
            "document.getElementById('token').value = {token:?}; \
             document.querySelector('form').submit(); true"
        ))
        .await;
}

/// The live view's rows: (seq, client, target, decision, decided by).
async fn rows(browser: &mut Browser) -> Vec<(u64, String, String, String, String)> {
    let rows = browser
        .eval(
            "[...document.querySelectorAll('#calls tbody tr')].map(r => \
             [Number(r.dataset.seq), r.cells[2].textContent, r.cells[5].textContent, \
              r.cells[6].textContent, r.cells[7].textContent])",
        )
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_str().unwrap().to_owned(),
                r[3].as_str().unwrap().to_owned(),
                r[4].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn auditors_watch_calls_open_a_denial_and_filter_by_client_and_clients_cannot_log_in() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example")
        .with_container_server("boxed", "", "memory = \"256m\"");
    proxy.policy_folder(
        r#"@id("echo-only") permit(principal, action, resource == Tool::"example__echo");
@id("lists") permit(principal, action == Action::"list_tools", resource);"#,
    );
    let served = proxy.serve_http().await;
    let tester = HttpSession::connect(&served.url).await;
    let other = HttpSession::connect_as(&served.url, OTHER_TOKEN).await;
    tester.call(1, "tools/call", echo("hello")).await;
    other
        .call(1, "tools/call", echo("from the other client"))
        .await;

    // The page is sent with a strict policy: no inline script, no framing.
    let page = reqwest::get(format!("{}/admin/", served.base))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    let mut browser = Browser::launch().await;
    browser.goto(&format!("{}/admin/", served.base)).await;
    browser.screenshot(&screenshots().join("login.png")).await;
    log_in(&mut browser, AUDITOR_TOKEN).await;
    browser
        .wait_for("document.getElementById('calls') !== null", "the live view")
        .await;
    // The login cookie is HttpOnly: the page's script cannot read it.
    assert_eq!(browser.eval("document.cookie").await, json!(""));
    let first = rows(&mut browser).await;
    assert!(
        first
            .iter()
            .any(|r| r.1 == "tester" && r.2 == "echo" && r.3 == "allow"),
        "{first:?}"
    );

    // A call the policy refuses appears without reloading the page.
    let refused = tester
        .call(
            2,
            "tools/call",
            json!({"name": "example__add", "arguments": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], json!(-32010), "{refused}");
    let seq = browser
        .wait_for(
            "(() => { const r = [...document.querySelectorAll('#calls tbody tr')].find(r => \
             r.cells[5].textContent === 'add' && r.cells[6].textContent === 'deny'); \
             return r ? r.dataset.seq : ''; })()",
            "the denied call in the live view",
        )
        .await;
    let seq: u64 = seq.as_str().unwrap().parse().unwrap();
    let live = rows(&mut browser).await;
    assert_eq!(live[0].0, seq, "newest first: {live:?}");
    assert_eq!(
        live[0],
        (
            seq,
            "tester".into(),
            "add".into(),
            "deny".into(),
            "authz".into()
        )
    );
    browser.screenshot(&screenshots().join("calls.png")).await;

    // Its detail: the decision trail and the hashes.
    browser
        .eval(&format!(
            "document.querySelector('#calls tbody tr[data-seq=\"{seq}\"] a').click(); true"
        ))
        .await;
    browser
        .wait_for(
            &format!(
                "location.pathname === '/admin/exchange/{seq}' && document.getElementById('detail') !== null"
            ),
            "the exchange's detail",
        )
        .await;
    let field = |name: &str| format!("document.querySelector('td.field-{name}').textContent");
    assert_eq!(browser.eval(&field("decision")).await, json!("deny"));
    assert_eq!(browser.eval(&field("decided-by")).await, json!("authz"));
    assert_eq!(browser.eval(&field("client")).await, json!("tester"));
    assert_eq!(browser.eval(&field("target")).await, json!("add"));
    let reason = browser.eval(&field("reason")).await;
    assert!(
        reason.as_str().unwrap().contains("is not permitted"),
        "{reason}"
    );
    let hash = browser.eval(&field("hash")).await;
    assert_eq!(hash.as_str().unwrap().len(), 64, "{hash}");
    assert!(
        !browser
            .eval(&field("policy-set"))
            .await
            .as_str()
            .unwrap()
            .is_empty()
    );
    browser
        .screenshot(&screenshots().join("exchange.png"))
        .await;

    // Filter by client: only the other client's calls, old and new.
    browser.goto(&format!("{}/admin/", served.base)).await;
    browser
        .eval(
            "document.querySelector('.filters input[name=client]').value = 'other'; \
             document.querySelector('.filters').submit(); true",
        )
        .await;
    browser
        .wait_for(
            "location.search.includes('client=other') && document.getElementById('calls') !== null",
            "the filtered view",
        )
        .await;
    let filtered = rows(&mut browser).await;
    assert!(!filtered.is_empty());
    assert!(filtered.iter().all(|r| r.1 == "other"), "{filtered:?}");
    tester.call(3, "tools/call", echo("not shown")).await;
    other.call(2, "tools/call", echo("shown")).await;
    browser
        .wait_for(
            &format!(
                "document.querySelectorAll('#calls tbody tr').length > {}",
                filtered.len()
            ),
            "the other client's new call",
        )
        .await;
    let filtered = rows(&mut browser).await;
    assert!(filtered.iter().all(|r| r.1 == "other"), "{filtered:?}");

    // The servers, and the container's sandbox as it runs.
    browser
        .goto(&format!("{}/admin/servers", served.base))
        .await;
    let server = |name: &str, field: &str| {
        format!(
            "document.querySelector('section[data-server={name}] td.field-{field}').textContent"
        )
    };
    assert_eq!(
        browser.eval(&server("example", "state")).await,
        json!("ready")
    );
    assert!(
        browser
            .eval(&server("example", "runs"))
            .await
            .as_str()
            .unwrap()
            .contains("UNSANDBOXED")
    );
    assert_eq!(
        browser.eval(&server("boxed", "state")).await,
        json!("ready")
    );
    assert_eq!(
        browser.eval(&server("boxed", "profile")).await,
        json!("relaxed(1)")
    );
    assert_eq!(
        browser.eval(&server("boxed", "user")).await,
        json!("65534:65534")
    );
    assert_eq!(
        browser.eval(&server("boxed", "network")).await,
        json!("none")
    );
    assert_eq!(
        browser.eval(&server("boxed", "root-filesystem")).await,
        json!("read-only")
    );
    assert_eq!(
        browser.eval(&server("boxed", "relaxations")).await,
        json!("memory 268435456 bytes")
    );
    browser.screenshot(&screenshots().join("servers.png")).await;

    // The chain's check, from the page.
    browser.goto(&format!("{}/admin/", served.base)).await;
    browser
        .eval("document.getElementById('verify').click(); true")
        .await;
    let state = browser
        .wait_for(
            "(() => { const t = document.getElementById('verify-state').textContent; \
             return t.startsWith('intact') || t.startsWith('BROKEN') ? t : ''; })()",
            "the chain's verification",
        )
        .await;
    assert!(state.as_str().unwrap().starts_with("intact"), "{state}");
    browser.close().await;

    // A client's token does not log in.
    let mut browser = Browser::launch().await;
    browser.goto(&format!("{}/admin/", served.base)).await;
    log_in(&mut browser, TOKEN).await;
    let problem = browser
        .wait_for(
            "(() => { const p = document.querySelector('.problem'); return p ? p.textContent : ''; })()",
            "the refusal",
        )
        .await;
    assert_eq!(problem, json!("This is not an auditor's token."));
    browser.goto(&format!("{}/admin/", served.base)).await;
    assert_eq!(
        browser
            .eval("document.getElementById('calls') === null && document.querySelector('input[name=token]') !== null")
            .await,
        json!(true),
        "still the login page"
    );
    browser.close().await;
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_login_cookie_opens_nothing_for_another_sites_page() {
    let proxy = TestProxy::new().with_example_server("example");
    let served = proxy.serve_http().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/admin/login", served.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={AUDITOR_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let set = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let read = |site: Option<&'static str>| {
        let mut request = http
            .get(format!("{}/admin/audit?limit=1", served.base))
            .header("cookie", &cookie);
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        async move { request.send().await.unwrap().status() }
    };
    // The console's own script, a typed address, a non-browser client.
    assert_eq!(read(Some("same-origin")).await, 200);
    assert_eq!(read(Some("none")).await, 200);
    assert_eq!(read(None).await, 200);
    // A page of another port of this machine, or of another site.
    assert_eq!(read(Some("same-site")).await, 401);
    assert_eq!(read(Some("cross-site")).await, 401);
    // A form of another origin cannot log in or out.
    let forged = http
        .post(format!("{}/admin/login", served.base))
        .header("origin", "http://localhost:3000")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={AUDITOR_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // Logging out ends the login.
    let out = http
        .post(format!("{}/admin/logout", served.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(read(None).await, 401);
    served.terminate().await;
}
