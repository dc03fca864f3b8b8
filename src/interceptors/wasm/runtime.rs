//! The wasmtime side of plugins: one engine for all of them (component
//! model, pooling allocator, epoch deadlines), loading and checking a
//! component, and instances with their limits.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use super::bindings::exports::portcullis::interceptor::handler::{Context, Phase, Verdict};
use super::bindings::portcullis::interceptor::host;
use super::bindings::{Interceptor as Bindings, InterceptorPre};
use crate::config::PluginConfig;
use crate::protocol::cut;

/// The interface version this proxy speaks.
pub const INTERFACE: &str = "portcullis:interceptor/handler@0.1.0";
const INTERFACE_PREFIX: &str = "portcullis:interceptor/handler@";
/// The only import a plugin may use (WASI imports are given traps).
const HOST_INTERFACE: &str = "portcullis:interceptor/host@0.1.0";

/// How often the epoch ticks: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(1);

/// Counters a plugin keeps through `counter-add`.
const MAX_COUNTERS: usize = 64;
const MAX_COUNTER_NAME: usize = 64;
/// A log line from a plugin is cut at this many bytes.
const MAX_LOG_LINE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has SHA-256 {actual}, but the config pins {expected}")]
    Hash {
        path: String,
        actual: String,
        expected: String,
    },
    #[error("{path} is not a WebAssembly component: {message}")]
    Compile { path: String, message: String },
    #[error(
        "{path} exports {found}, but this proxy speaks {INTERFACE}: rebuild the plugin against plugins/wit/interceptor.wit"
    )]
    Version { path: String, found: String },
    #[error("{path} does not export {INTERFACE} (it exports: {exports})")]
    NoInterface { path: String, exports: String },
    #[error(
        "{path} imports {import}, which the proxy does not give plugins (only {HOST_INTERFACE}; WASI imports trap)"
    )]
    Import { path: String, import: String },
    #[error("cannot start an instance of {path}: {message}")]
    Instantiate { path: String, message: String },
    #[error("{path}: {message}")]
    Configure { path: String, message: String },
    #[error("cannot set up the WASM engine: {0}")]
    Engine(String),
}

/// Per-plugin state shared by its instances: its name for logs, and its
/// counters.
#[derive(Debug, Default)]
pub struct Counters {
    values: Mutex<BTreeMap<String, i64>>,
}

impl Counters {
    fn add(&self, name: String, delta: i64) {
        let Ok(mut values) = self.values.lock() else {
            return;
        };
        if name.len() > MAX_COUNTER_NAME {
            return;
        }
        if let Some(value) = values.get_mut(&name) {
            *value = value.saturating_add(delta);
        } else if values.len() < MAX_COUNTERS {
            values.insert(name, delta);
        }
    }

    /// The counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, i64> {
        self.values.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// What an instance's store holds.
pub struct State {
    limits: StoreLimits,
    plugin: Arc<str>,
    counters: Arc<Counters>,
    /// Log lines left for this call.
    log_budget: u32,
}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let plugin = &*self.plugin;
        // Escaped whatever the log's format: a plugin cannot forge log
        // lines or hide text from whoever reads them.
        let message = crate::protocol::shown(cut(&message, MAX_LOG_LINE)).into_owned();
        if self.log_budget == 0 {
            tracing::warn!(plugin, "the plugin's log lines for this call are used up");
        }
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_unix_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn counter_add(&mut self, name: String, delta: i64) {
        self.counters.add(name, delta);
    }
}

/// The engine every plugin runs on, and what it has compiled.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    fuel: bool,
    compiled: Mutex<HashMap<String, Component>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How many instances of one plugin may be alive at once: calls are
/// synchronous, so no more run at a time than threads run the chain.
pub fn max_live(config: &PluginConfig) -> usize {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    (config.pool.max(threads) * 2 + 2).min(MAX_LIVE)
}

/// The most instances of one plugin alive at once, whatever the machine.
const MAX_LIVE: usize = 64;

impl Runtime {
    /// An engine sized for these plugins (the pooling allocator reserves
    /// slots for each plugin's most live instances).
    pub fn new(plugins: &[&PluginConfig]) -> Result<Arc<Self>, LoadError> {
        let fuel = plugins.iter().any(|p| p.fuel.is_some());
        let slots: usize = plugins
            .iter()
            .map(|p| max_live(p) + 1)
            .sum::<usize>()
            .max(4);
        let largest = plugins
            .iter()
            .map(|p| p.memory)
            .max()
            .unwrap_or(crate::config::DEFAULT_PLUGIN_MEMORY);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots as u32)
            .total_core_instances((slots * 8) as u32)
            .total_memories(slots as u32)
            .total_tables((slots * 8) as u32)
            .max_memories_per_component(1)
            .max_core_instances_per_component(8)
            .max_tables_per_component(8)
            .max_memory_size(largest as usize);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|err| LoadError::Engine(err.to_string()))?;
        let mut linker = Linker::<State>::new(&engine);
        Bindings::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(|err| LoadError::Engine(err.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(|err| LoadError::Engine(format!("cannot start the epoch thread: {err}")))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            fuel,
            compiled: Mutex::new(HashMap::new()),
            stop,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, checks and compiles a plugin file (compiled once per content:
    /// the same file twice shares the compiled code).
    pub fn load(&self, path: &Path, expected: Option<&str>) -> Result<Loaded, LoadError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = expected
            && expected != sha256
        {
            return Err(LoadError::Hash {
                path: shown,
                actual: sha256,
                expected: expected.to_owned(),
            });
        }
        let cached = self
            .compiled
            .lock()
            .ok()
            .and_then(|compiled| compiled.get(&sha256).cloned());
        let component = match cached {
            Some(component) => component,
            None => {
                let component =
                    Component::new(&self.engine, &bytes).map_err(|err| LoadError::Compile {
                        path: shown.clone(),
                        message: format!("{err:#}"),
                    })?;
                if let Ok(mut compiled) = self.compiled.lock() {
                    compiled.insert(sha256.clone(), component.clone());
                }
                component
            }
        };
        self.check(&component, &shown)?;
        let mut linker = self.linker.clone();
        // The WASI imports Rust's std links in (stderr for panics, the
        // environment, …) are satisfied with traps: a plugin gets none of it.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|err| LoadError::Instantiate {
                path: shown.clone(),
                message: format!("{err:#}"),
            })?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(InterceptorPre::new)
            .map_err(|err| LoadError::Instantiate {
                path: shown.clone(),
                message: format!("{err:#}"),
            })?;
        Ok(Loaded {
            pre,
            sha256,
            path: shown,
        })
    }

    /// The interface version and the imports, with errors that say what to
    /// do.
    fn check(&self, component: &Component, path: &str) -> Result<(), LoadError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if !exports.iter().any(|name| name == INTERFACE) {
            if let Some(found) = exports.iter().find(|n| n.starts_with(INTERFACE_PREFIX)) {
                return Err(LoadError::Version {
                    path: path.to_owned(),
                    found: found.clone(),
                });
            }
            return Err(LoadError::NoInterface {
                path: path.to_owned(),
                exports: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            });
        }
        for (name, _) in ty.imports(&self.engine) {
            if name != HOST_INTERFACE && !name.starts_with("wasi:") {
                return Err(LoadError::Import {
                    path: path.to_owned(),
                    import: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// A new instance, configured, counted in `live` until it is dropped.
    /// The budget covers instantiation and `configure` together.
    #[allow(clippy::too_many_arguments)]
    pub fn instantiate(
        &self,
        loaded: &Loaded,
        plugin: &Arc<str>,
        counters: &Arc<Counters>,
        memory: u64,
        config_json: &str,
        budget: Budget,
        live: &Arc<AtomicUsize>,
    ) -> Result<Instance, String> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory as usize)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            State {
                limits,
                plugin: plugin.clone(),
                counters: counters.clone(),
                log_budget: LOG_LINES_PER_CALL,
            },
        );
        store.limiter(|state| &mut state.limits);
        let mut instance = Instance {
            store,
            bindings: None,
            _live: Live::new(live),
        };
        instance.arm(budget, self.fuel)?;
        let bindings = loaded
            .pre
            .instantiate(&mut instance.store)
            .map_err(|err| describe(&err))?;
        match bindings
            .portcullis_interceptor_handler()
            .call_configure(&mut instance.store, config_json)
        {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(format!(
                    "`configure` refused the config: {}",
                    cut(&message, MAX_CONFIGURE_ERROR)
                ));
            }
            Err(err) => return Err(format!("`configure` failed: {}", describe(&err))),
        }
        instance.bindings = Some(bindings);
        Ok(instance)
    }

    pub fn fuel(&self) -> bool {
        self.fuel
    }
}

/// A compiled, checked, pre-linked plugin.
pub struct Loaded {
    pre: InterceptorPre<State>,
    pub sha256: String,
    pub path: String,
}

/// What one call may spend.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub timeout: Duration,
    pub fuel: Option<u64>,
}

/// One live instance of a plugin, counted while it exists.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A plugin's answer, read and bounded.
#[derive(Debug)]
pub enum Answer {
    Continue,
    /// The new message's JSON text (at most the output limit).
    Modify(String),
    Deny {
        code: i32,
        /// Cut at [`MAX_DENIAL_MESSAGE`].
        message: String,
    },
}

/// Why a call gave no answer.
#[derive(Debug)]
pub enum CallError {
    /// It trapped: a panic, out of time, fuel or memory, a WASI call.
    Trap(String),
    /// It answered something that breaks the interface's rules.
    Invalid(String),
}

/// The most annotations one outcome may carry, and their sizes.
pub const MAX_ANNOTATIONS: usize = 16;
pub const MAX_ANNOTATION_KEY: usize = 64;
pub const MAX_ANNOTATION_VALUE: usize = 1024;
/// A denial's message is cut at this many bytes, and so is the error text
/// of a `configure` that refuses its config.
pub const MAX_DENIAL_MESSAGE: usize = 1024;
const MAX_CONFIGURE_ERROR: usize = 1024;
/// Log lines a plugin may write per call (and per `configure`).
const LOG_LINES_PER_CALL: u32 = 16;

/// A live instance and its store.
pub struct Instance {
    pub store: Store<State>,
    bindings: Option<Bindings>,
    _live: Live,
}

impl Instance {
    /// Resets the deadline (and fuel, and the log budget) for the next call.
    pub fn arm(&mut self, budget: Budget, fuel_on: bool) -> Result<(), String> {
        let ticks = budget.timeout.as_micros().div_ceil(TICK.as_micros());
        self.store.set_epoch_deadline(
            u64::try_from(ticks)
                .unwrap_or(u64::MAX / 2)
                .saturating_add(1),
        );
        self.store.data_mut().log_budget = LOG_LINES_PER_CALL;
        if fuel_on {
            self.store
                .set_fuel(budget.fuel.unwrap_or(u64::MAX))
                .map_err(|err| format!("cannot set fuel: {err}"))?;
        }
        Ok(())
    }

    /// Calls `on-message` and checks its outcome against the limits: a
    /// modified message of at most `max_output` bytes, at most
    /// [`MAX_ANNOTATIONS`] annotations of bounded size. What the host copies
    /// out of the instance is bounded before it is copied (wasmtime's
    /// hostcall fuel), so no outcome can make the proxy allocate more than
    /// about `max_output` plus the annotations' worth.
    pub fn on_message(
        &mut self,
        phase: Phase,
        context: &Context,
        payload: &str,
        max_output: usize,
    ) -> Result<(Answer, Vec<(String, String)>), CallError> {
        let Some(bindings) = &self.bindings else {
            return Err(CallError::Trap("the instance is not configured".into()));
        };
        self.store.set_hostcall_fuel(
            max_output + MAX_ANNOTATIONS * (MAX_ANNOTATION_KEY + MAX_ANNOTATION_VALUE + 64) + 4096,
        );
        let outcome = bindings
            .portcullis_interceptor_handler()
            .call_on_message(&mut self.store, phase, context, payload)
            .map_err(|err| {
                let reason = describe(&err);
                if reason.contains("too much data is being copied") {
                    CallError::Invalid(format!(
                        "an outcome larger than {max_output} bytes of message and {MAX_ANNOTATIONS} annotations"
                    ))
                } else {
                    CallError::Trap(reason)
                }
            })?;
        let invalid = CallError::Invalid;
        let count = outcome.annotations.len();
        if count > MAX_ANNOTATIONS {
            return Err(invalid(format!(
                "{count} annotations (at most {MAX_ANNOTATIONS})"
            )));
        }
        if let Some((key, _)) = outcome.annotations.iter().find(|(key, value)| {
            key.is_empty() || key.len() > MAX_ANNOTATION_KEY || value.len() > MAX_ANNOTATION_VALUE
        }) {
            return Err(invalid(format!(
                "annotation `{}` is empty or too long (keys up to {MAX_ANNOTATION_KEY} bytes, values up to {MAX_ANNOTATION_VALUE})",
                cut(key, MAX_ANNOTATION_KEY)
            )));
        }
        let answer = match outcome.verdict {
            Verdict::Continue => Answer::Continue,
            Verdict::Modify(message) => {
                if message.len() > max_output {
                    return Err(invalid(format!(
                        "a modified message of {} bytes (the limit is {max_output})",
                        message.len()
                    )));
                }
                Answer::Modify(message)
            }
            Verdict::Deny(denial) => Answer::Deny {
                code: denial.code,
                message: cut(&denial.message, MAX_DENIAL_MESSAGE).to_owned(),
            },
        };
        Ok((answer, outcome.annotations))
    }
}

/// A failed call in a few words: what a log line and an audit record say.
pub fn describe(err: &wasmtime::Error) -> String {
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "ran out of time".into(),
            wasmtime::Trap::OutOfFuel => "ran out of fuel".into(),
            wasmtime::Trap::UnreachableCodeReached => {
                "trapped (unreachable: a panic, an abort, or a WASI call)".into()
            }
            other => format!("trapped ({other})"),
        };
    }
    let root = err.root_cause().to_string();
    let text = if root.contains("forcing trap when growing memory") {
        "trapped (over its memory limit)".to_owned()
    } else if let Some(import) = root
        .strip_prefix("unknown import: `")
        .and_then(|rest| rest.split('`').next())
    {
        format!("trapped (called {import}, which plugins do not get)")
    } else {
        root
    };
    cut(&text, 300).to_owned()
}
