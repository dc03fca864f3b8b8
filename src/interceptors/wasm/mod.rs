//! `wasm`: WASM plugin interceptors on wasmtime's component model.
//!
//! A plugin is a component exporting `portcullis:interceptor/handler@0.1.0`
//! (`plugins/wit/interceptor.wit`). Each call runs under an epoch deadline
//! (and fuel, if configured) and a memory cap. Warm instances are reused from
//! a small pool (`instance = "pooled"`) or made fresh per call
//! (`"per-call"`). A call that traps, overruns or answers nonsense is handled
//! by the plugin's `on_error`, its instance is thrown away, and after
//! `breaker.failures` failures in a row the plugin's circuit opens for
//! `breaker.cooldown`: its `on_error` then applies without calling it.

mod runtime;
#[cfg(test)]
mod tests;

pub use runtime::{Budget, Counters, INTERFACE, LoadError, Runtime};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::chain::{Annotation, Denial, Direction, Exchange, Interceptor, Phase, Verdict};
use crate::config::{InstanceMode, OnError, PluginConfig, method_matches, tool_matches};
use crate::metrics::{Counter, Exposition};
use crate::protocol::{self, Method};

/// The code generated from the WIT file.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "plugins/wit/interceptor.wit",
        world: "interceptor",
    });
}

use bindings::exports::portcullis::interceptor::handler as wit;
use runtime::{Answer, CallError, Instance, Loaded};

/// The annotation key under which the proxy notes a plugin's failure
/// (`on_error = "continue"`); plugins may not use it.
pub const HOST_ERROR_KEY: &str = "error";

/// Something a plugin did that the audit log records.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginEvent {
    /// Failures in a row opened the circuit: the plugin is not called until
    /// `cooldown` has passed.
    BreakerOpened {
        plugin: String,
        failures: u32,
        last_error: String,
        cooldown: Duration,
    },
    /// A call after the cool-down succeeded: the plugin is called again.
    BreakerClosed { plugin: String },
}

/// One plugin in the chain.
pub struct Plugin {
    /// `wasm:NAME`.
    name: Arc<str>,
    config: PluginConfig,
    runtime: Arc<Runtime>,
    loaded: Loaded,
    config_json: String,
    counters: Arc<Counters>,
    idle: Mutex<Vec<Instance>>,
    /// Instances alive (idle or in a call).
    live: Arc<AtomicUsize>,
    max_live: usize,
    breaker: Mutex<Breaker>,
    max_output: usize,
    /// Between a server's name and its tool's (for `tools`).
    separator: String,
    events: broadcast::Sender<PluginEvent>,
    /// Calls by result ([`RESULTS`]), for the metrics.
    results: [Counter; RESULTS.len()],
    /// Times the circuit opened.
    opened: Counter,
}

/// How a call ended, as the metrics count it: the verdict, or the failure's
/// kind.
const RESULTS: [&str; 7] = [
    "continue",
    "modify",
    "deny",
    "trap",
    "invalid",
    "busy",
    "circuit-open",
];

/// The circuit breaker: closed (counting failures in a row), open until a
/// time, or half-open with one trial call let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// How the breaker let a call through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    /// The one trial call after a cool-down: its result decides.
    Trial,
}

/// Why a call gave no usable outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `trap` (trapped, out of time, fuel or memory), `invalid` (an
    /// outcome that is not a valid verdict), `busy` or `circuit-open`.
    pub kind: &'static str,
    pub reason: String,
}

/// What a plugin said about a message.
pub type Evaluation = (Verdict, Vec<(String, String)>);

impl Plugin {
    /// Loads, checks, and configures one instance to prove the config is
    /// accepted (an error stops the proxy from starting).
    pub fn load(
        runtime: Arc<Runtime>,
        config: &PluginConfig,
        max_output: usize,
        separator: &str,
    ) -> Result<Self, LoadError> {
        let loaded = runtime.load(&config.path, config.sha256.as_deref())?;
        let plugin = Self {
            name: Arc::from(format!("wasm:{}", config.name)),
            config: config.clone(),
            runtime,
            loaded,
            config_json: config.config.to_string(),
            counters: Arc::new(Counters::default()),
            idle: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            max_live: runtime::max_live(config),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            max_output,
            separator: separator.to_owned(),
            events: broadcast::channel(64).0,
            results: Default::default(),
            opened: Counter::default(),
        };
        // The first instance is made at start, on no call's path: under a
        // wall-time budget of its own, so that a busy machine does not stop
        // the proxy from starting (fuel, if set, still bounds `configure`).
        let at_start = Budget {
            timeout: plugin.config.timeout.max(LOAD_TIMEOUT),
            fuel: plugin.config.fuel,
        };
        let first = plugin
            .instance_within(at_start)
            .map_err(|message| LoadError::Configure {
                path: plugin.loaded.path.clone(),
                message,
            })?;
        plugin.checkin(first);
        Ok(plugin)
    }

    /// A new, configured instance, under a budget that also covers the call
    /// it is made for.
    fn fresh_instance(&self) -> Result<Instance, String> {
        self.instance_within(budget(&self.config))
    }

    /// Tests: an open breaker's cool-down is over now (instead of a test
    /// sleeping past a short one, which a busy machine can outlast).
    #[cfg(test)]
    fn end_cooldown(&self) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if let Breaker::Open { until } = &mut *breaker {
            *until = Instant::now();
        }
    }

    fn instance_within(&self, budget: Budget) -> Result<Instance, String> {
        self.runtime.instantiate(
            &self.loaded,
            &self.name,
            &self.counters,
            self.config.memory,
            &self.config_json,
            budget,
            &self.live,
        )
    }

    /// The file's SHA-256.
    pub fn sha256(&self) -> &str {
        &self.loaded.sha256
    }

    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// The plugin's counters (`counter-add`).
    pub fn counters(&self) -> std::collections::BTreeMap<String, i64> {
        self.counters.snapshot()
    }

    /// Breaker events, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.events.subscribe()
    }

    fn sees(&self, exchange: &Exchange) -> bool {
        let phases = &self.config.phases;
        let phase = match exchange.phase {
            Phase::Request => phases.request,
            Phase::Response => phases.response,
            Phase::Notification => phases.notification,
        };
        if !phase || !method_matches(&self.config.methods, exchange.context.method.as_str()) {
            return false;
        }
        if self.config.tools.is_empty() {
            return true;
        }
        let context = &exchange.context;
        match (&context.server, &context.target) {
            // A task's requests (2026-07-28) are about its tool.
            (Some(server), Some(target))
                if context.method == Method::ToolsCall || context.method.is_task() =>
            {
                tool_matches(
                    &self.config.tools,
                    &format!("{server}{}{target}", self.separator),
                )
            }
            _ => false,
        }
    }

    /// Runs the plugin on the exchange and turns what it said (or how it
    /// failed) into a verdict.
    pub fn run(&self, exchange: &mut Exchange) -> Verdict {
        if !self.sees(exchange) {
            return Verdict::Continue;
        }
        let admission = match self.breaker_admits() {
            Ok(admission) => admission,
            Err(failure) => {
                self.count(failure.kind);
                return self.on_error(exchange, failure);
            }
        };
        match self.call(exchange) {
            Ok((verdict, annotations)) => {
                self.count(match verdict {
                    Verdict::Continue => "continue",
                    Verdict::Modify(_) => "modify",
                    Verdict::Deny(_) => "deny",
                });
                self.succeeded(admission);
                for (key, value) in annotations {
                    exchange.annotations.push(Annotation {
                        interceptor: self.name.clone(),
                        key,
                        value,
                    });
                }
                verdict
            }
            Err(failure) => {
                self.count(failure.kind);
                tracing::warn!(plugin = %self.name, kind = failure.kind, reason = %failure.reason, "PLUGIN FAILED");
                // Too many calls at once is load, not a fault of the plugin.
                if failure.kind != "busy" {
                    self.failed(admission, &failure);
                }
                self.on_error(exchange, failure)
            }
        }
    }

    fn count(&self, result: &str) {
        if let Some((_, counter)) = RESULTS
            .iter()
            .zip(&self.results)
            .find(|(r, _)| **r == result)
        {
            counter.add(1);
        }
    }

    /// Whether the breaker lets a call through, and as what.
    fn breaker_admits(&self) -> Result<Admission, Failure> {
        let Ok(mut breaker) = self.breaker.lock() else {
            return Ok(Admission::Normal);
        };
        let open = || Failure {
            kind: "circuit-open",
            reason: "its circuit breaker is open after repeated failures".into(),
        };
        match *breaker {
            Breaker::Closed { .. } => Ok(Admission::Normal),
            Breaker::Open { until } if Instant::now() < until => Err(open()),
            Breaker::Open { .. } => {
                *breaker = Breaker::HalfOpen;
                Ok(Admission::Trial)
            }
            Breaker::HalfOpen => Err(open()),
        }
    }

    fn succeeded(&self, admission: Admission) {
        let Ok(mut breaker) = self.breaker.lock() else {
            return;
        };
        match (*breaker, admission) {
            (Breaker::HalfOpen, Admission::Trial) => {
                *breaker = Breaker::Closed { failures: 0 };
                drop(breaker);
                tracing::warn!(plugin = %self.name, "plugin circuit closed: calls go through again");
                let _ = self.events.send(PluginEvent::BreakerClosed {
                    plugin: self.config.name.clone(),
                });
            }
            (Breaker::Closed { .. }, _) => *breaker = Breaker::Closed { failures: 0 },
            // A call let through before the circuit opened says nothing
            // about the trial.
            _ => {}
        }
    }

    fn failed(&self, admission: Admission, failure: &Failure) {
        let Ok(mut breaker) = self.breaker.lock() else {
            return;
        };
        let failures = match (*breaker, admission) {
            (Breaker::Closed { failures }, _) => {
                let failures = failures.saturating_add(1);
                if failures < self.config.breaker_failures {
                    *breaker = Breaker::Closed { failures };
                    return;
                }
                failures
            }
            // The trial failed: open again.
            (Breaker::HalfOpen, Admission::Trial) => 1,
            _ => return,
        };
        *breaker = Breaker::Open {
            until: Instant::now() + self.config.breaker_cooldown,
        };
        drop(breaker);
        self.opened.add(1);
        tracing::error!(
            plugin = %self.name,
            failures,
            cooldown_ms = self.config.breaker_cooldown.as_millis() as u64,
            "PLUGIN CIRCUIT OPEN: the plugin is not called until the cool-down has passed"
        );
        let _ = self.events.send(PluginEvent::BreakerOpened {
            plugin: self.config.name.clone(),
            failures,
            last_error: failure.reason.clone(),
            cooldown: self.config.breaker_cooldown,
        });
    }

    fn on_error(&self, exchange: &mut Exchange, failure: Failure) -> Verdict {
        match self.config.on_error {
            OnError::Deny => Verdict::Deny(
                Denial::new(
                    protocol::code::PLUGIN_FAILED,
                    format!("plugin `{}` failed: {}", self.config.name, failure.reason),
                )
                .with("plugin_error", failure.kind),
            ),
            OnError::Continue => {
                exchange.annotations.push(Annotation {
                    interceptor: self.name.clone(),
                    key: HOST_ERROR_KEY.into(),
                    value: failure.reason,
                });
                Verdict::Continue
            }
        }
    }

    /// An instance to call: a warm one (`false`), or a new one whose budget,
    /// armed before it was made, also covers the call (`true`).
    fn checkout(&self) -> Result<(Instance, bool), Failure> {
        if self.config.instance == InstanceMode::Pooled
            && let Some(instance) = self.idle.lock().ok().and_then(|mut idle| idle.pop())
        {
            return Ok((instance, false));
        }
        if self.live.load(Ordering::Acquire) >= self.max_live {
            return Err(Failure {
                kind: "busy",
                reason: format!("more than {} calls at once", self.max_live),
            });
        }
        self.fresh_instance()
            .map(|instance| (instance, true))
            .map_err(|reason| Failure {
                kind: "trap",
                reason,
            })
    }

    /// Gives an instance back after a good call (or drops it).
    fn checkin(&self, instance: Instance) {
        if self.config.instance == InstanceMode::Pooled
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.config.pool
        {
            idle.push(instance);
        }
    }

    /// Calls the plugin on a message (whatever its `methods` and `phases`,
    /// and without the breaker): what `plugin check` shows.
    pub fn call(&self, exchange: &Exchange) -> Result<Evaluation, Failure> {
        let payload = serde_json::to_string(&exchange.message).map_err(|err| Failure {
            kind: "invalid",
            reason: format!("cannot serialize the message: {err}"),
        })?;
        let context = wit_context(exchange);
        let phase = match exchange.phase {
            Phase::Request => wit::Phase::Request,
            Phase::Response => wit::Phase::Response,
            Phase::Notification => wit::Phase::Notification,
        };
        let (mut instance, fresh) = self.checkout()?;
        if !fresh {
            instance
                .arm(budget(&self.config), self.runtime.fuel())
                .map_err(|reason| Failure {
                    kind: "trap",
                    reason,
                })?;
        }
        let checked = instance
            .on_message(phase, &context, &payload, self.max_output)
            .map_err(|err| match err {
                CallError::Trap(reason) => Failure {
                    kind: "trap",
                    reason,
                },
                CallError::Invalid(reason) => Failure {
                    kind: "invalid",
                    reason,
                },
            })
            .and_then(|(answer, annotations)| self.check(exchange, answer, annotations));
        // A failed instance is dropped here; a good one goes back.
        if checked.is_ok() {
            self.checkin(instance);
        }
        checked
    }

    /// An answer turned into a verdict, or why it is not a valid one.
    fn check(
        &self,
        exchange: &Exchange,
        answer: Answer,
        annotations: Vec<(String, String)>,
    ) -> Result<Evaluation, Failure> {
        let invalid = |reason: String| Failure {
            kind: "invalid",
            reason,
        };
        if annotations.iter().any(|(key, _)| key == HOST_ERROR_KEY) {
            return Err(invalid(format!(
                "annotation `{HOST_ERROR_KEY}` is the proxy's own (it notes the plugin's failures)"
            )));
        }
        let verdict = match answer {
            Answer::Continue => Verdict::Continue,
            Answer::Deny { code, message } => {
                if (-32768..=-32000).contains(&code) {
                    return Err(invalid(format!(
                        "denial code {code} is in -32768..=-32000, which JSON-RPC and the proxy reserve"
                    )));
                }
                Verdict::Deny(Denial::new(i64::from(code), message))
            }
            Answer::Modify(text) => {
                let message: Value = serde_json::from_str(&text)
                    .map_err(|err| invalid(format!("the modified message is not JSON: {err}")))?;
                same_envelope(&exchange.message, &message, exchange.phase).map_err(invalid)?;
                Verdict::Modify(message)
            }
        };
        Ok((verdict, annotations))
    }
}

impl Interceptor for Plugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        self.run(exchange)
    }

    fn on_server_response(&self, exchange: &mut Exchange) -> Verdict {
        self.run(exchange)
    }

    fn on_server_request(&self, exchange: &mut Exchange) -> Verdict {
        self.run(exchange)
    }

    fn on_client_response(&self, exchange: &mut Exchange) -> Verdict {
        self.run(exchange)
    }

    fn on_notification(&self, exchange: &mut Exchange) -> Verdict {
        self.run(exchange)
    }

    fn render_metrics(&self, out: &mut Exposition) {
        let plugin = &*self.config.name;
        out.declare(
            "portcullis_plugin_calls_total",
            "WASM plugin calls, by plugin and result (continue, modify, deny, or the failure: trap, invalid, busy, circuit-open).",
            "counter",
        );
        for (result, counter) in RESULTS.iter().zip(&self.results) {
            out.sample(
                "portcullis_plugin_calls_total",
                &[("plugin", plugin), ("result", result)],
                counter.get() as f64,
            );
        }
        out.declare(
            "portcullis_plugin_circuit_opens_total",
            "Times a WASM plugin's circuit breaker opened, by plugin.",
            "counter",
        );
        out.sample(
            "portcullis_plugin_circuit_opens_total",
            &[("plugin", plugin)],
            self.opened.get() as f64,
        );
        let open = self
            .breaker
            .lock()
            .map(|breaker| !matches!(*breaker, Breaker::Closed { .. }))
            .unwrap_or(false);
        out.declare(
            "portcullis_plugin_circuit_open",
            "Whether a WASM plugin's circuit breaker is open or half-open (1), by plugin.",
            "gauge",
        );
        out.sample(
            "portcullis_plugin_circuit_open",
            &[("plugin", plugin)],
            f64::from(u8::from(open)),
        );
        out.declare(
            "portcullis_plugin_counter",
            "The counters a WASM plugin keeps (`counter-add`), by plugin and name (at most 64 per plugin).",
            "gauge",
        );
        for (name, value) in self.counters.snapshot() {
            out.sample(
                "portcullis_plugin_counter",
                &[("plugin", plugin), ("name", &name)],
                value as f64,
            );
        }
    }
}

/// The wall time the first instance of a plugin (made at start, or when
/// `plugin check` loads it) may take to be made and configured.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn budget(config: &PluginConfig) -> Budget {
    Budget {
        timeout: config.timeout,
        fuel: config.fuel,
    }
}

fn wit_context(exchange: &Exchange) -> wit::Context {
    let context = &exchange.context;
    wit::Context {
        session: context.session.to_string(),
        client: context.client.name.to_string(),
        groups: context
            .client
            .groups
            .iter()
            .map(|g| g.to_string())
            .collect(),
        transport: context.transport.for_policies().to_owned(),
        server: context.server.as_deref().map(str::to_owned),
        method: context.method.to_string(),
        target: context.target.clone(),
        direction: match exchange.direction {
            Direction::ClientToServer => wit::Direction::ClientToServer,
            Direction::ServerToClient => wit::Direction::ServerToClient,
        },
    }
}

/// A plugin may edit a message's content, not what it is: the JSON-RPC
/// version, id and method stay, and so does a request's target (authz
/// decided on it).
fn same_envelope(before: &Value, after: &Value, phase: Phase) -> Result<(), String> {
    if !after.is_object() {
        return Err("the modified message is not a JSON object".into());
    }
    for key in ["jsonrpc", "id", "method"] {
        if before.get(key) != after.get(key) {
            return Err(format!("the modified message changes `{key}`"));
        }
    }
    match phase {
        Phase::Request | Phase::Notification => {
            // What routing, authorization and cancellation go by.
            for pointer in [
                "/params/name",
                "/params/uri",
                "/params/ref",
                "/params/requestId",
                "/params/taskId",
                "/params/_meta/progressToken",
                "/params/progressToken",
            ] {
                if before.pointer(pointer) != after.pointer(pointer) {
                    return Err(format!(
                        "the modified message changes `{}` (what was authorized)",
                        &pointer[1..]
                    ));
                }
            }
        }
        Phase::Response => {
            if after.get("result").is_none() && after.get("error").is_none() {
                return Err("the modified response has neither `result` nor `error`".into());
            }
        }
    }
    Ok(())
}
