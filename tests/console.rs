//! The web console in headless Chromium against the real proxy: an auditor
//! logs in, sees a denied call appear in the live view, opens its detail,
//! filters by client; a client's token is refused; a tool whose definition
//! changed awaits approval on the pins page; the policies page shows the
//! set in force and a refused reload. Screenshots of each page go to
//! `target/console-screenshots/` (docs/console/, shown in docs/audit.md, come from there).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

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

/// Opens `url` again and again (the page is rendered by the proxy) until
/// `expression` is truthy there; its value.
async fn wait_for_page(browser: &mut Browser, url: &str, expression: &str, what: &str) -> Value {
    for _ in 0..100 {
        browser.goto(url).await;
        let value = browser.eval(expression).await;
        if value.as_str().is_some_and(|s| !s.is_empty()) || value == json!(true) {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    browser.wait_for(expression, what).await
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
    // Without `[proxy] policies` the policies page says what that means.
    let policies = http
        .get(format!("{}/admin/policies", served.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        policies.contains("every client may use every tool, prompt and resource"),
        "{policies}"
    );
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

const CHANGED: &str = "Echo the text back, and keep a copy for the audit team.";

#[tokio::test(flavor = "multi_thread")]
async fn the_security_team_sees_pins_awaiting_approval_and_the_policy_set_with_a_refused_reload() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\npolicy_poll = \"100ms\"")
        .with_example_server("example");
    let policies = proxy.policy_folder(
        r#"@id("dev-tools") permit(principal in Group::"dev", action, resource);
@id("no-crash") forbid(principal, action == Action::"call_tool", resource == Tool::"example__crash");"#,
    );
    let config = proxy.dir().join("portcullis.toml");
    let served = proxy.serve_http().await;
    let tester = HttpSession::connect(&served.url).await;
    // Every tool is pinned on first use; then the server changes echo's
    // description (a rug pull), and the proxy withholds it.
    let listed = tester.call(1, "tools/list", json!({})).await;
    assert!(
        tool_names(&listed).contains(&"example__echo".to_owned()),
        "{listed}"
    );
    let pulled = tester
        .call(
            2,
            "tools/call",
            json!({"name": "example__redescribe", "arguments": {"tool": "echo", "description": CHANGED}}),
        )
        .await;
    assert!(pulled["result"].is_object(), "{pulled}");
    let mut withheld = false;
    for id in 3..100 {
        let listed = tester.call(id, "tools/list", json!({})).await;
        if !tool_names(&listed).contains(&"example__echo".to_owned()) {
            withheld = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(withheld, "the changed echo is withheld");

    // Without the login both pages are the login form, as the others.
    for path in ["/admin/pins", "/admin/policies"] {
        let page = reqwest::get(format!("{}{path}", served.base))
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let text = page.text().await.unwrap();
        assert!(text.contains("name=\"token\""), "{path}: {text}");
        assert!(
            !text.contains("example__echo") && !text.contains("dev-tools"),
            "{text}"
        );
    }

    let mut browser = Browser::launch().await;
    let pins_url = format!("{}/admin/pins", served.base);
    browser.goto(&pins_url).await;
    log_in(&mut browser, AUDITOR_TOKEN).await;
    browser
        .wait_for("document.getElementById('calls') !== null", "the live view")
        .await;
    browser.goto(&pins_url).await;
    let field = |name: &str| {
        format!(
            "document.querySelector('section.pin[data-tool=example__echo] td.field-{name}').textContent"
        )
    };
    assert_eq!(browser.eval(&field("server")).await, json!("example"));
    assert_eq!(browser.eval(&field("tool")).await, json!("echo"));
    assert_eq!(browser.eval(&field("state")).await, json!("changed"));
    let pinned = browser.eval(&field("pinned-sha256")).await;
    let seen = browser.eval(&field("new-sha256")).await;
    let (pinned, seen) = (pinned.as_str().unwrap(), seen.as_str().unwrap());
    assert!(
        pinned.len() == 64 && seen.len() == 64 && pinned != seen,
        "{pinned} {seen}"
    );
    assert_ne!(browser.eval(&field("seen")).await, json!(""));
    // The same as `portcullis tools pins` says.
    let path = config.to_str().unwrap();
    let (ok, rows, stderr) =
        run_portcullis(["tools", "pins", "--config", path, "--format", "json"]);
    assert!(ok, "{stderr}");
    let rows: Value = serde_json::from_str(&rows).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["tool"] == json!("example__echo"))
        .unwrap();
    assert_eq!(row["pinned"]["sha256"], json!(pinned));
    assert_eq!(row["seen"]["sha256"], json!(seen));
    let diff = browser
        .eval("document.querySelector('section.pin[data-tool=example__echo] pre.diff').textContent")
        .await;
    assert!(
        diff.as_str()
            .unwrap()
            .contains(&format!("+ /description: \"{CHANGED}\"")),
        "{diff}"
    );
    let command = browser
        .eval("document.querySelector('section.pin[data-tool=example__echo] pre.command').textContent")
        .await;
    let command = command.as_str().unwrap().to_owned();
    assert_eq!(
        command,
        format!("portcullis tools approve example__echo --config {path} --sha256 {seen}")
    );
    let summary = browser
        .eval("document.getElementById('pins-summary').textContent")
        .await;
    assert!(
        summary
            .as_str()
            .unwrap()
            .starts_with("1 awaiting approval; "),
        "{summary}"
    );
    let fine = browser
        .eval("[...document.querySelectorAll('#pinned tbody tr')].map(r => r.dataset.tool)")
        .await;
    let fine: Vec<&str> = fine
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        fine.contains(&"example__add") && !fine.contains(&"example__echo"),
        "{fine:?}"
    );
    assert!(
        summary
            .as_str()
            .unwrap()
            .contains(&format!("{} pinned tools are fine", fine.len()))
    );
    // Taller than the window, so the shot shows the command too.
    browser
        .command(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1040, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    browser.screenshot(&screenshots().join("pins.png")).await;
    browser
        .command("Emulation.clearDeviceMetricsOverride", json!({}))
        .await;

    // The policy set in force, valid.
    let policies_url = format!("{}/admin/policies", served.base);
    browser.goto(&policies_url).await;
    let ids = browser
        .eval("[...document.querySelectorAll('#policies tbody tr')].map(r => [r.dataset.policy, r.cells[1].textContent])")
        .await;
    assert_eq!(
        ids,
        json!([["dev-tools", "permit"], ["no-crash", "forbid"]])
    );
    let detail = |name: &str| format!("document.querySelector('td.field-{name}').textContent");
    let validation = browser.eval(&detail("validation")).await;
    assert!(
        validation
            .as_str()
            .unwrap()
            .starts_with("valid against the schema"),
        "{validation}"
    );
    let set = browser.eval(&detail("policy-set")).await;
    let set = set.as_str().unwrap().to_owned();
    assert!(!set.is_empty());
    assert_eq!(browser.eval(&detail("policies")).await, json!("2"));
    // The id audit records carry.
    let started = common::admin_records(&served.base, "kind=proxy_start", AUDITOR_TOKEN).await;
    assert_eq!(started[0]["policy_set"], json!(set), "{started:?}");
    browser
        .screenshot(&screenshots().join("policies.png"))
        .await;

    // A policy that does not validate: the reload is refused, the page
    // says where, and the set in force stays.
    std::fs::write(
        policies.join("typo.cedar"),
        "// added by mistake\n@id(\"typo\") permit(principal, action, resource) when { principal.departmnet == \"x\" };\n",
    )
    .unwrap();
    let error = wait_for_page(
        &mut browser,
        &policies_url,
        "(() => { const e = document.getElementById('policy-error'); return e ? e.textContent : ''; })()",
        "the refused reload",
    )
    .await;
    let error = error.as_str().unwrap();
    assert!(error.contains("typo.cedar:2:"), "{error}");
    assert!(error.contains("departmnet"), "{error}");
    assert_eq!(browser.eval(&detail("policy-set")).await, json!(set));
    let validation = browser.eval(&detail("validation")).await;
    assert!(
        validation
            .as_str()
            .unwrap()
            .contains("does not validate now"),
        "{validation}"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#policies tbody tr').length")
            .await,
        json!(2)
    );
    browser
        .screenshot(&screenshots().join("policies-refused.png"))
        .await;

    // The command shown approves (the console itself cannot).
    let args: Vec<&str> = command.split(' ').skip(1).collect();
    let (ok, stdout, stderr) = run_portcullis(&args);
    assert!(ok, "{stdout}{stderr}");
    wait_for_page(
        &mut browser,
        &pins_url,
        "document.getElementById('pins-summary').textContent.startsWith('0 awaiting approval')",
        "the approval",
    )
    .await;
    browser.close().await;
    served.terminate().await;
}
