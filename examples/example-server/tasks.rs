//! (2026-07-28, `--stateless`) Tasks (the `io.modelcontextprotocol/tasks`
//! extension): to a client that declares the extension on its call, `sleep`
//! and `elicit` answer with a task instead of their result. The `sleep` task
//! ends "slept MS ms" (or cancelled); the `elicit` task asks for a name
//! (`inputRequests` key "name", answered with `tasks/update`) and ends
//! "asked: " and the answer's JSON.

use std::time::Duration;

use rmcp::{
    ErrorData as McpError,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, CreateTaskResult,
        InputRequest,
    },
    task_manager::{TaskExit, TaskManager, TaskOptions},
};

/// How often a client is told to poll, in milliseconds.
const POLL_MS: u64 = 50;

fn argument<'a>(request: &'a CallToolRequestParams, name: &str) -> Option<&'a serde_json::Value> {
    request
        .arguments
        .as_ref()
        .and_then(|arguments| arguments.get(name))
}

/// `request` as a task, if its tool runs as one: `None` otherwise.
pub fn start(
    tasks: &TaskManager,
    request: &CallToolRequestParams,
) -> Option<Result<CallToolResponse, McpError>> {
    let options = TaskOptions::new().with_poll_interval_ms(POLL_MS);
    let task = match request.name.as_ref() {
        "sleep" => {
            let Some(ms) = argument(request, "ms").and_then(serde_json::Value::as_u64) else {
                return Some(Err(McpError::invalid_params("`ms` must be a number", None)));
            };
            tasks.spawn(options, move |context| {
                Box::pin(async move {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(
                            CallToolResult::success(vec![ContentBlock::text(format!("slept {ms} ms"))])
                        ),
                        () = context.cancelled() => {
                            tracing::info!("sleep task cancelled");
                            Err(TaskExit::Cancelled)
                        }
                    }
                })
            })
        }
        "elicit" => {
            let message = argument(request, "message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let asked = match crate::tools::name_request(message) {
                Ok(asked) => asked,
                Err(error) => return Some(Err(error)),
            };
            tasks.spawn(options, move |context| {
                Box::pin(async move {
                    let answer = context
                        .request_input("name", InputRequest::Elicitation(asked))
                        .await?;
                    Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                        "asked: {answer}"
                    ))]))
                })
            })
        }
        _ => return None,
    };
    Some(Ok(CallToolResponse::Task(CreateTaskResult::new(task))))
}
