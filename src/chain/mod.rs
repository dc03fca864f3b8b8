//! The interceptor chain: the trait every interceptor implements, the
//! `Exchange` it looks at, the `Verdict` it returns, and the runner.
//!
//! ```text
//!   client ── request ──►  [1] → [2] → … → [n]  ──► server
//!   client ◄─ response ──  [1] ← [2] ← … ← [n]  ◄── server
//! ```
//! Requests and notifications run in config order, responses in reverse, so
//! the first interceptor is also the last one to see what the client gets.
//! A `Deny` stops the chain. `on_outcome` runs on every interceptor once the
//! exchange is over, whatever happened — that is where audit hooks in.

use std::sync::Arc;

use serde_json::Value;

use crate::metrics::{Histogram, Metrics};
use crate::protocol::{self, Method};
use crate::traces::{Recording, Span, SpanKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
    Notification,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
            Phase::Notification => "notification",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Stdio,
    Http,
    /// HTTP+SSE, the transport of protocol 2024-11-05 (`[listener] sse`).
    Sse,
    /// The operator's own `portcullis tools call`.
    Cli,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdio => "stdio",
            Self::Http => "http",
            Self::Sse => "sse",
            Self::Cli => "cli",
        }
    }

    /// The transport as policies and plugins see it (`context.transport`):
    /// HTTP+SSE is `"http"`, as it is HTTP, so that a policy written for
    /// network clients (`context.transport == "http"`) holds for its clients
    /// too when it is switched on. Records and metrics say `"sse"`.
    pub fn for_policies(self) -> &'static str {
        match self {
            Self::Sse => "http",
            other => other.as_str(),
        }
    }
}

/// Who is on the other end of a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub name: Arc<str>,
    pub groups: Arc<[Arc<str>]>,
    /// Attributes from `[[clients]] attributes` (policies read them).
    pub attributes: Arc<serde_json::Map<String, Value>>,
    /// What the client's access token says, when it proved itself with one
    /// from an identity provider (`[oauth]`).
    pub token: Option<Arc<TokenFacts>>,
}

/// Who vouched for a client that came with an access token, and what the
/// token grants: for the audit record and `context.scopes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    /// The `[[oauth.providers]]` name of the token's issuer.
    pub provider: Arc<str>,
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The OAuth client the token was issued to (`client_id`, or `azp`).
    pub client_id: Option<String>,
    pub scopes: Arc<[Arc<str>]>,
}

impl ClientIdentity {
    pub fn new(name: &str, groups: &[String]) -> Self {
        Self {
            name: name.into(),
            groups: groups
                .iter()
                .map(|group| Arc::from(group.as_str()))
                .collect(),
            attributes: Arc::default(),
            token: None,
        }
    }

    /// The token's scopes (none for a client without a token).
    pub fn scopes(&self) -> &[Arc<str>] {
        self.token.as_ref().map_or(&[], |token| &token.scopes)
    }

    pub fn with_attributes(mut self, attributes: serde_json::Map<String, Value>) -> Self {
        self.attributes = Arc::new(attributes);
        self
    }
}

/// What an interceptor knows about an exchange besides the message.
#[derive(Debug, Clone)]
pub struct Context {
    pub session: Arc<str>,
    pub client: ClientIdentity,
    pub transport: Transport,
    /// The message's method, parsed once (an unknown one kept as sent).
    pub method: Method,
    /// The server the message is for or from, once routing knows it.
    pub server: Option<Arc<str>>,
    /// The tool or prompt name without the server prefix, or the resource URI.
    pub target: Option<String>,
    /// The id of the request this exchange is about, as its sender wrote it.
    pub request_id: Option<Value>,
    /// The target's definition as its server listed it (tools/call,
    /// prompts/get): what interceptors decide on, never the client's word.
    pub definition: Option<Definition>,
    /// The servers' listed items, as routing saw them: which server lists a
    /// tool, prompt or resource. Set on client requests.
    pub directory: Option<Arc<dyn Directory>>,
    /// The MCP revision the client speaks (`2026-07-28`, `2025-11-25`, …),
    /// once known.
    pub protocol: Option<Arc<str>>,
    /// For a request about a task (`tasks/get`, `tasks/update`,
    /// `tasks/cancel`): the arguments of the call that created it, as they
    /// were forwarded (the request itself has none).
    pub call_arguments: Option<Arc<serde_json::Map<String, Value>>>,
    /// A call a code-mode script made (`portcullis__code`): the script's
    /// id, which its record names too.
    pub script: Option<Arc<str>>,
    /// The labels the data given to the client so far carries (its
    /// session's flow, or its own over `[flow] window` without one), as
    /// they stood when the exchange began; `None`: none yet.
    pub flow: Option<Arc<crate::flow::Flow>>,
    /// The refusal the person let through when asked (`@ask`): the policy
    /// set that decided it, then the ids of the policies that did.
    pub approved: Option<Arc<[String]>>,
    /// A server's request to the client (sampling, elicitation): the
    /// client's request it was asked during, whose target the client's
    /// answer goes to; `None` when that request is not known (ended).
    pub asked_during: Option<Arc<CallOf>>,
}

/// A client's request to a server (a tool's call, a prompt's get, a
/// resource's read), as routing found it.
#[derive(Debug, Clone)]
pub struct CallOf {
    pub method: Method,
    pub server: Arc<str>,
    /// The tool's or prompt's name without the server prefix, or the
    /// resource's URI.
    pub target: String,
    /// The tool's or prompt's definition as its server listed it.
    pub definition: Option<Definition>,
    /// The code-mode script that made it, if one did.
    pub script: Option<Arc<str>>,
}

impl CallOf {
    /// The request `context` is of, once routing found its target.
    pub fn of(context: &Context) -> Option<Self> {
        Some(Self {
            method: context.method.clone(),
            server: context.server.clone()?,
            target: context.target.clone()?,
            definition: context.definition.clone(),
            script: context.script.clone(),
        })
    }
}

impl Context {
    pub fn new(
        session: Arc<str>,
        client: ClientIdentity,
        transport: Transport,
        method: &str,
    ) -> Self {
        Self::of(session, client, transport, Method::parse(method))
    }

    /// A context for a message whose method is already parsed.
    pub fn of(
        session: Arc<str>,
        client: ClientIdentity,
        transport: Transport,
        method: Method,
    ) -> Self {
        Self {
            session,
            client,
            transport,
            method,
            server: None,
            target: None,
            request_id: None,
            definition: None,
            directory: None,
            protocol: None,
            call_arguments: None,
            script: None,
            flow: None,
            approved: None,
            asked_during: None,
        }
    }
}

/// One item of a server's list, shared with the list it belongs to (no copy
/// per exchange).
#[derive(Debug, Clone)]
pub struct Definition {
    list: Arc<Vec<Value>>,
    index: usize,
}

impl Definition {
    pub fn new(list: Arc<Vec<Value>>, index: usize) -> Self {
        Self { list, index }
    }

    pub fn get(&self) -> Option<&Value> {
        self.list.get(self.index)
    }

    /// Whether both are the same item of the same list (not merely equal):
    /// a fresh list is a new definition.
    pub fn same_as(&self, other: &Definition) -> bool {
        Arc::ptr_eq(&self.list, &other.list) && self.index == other.index
    }

    /// Where it is, without keeping its list alive: what a cache keyed by
    /// definition holds, so that a list replaced is freed with its items
    /// whatever the caches remember.
    pub fn downgrade(&self) -> DefinitionRef {
        DefinitionRef {
            list: Arc::downgrade(&self.list),
            index: self.index,
        }
    }
}

/// A [`Definition`]'s place in a list the reference does not keep alive.
#[derive(Debug, Clone)]
pub struct DefinitionRef {
    list: std::sync::Weak<Vec<Value>>,
    index: usize,
}

impl DefinitionRef {
    /// Whether `definition` is the item this refers to (the same list, not
    /// an equal one: the list's allocation lives as long as this does, so
    /// no other list can take its address).
    pub fn is(&self, definition: &Definition) -> bool {
        std::ptr::eq(self.list.as_ptr(), Arc::as_ptr(&definition.list))
            && self.index == definition.index
    }

    /// Whether its list was dropped (nothing can match it any more).
    pub fn is_gone(&self) -> bool {
        self.list.strong_count() == 0
    }
}

/// Which server lists an item of the merged lists the client sees.
pub trait Directory: std::fmt::Debug + Send + Sync {
    /// The server of a namespaced tool name.
    fn tool_server(&self, namespaced: &str) -> Option<&str>;
    /// The server of a namespaced prompt name.
    fn prompt_server(&self, namespaced: &str) -> Option<&str>;
    /// The server that owns a resource URI (listed, or under a template).
    fn resource_server(&self, uri: &str) -> Option<&str>;
    /// The server that listed a resource template.
    fn template_server(&self, uri_template: &str) -> Option<&str>;
    /// The listed definition of a namespaced tool.
    fn tool_definition(&self, namespaced: &str) -> Option<Definition>;
    /// The listed definition of a namespaced prompt.
    fn prompt_definition(&self, namespaced: &str) -> Option<Definition>;
    /// The merged lists themselves (namespaced, every server's items); a
    /// directory that does not tell offers nothing.
    fn offered(&self) -> Offered<'_> {
        Offered::default()
    }
}

/// The merged lists a client is offered before authz filters them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offered<'a> {
    pub tools: &'a [Value],
    pub prompts: &'a [Value],
    pub resources: &'a [Value],
    pub templates: &'a [Value],
}

/// A note an interceptor attaches to the exchange, for later interceptors and
/// the audit record. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub interceptor: Arc<str>,
    pub key: String,
    pub value: String,
}

/// One message on its way through the chain.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// An interceptor may edit it in place and return `Continue` (cheaper
    /// than `Modify` with a copy when only a few strings change).
    pub message: Value,
    /// The direction of the request (or notification) that opened the
    /// exchange; responses keep it. See [`Exchange::toward_server`].
    pub direction: Direction,
    pub phase: Phase,
    pub context: Context,
    pub annotations: Vec<Annotation>,
    /// The exchange's trace, when traces are on and it is sampled: the
    /// chain adds a span per interceptor and phase.
    pub trace: Option<Box<Recording>>,
}

impl Exchange {
    pub fn new(message: Value, direction: Direction, phase: Phase, context: Context) -> Self {
        Self {
            message,
            direction,
            phase,
            context,
            annotations: Vec::new(),
            trace: None,
        }
    }

    /// Whether the message is on its way to a server (a client's request or
    /// notification, or a client's answer to a server's request) rather than
    /// to the client. `direction` is the direction of the request that
    /// opened the exchange, so a response travels against it.
    pub fn toward_server(&self) -> bool {
        match self.phase {
            Phase::Response => self.direction == Direction::ServerToClient,
            Phase::Request | Phase::Notification => self.direction == Direction::ClientToServer,
        }
    }
}

/// An interceptor's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    /// Replace the message with this one (the whole JSON-RPC message).
    Modify(Value),
    Deny(Denial),
}

/// Why a message was refused, as the client will read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub code: i64,
    /// Short and safe to show: no policy text, no secrets.
    pub reason: String,
    /// Extra fields for the error's `data` (e.g. a decision id), safe to show.
    pub data: serde_json::Map<String, Value>,
}

impl Denial {
    pub fn new(code: i64, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            data: serde_json::Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.to_owned(), value.into());
        self
    }
}

/// How an exchange ended, for `on_outcome`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Relayed (or answered by the proxy) without a refusal.
    Delivered,
    /// An interceptor refused it.
    Denied {
        interceptor: Arc<str>,
        reason: String,
    },
    /// The proxy or the server failed it (timeout, upstream down, …).
    Failed { reason: String },
}

/// A check that waits on something outside the process: `None` to let the
/// request through, or why not.
pub type Admitting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Denial>> + Send + 'a>>;

/// A message handler in the chain, with a phase per direction. Every
/// method has a no-op default, so an interceptor implements only the
/// phases it cares about, and never tests the direction by hand. Calls are
/// synchronous and must be fast: they run on the proxy's hot path.
///
/// In an exchange's order: a client's request (`on_client_request`, in
/// chain order), its admission (`admit`), the server's response
/// (`on_server_response`, in reverse); a server's request to a client
/// (`on_server_request`, in chain order) and the client's response
/// (`on_client_response`, in reverse); a notification either way
/// (`on_notification`); and, whatever happened, `on_outcome`.
pub trait Interceptor: Send + Sync + 'static {
    /// The name used in `[[chain]]`, in denials and in audit records.
    fn name(&self) -> &str;

    /// A client's request, on its way to a server (or to the proxy).
    fn on_client_request(&self, _exchange: &mut Exchange) -> Verdict {
        Verdict::Continue
    }

    /// The answer to a client's request, on its way back to the client;
    /// `exchange.context` is the request's context.
    fn on_server_response(&self, _exchange: &mut Exchange) -> Verdict {
        Verdict::Continue
    }

    /// A server's request to a client (`sampling/createMessage`,
    /// `elicitation/create`, `roots/list`; a server's `ping` is answered by
    /// the proxy and never gets here).
    fn on_server_request(&self, _exchange: &mut Exchange) -> Verdict {
        Verdict::Continue
    }

    /// A client's answer to a server's request, on its way to the server.
    fn on_client_response(&self, _exchange: &mut Exchange) -> Verdict {
        Verdict::Continue
    }

    /// A notification, either way (`exchange.direction` says which).
    fn on_notification(&self, _exchange: &mut Exchange) -> Verdict {
        Verdict::Continue
    }

    /// A check that waits on something outside the process (budgets
    /// shared by replicas, in Redis), made once the whole request chain
    /// has passed a client's request and before it is relayed: a request
    /// another interceptor refused uses none of what it checks. `None`
    /// (the default): nothing to wait on.
    fn admit<'a>(&'a self, _exchange: &'a Exchange) -> Option<Admitting<'a>> {
        None
    }

    /// Runs once per exchange after it ended, whatever the outcome.
    fn on_outcome(&self, _exchange: &Exchange, _outcome: &Outcome) {}

    /// The phase hook for the exchange where it stands: the one place the
    /// phase and the direction pick a hook (not for implementors).
    fn see(&self, exchange: &mut Exchange) -> Verdict {
        match (exchange.phase, exchange.direction) {
            (Phase::Request, Direction::ClientToServer) => self.on_client_request(exchange),
            (Phase::Response, Direction::ClientToServer) => self.on_server_response(exchange),
            (Phase::Request, Direction::ServerToClient) => self.on_server_request(exchange),
            (Phase::Response, Direction::ServerToClient) => self.on_client_response(exchange),
            (Phase::Notification, _) => self.on_notification(exchange),
        }
    }

    /// Adds the interceptor's own series to the metrics (`GET /metrics`).
    fn render_metrics(&self, _out: &mut crate::metrics::Exposition) {}
}

/// The refusal of one interceptor, turned into a JSON-RPC error by
/// [`Refusal::to_response`] — the one place denials become errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub interceptor: Arc<str>,
    pub denial: Denial,
}

impl Refusal {
    pub fn to_response(&self, id: Value) -> Value {
        let mut data = serde_json::Map::new();
        data.insert("interceptor".into(), Value::from(&*self.interceptor));
        for (key, value) in &self.denial.data {
            data.insert(key.clone(), value.clone());
        }
        protocol::error(
            id,
            self.denial.code,
            &format!("denied by {}: {}", self.interceptor, self.denial.reason),
            Some(Value::Object(data)),
        )
    }

    pub fn outcome(&self) -> Outcome {
        Outcome::Denied {
            interceptor: self.interceptor.clone(),
            reason: self.denial.reason.clone(),
        }
    }
}

/// The ordered interceptors.
#[derive(Clone, Default)]
pub struct Chain {
    interceptors: Vec<(Arc<str>, Arc<dyn Interceptor>)>,
    /// With metrics: each interceptor's time per phase (request, response,
    /// notification), beside `interceptors`.
    timings: Option<Arc<[[Arc<Histogram>; 3]]>>,
    /// Each interceptor's span name per phase (`authz request`), beside
    /// `interceptors`: made once, shared by every traced exchange.
    span_names: Arc<[[Arc<str>; 3]]>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.interceptors.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Chain {
    pub fn new(interceptors: Vec<Arc<dyn Interceptor>>) -> Self {
        let interceptors: Vec<(Arc<str>, Arc<dyn Interceptor>)> = interceptors
            .into_iter()
            .map(|interceptor| (Arc::from(interceptor.name()), interceptor))
            .collect();
        let span_names = interceptors
            .iter()
            .map(|(name, _)| {
                [Phase::Request, Phase::Response, Phase::Notification]
                    .map(|phase| Arc::from(format!("{name} {}", phase.as_str())))
            })
            .collect();
        Self {
            interceptors,
            timings: None,
            span_names,
        }
    }

    /// A client's request decided: through the chain ([`Chain::run`]), then,
    /// if it passed and `admit` (it was routed), admitted to what is shared
    /// ([`Interceptor::admit`]) — after the chain, so that a request the
    /// chain refuses spends none of it.
    pub async fn decide(&self, exchange: &mut Exchange, admit: bool) -> Result<(), Refusal> {
        self.run(exchange)?;
        if admit {
            return self.admit(exchange).await;
        }
        Ok(())
    }

    /// Makes the checks that wait on something outside the process
    /// ([`Interceptor::admit`]), in chain order, for a client's request
    /// that passed the chain.
    async fn admit(&self, exchange: &Exchange) -> Result<(), Refusal> {
        for (name, interceptor) in &self.interceptors {
            let Some(admitting) = interceptor.admit(exchange) else {
                continue;
            };
            if let Some(denial) = admitting.await {
                return Err(Refusal {
                    interceptor: name.clone(),
                    denial,
                });
            }
        }
        Ok(())
    }

    /// Times each interceptor per phase into `metrics`.
    pub fn timed(mut self, metrics: &Metrics) -> Self {
        let phases = [Phase::Request, Phase::Response, Phase::Notification];
        self.timings = Some(
            self.interceptors
                .iter()
                .map(|(name, _)| {
                    phases.map(|phase| metrics.interceptor_seconds.get([name, phase.as_str()]))
                })
                .collect(),
        );
        self
    }

    /// Adds every interceptor's own series to the metrics.
    pub fn render_metrics(&self, out: &mut crate::metrics::Exposition) {
        for (_, interceptor) in &self.interceptors {
            interceptor.render_metrics(out);
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.interceptors.iter().map(|(name, _)| &**name)
    }

    /// Runs the exchange's phase through the chain: requests and
    /// notifications in order, responses in reverse.
    pub fn run(&self, exchange: &mut Exchange) -> Result<(), Refusal> {
        self.run_from(exchange, 0)
    }

    /// [`Chain::decide`], for a request the interceptor `name` refused and
    /// that is decided again (the person let its refusal through): from
    /// that interceptor on, so that those before it (a quota, a plugin)
    /// do not act twice.
    pub async fn decide_again(&self, exchange: &mut Exchange, name: &str) -> Result<(), Refusal> {
        let from = self
            .interceptors
            .iter()
            .position(|(named, _)| &**named == name)
            .unwrap_or(0);
        self.run_from(exchange, from)?;
        self.admit(exchange).await
    }

    /// The phase from the `first` step on (a response's steps counted from
    /// the end).
    fn run_from(&self, exchange: &mut Exchange, first: usize) -> Result<(), Refusal> {
        let count = self.interceptors.len();
        let (phase, reverse) = match exchange.phase {
            Phase::Request => (0, false),
            Phase::Response => (1, true),
            Phase::Notification => (2, false),
        };
        for step in first..count {
            let index = if reverse { count - 1 - step } else { step };
            let Some((name, interceptor)) = self.interceptors.get(index) else {
                continue;
            };
            let timed = self.timings.is_some() || exchange.trace.is_some();
            let started = timed.then(std::time::Instant::now);
            let verdict = interceptor.see(exchange);
            if let Some(started) = started {
                let ended = std::time::Instant::now();
                if let Some(timing) =
                    (self.timings.as_ref()).and_then(|timings| timings.get(index)?.get(phase))
                {
                    timing.observe(ended - started);
                }
                if let Some(trace) = exchange.trace.as_deref_mut()
                    && let Some(name) = self
                        .span_names
                        .get(index)
                        .and_then(|names| names.get(phase))
                {
                    let name = name.clone();
                    let mut span = Span::new(name, SpanKind::Internal, started, ended);
                    match &verdict {
                        Verdict::Continue => {}
                        Verdict::Modify(_) => span
                            .attributes
                            .push(("portcullis.verdict", "modify".into())),
                        Verdict::Deny(denial) => span.error = Some(denial.reason.clone()),
                    }
                    trace.push(span);
                }
            }
            match verdict {
                Verdict::Continue => {}
                Verdict::Modify(message) => exchange.message = message,
                Verdict::Deny(denial) => {
                    return Err(Refusal {
                        interceptor: name.clone(),
                        denial,
                    });
                }
            }
        }
        Ok(())
    }

    /// Tells every interceptor how the exchange ended.
    pub fn finish(&self, exchange: &Exchange, outcome: &Outcome) {
        for (_, interceptor) in &self.interceptors {
            interceptor.on_outcome(exchange, outcome);
        }
    }
}

#[cfg(test)]
mod tests;
