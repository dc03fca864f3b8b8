//! The example server's tools.
//!
//! | tool            | arguments            | result                                         |
//! | :-              | :-                   | :-                                             |
//! | `echo`          | `text`               | "NAME: TEXT" (read-only hint)                  |
//! | `add`           | `a`, `b` (i64)       | the sum as text, structuredContent `{"sum"}`   |
//! | `sleep`         | `ms`                 | "slept MS ms"; stops early when cancelled      |
//! | `fail`          | `message`            | a tool error result (isError) with `message`   |
//! | `fail_rpc`      | `message`            | a JSON-RPC internal error with `message`       |
//! | `large`         | `bytes`              | `bytes` × "x" (at most 64 MiB)                 |
//! | `progress`      | `steps`, `delay_ms`  | progress notifications, then "done N steps"    |
//! | `sample`        | `prompt`             | "sampled: " + the client's sampling reply      |
//! | `elicit`        | `message`            | the client's elicitation action and content    |
//! | `ask`           | `message`            | 2026-07-28: the same, asked in rounds          |
//! | `roots`         |                      | the client's root URIs, one per line           |
//! | `log`           | `level`, `message`   | a logging notification, then "logged"          |
//! | `add_tool`      | `name`               | adds tool NAME (replies "dynamic NAME")        |
//! | `touch`         | `uri`                | a resources/updated notification, "touched"    |
//! | `crash`         | `code`               | exits the process with `code`                  |
//! | `raw_meta`      |                      | "meta" with custom `_meta` fields              |
//! | `sandbox_probe` |                      | what the process sees of its sandbox           |
//!
//! With `--stateless`, to a client that takes tasks, `sleep` and `elicit` run
//! as tasks (see `tasks.rs`).

// Sampling, roots and logging are deprecated in rmcp (SEP-2577) but are part of
// the protocol versions this server speaks, and what these tools exercise.
#![allow(deprecated)]

use std::time::Duration;

use rmcp::{
    ErrorData as McpError, Json, Peer, RoleServer,
    handler::server::{
        tool::{
            InputResponses as InputResponsesPart, RequestState as RequestStatePart,
            schema_for_output,
        },
        wrapper::Parameters,
    },
    model::{
        CallToolResponse, CallToolResult, ClientResult, ContentBlock, CreateMessageRequestParams,
        ElicitRequest, ElicitRequestParams, ElicitationSchema, InputRequest, InputRequests,
        InputRequiredResult, LoggingLevel, LoggingMessageNotificationParam, MetaObject,
        ProgressNotificationParam, RequestMetaObject, ResourceUpdatedNotificationParam,
        SamplingMessage, ServerRequest,
    },
    tool, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    sandbox::{self, SandboxProbe},
    server::ExampleServer,
};

/// The most `large` returns: 64 MiB.
const LARGE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// The `requestState` of `ask`'s round (a server keeping no state needs
/// nothing else: the answer is in the retry).
const ASK_STATE: &str = "ask-round-1";

#[derive(Debug, Deserialize, JsonSchema)]
struct EchoArgs {
    /// The text to echo back.
    text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddArgs {
    /// The first addend.
    a: i64,
    /// The second addend.
    b: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
struct AddOutput {
    /// a + b.
    sum: i64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SleepArgs {
    /// How long to sleep, in milliseconds.
    ms: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct MessageArgs {
    /// The error message.
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct LargeArgs {
    /// How many bytes of text to return (at most 64 MiB).
    bytes: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ProgressArgs {
    /// How many progress notifications to send.
    steps: u32,
    /// Milliseconds to wait before each step.
    delay_ms: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SampleArgs {
    /// The prompt to send to the client's model.
    prompt: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ElicitArgs {
    /// What to ask the user.
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct LogArgs {
    /// The log level of the notification.
    level: LoggingLevel,
    /// The message to log.
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct AddToolArgs {
    /// The name of the tool to add.
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct RedescribeArgs {
    /// The tool whose description changes.
    tool: String,
    /// Its new description.
    description: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct TouchArgs {
    /// The URI of the resource that changed.
    uri: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CrashArgs {
    /// The exit code.
    code: i32,
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn error_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

#[tool_router(vis = "pub(crate)")]
impl ExampleServer {
    /// Echo the text back, prefixed with this server's name: "NAME: TEXT".
    #[tool(annotations(read_only_hint = true))]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        format!("{}: {text}", self.name())
    }

    /// Add two integers. Returns the sum as text and as structured content {"sum": N}.
    #[tool(output_schema = schema_for_output::<AddOutput>())]
    fn add(
        &self,
        Parameters(AddArgs { a, b }): Parameters<AddArgs>,
    ) -> Result<CallToolResult, McpError> {
        let Some(sum) = a.checked_add(b) else {
            return Ok(error_result(format!(
                "{a} + {b} overflows a 64-bit integer"
            )));
        };
        let structured = serde_json::to_value(AddOutput { sum })
            .map_err(|error| McpError::internal_error(error.to_string(), None))?;
        let mut result = CallToolResult::structured(structured);
        result.content = vec![ContentBlock::text(sum.to_string())];
        Ok(result)
    }

    /// Sleep for `ms` milliseconds, then reply "slept MS ms". Stops early when the
    /// request is cancelled.
    #[tool]
    async fn sleep(
        &self,
        Parameters(SleepArgs { ms }): Parameters<SleepArgs>,
        cancelled: CancellationToken,
    ) -> CallToolResult {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {
                text_result(format!("slept {ms} ms"))
            }
            () = cancelled.cancelled() => {
                tracing::info!("sleep cancelled");
                error_result("sleep cancelled")
            }
        }
    }

    /// Fail with a tool error result (isError: true) carrying `message`.
    #[tool]
    fn fail(&self, Parameters(MessageArgs { message }): Parameters<MessageArgs>) -> CallToolResult {
        error_result(message)
    }

    /// Fail with a JSON-RPC error (internal error) carrying `message`.
    #[tool]
    fn fail_rpc(
        &self,
        Parameters(MessageArgs { message }): Parameters<MessageArgs>,
    ) -> Result<CallToolResult, McpError> {
        Err(McpError::internal_error(message, None))
    }

    /// Return one text content of exactly `bytes` 'x' characters (at most 64 MiB).
    #[tool]
    fn large(&self, Parameters(LargeArgs { bytes }): Parameters<LargeArgs>) -> CallToolResult {
        if bytes > LARGE_MAX_BYTES {
            return error_result(format!("bytes must be at most {LARGE_MAX_BYTES}"));
        }
        text_result("x".repeat(bytes))
    }

    /// Send `steps` progress notifications (progress i of `steps`, message "step i"),
    /// waiting `delay_ms` before each, then reply "done STEPS steps". Notifications
    /// need a progressToken in the request's _meta.
    #[tool]
    async fn progress(
        &self,
        Parameters(ProgressArgs { steps, delay_ms }): Parameters<ProgressArgs>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        cancelled: CancellationToken,
    ) -> CallToolResult {
        let token = meta.get_progress_token();
        for step in 1..=steps {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                () = cancelled.cancelled() => return error_result("progress cancelled"),
            }
            let Some(token) = &token else { continue };
            let notification = ProgressNotificationParam::new(token.clone(), f64::from(step))
                .with_total(f64::from(steps))
                .with_message(format!("step {step}"));
            if let Err(error) = peer.notify_progress(notification).await {
                tracing::warn!(%error, "cannot send a progress notification");
            }
        }
        text_result(format!("done {steps} steps"))
    }

    /// Ask the client to sample its model (sampling/createMessage) with `prompt`;
    /// reply "sampled: " followed by the text of the client's answer.
    #[tool]
    async fn sample(
        &self,
        Parameters(SampleArgs { prompt }): Parameters<SampleArgs>,
        peer: Peer<RoleServer>,
    ) -> CallToolResult {
        let request =
            CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100);
        match peer.create_message(request).await {
            Ok(reply) => {
                let text: String = reply
                    .message
                    .content
                    .iter()
                    .filter_map(|block| block.as_text())
                    .map(|text| text.text.as_str())
                    .collect();
                text_result(format!("sampled: {text}"))
            }
            Err(error) => error_result(format!("sampling failed: {error}")),
        }
    }

    /// Ask the user, through the client (elicitation/create), for a `name`; reply
    /// with the answer as JSON: {"action": ..., "content": ...}.
    #[tool]
    async fn elicit(
        &self,
        Parameters(ElicitArgs { message }): Parameters<ElicitArgs>,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let request = name_request(message)?;
        // Sent as a plain request: rmcp's `create_elicitation` needs its
        // `elicitation` feature, which this build does not enable.
        Ok(
            match peer
                .send_request(ServerRequest::ElicitRequest(request))
                .await
            {
                Ok(ClientResult::ElicitResult(answer)) => text_result(
                    json!({ "action": answer.action, "content": answer.content }).to_string(),
                ),
                Ok(_) => error_result(
                    "the client's reply to elicitation/create is not an elicitation result",
                ),
                Err(error) => error_result(format!("elicitation failed: {error}")),
            },
        )
    }

    /// (2026-07-28, `--stateless`) Ask the user for a name in a round: the
    /// first call answers `input_required` with an elicitation (key
    /// "name"); the retry's answer (with the round's `requestState`) is
    /// replied as "asked: " and the answer's JSON.
    #[tool]
    async fn ask(
        &self,
        Parameters(ElicitArgs { message }): Parameters<ElicitArgs>,
        InputResponsesPart(responses): InputResponsesPart,
        RequestStatePart(state): RequestStatePart,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(answer) = responses.and_then(|mut responses| responses.remove("name")) {
            if state.as_deref() != Some(ASK_STATE) {
                return Ok(error_result("the retry's requestState is not this round's").into());
            }
            return Ok(text_result(format!("asked: {answer}")).into());
        }
        let request = name_request(message)?;
        let mut requests = InputRequests::new();
        requests.insert("name".to_owned(), InputRequest::Elicitation(request));
        Ok(InputRequiredResult::new(Some(requests), Some(ASK_STATE.to_owned())).into())
    }

    /// List the client's roots (roots/list); reply with their URIs, one per line.
    #[tool]
    async fn roots(&self, peer: Peer<RoleServer>) -> CallToolResult {
        match peer.list_roots().await {
            Ok(list) => {
                let uris: Vec<&str> = list.roots.iter().map(|root| root.uri.as_str()).collect();
                text_result(uris.join("\n"))
            }
            Err(error) => error_result(format!("roots/list failed: {error}")),
        }
    }

    /// Send a logging notification (notifications/message) with `level` and
    /// `message`, then reply "logged". With `--stateless` (2026-07-28), only
    /// when the request's `logLevel` asks for that level ("logged" still).
    #[tool]
    async fn log(
        &self,
        Parameters(LogArgs { level, message }): Parameters<LogArgs>,
        peer: Peer<RoleServer>,
        meta: RequestMetaObject,
    ) -> CallToolResult {
        if self.is_stateless() {
            let wanted = meta.log_level();
            if wanted.is_none_or(|least| (level as u8) < (least as u8)) {
                return text_result("logged");
            }
        }
        let notification =
            LoggingMessageNotificationParam::new(level, json!(message)).with_logger(self.name());
        match peer.notify_logging_message(notification).await {
            Ok(()) => text_result("logged"),
            Err(error) => error_result(format!("cannot send the log message: {error}")),
        }
    }

    /// Add a tool `name` (it replies "dynamic NAME") and notify the client that the
    /// tool list changed.
    #[tool]
    async fn add_tool(
        &self,
        Parameters(AddToolArgs { name }): Parameters<AddToolArgs>,
        peer: Peer<RoleServer>,
    ) -> CallToolResult {
        if name.is_empty() {
            return error_result("the tool name must not be empty");
        }
        if !self.add_dynamic_tool(&name) {
            return error_result(format!("there is already a tool {name}"));
        }
        self.tools_changed(&peer).await;
        text_result(format!("added tool {name}"))
    }

    /// Change tool `tool`'s description and notify the client that the tool list
    /// changed: a rug pull, for testing tool pinning.
    #[tool]
    async fn redescribe(
        &self,
        Parameters(RedescribeArgs { tool, description }): Parameters<RedescribeArgs>,
        peer: Peer<RoleServer>,
    ) -> CallToolResult {
        if !self.set_description(&tool, &description) {
            return error_result(format!("there is no tool {tool}"));
        }
        self.tools_changed(&peer).await;
        text_result(format!("redescribed {tool}"))
    }

    /// Tells the client the tool list changed: on the session, or (in
    /// 2026-07-28) on the listen streams that asked for it.
    async fn tools_changed(&self, peer: &Peer<RoleServer>) {
        if self.is_stateless() {
            for sink in self.listeners().await {
                if let Err(error) = sink.notify_tool_list_changed().await {
                    tracing::info!(%error, "tools/list_changed not sent on a stream");
                }
            }
        } else if let Err(error) = peer.notify_tool_list_changed().await {
            tracing::warn!(%error, "cannot send tools/list_changed");
        }
    }

    /// Notify the client that resource `uri` changed (notifications/resources/updated),
    /// whether or not it subscribed; reply "touched".
    #[tool]
    async fn touch(
        &self,
        Parameters(TouchArgs { uri }): Parameters<TouchArgs>,
        peer: Peer<RoleServer>,
    ) -> CallToolResult {
        tracing::info!(%uri, subscribed = self.is_subscribed(&uri), "resource touched");
        if self.is_stateless() {
            // On the listen streams that asked for it (2026-07-28).
            for sink in self.listeners().await {
                if let Err(error) = sink.notify_resource_updated(uri.clone()).await {
                    tracing::info!(%error, "resources/updated not sent on a stream");
                }
            }
            return text_result("touched");
        }
        match peer
            .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
            .await
        {
            Ok(()) => text_result("touched"),
            Err(error) => error_result(format!("cannot send resources/updated: {error}")),
        }
    }

    /// Exit the process at once with exit code `code` (for crash and restart tests).
    #[tool]
    fn crash(&self, Parameters(CrashArgs { code }): Parameters<CrashArgs>) -> CallToolResult {
        tracing::warn!(code, "crashing on request");
        std::process::exit(code)
    }

    /// Reply "meta" with a custom _meta field {"x-custom": {"keep": true, "n": 1, "f": 1.5}}.
    #[tool]
    fn raw_meta(&self) -> CallToolResult {
        let mut meta = MetaObject::new();
        meta.insert(
            "x-custom".to_owned(),
            json!({ "keep": true, "n": 1, "f": 1.5 }),
        );
        text_result("meta").with_meta(Some(meta))
    }

    /// Report what this process sees of its sandbox (ids, capabilities, mounts,
    /// network interfaces, cgroup limits), read from /proc and /sys. Unknown values
    /// are null.
    #[tool]
    fn sandbox_probe(&self) -> Json<SandboxProbe> {
        Json(sandbox::probe())
    }
}

/// An elicitation asking the user for a `name`, saying `message`.
pub(crate) fn name_request(message: String) -> Result<ElicitRequest, McpError> {
    let requested_schema = ElicitationSchema::builder()
        .required_string("name")
        .build()
        .map_err(|error| McpError::internal_error(error, None))?;
    Ok(ElicitRequest::new(
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema,
        },
    ))
}
