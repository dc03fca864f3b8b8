//! Metrics and traces of exchanges: `GET /metrics`, the counts and times of
//! each exchange, and its trace's root span.

use std::time::Duration;

use serde_json::Value;

use crate::chain::{Exchange, Outcome};
use crate::metrics::Metrics;
use crate::protocol::Method;
use crate::traces::{Attr, Root};
use crate::upstream::Status;

use super::Gateway;

/// Counts and times an exchange. Labels are bounded: the method by the
/// MCP methods, the server by the config, the tool or prompt by the
/// server's list (a name only once routing found it there: an unknown
/// name, which a client chooses, is never a label; a resource's URI never
/// is one).
pub fn observe(
    metrics: &Metrics,
    exchange: &Exchange,
    outcome: &Outcome,
    upstream: Option<Duration>,
    total: Duration,
) {
    let context = &exchange.context;
    let method = method_label(&context.method);
    let server = context.server.as_deref().unwrap_or("");
    // A server chooses its tools' names: a long one is cut.
    let named = matches!(context.method, Method::ToolsCall | Method::PromptsGet);
    let tool = match (&context.target, &context.server) {
        (Some(target), Some(_)) if named => crate::protocol::cut(target, 128),
        _ => "",
    };
    let decision = match outcome {
        Outcome::Delivered => "allow",
        Outcome::Denied { interceptor, .. } => {
            metrics.denials.get([interceptor, method]).add(1);
            if &**interceptor == "ratelimit" {
                // A label per configured client; one per identity provider for
                // the clients its tokens name (as many as the organisation's
                // people: not a label each).
                let provider;
                let label = match &context.client.token {
                    Some(token) => {
                        provider = format!("oauth:{}", token.provider);
                        provider.as_str()
                    }
                    None => &*context.client.name,
                };
                metrics.rate_limited.get([label]).add(1);
            }
            "deny"
        }
        Outcome::Failed { .. } => "error",
    };
    metrics
        .requests
        .get([method, server, tool, decision])
        .add(1);
    metrics.request_seconds.get([method]).observe(total);
    if let Some(upstream) = upstream {
        metrics.upstream_seconds.get([server]).observe(upstream);
    }
    for (rule, direction, count) in crate::interceptors::redact::counts(&exchange.annotations) {
        metrics.redactions.get([&rule, &direction]).add(count);
    }
}

/// Scrubs what a trace carries from a peer's words before it is exported:
/// the exchange's name and its tool, prompt or resource names (a URI may
/// hold a credential; a server names its tools), and every span's error
/// (a refusal's reason can quote what was refused).
pub(super) fn scrub_trace(
    scrubber: &crate::interceptors::Redact,
    root: &mut Root,
    recording: &mut crate::traces::Recording,
) {
    root.name = scrubber.scrubbed(&root.name);
    // Every text attribute: names, URIs, the request id a peer chose.
    for (_, value) in &mut root.attributes {
        if let Attr::Text(text) = value {
            *value = Attr::from(scrubber.scrubbed(text.as_str()));
        }
    }
    let errors = std::iter::once(&mut root.error)
        .chain(recording.spans_mut().iter_mut().map(|span| &mut span.error));
    for error in errors.flatten() {
        *error = scrubber.scrubbed(error);
    }
}

/// What `authz` noted on the exchange under `key` (its policy ids, decision
/// id, policy set), for the record and the trace alike.
pub(super) fn authz_note<'a>(exchange: &'a Exchange, key: &str) -> Option<&'a str> {
    exchange
        .annotations
        .iter()
        .find(|a| &*a.interceptor == "authz" && a.key == key)
        .map(|a| a.value.as_str())
}

/// The exchange's own span, as its audit record tells it: the method and
/// the name the client called, the decision, the deciding interceptor, the
/// policies, and the record's sequence number. Never a URI in the name (span
/// names stay few) and never an argument.
pub fn root_of(exchange: &Exchange, outcome: &Outcome, seq: Option<u64>, separator: &str) -> Root {
    let context = &exchange.context;
    let method = method_label(&context.method);
    let mut attributes: Vec<(&'static str, Attr)> = vec![
        // A method outside MCP's is `other`: a client chooses it.
        ("mcp.method.name", Attr::from(method)),
        ("mcp.session.id", context.session.clone().into()),
        ("portcullis.client", context.client.name.clone().into()),
        ("portcullis.transport", context.transport.as_str().into()),
    ];
    if let Some(id) = &context.request_id {
        let id = match id {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        attributes.push(("jsonrpc.request.id", id.into()));
    }
    // The name a client calls a tool or prompt by (never a URI: span
    // names stay few).
    let mut name = method.to_owned();
    if let Some(server) = &context.server {
        attributes.push(("portcullis.server", server.clone().into()));
        if let Some(target) = &context.target {
            let key = match &context.method {
                Method::ToolsCall => Some("gen_ai.tool.name"),
                Method::PromptsGet => Some("gen_ai.prompt.name"),
                Method::ResourcesRead
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe => {
                    attributes.push(("mcp.resource.uri", target.clone().into()));
                    None
                }
                _ => None,
            };
            if let Some(key) = key {
                let namespaced = format!("{server}{separator}{target}");
                name = format!("{method} {namespaced}");
                attributes.push((key, namespaced.into()));
            }
        }
    }
    let (decision, error) = match outcome {
        Outcome::Delivered => ("allow", None),
        Outcome::Denied {
            interceptor,
            reason,
        } => {
            attributes.push(("portcullis.decided_by", interceptor.clone().into()));
            ("deny", Some(reason.clone()))
        }
        Outcome::Failed { reason } => ("error", Some(reason.clone())),
    };
    attributes.push(("portcullis.decision", decision.into()));
    if let Some(ids) = authz_note(exchange, "policy_ids").filter(|ids| !ids.is_empty()) {
        attributes.push(("portcullis.policy_ids", ids.to_owned().into()));
    }
    if let Some(seq) = seq.and_then(|seq| i64::try_from(seq).ok()) {
        attributes.push(("portcullis.audit.seq", Attr::Int(seq)));
    }
    Root {
        name,
        attributes,
        error,
    }
}

/// What config a proxy enforces: the digest of the file it last applied
/// (at start or by a reload), and the sections changed since the start
/// that apply only at the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    pub config_sha256: Option<String>,
    pub restart_required: Vec<&'static str>,
}

impl Gateway {
    /// The metrics text (`GET /metrics`), or `None` when metrics are off:
    /// the counts and times kept on the hot path, then what the gateway
    /// knows now (sessions, servers, the audit log) and each interceptor's
    /// own series.
    pub fn render_metrics(&self) -> Option<String> {
        use crate::metrics::Exposition;
        let metrics = self.records.metrics()?;
        let mut out = Exposition::default();
        out.declare("portcullis_build_info", "The proxy's version.", "gauge");
        out.sample(
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        metrics.render(&mut out);
        self.reloads.render_enforced(&mut out);
        let (mut stdio, mut http, mut sse) = (0u64, 0u64, 0u64);
        for session in self.sessions.matching(|_| true) {
            match session.transport {
                crate::chain::Transport::Stdio | crate::chain::Transport::Cli => stdio += 1,
                crate::chain::Transport::Http => http += 1,
                crate::chain::Transport::Sse => sse += 1,
            }
        }
        out.declare(
            "portcullis_sessions",
            "Sessions open, by transport.",
            "gauge",
        );
        out.sample(
            "portcullis_sessions",
            &[("transport", "stdio")],
            stdio as f64,
        );
        out.sample("portcullis_sessions", &[("transport", "http")], http as f64);
        out.sample("portcullis_sessions", &[("transport", "sse")], sse as f64);
        self.render_servers(&mut out);
        if let Some(audit) = self.records.audit() {
            out.declare(
                "portcullis_audit_last_seq",
                "The sequence number of the last audit record written.",
                "gauge",
            );
            out.sample(
                "portcullis_audit_last_seq",
                &[],
                *audit.written().borrow() as f64,
            );
            out.declare(
                "portcullis_audit_failing",
                "Whether the audit store cannot be written (1: calls are refused).",
                "gauge",
            );
            out.sample(
                "portcullis_audit_failing",
                &[],
                f64::from(u8::from(audit.is_failing())),
            );
        }
        self.chain.render_metrics(&mut out);
        if let Some(tracer) = self.records.tracer() {
            tracer.render_metrics(&mut out);
        }
        Some(out.finish())
    }

    /// The servers' series: state, restarts, breakers.
    fn render_servers(&self, out: &mut crate::metrics::Exposition) {
        out.declare(
            "portcullis_upstream_up",
            "Whether the server is running and initialized (1) or not (0), by server and state (idle, starting, ready, down, stopped).",
            "gauge",
        );
        out.declare(
            "portcullis_upstream_restarts_total",
            "Times the server was started again after it stopped, by server.",
            "counter",
        );
        out.declare(
            "portcullis_upstream_breaker_open",
            "Whether the server's breaker is open (1: its calls are refused at once until a probe is answered), by server; for a per-client server, whether any of its instances' is.",
            "gauge",
        );
        out.declare(
            "portcullis_upstream_instances",
            "Per-client instances of the server kept now, by server and whether their breaker is open or closed.",
            "gauge",
        );
        let running = self
            .servers
            .iter()
            .filter(|(_, slot)| !slot.is_retired())
            .filter_map(|(index, slot)| Some((index, slot.upstream.as_ref()?)));
        for (index, upstream) in running {
            let state = match upstream.status() {
                Status::Idle(_) => "idle",
                Status::Starting => "starting",
                Status::Ready(_) => "ready",
                Status::Down(_) => "down",
                Status::Stopped => "stopped",
            };
            let name = upstream.name();
            out.sample(
                "portcullis_upstream_up",
                &[("server", name), ("state", state)],
                f64::from(u8::from(state == "ready")),
            );
            out.sample(
                "portcullis_upstream_restarts_total",
                &[("server", name)],
                upstream.restarts() as f64,
            );
            // A per-client server's breaker is open when one of its
            // instances' is: some client's calls are refused.
            let breakers = self.servers.breakers_at(index, upstream);
            out.sample(
                "portcullis_upstream_breaker_open",
                &[("server", name)],
                f64::from(u8::from(breakers.failing())),
            );
            if let super::Breakers::PerClient { instances, open } = breakers {
                for (state, count) in [("open", open), ("closed", instances - open)] {
                    out.sample(
                        "portcullis_upstream_instances",
                        &[("server", name), ("breaker", state)],
                        count as f64,
                    );
                }
            }
        }
    }
}

/// A method as a label value: its name if it is an MCP method the proxy
/// knows, else `other` (a client may send any method name).
fn method_label(method: &Method) -> &'static str {
    method.known_name().unwrap_or(crate::metrics::OTHER)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_methods_are_labelled_other() {
        let label = |name: &str| super::method_label(&name.into());
        assert_eq!(label("tools/call"), "tools/call");
        assert_eq!(label("server/discover"), "server/discover");
        assert_eq!(label("x/evil\"\n"), "other");
    }
}
