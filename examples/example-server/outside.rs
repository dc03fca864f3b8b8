//! The outside world, for tests of flow policies: a page an outsider wrote
//! (`--page`: the tool `fetch_page`, which answers it whatever the URL),
//! and a way out (`--outbox`: the tool `send`, which appends what it is
//! sent to a file, so a test reads what really left).

use std::io::Write as _;
use std::sync::Arc;

use rmcp::{
    handler::server::router::tool::ToolRoute,
    model::{CallToolResult, ContentBlock, Tool, ToolAnnotations},
};
use serde_json::{Map, Value, json};

use crate::server::ExampleServer;

fn schema(properties: Value, required: &[&str]) -> Arc<Map<String, Value>> {
    let schema = json!({"type": "object", "properties": properties, "required": required});
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

/// `fetch_page {url}`: answers `page` (read-only, an open world).
pub fn page_tool(page: &str) -> ToolRoute<ExampleServer> {
    let page = page.to_owned();
    let tool = Tool::new(
        "fetch_page",
        "Fetches a web page and answers its text.",
        schema(json!({"url": {"type": "string"}}), &["url"]),
    )
    .with_annotations(ToolAnnotations::new().read_only(true).open_world(true));
    ToolRoute::new_dyn(tool, move |_context| {
        let result = CallToolResult::success(vec![ContentBlock::text(page.clone())]);
        Box::pin(std::future::ready(Ok(result.into())))
    })
}

/// `send {to, body}`: appends `{"to": …, "body": …}` as a line to `outbox`
/// (an open world it writes to).
pub fn send_tool(outbox: &std::path::Path) -> ToolRoute<ExampleServer> {
    let outbox = outbox.to_owned();
    let tool = Tool::new(
        "send",
        "Sends a message to someone outside.",
        schema(
            json!({"to": {"type": "string"}, "body": {"type": "string"}}),
            &["to", "body"],
        ),
    )
    .with_annotations(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .open_world(true),
    );
    ToolRoute::new_dyn(tool, move |context| {
        let arguments = context.arguments.clone().unwrap_or_default();
        let line = json!({"to": arguments.get("to"), "body": arguments.get("body")});
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&outbox)
            .and_then(|mut file| writeln!(file, "{line}"));
        let result = match written {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text("sent")]),
            Err(err) => CallToolResult::error(vec![ContentBlock::text(format!("not sent: {err}"))]),
        };
        Box::pin(std::future::ready(Ok(result.into())))
    })
}
