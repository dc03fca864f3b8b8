//! Code mode (issue 48): an agent sends one JavaScript program, which calls
//! the tools it may call as `await tools.server__tool({...})`, each call a
//! full exchange through the proxy.
//!
//! This slice is the engine: QuickJS-ng compiled to WebAssembly
//! (`codemode/`, built by `codemode/build.sh`, checked in), run under
//! wasmtime with no WASI at all (the module imports four functions: start
//! a call, wait for one, read its answer, the clock), with fuel, a wall
//! deadline, a memory cap, QuickJS's own heap and stack limits, an output
//! cap and a budget of calls. Why this engine: `docs/code-mode.md`.

pub mod engine;

pub use engine::{Answer, Call, Dispatch, Engine, Limits, Outcome, Reply, RunError};
