//! The web console at `/admin/`, for auditors and security teams: a live
//! view of calls with filters, one exchange's detail, the chain's
//! verification, the servers ([`servers`]), the tool pins awaiting
//! approval ([`pins`]) and the policy set in force ([`policies`]).
//! Server-rendered HTML with a little plain JavaScript, both inside the
//! binary (no build step, nothing fetched from elsewhere).
//!
//! Login: an auditor's token posted to `/admin/login` gives a cookie
//! naming a random login ([`super::logins`]); a client's token is refused
//! (and recorded, as at `/admin/audit`). The cookie then also opens the
//! admin API the page's script polls. Every page is sent with the
//! console's security headers ([`super::layout`]); every value from the
//! log is HTML-escaped by the templates (tool names, reasons and details
//! come from clients and servers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::CookieJar;
use maud::{Markup, html};
use serde::Deserialize;

use super::auth::{self, LoggedIn};
use super::layout::{login_page, page, secure};
use super::logins;
use super::state::{BodyError, HttpState, body_timed_out, read_body};
use super::throttle::{Credential, Source};
use crate::audit::{AuditRecord, FilterParams, Reader};

mod fleet;
mod pins;
mod policies;
mod servers;

/// Rows the live view starts with.
const FIRST_ROWS: usize = 100;

const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console's pages and forms. Every page asks for [`LoggedIn`]; the
/// login and logout forms are open to anyone (behind the router's origin
/// check).
pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/", get(index))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/exchange/{seq}", get(exchange))
        .route("/admin/servers", get(servers::servers))
        .route("/admin/fleet", get(fleet::fleet))
        .route("/admin/pins", get(pins::pins))
        .route("/admin/policies", get(policies::policies))
}

/// What anyone may fetch: the way in, the script and the style.
pub(super) fn public_routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/static/console.js", get(script))
        .route("/admin/static/console.css", get(style))
}

/// The audit log a logged-in auditor's page reads, or the page saying
/// there is none.
fn reader(state: &HttpState, auditor: &str) -> Result<Reader, Box<Response>> {
    match state
        .gateway
        .records()
        .audit()
        .and_then(|audit| audit.reader())
    {
        Some(reader) => Ok(reader.clone()),
        None => Err(Box::new(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "No audit log",
            Some(auditor),
            html! { p class="problem" { "This proxy keeps no audit log." } },
        ))),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The longest login form read (a token is far shorter).
const MAX_LOGIN_FORM: usize = 8 * 1024;

async fn login(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    body: Body,
) -> Response {
    let form = match read_body(body, MAX_LOGIN_FORM, state.body_read_timeout).await {
        Ok(form) => form,
        Err(BodyError::TimedOut) => return body_timed_out(),
        Err(_) => return login_page(StatusCode::BAD_REQUEST, Some("Enter an auditor token.")),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&form) else {
        return login_page(StatusCode::BAD_REQUEST, Some("Enter an auditor token."));
    };
    // The source was checked by the guard; the token's prefix is checked
    // here, where the token is read.
    let credential = Some(Credential::of(form.token.trim()));
    if let Some(throttled) =
        auth::throttled(&state, Source::of(peer.ip()), credential, "/admin/login")
    {
        return throttled;
    }
    let refused = login_page(
        StatusCode::UNAUTHORIZED,
        Some("This is not an auditor's token."),
    );
    let auditor = match auth::auditor_of_token(&state.credentials, &form.token, refused) {
        Ok(auditor) => auditor,
        Err(refused) => return *refused,
    };
    let Ok(id) = state.logins.open(&auditor) else {
        return login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Too many console logins at once; try again later."),
        );
    };
    tracing::info!(%auditor, "console login");
    (
        jar.add(logins::login_cookie(id, state.tls)),
        Redirect::to("/admin/"),
    )
        .into_response()
}

async fn logout(
    State(state): State<Arc<HttpState>>,
    jar: CookieJar,
    headers: HeaderMap,
) -> Response {
    // Every login the request names ends (a planted one too): the browser
    // forgets the cookie, so no login it held may outlive it.
    for id in logins::cookies(&headers) {
        state.logins.end(&id);
    }
    (
        jar.add(logins::logout_cookie(state.tls)),
        Redirect::to("/admin/"),
    )
        .into_response()
}

/// What a call's row shows (the script builds the same cells).
fn row(record: &AuditRecord) -> Markup {
    html! {
        tr data-seq=(record.seq) class={ "decision-" (record.decision) } {
            td { a href={ "/admin/exchange/" (record.seq) } { (record.seq) } }
            (call_cells(record))
        }
    }
}

/// A call's cells in a table of calls, from its time to its latency.
fn call_cells(record: &AuditRecord) -> Markup {
    let what = record.target.as_deref().unwrap_or(&record.method);
    let latency = format!("{:.1}", record.total_us as f64 / 1000.0);
    html! {
        td { (record.time) }
        td { (record.client) }
        td { (record.server.as_deref().unwrap_or("")) }
        td { (record.method) }
        td { (what) }
        td class="decision" { (record.decision) }
        td { (record.decided_by.as_deref().unwrap_or("")) }
        td class="shadow" { (shadow_differs(record).unwrap_or_default()) }
        td class="num" { (latency) }
    }
}

/// The shadow set's decision of a record, where it differs from the
/// enforced one (`[proxy] shadow_policies`): of its request, else of the
/// answer to a server's question it keeps.
fn shadow_differs(record: &AuditRecord) -> Option<String> {
    crate::audit::shadow_differences(record).find_map(|(shadow, answer)| {
        let decision = shadow.get("decision")?.as_str()?;
        Some(match answer {
            true => format!("answer: {decision}"),
            false => decision.to_owned(),
        })
    })
}

/// The enforced decision and the shadow set's, side by side, for a record
/// that holds both.
fn shadow_sides(record: &AuditRecord) -> Option<Markup> {
    let detail = record.detail.as_ref()?;
    let shadow = detail.get("shadow")?;
    let text = |value: Option<&serde_json::Value>| match value {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_owned)
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    // Authz's verdict (`allow`, `deny`, `ask`), as the case it decided
    // keeps it; the record's decision where it did not keep one.
    let enforced = detail
        .get("decided")
        .and_then(|decided| decided.get("expect"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or(&record.decision);
    let rows = [
        (
            "decision",
            enforced.to_owned(),
            text(shadow.get("decision")),
        ),
        (
            "policies",
            record.policy_ids.join(", "),
            text(shadow.get("policies")),
        ),
        (
            "policy set",
            record.policy_set.clone().unwrap_or_default(),
            text(shadow.get("policy_set")),
        ),
        ("a policy failed", String::new(), text(shadow.get("failed"))),
    ];
    let differs = shadow.get("differs") == Some(&serde_json::Value::Bool(true));
    Some(html! {
        h3 { "Enforced and shadow policies" }
        p class={ "shadow-" (if differs { "differs" } else { "agrees" }) } {
            (if differs { "The shadow set decided otherwise." } else { "The shadow set decided the same." })
        }
        table class="sides" id="shadow" {
            thead { tr { th {} th { "enforced" } th { "shadow" } } }
            tbody {
                @for (name, enforced, shadow) in rows {
                    tr {
                        th { (name) }
                        td class={ "enforced-" (name.replace(' ', "-")) } { (enforced) }
                        td class={ "shadow-" (name.replace(' ', "-")) } { (shadow) }
                    }
                }
            }
        }
    })
}

/// The filters the live view keeps, as written in its form.
#[derive(Deserialize, Default)]
struct ViewFilter {
    client: Option<String>,
    server: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    provider: Option<String>,
    subject: Option<String>,
    shadow: Option<String>,
}

impl ViewFilter {
    fn params(&self) -> FilterParams {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        FilterParams {
            client: set(&self.client),
            server: set(&self.server),
            tool: set(&self.tool),
            decision: set(&self.decision),
            provider: set(&self.provider),
            subject: set(&self.subject),
            shadow: set(&self.shadow),
            kind: Some("exchange".into()),
            limit: Some(FIRST_ROWS.to_string()),
            ..FilterParams::default()
        }
    }

    /// The filter as the admin API's query string (for the script).
    fn query(&self) -> String {
        let params = FilterParams {
            kind: None,
            limit: None,
            ..self.params()
        };
        serde_urlencoded::to_string(&params).unwrap_or_default()
    }

    /// The live view's filter form, filled in as the view is.
    fn form(&self) -> Markup {
        self.form_for("/admin/")
    }

    /// The filter form of the page at `action`, filled in as the view is.
    fn form_for(&self, action: &str) -> Markup {
        let field = |name: &str, value: &Option<String>, hint: &str| {
            html! {
                label { (name) input name=(name) value=(value.as_deref().unwrap_or("")) placeholder=(hint); }
            }
        };
        let decision = self.decision.as_deref().unwrap_or("");
        let shadow = self.shadow.as_deref().unwrap_or("");
        html! {
            form class="filters" method="get" action=(action) {
                (field("client", &self.client, "any client"))
                (field("server", &self.server, "any server"))
                (field("tool", &self.tool, "server__tool"))
                (field("provider", &self.provider, "any identity provider"))
                (field("subject", &self.subject, "any token subject"))
                label {
                    "decision"
                    select name="decision" {
                        @for d in ["", "allow", "deny", "error"] {
                            option value=(d) selected[d == decision] {
                                (if d.is_empty() { "any" } else { d })
                            }
                        }
                    }
                }
                label {
                    "shadow policies"
                    select name="shadow" {
                        option value="" selected[shadow.is_empty()] { "any" }
                        option value="differs" selected[shadow == "differs"] { "decided otherwise" }
                    }
                }
                button type="submit" { "Filter" }
                a href=(action) { "Clear" }
            }
        }
    }
}

async fn index(
    State(state): State<Arc<HttpState>>,
    LoggedIn(auditor): LoggedIn,
    view: Result<Query<ViewFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let reader = match reader(&state, &auditor) {
        Ok(reader) => reader,
        Err(response) => return *response,
    };
    // (Parameters the view does not know are ignored: a bookmark stays
    // usable.)
    let view = view.map(|Query(view)| view).unwrap_or_default();
    state.caught_up().await;
    let separator = state.gateway.config().proxy.namespace_separator.clone();
    let filter = match view.params().to_filter(SystemTime::now(), None) {
        Ok(filter) => filter,
        Err(err) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Calls",
                Some(&auditor),
                html! {
                    (view.form())
                    p class="problem" role="alert" { (err) }
                },
            );
        }
    };
    // The last sequence number is read before the query: a record written
    // in between is then shown by the page's first poll, not skipped.
    let found = tokio::task::spawn_blocking(move || {
        let last_seq = reader.last_seq()?;
        Ok::<_, crate::audit::AuditError>((reader.query(&filter, &separator)?, last_seq))
    })
    .await;
    let (records, last_seq) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => return store_problem(&auditor, &err.to_string()),
        Err(err) => return store_problem(&auditor, &err.to_string()),
    };
    page(
        StatusCode::OK,
        "Calls",
        Some(&auditor),
        html! {
            section class="verify" {
                button id="verify" type="button" { "Verify the chain" }
                span id="verify-state" aria-live="polite" {}
            }
            (view.form())
            table id="calls" data-last-seq=(last_seq) data-filter=(view.query()) {
                thead {
                    tr {
                        th { "seq" } th { "time" } th { "client" } th { "server" } th { "method" }
                        th { "target" } th { "decision" } th { "decided by" }
                        th title="The shadow policy set's decision, where it differs" { "shadow" }
                        th class="num" { "ms" }
                    }
                }
                tbody {
                    @for record in records.iter().rev() { (row(record)) }
                }
            }
            p class="hint" { "Newest first; new calls appear as they are recorded." }
        },
    )
}

fn store_problem(auditor: &str, message: &str) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Audit log",
        Some(auditor),
        html! {
            p class="problem" role="alert" { "The audit log cannot be read: " (message) }
        },
    )
}

async fn exchange(
    State(state): State<Arc<HttpState>>,
    LoggedIn(auditor): LoggedIn,
    Path(seq): Path<String>,
) -> Response {
    let reader = match reader(&state, &auditor) {
        Ok(reader) => reader,
        Err(response) => return *response,
    };
    let problem = |status, text: String| {
        page(
            status,
            "Exchange",
            Some(&auditor),
            html! { p class="problem" { (text) } },
        )
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "A record is named by its sequence number.".into(),
        );
    };
    state.caught_up().await;
    let record = match tokio::task::spawn_blocking(move || reader.get(seq)).await {
        Ok(Ok(Some(record))) => record,
        Ok(Ok(None)) => return problem(StatusCode::NOT_FOUND, format!("No record {seq}.")),
        Ok(Err(err)) => return store_problem(&auditor, &err.to_string()),
        Err(err) => return store_problem(&auditor, &err.to_string()),
    };
    page(
        StatusCode::OK,
        &format!("Exchange {seq}"),
        Some(&auditor),
        html! {
            h2 { "Exchange " (seq) }
            p class={ "decision-" (record.decision) } { (record.decision) }
            @if let Some(sides) = shadow_sides(&record) { (sides) }
            table class="detail" id="detail" {
                @for (name, value) in exchange_fields(&record) {
                    tr {
                        th { (name) }
                        td class={ "field-" (name.replace(' ', "-")) } { pre { (value) } }
                    }
                }
            }
            p { a href="/admin/" { "Back to calls" } }
        },
    )
}

/// Every field of an exchange's record, named as its page shows them.
fn exchange_fields(record: &AuditRecord) -> Vec<(&'static str, String)> {
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    let mut fields = vec![
        ("sequence", record.seq.to_string()),
        ("time", record.time.clone()),
        ("kind", record.kind.clone()),
        ("client", record.client.clone()),
        ("transport", record.transport.clone()),
        ("session", record.session.clone()),
        ("server", record.server.clone().unwrap_or_default()),
        ("method", record.method.clone()),
        ("target", record.target.clone().unwrap_or_default()),
        (
            "request id",
            record
                .request_id
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
        ),
        ("decision", record.decision.clone()),
        ("decided by", record.decided_by.clone().unwrap_or_default()),
        ("reason", record.reason.clone().unwrap_or_default()),
        ("policy ids", record.policy_ids.join(", ")),
        (
            "decision id",
            record.decision_id.clone().unwrap_or_default(),
        ),
        ("policy set", record.policy_set.clone().unwrap_or_default()),
        (
            "redactions",
            record
                .redactions
                .iter()
                .map(|r| format!("{} × {} ({})", r.count, r.rule, r.direction))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "arguments SHA-256",
            record.arguments_sha256.clone().unwrap_or_default(),
        ),
        ("result bytes", record.result_bytes.to_string()),
        ("error", record.is_error.to_string()),
        (
            "upstream ms",
            record.upstream_us.map(ms).unwrap_or_default(),
        ),
        ("total ms", ms(record.total_us)),
        ("previous hash", record.prev_hash.clone()),
        ("hash", record.hash.clone()),
    ];
    if let Some(detail) = &record.detail {
        fields.push((
            "detail",
            serde_json::to_string_pretty(detail).unwrap_or_default(),
        ));
    }
    fields
}

/// A table of named values, each value's cell classed `field-NAME` (spaces
/// as dashes) for the style and the tests.
fn detail_table(fields: &[(&str, String)]) -> Markup {
    html! {
        table class="detail" {
            @for (name, value) in fields {
                tr {
                    th { (name) }
                    td class={ "field-" (name.replace(' ', "-")) } { (value) }
                }
            }
        }
    }
}

async fn script() -> Response {
    let mut response = SCRIPT.into_response();
    secure(&mut response, "text/javascript; charset=utf-8");
    response
}

async fn style() -> Response {
    let mut response = STYLE.into_response();
    secure(&mut response, "text/css; charset=utf-8");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_the_log_are_escaped() {
        let mut record = AuditRecord::event("exchange", "deny");
        record.seq = 7;
        record.target = Some("<script>alert('x')</script>".into());
        record.client = "a\"b&c".into();
        let html = row(&record).into_string();
        assert!(!html.contains("<script>"), "{html}");
        // maud escapes `&`, `<`, `>` and `"`; it always quotes attributes
        // with `"`, so a `'` cannot end one and is left as it is.
        assert!(html.contains("&lt;script&gt;alert('x')&lt;/script&gt;"));
        assert!(html.contains("a&quot;b&amp;c"));
    }

    #[test]
    fn a_value_cannot_leave_its_attribute() {
        let view = ViewFilter {
            client: Some("\" autofocus onfocus=\"alert(1)".into()),
            ..ViewFilter::default()
        };
        let html = view.form().into_string();
        assert!(
            html.contains("value=\"&quot; autofocus onfocus=&quot;alert(1)\""),
            "{html}"
        );
        let fields = [("a\" onclick=\"x", "<b>".to_owned())];
        let html = detail_table(&fields).into_string();
        assert!(
            html.contains("<td class=\"field-a&quot;-onclick=&quot;x\">&lt;b&gt;</td>"),
            "{html}"
        );
    }
}
