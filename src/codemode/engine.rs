//! The code-mode engine: QuickJS-ng in WebAssembly (`codemode/codemode.wasm`,
//! from `codemode/codemode.c`) under a wasmtime engine of its own.
//!
//! A script is the body of an async function: it may `await`, `return` a
//! JSON value, `console.log`, and call `tools[name](arguments)` for each
//! name it is given. Each call goes to a [`Dispatch`] (the proxy's
//! exchange), which answers it from any thread; a refused call is an
//! exception in the script, carrying the refusal's words.
//!
//! The module imports nothing but `codemode.tool_start`, `tool_wait`,
//! `tool_read` and `now_ms`: no file, socket, environment or process. Each
//! run has a store of its own (nothing is shared between scripts) with:
//! fuel (instructions), an epoch deadline and a wait deadline (wall time,
//! in wasm and waiting for calls alike), a linear-memory cap, QuickJS's
//! heap and stack limits, an output cap and a budget of calls. A script
//! past a limit is stopped with a [`RunError`] naming it; one that throws
//! ends with an envelope whose `ok` is false.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::{Caller, Config, Extern, InstancePre, Linker, Memory, Module, Store, StoreLimits};

/// The engine, as `codemode/build.sh` builds it (the test
/// `the_engine_is_what_its_sources_build` checks that it is).
const MODULE: &[u8] = include_bytes!("../../codemode/codemode.wasm");

/// Its SHA-256: a change of the module shows in a reviewed source too.
const MODULE_SHA256: &str = "bf372354eceae57320aad6b5550070f25dd41652f48664668d30a38fe0b7c184";

/// How often the epoch ticks.
const TICK: Duration = Duration::from_millis(1);

/// The most of wasmtime's own stack a script may use: deep recursion in
/// QuickJS's C code ends here (a trap), JavaScript's own well before
/// (QuickJS's stack limit: a `RangeError` the script can catch).
const MAX_WASM_STACK: usize = 8 << 20;

/// The stack of the thread a script runs on ([`Engine::run`]): the
/// engine's, and room for the host's calls.
const THREAD_STACK: usize = 16 << 20;

/// The longest tool name, and the largest arguments and answer (JSON), a
/// call carries.
const MAX_TOOL_NAME: usize = 256;
const MAX_TOOL_ARGUMENTS: usize = 1 << 20;
const MAX_ANSWER: usize = 4 << 20;

/// Bytes of answers that may wait for a script to read them.
const MAX_QUEUED: usize = 16 << 20;

/// Calls a script may have in flight at once (the engine's own bound too).
const MAX_IN_FLIGHT: usize = 64;

/// The longest script.
const MAX_SCRIPT: usize = 1 << 20;

/// What a script may use: `[code_mode]`'s limits (checked there, and
/// again before a script runs).
pub use crate::config::ScriptLimits as Limits;

/// A call a script made.
#[derive(Debug, Clone)]
pub struct Call {
    /// Its number in the script, from 0.
    pub id: u32,
    /// One of the tools the script was given.
    pub tool: String,
    /// A JSON object.
    pub arguments: serde_json::Value,
    /// Fired when the script ends (returned, failed or stopped): its
    /// answer is no longer awaited, and the call should stop.
    pub ended: CancellationToken,
}

/// A call's answer: its result as JSON, or the words of its refusal.
pub type Answer = Result<serde_json::Value, String>;

/// A call's answer as the script reads it: (its id, 0 a result or 1 a
/// refusal, the bytes).
type Answered = (u32, u32, Vec<u8>);

/// Where a call's answer goes: once, for that call alone.
#[derive(Debug)]
pub struct Reply {
    id: u32,
    done: Sender<Answered>,
    /// Bytes of answers sent and not yet read by the script.
    queued: Arc<AtomicUsize>,
}

impl Reply {
    /// Answers the call (nothing, once the script has ended). An answer
    /// over 4 MiB, or one that would put the answers waiting for the
    /// script over 16 MiB, is a refusal that says so.
    pub fn send(self, answer: Answer) {
        let (status, body) = match answer {
            Ok(result) => (0u32, serde_json::to_vec(&result).unwrap_or_default()),
            Err(refusal) => (1u32, refusal.into_bytes()),
        };
        let (status, body) = if body.len() > MAX_ANSWER {
            let words =
                format!("the answer is over {MAX_ANSWER} bytes, more than a script is given");
            (1, words.into_bytes())
        } else {
            (status, body)
        };
        let len = body.len();
        let waiting = self.queued.fetch_add(len, Ordering::SeqCst) + len;
        let (status, body) = if waiting > MAX_QUEUED {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            let words = format!(
                "the answer was dropped: the answers waiting for the script would be over {MAX_QUEUED} bytes (await them as they come)"
            );
            self.queued.fetch_add(words.len(), Ordering::SeqCst);
            (1, words.into_bytes())
        } else {
            (status, body)
        };
        let _ = self.done.send((self.id, status, body));
    }
}

/// Where a script's calls go.
pub trait Dispatch: Send + Sync {
    /// Starts `call`, whose answer goes to `reply`, from any thread. Must
    /// not block (the script waits meanwhile): the work is done
    /// elsewhere. An answer never sent leaves the script waiting until its
    /// wall time is spent.
    fn start(&self, call: Call, reply: Reply);
}

/// Why a script was stopped (beside its own exceptions, which end it with
/// an envelope).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("the code-mode engine cannot start: {0}")]
    Engine(String),
    #[error("code mode's limits: {0}")]
    Limits(String),
    #[error("the script is over {MAX_SCRIPT} bytes")]
    ScriptTooLong,
    #[error("the script used all its instructions (fuel)")]
    Fuel,
    #[error("the script ran out of time ({} ms)", .0.as_millis())]
    Time(Duration),
    #[error("the script recursed too deep (stack overflow)")]
    Stack,
    #[error("the script's output is over its limit of {0} bytes")]
    Output(u32),
    #[error("the script was stopped: {0}")]
    Trap(String),
    /// Its caller stopped it (the outer call was cancelled, or its client
    /// went away).
    #[error("the script was cancelled")]
    Cancelled,
}

/// A script that ran to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The engine's envelope: `{"ok": true, "result": …, "logs": […]}`, or
    /// `{"ok": false, "error": "…", "stack": "…", "logs": […]}`.
    pub envelope: serde_json::Value,
    /// Calls the script made.
    pub calls: u32,
    /// Fuel it used.
    pub fuel: u64,
    /// The engine's linear memory at its end, in bytes: what a running
    /// script held (wasmtime's own bookkeeping aside).
    pub memory: usize,
}

/// The engine: compiled once, a store per script.
pub struct Engine {
    engine: wasmtime::Engine,
    pre: InstancePre<Host>,
    stop: Arc<AtomicBool>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A run's state: its limits, its calls, and their answers.
struct Host {
    limits: StoreLimits,
    dispatch: Arc<dyn Dispatch>,
    /// The tools the script was given.
    tools: HashSet<String>,
    done: Sender<Answered>,
    answers: Receiver<Answered>,
    /// Bytes of answers sent and not yet read.
    queued: Arc<AtomicUsize>,
    /// The answer waited for, to be read (one before it, unread, is
    /// dropped: at most one is held).
    waited: HashMap<u32, Vec<u8>>,
    /// Calls started and not yet answered.
    outstanding: HashSet<u32>,
    started: u32,
    most: u32,
    deadline: Instant,
    ended: CancellationToken,
    /// Fired by the caller: the script stops at its next tick or wait.
    stop: CancellationToken,
}

/// What stops a run from the host's side.
#[derive(Debug, thiserror::Error)]
enum Stop {
    /// The wait for a call's answer outlived the script's wall time.
    #[error("waited too long for a call")]
    WaitedTooLong,
    /// The engine's output was over what the limits allow.
    #[error("the output is over its limit")]
    OutputTooLarge,
    /// The script's wall time is spent (checked against the clock at each
    /// tick: a ticker running late under load does not lengthen it).
    #[error("out of time")]
    TimeUp,
    /// The caller stopped it.
    #[error("cancelled")]
    Cancelled,
}

/// How long a wait for an answer goes before it looks whether the caller
/// stopped the script.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// Ticks between two looks at the clock and the stop token while a script
/// runs in wasm.
const TICKS_PER_LOOK: u64 = 5;

fn memory(caller: &mut Caller<'_, Host>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => wasmtime::bail!("the engine exports no memory"),
    }
}

/// `len` bytes at `at` in the script's memory, if no more than `most`.
fn read(
    caller: &mut Caller<'_, Host>,
    (at, len): (u32, u32),
    most: usize,
) -> wasmtime::Result<Option<Vec<u8>>> {
    let len = len as usize;
    if len > most {
        return Ok(None);
    }
    let memory = memory(caller)?;
    let mut bytes = vec![0; len];
    memory.read(&*caller, at as usize, &mut bytes)?;
    Ok(Some(bytes))
}

/// `tool_start(name, arguments) -> id`: a call started, or refused (a
/// negative code the script is told: -1 over its budget of calls, -2 a
/// name too long, not UTF-8 or not one of its tools, -3 arguments over
/// 1 MiB, -4 arguments that are not a JSON object, -5 already 64 calls in
/// flight).
fn tool_start(
    mut caller: Caller<'_, Host>,
    name: (u32, u32),
    arguments: (u32, u32),
) -> wasmtime::Result<i32> {
    if caller.data().started >= caller.data().most {
        return Ok(-1);
    }
    if caller.data().outstanding.len() >= MAX_IN_FLIGHT {
        return Ok(-5);
    }
    let Some(tool) = read(&mut caller, name, MAX_TOOL_NAME)?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|tool| caller.data().tools.contains(tool))
    else {
        return Ok(-2);
    };
    let Some(arguments) = read(&mut caller, arguments, MAX_TOOL_ARGUMENTS)? else {
        return Ok(-3);
    };
    let Some(arguments) = parse_json(&arguments).filter(serde_json::Value::is_object) else {
        return Ok(-4);
    };
    let host = caller.data_mut();
    let id = host.started;
    host.started += 1;
    host.outstanding.insert(id);
    let call = Call {
        id,
        tool,
        arguments,
        ended: host.ended.clone(),
    };
    let reply = Reply {
        id,
        done: host.done.clone(),
        queued: host.queued.clone(),
    };
    host.dispatch.start(call, reply);
    Ok(i32::try_from(id).unwrap_or(i32::MAX))
}

/// `tool_wait(out) -> 0 | -1`: waits for any started call's answer, and
/// writes `{id, status, len}` (status 0 a result, 1 a refusal).
fn tool_wait(mut caller: Caller<'_, Host>, out: u32) -> wasmtime::Result<i32> {
    if caller.data().outstanding.is_empty() {
        return Ok(-1);
    }
    let (id, status, body) = loop {
        if caller.data().stop.is_cancelled() {
            return Err(wasmtime::Error::new(Stop::Cancelled));
        }
        let left = caller
            .data()
            .deadline
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(wasmtime::Error::new(Stop::WaitedTooLong));
        }
        match caller.data().answers.recv_timeout(left.min(WAIT_SLICE)) {
            Ok((id, status, body)) => {
                caller.data().queued.fetch_sub(body.len(), Ordering::SeqCst);
                // Only a call in flight is answered, once.
                if caller.data_mut().outstanding.remove(&id) {
                    break (id, status, body);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(wasmtime::Error::new(Stop::WaitedTooLong));
            }
        }
    };
    let mut record = [0u8; 12];
    record[..4].copy_from_slice(&id.to_le_bytes());
    record[4..8].copy_from_slice(&status.to_le_bytes());
    record[8..].copy_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    let host = caller.data_mut();
    host.waited.clear();
    host.waited.insert(id, body);
    let memory = memory(&mut caller)?;
    memory.write(&mut caller, out as usize, &record)?;
    Ok(0)
}

/// `tool_read(id, buffer, len) -> written`: a waited answer, once.
fn tool_read(
    mut caller: Caller<'_, Host>,
    id: i32,
    (at, len): (u32, u32),
) -> wasmtime::Result<i32> {
    let Some(body) = u32::try_from(id)
        .ok()
        .and_then(|id| caller.data_mut().waited.remove(&id))
    else {
        return Ok(-1);
    };
    let written = body.len().min(len as usize);
    let memory = memory(&mut caller)?;
    memory.write(
        &mut caller,
        at as usize,
        body.get(..written).unwrap_or_default(),
    )?;
    Ok(i32::try_from(written).unwrap_or(i32::MAX))
}

fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    linker.func_wrap(
        "codemode",
        "tool_start",
        |caller: Caller<'_, Host>, name: u32, name_len: u32, args: u32, args_len: u32| {
            tool_start(caller, (name, name_len), (args, args_len))
        },
    )?;
    linker.func_wrap("codemode", "tool_wait", tool_wait)?;
    linker.func_wrap(
        "codemode",
        "tool_read",
        |caller: Caller<'_, Host>, id: i32, at: u32, len: u32| tool_read(caller, id, (at, len)),
    )?;
    // The one clock a script sees: the time of day, to the millisecond.
    linker.func_wrap("codemode", "now_ms", || -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_millis() as f64)
    })?;
    Ok(linker)
}

impl Engine {
    /// The engine compiled (a second or two), its epoch ticking.
    pub fn new() -> Result<Self, RunError> {
        let fail = |err: wasmtime::Error| RunError::Engine(err.to_string());
        use sha2::Digest as _;
        if hex::encode(sha2::Sha256::digest(MODULE)) != MODULE_SHA256 {
            return Err(RunError::Engine(
                "the embedded engine is not the one built".into(),
            ));
        }
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .async_stack_size(MAX_WASM_STACK);
        let engine = wasmtime::Engine::new(&config).map_err(fail)?;
        let module = Module::new(&engine, MODULE).map_err(fail)?;
        let pre = linker(&engine)
            .and_then(|linker| linker.instantiate_pre(&module))
            .map_err(fail)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, stopped) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("codemode-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(|err| RunError::Engine(format!("cannot start the epoch thread: {err}")))?;
        Ok(Self { engine, pre, stop })
    }

    /// Runs `script` with `tools` callable, within `limits`, its calls
    /// sent to `dispatch`, on a thread of its own whose stack holds the
    /// engine's (not the caller's: an async task's would not). Blocks
    /// until the script ends.
    pub fn run(
        &self,
        script: &str,
        tools: &[String],
        limits: &Limits,
        dispatch: Arc<dyn Dispatch>,
    ) -> Result<Outcome, RunError> {
        let stop = CancellationToken::new();
        std::thread::scope(|scope| {
            script_thread()
                .spawn_scoped(scope, || {
                    self.run_here((script, tools), limits, dispatch, stop)
                })
                .map_err(no_thread)?
                .join()
                .map_err(|_| RunError::Engine("a script's thread panicked".into()))?
        })
    }

    /// [`Engine::run`] without blocking: the script runs on a thread of
    /// its own, and its end comes through the receiver. `stop` fired stops
    /// it at its next tick or wait ([`RunError::Cancelled`]).
    pub fn start(
        self: &Arc<Self>,
        (script, tools): (String, Vec<String>),
        limits: Limits,
        dispatch: Arc<dyn Dispatch>,
        stop: CancellationToken,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Outcome, RunError>>, RunError> {
        let (done, ended) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        script_thread()
            .spawn(move || {
                let _ = done.send(engine.run_here((&script, &tools), &limits, dispatch, stop));
            })
            .map_err(no_thread)?;
        Ok(ended)
    }

    /// [`Engine::run`], on this thread.
    fn run_here(
        &self,
        (script, tools): (&str, &[String]),
        limits: &Limits,
        dispatch: Arc<dyn Dispatch>,
        stop: CancellationToken,
    ) -> Result<Outcome, RunError> {
        limits
            .check()
            .map_err(|(_, words)| RunError::Limits(words.to_owned()))?;
        if script.len() > MAX_SCRIPT {
            return Err(RunError::ScriptTooLong);
        }
        let ended = CancellationToken::new();
        // The script's calls are told when it ends, however it ends.
        let _ended = ended.clone().drop_guard();
        let (done, answers) = channel();
        let host = Host {
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(limits.memory)
                .instances(1)
                .memories(1)
                .tables(1)
                .build(),
            dispatch,
            tools: tools.iter().cloned().collect(),
            done,
            answers,
            waited: HashMap::new(),
            queued: Arc::new(AtomicUsize::new(0)),
            outstanding: HashSet::new(),
            started: 0,
            most: limits.calls,
            deadline: Instant::now() + limits.wall,
            ended,
            stop,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        store
            .set_fuel(limits.fuel)
            .map_err(|err| RunError::Engine(err.to_string()))?;
        // Every few ticks, the clock and the stop token are looked at: the
        // wall time is the clock's, however late the ticker runs.
        store.set_epoch_deadline(TICKS_PER_LOOK);
        store.epoch_deadline_callback(|context| {
            let host = context.data();
            if host.stop.is_cancelled() {
                return Err(wasmtime::Error::new(Stop::Cancelled));
            }
            if Instant::now() >= host.deadline {
                return Err(wasmtime::Error::new(Stop::TimeUp));
            }
            Ok(wasmtime::UpdateDeadline::Continue(TICKS_PER_LOOK))
        });
        let tools = serde_json::to_vec(tools).map_err(|err| RunError::Engine(err.to_string()))?;
        let (envelope, memory) = run_in(&self.pre, &mut store, (script.as_bytes(), &tools), limits)
            .map_err(|err| stopped(&err, limits))?;
        // The script's own word (it may shape it as it likes, as it may
        // return or throw what it likes); only its form is checked.
        let envelope = parse_json(&envelope)
            .filter(|envelope| {
                envelope
                    .get("ok")
                    .is_some_and(serde_json::Value::is_boolean)
            })
            .ok_or_else(|| RunError::Trap("the engine's answer is not an envelope".into()))?;
        Ok(Outcome {
            envelope,
            calls: store.data().started,
            fuel: limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)),
            memory,
        })
    }
}

/// A script's own thread: its stack holds the engine's.
fn script_thread() -> std::thread::Builder {
    std::thread::Builder::new()
        .name("codemode-script".into())
        .stack_size(THREAD_STACK)
}

fn no_thread(err: std::io::Error) -> RunError {
    RunError::Engine(format!("cannot start a script's thread: {err}"))
}

/// The script run in a new instance: the envelope's bytes, and the size of
/// the instance's memory at the end.
fn run_in(
    pre: &InstancePre<Host>,
    store: &mut Store<Host>,
    (script, tools): (&[u8], &[u8]),
    limits: &Limits,
) -> wasmtime::Result<(Vec<u8>, usize)> {
    let instance = pre.instantiate(&mut *store)?;
    let initialize = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
    initialize.call(&mut *store, ())?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::Error::msg("the engine exports no memory"))?;
    let alloc = instance.get_typed_func::<u32, u32>(&mut *store, "cm_alloc")?;
    let run = instance
        .get_typed_func::<(u32, u32, u32, u32, u32, u32, u32), i32>(&mut *store, "cm_run")?;
    let output_at = instance.get_typed_func::<(), u32>(&mut *store, "cm_output_ptr")?;
    let output_len = instance.get_typed_func::<(), u32>(&mut *store, "cm_output_len")?;
    let mut put = |bytes: &[u8]| -> wasmtime::Result<(u32, u32)> {
        let len = u32::try_from(bytes.len())?;
        let at = alloc.call(&mut *store, len)?;
        if at == 0 {
            wasmtime::bail!("the engine has no memory for the script");
        }
        memory.write(&mut *store, at as usize, bytes)?;
        Ok((at, len))
    };
    let (script_at, script_len) = put(script)?;
    let (tools_at, tools_len) = put(tools)?;
    run.call(
        &mut *store,
        (
            script_at,
            script_len,
            tools_at,
            tools_len,
            limits.js_heap,
            limits.js_stack,
            limits.output,
        ),
    )?;
    let at = output_at.call(&mut *store, ())?;
    let len = output_len.call(&mut *store, ())?;
    // The engine caps it; checked again before a byte is copied.
    if len > limits.output.saturating_add(256) {
        return Err(wasmtime::Error::new(Stop::OutputTooLarge));
    }
    let mut envelope = vec![0; len as usize];
    memory.read(&*store, at as usize, &mut envelope)?;
    Ok((envelope, memory.data_size(&*store)))
}

/// Why a run stopped, from what wasmtime says.
fn stopped(err: &wasmtime::Error, limits: &Limits) -> RunError {
    match err.downcast_ref::<Stop>() {
        Some(Stop::WaitedTooLong | Stop::TimeUp) => return RunError::Time(limits.wall),
        Some(Stop::OutputTooLarge) => return RunError::Output(limits.output),
        Some(Stop::Cancelled) => return RunError::Cancelled,
        None => {}
    }
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::OutOfFuel => RunError::Fuel,
            wasmtime::Trap::Interrupt => RunError::Time(limits.wall),
            wasmtime::Trap::StackOverflow => RunError::Stack,
            other => RunError::Trap(other.to_string()),
        };
    }
    let root = err.root_cause().to_string();
    // An access out of bounds, say: never what a script is meant to reach.
    tracing::warn!(reason = %root, "a code-mode script trapped");
    RunError::Trap(root.chars().take(300).collect())
}

/// `bytes` as JSON; strings with a lone surrogate (JavaScript strings may
/// hold one, JSON text may not) have it replaced by U+FFFD.
fn parse_json(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes)
        .ok()
        .or_else(|| serde_json::from_slice(&well_formed(bytes)).ok())
}

/// `json` with each `\uD800`–`\uDFFF` escape that is not half of a pair
/// written `\uFFFD`.
fn well_formed(json: &[u8]) -> Vec<u8> {
    let unit = |at: usize| -> Option<u16> {
        let hex = json.get(at..at + 6)?;
        if hex.get(..2)? != b"\\u" {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex.get(2..)?).ok()?, 16).ok()
    };
    let (high, low) = (0xD800..=0xDBFF, 0xDC00..=0xDFFF);
    let mut out = Vec::with_capacity(json.len());
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        if byte != b'\\' {
            out.push(byte);
            at += 1;
            continue;
        }
        match unit(at) {
            Some(first) if high.contains(&first) => {
                if unit(at + 6).is_some_and(|second| low.contains(&second)) {
                    out.extend_from_slice(json.get(at..at + 12).unwrap_or_default());
                    at += 12;
                } else {
                    out.extend_from_slice(b"\\uFFFD");
                    at += 6;
                }
            }
            Some(first) if low.contains(&first) => {
                out.extend_from_slice(b"\\uFFFD");
                at += 6;
            }
            // Any other escape, two bytes at least (`\\` among them).
            _ => {
                out.extend_from_slice(json.get(at..at + 2).unwrap_or_default());
                at += 2;
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
