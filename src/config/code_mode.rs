//! `[code_mode]`: the proxy's tool `portcullis__code`, which runs an
//! agent's JavaScript in the code-mode engine, every
//! call inside it a full exchange of the calling client. Off unless
//! `enabled`; offered only to the clients Cedar lets `use_code`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::values::{DurationText, SizeText, parse_duration, parse_size};
use super::{ConfigError, PROXY_SERVER, ServerConfig, Validator};

/// The code tool's name under the proxy's own server:
/// `portcullis__code`.
pub const CODE_TOOL: &str = "code";

/// What one script may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Instructions (wasmtime fuel; about 10^10 a CPU second here).
    pub fuel: u64,
    /// Wall time, running and waiting for calls alike.
    pub wall: Duration,
    /// The engine's linear memory.
    pub memory: usize,
    /// QuickJS's heap.
    pub js_heap: u32,
    /// QuickJS's stack (capped to the engine's own).
    pub js_stack: u32,
    /// The result's JSON, and the console's (half of it).
    pub output: u32,
    /// Calls a script may make.
    pub calls: u32,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            fuel: 2_000_000_000,
            wall: Duration::from_secs(30),
            memory: 128 << 20,
            js_heap: 64 << 20,
            js_stack: 1 << 20,
            output: 1 << 20,
            calls: 100,
        }
    }
}

impl ScriptLimits {
    /// Whether the limits hold together, each within what the engine can
    /// keep: why not, as `[code_mode]`'s key and the words for it.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(8 << 20..=1 << 30).contains(&self.memory) {
            return Err(("memory", "the engine's memory must be from 8m to 1g"));
        }
        if self.js_heap as usize > self.memory {
            return Err(("heap", "QuickJS's heap must fit in the engine's memory"));
        }
        if self.js_stack > 1 << 20 {
            return Err((
                "stack",
                "QuickJS's stack must be at most 1m (the engine's own is 8m)",
            ));
        }
        if !(1024..=64 << 20).contains(&self.output) {
            return Err(("output", "the output must be from 1k to 64m"));
        }
        if self.calls > 10_000 {
            return Err(("calls", "a script may make at most 10 000 calls"));
        }
        if self.wall.is_zero() || self.wall > Duration::from_secs(3600) {
            return Err(("wall_time", "the wall time must be from 1ms to 1h"));
        }
        if self.fuel == 0 {
            return Err(("fuel", "a script needs some fuel"));
        }
        Ok(())
    }
}

/// Scripts running at once, unless `max_scripts` says.
const DEFAULT_MAX_SCRIPTS: usize = 4;

/// Scripts one client runs at once, unless `max_scripts_per_client` says.
const DEFAULT_MAX_SCRIPTS_PER_CLIENT: usize = 2;

/// Bytes of a script's source its record keeps, unless `recorded_source`
/// says.
const DEFAULT_RECORDED_SOURCE: usize = 4096;

/// `[code_mode]` as written.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCodeMode {
    /// Offer the tool `portcullis__code` (to the clients Cedar lets
    /// `use_code`): it runs a JavaScript program that calls the client's
    /// own tools, each call a full exchange of that client.
    #[schemars(extend("x-default" = "`false`"))]
    enabled: Option<bool>,
    /// How long a script may run, waiting for its calls included.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    wall_time: Option<String>,
    /// Instructions a script may run (wasmtime fuel: about 10^10 a CPU
    /// second).
    #[schemars(extend("x-default" = "`2000000000`"))]
    fuel: Option<u64>,
    /// The engine's memory per script (8m to 1g).
    #[schemars(with = "Option<SizeText>", extend("default" = "128m"))]
    memory: Option<String>,
    /// QuickJS's heap per script (at most `memory`): past it, an
    /// `out of memory` error the script may catch.
    #[schemars(with = "Option<SizeText>", extend("default" = "64m"))]
    heap: Option<String>,
    /// QuickJS's stack per script (at most 1m): past it, a `RangeError`.
    #[schemars(with = "Option<SizeText>", extend("default" = "1m"))]
    stack: Option<String>,
    /// The largest result a script returns, as JSON (1k to 64m); the
    /// console it captured has half as much.
    #[schemars(with = "Option<SizeText>", extend("default" = "1m"))]
    output: Option<String>,
    /// Tool calls one script may make (at most 10 000).
    #[schemars(extend("x-default" = "`100`"))]
    calls: Option<u32>,
    /// Scripts running at once, for all clients together (each has a
    /// thread and up to `memory`); one past it is refused at once.
    #[schemars(extend("x-default" = "`4`"))]
    max_scripts: Option<usize>,
    /// Scripts one client may run at once (at most `max_scripts`), so
    /// that one client cannot hold every place.
    #[schemars(extend("x-default" = "`2` (`max_scripts` if lower)"))]
    max_scripts_per_client: Option<usize>,
    /// Bytes of a script's source its audit record keeps (redacted, cut
    /// there); 0 keeps none.
    #[schemars(extend("x-default" = "`4096`"))]
    recorded_source: Option<usize>,
}

/// `[code_mode]`, validated (`None` when off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeModeConfig {
    pub limits: ScriptLimits,
    pub max_scripts: usize,
    pub max_scripts_per_client: usize,
    pub recorded_source: usize,
}

impl RawCodeMode {
    pub(super) fn validate(
        self,
        validator: &Validator<'_>,
        configured: &[ServerConfig],
    ) -> Result<Option<CodeModeConfig>, ConfigError> {
        let error = |key: &str, message: String| {
            validator.error(None, &format!("code_mode.{key}"), message)
        };
        let size = |key: &str, text: &Option<String>, default: u64| -> Result<u64, ConfigError> {
            match text {
                None => Ok(default),
                Some(text) => parse_size(text)
                    .and_then(|bytes| u64::try_from(bytes).ok())
                    .ok_or_else(|| error(key, format!("`{text}` is not a size like `64m`"))),
            }
        };
        let defaults = ScriptLimits::default();
        let small = |key: &str, bytes: u64| {
            u32::try_from(bytes).map_err(|_| error(key, "is too large".into()))
        };
        let limits = ScriptLimits {
            fuel: self.fuel.unwrap_or(defaults.fuel),
            wall: match &self.wall_time {
                None => defaults.wall,
                Some(text) => parse_duration(text).map_err(|m| error("wall_time", m))?,
            },
            memory: usize::try_from(size("memory", &self.memory, defaults.memory as u64)?)
                .map_err(|_| error("memory", "is too large".into()))?,
            js_heap: small("heap", size("heap", &self.heap, defaults.js_heap.into())?)?,
            js_stack: small(
                "stack",
                size("stack", &self.stack, defaults.js_stack.into())?,
            )?,
            output: small(
                "output",
                size("output", &self.output, defaults.output.into())?,
            )?,
            calls: self.calls.unwrap_or(defaults.calls),
        };
        limits
            .check()
            .map_err(|(key, message)| error(key, message.to_owned()))?;
        let max_scripts = self.max_scripts.unwrap_or(DEFAULT_MAX_SCRIPTS);
        if !(1..=256).contains(&max_scripts) {
            return Err(error("max_scripts", "must be 1 to 256".into()));
        }
        let max_scripts_per_client = self
            .max_scripts_per_client
            .unwrap_or(DEFAULT_MAX_SCRIPTS_PER_CLIENT.min(max_scripts));
        if !(1..=max_scripts).contains(&max_scripts_per_client) {
            return Err(error(
                "max_scripts_per_client",
                "must be from 1 to `max_scripts`".into(),
            ));
        }
        let recorded_source = self.recorded_source.unwrap_or(DEFAULT_RECORDED_SOURCE);
        if recorded_source > 1 << 20 {
            return Err(error("recorded_source", "must be at most 1048576".into()));
        }
        if self.enabled != Some(true) {
            return Ok(None);
        }
        if let Some(server) = configured.iter().find(|s| s.name == PROXY_SERVER) {
            return Err(validator.error(
                None,
                "servers",
                format!(
                    "server `{}`: the name is the proxy's own while `[code_mode]` is on (its tool is `portcullis__code`)",
                    server.name
                ),
            ));
        }
        Ok(Some(CodeModeConfig {
            limits,
            max_scripts,
            max_scripts_per_client,
            recorded_source,
        }))
    }
}
