//! The web console at `/admin/`, for auditors and security teams: a live
//! view of calls with filters, one exchange's detail, the chain's
//! verification, the servers, the tool pins awaiting approval ([`pins`])
//! and the policy set in force ([`policies`]). Server-rendered HTML with a
//! little plain JavaScript, both inside the binary (no build step, nothing
//! fetched from elsewhere).
//!
//! Login: an auditor's token posted to `/admin/login` gives an `HttpOnly`,
//! `SameSite=Strict` cookie naming a random login (kept in memory, 8 hours);
//! a client's token is refused (and recorded, as at `/admin/audit`). The
//! cookie then also opens the admin API the page's script polls. Every page
//! is sent with a strict Content-Security-Policy (scripts and styles from
//! the proxy only, no inline script), `nosniff`, no framing, no caching,
//! and the referrer sent to the proxy itself only (with `no-referrer` a
//! form's `Origin` would be `null`, which the origin check refuses); every
//! value from the log is HTML-escaped (tool names, reasons and details come
//! from clients and servers).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::http::HttpState;
use super::throttle::{Credential, Source};
use crate::audit::{AuditRecord, FilterParams, Reader};

mod pins;
mod policies;

/// The login cookie's name.
const COOKIE: &str = "portcullis_console";
/// How long a login lasts.
const LOGIN_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many logins at once (expired ones are dropped first).
const MAX_LOGINS: usize = 1_000;
/// Rows the live view starts with.
const FIRST_ROWS: usize = 100;

const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// One console login.
#[derive(Debug, Clone)]
pub(super) struct Login {
    auditor: String,
    expires: Instant,
}

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(index))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/exchange/{seq}", get(exchange))
        .route("/admin/servers", get(servers))
        .route("/admin/pins", get(pins::pins))
        .route("/admin/policies", get(policies::policies))
        .route("/admin/static/console.js", get(script))
        .route("/admin/static/console.css", get(style))
}

/// The auditor logged in with the request's cookie, if any. A browser's
/// request made by another site's page does not count, even on this
/// machine: `SameSite` ignores ports, so a page served from another port
/// of localhost would send the cookie; `Sec-Fetch-Site` tells them apart.
pub(super) fn logged_in(state: &HttpState, headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return None;
    }
    let id = cookie(headers)?;
    let mut logins = state.console.lock().unwrap_or_else(|p| p.into_inner());
    match logins.get(&id) {
        Some(login) if login.expires > Instant::now() => Some(login.auditor.clone()),
        Some(_) => {
            logins.remove(&id);
            None
        }
        None => None,
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Text made safe for HTML (element content and quoted attributes).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page with the console's headers.
fn page(status: StatusCode, title: &str, auditor: Option<&str>, body: &str) -> Response {
    let nav = match auditor {
        Some(auditor) => format!(
            "<nav><a href=\"/admin/\">Calls</a><a href=\"/admin/servers\">Servers</a>\
             <a href=\"/admin/pins\">Tool pins</a><a href=\"/admin/policies\">Policies</a><span class=\"who\">{}</span>\
             <form method=\"post\" action=\"/admin/logout\"><button type=\"submit\">Log out</button></form></nav>",
            esc(auditor)
        ),
        None => String::new(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Portcullis</title>\
         <link rel=\"stylesheet\" href=\"/admin/static/console.css\">\
         <script src=\"/admin/static/console.js\" defer></script></head>\
         <body><header><h1>Portcullis</h1>{nav}</header><main>{body}</main></body></html>\n",
        title = esc(title),
    );
    let mut response = (status, html).into_response();
    secure(&mut response, "text/html; charset=utf-8");
    response
}

fn secure(response: &mut Response, content_type: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

pub(super) fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"problem\" role=\"alert\">{}</p>", esc(p)))
        .unwrap_or_default();
    page(
        status,
        "Log in",
        None,
        &format!(
            "<section class=\"login\"><h2>Auditors' console</h2>{problem}\
             <form method=\"post\" action=\"/admin/login\">\
             <label for=\"token\">Auditor token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required>\
             <button type=\"submit\">Log in</button></form>\
             <p class=\"hint\">An <code>[[auditors]]</code> token from the proxy's config. Client tokens cannot read the log.</p></section>"
        ),
    )
}

/// The checks every console page passes: Host and Origin, then the login.
/// The auditor, or the page to answer with.
fn auditor(state: &HttpState, headers: &HeaderMap) -> Result<String, Box<Response>> {
    state.check_same_origin(headers)?;
    logged_in(state, headers).ok_or_else(|| Box::new(login_page(StatusCode::OK, None)))
}

/// [`auditor`], and the audit log to read.
fn admit(state: &HttpState, headers: &HeaderMap) -> Result<(String, Reader), Box<Response>> {
    let auditor = auditor(state, headers)?;
    match state.gateway.audit().and_then(|audit| audit.reader()) {
        Some(reader) => Ok((auditor, reader.clone())),
        None => Err(Box::new(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "No audit log",
            Some(&auditor),
            "<p class=\"problem\">This proxy keeps no audit log.</p>",
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
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(response) = state.check_same_origin(&headers) {
        return *response;
    }
    let form = match super::http::read_body(body, MAX_LOGIN_FORM, state.body_read_timeout).await {
        Ok(form) => form,
        Err(super::http::BodyError::TimedOut) => return super::http::body_timed_out(),
        Err(_) => return login_page(StatusCode::BAD_REQUEST, Some("Enter an auditor token.")),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&form) else {
        return login_page(StatusCode::BAD_REQUEST, Some("Enter an auditor token."));
    };
    // The source was checked by the guard; the token's prefix is checked
    // here, where the token is read.
    let credential = Some(Credential::of(form.token.trim()));
    if let Some(throttled) = state.throttled(Source::of(peer.ip()), credential, "/admin/login") {
        return throttled;
    }
    let refused = login_page(
        StatusCode::UNAUTHORIZED,
        Some("This is not an auditor's token."),
    );
    let auditor = match state.auditor_of_token(&form.token, refused) {
        Ok(auditor) => auditor,
        Err(refused) => return *refused,
    };
    let id = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    {
        let mut logins = state.console.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        logins.retain(|_, login| login.expires > now);
        if logins.len() >= MAX_LOGINS {
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("Too many console logins at once; try again later."),
            );
        }
        logins.insert(
            id.clone(),
            Login {
                auditor: auditor.clone(),
                expires: now + LOGIN_TTL,
            },
        );
    }
    tracing::info!(%auditor, "console login");
    let mut response = Redirect::to("/admin/").into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LOGIN_TTL.as_secs(),
        // Over TLS the browser must never send it in clear.
        if state.tls { "; Secure" } else { "" }
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(response) = state.check_same_origin(&headers) {
        return *response;
    }
    if let Some(id) = cookie(&headers) {
        state
            .console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    let mut response = Redirect::to("/admin/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(if state.tls {
            "portcullis_console=; Path=/admin; HttpOnly; SameSite=Strict; Secure; Max-Age=0"
        } else {
            "portcullis_console=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"
        }),
    );
    response
}

/// What a call's row shows (the script builds the same cells).
fn row(record: &AuditRecord) -> String {
    let what = record.target.as_deref().unwrap_or(&record.method);
    let latency = format!("{:.1}", record.total_us as f64 / 1000.0);
    format!(
        "<tr data-seq=\"{seq}\" class=\"decision-{decision}\">\
         <td><a href=\"/admin/exchange/{seq}\">{seq}</a></td><td>{time}</td><td>{client}</td>\
         <td>{server}</td><td>{method}</td><td>{what}</td><td class=\"decision\">{decision}</td>\
         <td>{by}</td><td class=\"num\">{latency}</td></tr>",
        seq = record.seq,
        time = esc(&record.time),
        client = esc(&record.client),
        server = esc(record.server.as_deref().unwrap_or("")),
        method = esc(&record.method),
        what = esc(what),
        decision = esc(&record.decision),
        by = esc(record.decided_by.as_deref().unwrap_or("")),
    )
}

/// The filters the live view keeps, as written in its form.
#[derive(Deserialize, Default)]
struct ViewFilter {
    client: Option<String>,
    server: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
}

impl ViewFilter {
    fn params(&self) -> FilterParams {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        FilterParams {
            client: set(&self.client),
            server: set(&self.server),
            tool: set(&self.tool),
            decision: set(&self.decision),
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
}

async fn index(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    view: Result<Query<ViewFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (auditor, reader) = match admit(&state, &headers) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let view = view.map(|Query(view)| view).unwrap_or_default();
    // (Parameters the view does not know are ignored: a bookmark stays
    // usable.)
    let field = |name: &str, value: &Option<String>, hint: &str| {
        format!(
            "<label>{name}<input name=\"{name}\" value=\"{}\" placeholder=\"{hint}\"></label>",
            esc(value.as_deref().unwrap_or(""))
        )
    };
    let decision = view.decision.as_deref().unwrap_or("");
    let options: String = ["", "allow", "deny", "error"]
        .iter()
        .map(|d| {
            format!(
                "<option value=\"{d}\"{}>{}</option>",
                if *d == decision { " selected" } else { "" },
                if d.is_empty() { "any" } else { d }
            )
        })
        .collect();
    let form = format!(
        "<form class=\"filters\" method=\"get\" action=\"/admin/\">{}{}{}\
         <label>decision<select name=\"decision\">{options}</select></label>\
         <button type=\"submit\">Filter</button><a href=\"/admin/\">Clear</a></form>",
        field("client", &view.client, "any client"),
        field("server", &view.server, "any server"),
        field("tool", &view.tool, "server__tool"),
    );
    let verify = "<section class=\"verify\"><button id=\"verify\" type=\"button\">Verify the chain</button>\
                  <span id=\"verify-state\" aria-live=\"polite\"></span></section>";
    super::admin::caught_up(&state).await;
    let separator = state.gateway.config().proxy.namespace_separator.clone();
    let filter = match view.params().to_filter(SystemTime::now(), None) {
        Ok(filter) => filter,
        Err(err) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Calls",
                Some(&auditor),
                &format!(
                    "{form}<p class=\"problem\" role=\"alert\">{}</p>",
                    esc(&err.to_string())
                ),
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
    let rows: String = records.iter().rev().map(row).collect();
    page(
        StatusCode::OK,
        "Calls",
        Some(&auditor),
        &format!(
            "{verify}{form}<table id=\"calls\" data-last-seq=\"{last_seq}\" data-filter=\"{filter}\">\
             <thead><tr><th>seq</th><th>time</th><th>client</th><th>server</th><th>method</th>\
             <th>target</th><th>decision</th><th>decided by</th><th class=\"num\">ms</th></tr></thead>\
             <tbody>{rows}</tbody></table>\
             <p class=\"hint\">Newest first; new calls appear as they are recorded.</p>",
            filter = esc(&view.query()),
        ),
    )
}

fn store_problem(auditor: &str, message: &str) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Audit log",
        Some(auditor),
        &format!(
            "<p class=\"problem\" role=\"alert\">The audit log cannot be read: {}</p>",
            esc(message)
        ),
    )
}

async fn exchange(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    let (auditor, reader) = match admit(&state, &headers) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Exchange",
            Some(&auditor),
            "<p class=\"problem\">A record is named by its sequence number.</p>",
        );
    };
    super::admin::caught_up(&state).await;
    let record = match tokio::task::spawn_blocking(move || reader.get(seq)).await {
        Ok(Ok(Some(record))) => record,
        Ok(Ok(None)) => {
            return page(
                StatusCode::NOT_FOUND,
                "Exchange",
                Some(&auditor),
                &format!("<p class=\"problem\">No record {seq}.</p>"),
            );
        }
        Ok(Err(err)) => return store_problem(&auditor, &err.to_string()),
        Err(err) => return store_problem(&auditor, &err.to_string()),
    };
    let mut fields: Vec<(&str, String)> = vec![
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
            record
                .upstream_us
                .map(|us| format!("{:.3}", us as f64 / 1000.0))
                .unwrap_or_default(),
        ),
        (
            "total ms",
            format!("{:.3}", record.total_us as f64 / 1000.0),
        ),
        ("previous hash", record.prev_hash.clone()),
        ("hash", record.hash.clone()),
    ];
    if let Some(detail) = &record.detail {
        fields.push((
            "detail",
            serde_json::to_string_pretty(detail).unwrap_or_default(),
        ));
    }
    let rows: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<tr><th>{name}</th><td class=\"field-{}\"><pre>{}</pre></td></tr>",
                name.replace(' ', "-"),
                esc(value)
            )
        })
        .collect();
    page(
        StatusCode::OK,
        &format!("Exchange {seq}"),
        Some(&auditor),
        &format!(
            "<h2>Exchange {seq}</h2><p class=\"decision-{decision}\">{decision}</p>\
             <table class=\"detail\" id=\"detail\">{rows}</table>\
             <p><a href=\"/admin/\">Back to calls</a></p>",
            decision = esc(&record.decision),
        ),
    )
}

/// The servers: how each runs, its state now, and for containers the
/// sandbox profile in force (the hardened default and every relaxation).
async fn servers(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let auditor = match auditor(&state, &headers) {
        Ok(auditor) => auditor,
        Err(response) => return *response,
    };
    use crate::config::UpstreamSpec;
    use crate::upstream::Status;
    let gateway = &state.gateway;
    let mut sections = String::new();
    for (server, upstream) in gateway.config().servers.iter().zip(gateway.upstreams()) {
        let (status, detail) = match upstream.status() {
            Status::Idle(_) => ("idle", String::new()),
            Status::Starting => ("starting", String::new()),
            Status::Ready(_) => ("ready", String::new()),
            Status::Down(reason) => ("down", reason),
            Status::Stopped => ("stopped", String::new()),
        };
        let mut fields: Vec<(&str, String)> = vec![
            ("state", status.to_owned()),
            ("restarts", upstream.restarts().to_string()),
        ];
        if !detail.is_empty() {
            fields.push(("last failure", detail));
        }
        match &server.kind {
            UpstreamSpec::Container(spec) => {
                let sandbox = &spec.sandbox;
                fields.push(("runs", "container".into()));
                fields.push((
                    "image",
                    match &spec.digest {
                        Some(digest) => format!("{} ({digest})", spec.image),
                        None => spec.image.clone(),
                    },
                ));
                fields.push(("profile", sandbox.summary()));
                fields.push(("user", sandbox.user.clone()));
                fields.push(("network", sandbox.network.clone()));
                fields.push((
                    "memory",
                    format!("{} bytes (swap: none)", sandbox.memory_bytes),
                ));
                fields.push(("cpus", sandbox.cpus.to_string()));
                fields.push(("pids", sandbox.pids.to_string()));
                fields.push((
                    "root filesystem",
                    if sandbox.read_only_root {
                        "read-only".into()
                    } else {
                        "WRITABLE".into()
                    },
                ));
                fields.push((
                    "/tmp",
                    format!("tmpfs, {} bytes, noexec,nosuid,nodev", sandbox.tmp_bytes),
                ));
                fields.push((
                    "always",
                    "all capabilities dropped, no-new-privileges, Docker's default seccomp profile, an init process"
                        .into(),
                ));
                let relaxations = sandbox.relaxations();
                fields.push((
                    "relaxations",
                    if relaxations.is_empty() {
                        "none".into()
                    } else {
                        relaxations.join("; ")
                    },
                ));
                let dangers = sandbox.dangers();
                if !dangers.is_empty() {
                    fields.push(("DANGEROUS", dangers.join("; ")));
                }
            }
            UpstreamSpec::Process(spec) => {
                fields.push((
                    "runs",
                    "process (UNSANDBOXED: the proxy's own rights)".into(),
                ));
                fields.push(("command", spec.command.clone()));
            }
            UpstreamSpec::Remote(spec) => {
                fields.push(("runs", "remote".into()));
                fields.push(("url", shown_url(&spec.url)));
            }
        }
        sections.push_str(&format!(
            "<section class=\"server\" data-server=\"{name}\"><h2>{name} <span class=\"state state-{status}\">{status}</span></h2>\
             {table}</section>",
            name = esc(&server.name),
            table = detail_table(&fields),
        ));
    }
    if sections.is_empty() {
        sections = "<p class=\"hint\">No servers are configured.</p>".into();
    }
    page(StatusCode::OK, "Servers", Some(&auditor), &sections)
}

/// A table of named values, each value's cell classed `field-NAME` (spaces
/// as dashes) for the style and the tests; everything escaped.
fn detail_table(fields: &[(&str, String)]) -> String {
    let rows: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<tr><th>{}</th><td class=\"field-{}\">{}</td></tr>",
                esc(name),
                esc(&name.replace(' ', "-")),
                esc(value)
            )
        })
        .collect();
    format!("<table class=\"detail\">{rows}</table>")
}

/// A URL without what may hold a credential: user information, query and
/// fragment are left out.
fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or_default();
    let hidden = if url.contains('?') || authority.contains('@') {
        " (credentials and query not shown)"
    } else {
        ""
    };
    format!("{scheme}://{host}{path}{hidden}")
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
        let html = row(&record);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("a&quot;b&amp;c"));
    }

    #[test]
    fn remote_urls_are_shown_without_credentials() {
        assert_eq!(
            shown_url("https://user:pw@mcp.example.com:8443/v1/mcp?api_key=s3cret#x"),
            "https://mcp.example.com:8443/v1/mcp (credentials and query not shown)"
        );
        assert_eq!(
            shown_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/mcp"
        );
    }

    #[test]
    fn the_login_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; portcullis_console=abc123; x=y"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc123"));
        headers.insert(header::COOKIE, HeaderValue::from_static("other=1"));
        assert_eq!(cookie(&headers), None);
    }
}
