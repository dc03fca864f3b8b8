//! `authz`: Cedar authorization per client, server and tool.
//!
//! Requests (tools/call, prompts/get, resources/read and subscribe,
//! completion/complete) and server→client requests (sampling, elicitation,
//! roots) are decided before they go on; list results are filtered item by
//! item (`list_tools`, `list_prompts`, `list_resources`). Default deny,
//! forbid wins, an evaluation error denies. Each decision is taken by one
//! policy set, read once per exchange; a hot reload swaps the set
//! atomically and never lets a broken folder replace a good set.

mod access;
mod answers;
mod diagnostic;
pub mod fixtures;
mod model;
mod parse;
pub mod request;
mod shadow;
mod slice;
mod sources;
pub mod store;
mod targets;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use access::ServerAccess;
pub use diagnostic::{Diagnostic, PolicyError, Severity};
use fixtures::Case;
pub use request::{Action, Query, Target, ToolAnnotations, labels_of};
pub use shadow::Shadow;
pub use sources::Sources;
pub use store::{Decision, ListedPolicy, Origin, PolicyStore};
pub(crate) use targets::list_target;
pub use targets::request_target;

use crate::chain::{Annotation, Denial, Direction, Exchange, Interceptor, Verdict};
use crate::config::{ClientConfig, FlowConfig, Labelled};
use crate::protocol::{At as _, List, Method, code};

/// The current policy set of a folder, and its reloads.
pub struct PolicyEngine {
    dir: PathBuf,
    /// The configured clients, whose attributes every set must accept.
    clients: Vec<ClientConfig>,
    current: RwLock<Arc<PolicyStore>>,
    /// The last rejection reported, so a broken file is reported once, not
    /// at every poll; cleared once the folder loads again (or is back to
    /// the set in force).
    rejected: Mutex<Option<Rejection>>,
    /// Reloads applied or rejected, for whoever records them (the audit log).
    reloads: tokio::sync::broadcast::Sender<ReloadReport>,
}

/// A reload that changed something, or was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The set in force after it.
    pub policy_set: Arc<str>,
    /// The set before it.
    pub previous: Arc<str>,
    pub policies: usize,
    /// Why it was refused (file:line:col diagnostics); `None` when applied.
    pub rejected: Option<String>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("set", &self.current().id)
            .finish()
    }
}

/// A reload the engine refused: the folder as it is now does not load, and
/// the set in force is the last one that did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why (file:line:col diagnostics).
    pub message: String,
    /// When this rejection was first met.
    pub at: SystemTime,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The new set's id.
    Applied(Arc<str>),
}

impl PolicyEngine {
    /// Loads a folder; its schema must accept the clients' attributes.
    pub fn load(dir: &Path, clients: &[ClientConfig]) -> Result<Self, PolicyError> {
        let store = PolicyStore::load(dir)?;
        store.check_clients(clients)?;
        Ok(Self {
            dir: dir.to_owned(),
            clients: clients.to_vec(),
            current: RwLock::new(Arc::new(store)),
            rejected: Mutex::new(None),
            reloads: tokio::sync::broadcast::channel(16).0,
        })
    }

    /// Follows reloads (applied, and refused once per distinct error).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ReloadReport> {
        self.reloads.subscribe()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the folder does not load now, if the last reload was refused.
    pub fn rejection(&self) -> Option<Rejection> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy set in force.
    pub fn current(&self) -> Arc<PolicyStore> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the folder. A set that fails to read, parse or validate is
    /// rejected and the set in force stays.
    pub fn reload(&self) -> Result<Reload, PolicyError> {
        let sources = Sources::read(&self.dir)?;
        let fingerprint = sources.fingerprint();
        if *self.current().id == *fingerprint {
            return Ok(Reload::Unchanged);
        }
        let store = PolicyStore::from_sources(&sources)?;
        store.check_clients(&self.clients)?;
        if store.policy_count() == 0 && self.current().policy_count() > 0 {
            // Most likely files moved or a volume not mounted: a set that
            // denies everything is written as an explicit forbid, not by
            // emptying the folder.
            return Err(PolicyError::Invalid(vec![Diagnostic {
                file: self.dir.clone(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: "the folder has no policies any more; a reload never empties the set in force (to deny everything, write `forbid (principal, action, resource);`)".into(),
                help: None,
            }]));
        }
        let id = store.id.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(store);
        Ok(Reload::Applied(id))
    }

    /// Polls the folder every `every` (and reloads at once on SIGHUP) until
    /// `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup_signal = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup_signal = std::future::pending::<()>();
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                () = hangup_signal => tracing::info!("SIGHUP: reloading policies"),
            }
            let engine = self.clone();
            let previous = self.current().id.clone();
            let result = tokio::task::spawn_blocking(move || {
                let result = engine.reload();
                (engine, result)
            })
            .await;
            let Ok((engine, result)) = result else {
                continue;
            };
            engine.report(result, previous);
        }
    }

    fn report(&self, result: Result<Reload, PolicyError>, previous: Arc<str>) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.current();
        match result {
            // The folder is the set in force again (a broken file was taken
            // out): nothing is refused any more.
            Ok(Reload::Unchanged) => *rejected = None,
            Ok(Reload::Applied(id)) => {
                *rejected = None;
                tracing::info!(policy_set = %id, policies = store.policy_count(), "policies reloaded");
                let _ = self.reloads.send(ReloadReport {
                    policy_set: id,
                    previous,
                    policies: store.policy_count(),
                    rejected: None,
                });
            }
            Err(err) => {
                // The same rejection is reported once, not at every poll.
                let report = err.to_string();
                if rejected.as_ref().map(|r| r.message.as_str()) != Some(report.as_str()) {
                    tracing::error!(
                        dir = %self.dir.display(),
                        policy_set = %store.id,
                        "policy reload rejected; the previous set stays in force:\n{report}"
                    );
                    let _ = self.reloads.send(ReloadReport {
                        policy_set: store.id.clone(),
                        previous,
                        policies: store.policy_count(),
                        rejected: Some(report.clone()),
                    });
                    *rejected = Some(Rejection {
                        message: report,
                        at: SystemTime::now(),
                    });
                }
            }
        }
    }
}

/// Takes every secret out of a text before authz shows it (a denial's
/// reason, which reaches the client, the audit record and the trace; a log
/// line). Authz builds its reasons from a resource URI, which a client
/// writes and may fill with a credential.
pub type Scrub = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The authz interceptor.
pub struct Authz {
    name: Arc<str>,
    engine: Arc<PolicyEngine>,
    separator: String,
    nonce: u32,
    decisions: AtomicU64,
    /// Who may use which server (server notifications no call owns).
    access: Arc<ServerAccess>,
    scrub: Option<Scrub>,
    /// `portcullis__code` as clients see it, when `[code_mode]` is on:
    /// decided by `use_code`, listed and called alike.
    code_tool: Option<String>,
    /// `[flow]`: the labels of what decisions are about.
    flow: Arc<FlowConfig>,
    /// `[proxy] shadow_policies`: a candidate set decided beside.
    shadow: Option<Arc<Shadow>>,
}

/// Whether `decision` is the refusal the person was asked about and let
/// through, as it was decided then (the same policies of the same set):
/// allowed, this once.
fn approved(exchange: &Exchange, decision: &Decision) -> bool {
    decision.ask.is_some()
        && exchange
            .context
            .approved
            .as_deref()
            .and_then(<[String]>::split_first)
            .is_some_and(|(set, policies)| {
                *set == *decision.policy_set && policies == decision.policies.as_slice()
            })
}

/// A list of names as JSON (ids may hold any character).
fn json_list(names: &[&str]) -> String {
    Value::from(names.to_vec()).to_string()
}

/// The action that decides each item of a list.
fn list_action(list: List) -> Action {
    match list {
        List::Tools => Action::ListTools,
        List::Prompts => Action::ListPrompts,
        List::Resources | List::ResourceTemplates => Action::ListResources,
    }
}

impl Authz {
    pub fn new(engine: Arc<PolicyEngine>, separator: &str) -> Self {
        Self {
            name: Arc::from("authz"),
            separator: separator.to_owned(),
            nonce: uuid::Uuid::new_v4().as_u128() as u32,
            decisions: AtomicU64::new(0),
            access: Arc::new(ServerAccess::new(engine.clone(), Arc::default())),
            engine,
            scrub: None,
            code_tool: None,
            flow: Arc::default(),
            shadow: None,
        }
    }

    /// Decides every request with `shadow`'s set too, never enforcing it.
    pub fn with_shadow(mut self, shadow: Arc<Shadow>) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// Labels targets by `[flow]` (else by the defaults alone).
    pub fn with_flow(mut self, flow: Arc<FlowConfig>) -> Self {
        self.access = Arc::new(ServerAccess::new(self.engine.clone(), flow.clone()));
        self.flow = flow;
        self
    }

    /// Decides `portcullis__code` by `use_code` (`[code_mode]` is on).
    pub fn with_code_tool(mut self) -> Self {
        self.code_tool =
            Some(self.namespaced(crate::config::PROXY_SERVER, crate::config::CODE_TOOL));
        self
    }

    /// `action` on `target`, or `use_code` for the code tool.
    fn action_on(&self, action: Action, target: &Target) -> Action {
        match target {
            Target::Tool { name, server, .. }
                if server == crate::config::PROXY_SERVER
                    && self.code_tool.as_deref() == Some(name.as_str()) =>
            {
                Action::UseCode
            }
            _ => action,
        }
    }

    /// Builds denial reasons and log lines from text `scrub` has cleaned.
    pub fn scrub_with(mut self, scrub: Scrub) -> Self {
        self.scrub = Some(scrub);
        self
    }

    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// Who may use which server, by the policies this interceptor enforces
    /// (one cache, shared with the gateway).
    pub fn access(&self) -> &Arc<ServerAccess> {
        &self.access
    }

    fn scrubbed(&self, text: &str) -> String {
        match &self.scrub {
            Some(scrub) => scrub(text),
            None => text.to_owned(),
        }
    }

    fn decision_id(&self) -> String {
        let n = self.decisions.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:08x}", self.nonce, n as u32)
    }

    fn namespaced(&self, server: &str, name: &str) -> String {
        format!("{server}{}{name}", self.separator)
    }

    /// The action and target of a request, if authz decides on it.
    fn subject(&self, exchange: &Exchange) -> Option<(Action, Target)> {
        let context = &exchange.context;
        let server = context.server.as_deref()?;
        match exchange.direction {
            Direction::ClientToServer => request_target(exchange, &self.separator, &self.flow),
            Direction::ServerToClient => {
                let action = match &context.method {
                    Method::SamplingCreateMessage => Action::Sampling,
                    Method::ElicitationCreate => Action::Elicitation,
                    Method::RootsList => Action::Roots,
                    // Any other server→client request is refused in
                    // `on_request`; `ping` is harmless.
                    _ => return None,
                };
                Some((
                    action,
                    Target::Server {
                        name: server.to_owned(),
                    },
                ))
            }
        }
    }

    fn query<'a>(
        exchange: &'a Exchange,
        action: Action,
        target: &'a Target,
        arguments: Option<&'a serde_json::Map<String, Value>>,
        time: SystemTime,
    ) -> Query<'a> {
        let context = &exchange.context;
        Query {
            client: &context.client.name,
            groups: &context.client.groups,
            attributes: Some(&context.client.attributes),
            action,
            target,
            arguments,
            transport: context.transport.for_policies(),
            protocol: context.protocol.as_deref().unwrap_or_default(),
            session: &context.session,
            scopes: context.client.scopes(),
            time,
            script: context.script.as_deref(),
            answer: None,
            // Polling or cancelling a task sends nothing out: decided
            // without the flow, so a client can always stop what it began.
            flow: match context.method {
                Method::TasksGet | Method::TasksCancel => None,
                _ => context.flow.as_deref(),
            },
        }
    }

    /// What every decision's record keeps: the case decided (`decided`, for
    /// `policy replay`) and the shadow set's decision of it (`shadow`).
    fn notes_of(&self, query: &Query<'_>, decision: &Decision) -> Vec<(&'static str, String)> {
        let mut notes = vec![(
            "decided",
            Case::of(query, decision.verdict()).to_json().to_string(),
        )];
        if let Some(shadow) = &self.shadow {
            let noted = shadow.decide(query, decision.verdict());
            notes.push(("shadow", noted.to_string()));
        }
        notes
    }

    /// What a refusal's record says of why: the flow that could decide it
    /// (the target's labels, the exchanges that brought the flow's), and
    /// whether the person may override it (`@ask`: the texts and the
    /// policies, for the gateway to ask).
    fn note_refusal(&self, exchange: &mut Exchange, decision: &Decision, target: &Target) {
        if decision.allowed {
            return;
        }
        self.note_flow(exchange, decision, target);
        if let Some(ask) = &decision.ask {
            self.annotate(exchange, "ask", ask.clone());
            let approval: Vec<&str> = std::iter::once(&*decision.policy_set)
                .chain(decision.policies.iter().map(String::as_str))
                .collect();
            self.annotate(exchange, "ask_policies", json_list(&approval));
        }
    }

    /// The flow that could decide a refusal, with the target's labels,
    /// where a policy that decided it reads the flow.
    fn note_flow(&self, exchange: &mut Exchange, decision: &Decision, target: &Target) {
        if decision.read_flow
            && let Some(flow) = exchange.context.flow.as_deref()
        {
            let mut noted = flow.to_json();
            if let Value::Object(noted) = &mut noted {
                noted.insert("labels".into(), Value::from(target.labels().names()));
            }
            self.annotate(exchange, "flow", noted.to_string());
        }
    }

    fn annotate(&self, exchange: &mut Exchange, key: &str, value: String) {
        exchange.annotations.push(Annotation {
            interceptor: self.name.clone(),
            key: key.to_owned(),
            value,
        });
    }

    fn filter_list(&self, exchange: &mut Exchange, key: &str, action: Action) -> Verdict {
        let Some(items) = exchange
            .message
            .at(&["result", key])
            .and_then(Value::as_array)
        else {
            return Verdict::Continue;
        };
        let store = self.engine.current();
        let directory = exchange.context.directory.clone();
        let time = SystemTime::now();
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            let target = directory
                .as_deref()
                .and_then(|directory| list_target(directory, key, item, &self.flow));
            // An item whose server is unknown is hidden: fail closed.
            let Some(target) = target else { continue };
            let action = self.action_on(action, &target);
            if store
                .decide(&Self::query(exchange, action, &target, None, time))
                .allowed
            {
                kept.push(item.clone());
            }
        }
        let hidden = items.len() - kept.len();
        self.annotate(exchange, "policy_set", store.id.to_string());
        self.annotate(exchange, "hidden", hidden.to_string());
        if hidden == 0 {
            return Verdict::Continue;
        }
        let mut message = exchange.message.clone();
        if let Some(slot) = message.pointer_mut(&format!("/result/{key}")) {
            *slot = Value::Array(kept);
        }
        Verdict::Modify(message)
    }

    /// Decides a request (`server_asks`: a server's to a client, which
    /// must be one the model names).
    /// What a request is decided on, or what becomes of one not decided: a
    /// server's question no action covers, or whose answer could not be
    /// decided (asked outside a call, a prompt's get or a resource's read
    /// in flight: no answer to it could go), is refused; any other request
    /// goes on.
    fn subject_decided(
        &self,
        exchange: &Exchange,
        server_asks: bool,
    ) -> Result<(Action, Target), Verdict> {
        let method = &exchange.context.method;
        if server_asks && self.unanswerable(exchange) {
            return Err(Verdict::Deny(Denial::new(
                code::DENIED,
                format!(
                    "server→client request `{method}` is not asked: it belongs to no call, prompt's get or resource's read in flight"
                ),
            )));
        }
        match self.subject(exchange) {
            Some((action, target)) => Ok((self.action_on(action, &target), target)),
            None if server_asks && *method != Method::Ping => Err(Verdict::Deny(Denial::new(
                code::DENIED,
                format!("server→client request `{method}` is not permitted"),
            ))),
            None => Err(Verdict::Continue),
        }
    }

    fn decide(&self, exchange: &mut Exchange, server_asks: bool) -> Verdict {
        let (action, target) = match self.subject_decided(exchange, server_asks) {
            Ok(subject) => subject,
            Err(verdict) => return verdict,
        };
        // A task's answers (`tasks/update`) are what the client gives its
        // server: decided as an answer is (see `answers`), the target a sink.
        let answering = answers::gives_answers(exchange);
        let target = match answering {
            true => target.with_label(crate::config::Label::Sink),
            false => target,
        };
        let arguments = answers::arguments_of(exchange, action);
        let store = self.engine.current();
        let query = Query {
            answer: answering.then_some(Method::TasksUpdate.as_str()),
            ..Self::query(exchange, action, &target, arguments, SystemTime::now())
        };
        let decision = store.decide(&query);
        let approved = approved(exchange, &decision);
        // The case decided, for `policy replay`, and the shadow set's
        // decision; decided again after the person's accept, the first
        // time's notes are kept.
        if exchange.context.approved.is_none() {
            let notes = self.notes_of(&query, &decision);
            for (key, value) in notes {
                self.annotate(exchange, key, value);
            }
        }
        let id = self.decision_id();
        let verdict = if decision.allowed || approved {
            "allow"
        } else {
            "deny"
        };
        self.annotate(exchange, "decision", verdict.to_owned());
        self.annotate(exchange, "decision_id", id.clone());
        self.annotate(exchange, "policy_set", decision.policy_set.to_string());
        self.annotate(exchange, "policy_ids", decision.policies.join(","));
        if !decision.errors.is_empty() {
            // Ids only: Cedar's messages can quote argument values.
            self.annotate(exchange, "evaluation_errors", decision.policies.join(","));
            tracing::debug!(errors = ?decision.errors, "policy evaluation errors");
        }
        if !decision.dropped_arguments.is_empty() {
            self.annotate(
                exchange,
                "arguments_left_out",
                decision.dropped_arguments.join(","),
            );
        }
        self.note_refusal(exchange, &decision, &target);
        if approved {
            self.annotate(exchange, "asked", "accept".to_owned());
            return Verdict::Continue;
        }
        let (_, resource) = target.entity();
        // A URI may carry a credential: what is shown (the client's error,
        // hence the audit record and the trace) is scrubbed, and logs also
        // leave out a query.
        if decision.allowed {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let shown = self.scrubbed(resource);
                tracing::debug!(
                    client = %exchange.context.client.name,
                    action = action.name(),
                    resource = shown.split('?').next().unwrap_or_default(),
                    decision_id = %id,
                    policies = %decision.policies.join(","),
                    "allowed"
                );
            }
            return Verdict::Continue;
        }
        let resource = self.scrubbed(resource);
        tracing::info!(
            client = %exchange.context.client.name,
            action = action.name(),
            resource = resource.split('?').next().unwrap_or_default(),
            decision_id = %id,
            policy_set = %decision.policy_set,
            policies = %decision.policies.join(","),
            errors = decision.errors.len(),
            "denied by policy"
        );
        let reason = if decision.errors.is_empty() {
            format!(
                "{} on `{resource}` is not permitted (decision {id})",
                action.name()
            )
        } else {
            format!(
                "{} on `{resource}` is denied: a policy failed to evaluate (decision {id})",
                action.name()
            )
        };
        Verdict::Deny(
            Denial::new(code::DENIED, reason)
                .with("decision_id", id)
                .with("policy_set", decision.policy_set.to_string()),
        )
    }
}

impl Interceptor for Authz {
    fn name(&self) -> &str {
        "authz"
    }

    /// The policy set in force, so that operators of several replicas see
    /// one that did not reload.
    fn render_metrics(&self, out: &mut crate::metrics::Exposition) {
        let store = self.engine.current();
        out.declare(
            "portcullis_policy_set_info",
            "The policy set this proxy enforces (1), by its id: replicas that enforce the same set report the same id.",
            "gauge",
        );
        out.sample(
            "portcullis_policy_set_info",
            &[("policy_set", &store.id)],
            1.0,
        );
        out.declare(
            "portcullis_policies",
            "Policies in the set this proxy enforces.",
            "gauge",
        );
        out.sample("portcullis_policies", &[], store.policy_count() as f64);
        if let Some(shadow) = &self.shadow {
            shadow.render_metrics(out);
        }
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        self.decide(exchange, false)
    }

    fn on_server_request(&self, exchange: &mut Exchange) -> Verdict {
        // A server→client request that no action covers is not forwarded:
        // the model names every request a server may make.
        self.decide(exchange, true)
    }

    /// A server's notification to a session. One tied to a call
    /// (`context.request_id` set: the call's progress, its log messages)
    /// follows the call, which was decided. A resource update is decided as
    /// the subscription was (`subscribe_resource` on its URI). Any other
    /// reaches the session only if its client may use the server (see
    /// [`ServerAccess`]). The proxy's own (no server) are not decided.
    fn on_notification(&self, exchange: &mut Exchange) -> Verdict {
        let context = &exchange.context;
        if exchange.direction != Direction::ServerToClient || context.request_id.is_some() {
            return Verdict::Continue;
        }
        let Some(server) = context.server.clone() else {
            return Verdict::Continue;
        };
        let store = self.engine.current();
        let allowed = if context.method == Method::ResourceUpdated {
            let uri = context.target.clone().unwrap_or_default();
            let target = Target::Resource {
                labels: labels_of(&self.flow, &server, Labelled::Resource(&uri), None),
                uri,
                server: server.to_string(),
            };
            store
                .decide(&Self::query(
                    exchange,
                    Action::SubscribeResource,
                    &target,
                    None,
                    SystemTime::now(),
                ))
                .allowed
        } else {
            // Without the catalog nobody can tell: fail closed.
            context.directory.as_ref().is_some_and(|directory| {
                let protocol = context.protocol.as_deref().unwrap_or_default();
                self.access.may_use(
                    &context.client,
                    (context.transport, protocol),
                    &server,
                    directory,
                )
            })
        };
        self.annotate(exchange, "policy_set", store.id.to_string());
        if allowed {
            return Verdict::Continue;
        }
        Verdict::Deny(Denial::new(
            code::DENIED,
            format!("notifications of server `{server}` are not for this client"),
        ))
    }

    /// A client's answer to a server's question: decided again, as the
    /// call it was asked during, when it gives the server something.
    fn on_client_response(&self, exchange: &mut Exchange) -> Verdict {
        self.decide_answer(exchange)
    }

    fn on_server_response(&self, exchange: &mut Exchange) -> Verdict {
        match exchange.context.method.list() {
            Some(list) => self.filter_list(exchange, list.result_key(), list_action(list)),
            None => Verdict::Continue,
        }
    }
}
