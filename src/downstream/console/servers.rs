//! `/admin/servers`: how each server runs, its state now, and for
//! containers the sandbox profile in force (the hardened default and every
//! relaxation).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::detail_table;
use crate::config::{ServerConfig, UpstreamSpec};
use crate::downstream::auth::LoggedIn;
use crate::downstream::layout::page;
use crate::downstream::state::HttpState;
use crate::gateway::Breakers;
use crate::upstream::{BreakerState, Status, Upstream};

pub(super) async fn servers(
    State(state): State<Arc<HttpState>>,
    LoggedIn(auditor): LoggedIn,
) -> Response {
    let gateway = &state.gateway;
    // The servers in force, a reload's additions and changes included.
    let upstreams = gateway.servers().with_breakers();
    let body = html! {
        @for (upstream, breakers) in &upstreams {
            @let server = upstream.config();
            @let (status, fields) = fields(server, upstream, *breakers);
            section class="server" data-server=(server.name) {
                h2 { (server.name) " " span class={ "state state-" (status) } { (status) } }
                (detail_table(&fields))
            }
        }
        @if upstreams.is_empty() {
            p class="hint" { "No servers are configured." }
        }
    };
    page(StatusCode::OK, "Servers", Some(&auditor), body)
}

/// A server's state, and the fields its section shows.
fn fields(
    server: &ServerConfig,
    upstream: &Upstream,
    breakers: Breakers,
) -> (&'static str, Vec<(&'static str, String)>) {
    let (status, detail) = match upstream.status() {
        Status::Idle(_) => ("idle", String::new()),
        Status::Starting => ("starting", String::new()),
        Status::Ready(_) => ("ready", String::new()),
        Status::Down(reason) => ("down", reason),
        Status::Stopped => ("stopped", String::new()),
    };
    let breaker = match breakers {
        Breakers::Shared(BreakerState::Closed) => "closed".to_owned(),
        Breakers::Shared(BreakerState::Open) => {
            "OPEN: its calls are refused until a probe is answered".to_owned()
        }
        Breakers::PerClient { instances, open: 0 } => {
            format!("closed (each per-client instance has its own; {instances} kept now)")
        }
        Breakers::PerClient { instances, open } => format!(
            "OPEN for {open} of {instances} per-client instances: their clients' calls are refused until a probe is answered"
        ),
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("state", status.to_owned()),
        ("restarts", upstream.restarts().to_string()),
        ("breaker", breaker),
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
    (status, fields)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
