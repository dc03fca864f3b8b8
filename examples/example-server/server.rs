//! The server handler: capabilities, tool dispatch (static and dynamic tools), the
//! resources, the resource template, the prompt and completions.

// Logging and resources/subscribe are deprecated in rmcp (SEP-2577 and the
// 2026-07-28 protocol) but are part of the protocol versions this server speaks.
#![allow(deprecated)]

use std::{
    borrow::Cow,
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    handler::server::{
        common::schema_for_empty_input,
        router::tool::{ToolRoute, ToolRouter},
        tool::ToolCallContext,
    },
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
        CompleteRequestParams, CompleteResult, CompletionInfo, ContentBlock,
        GetPromptRequestParams, GetPromptResponse, GetPromptResult, GetTaskParams, GetTaskResult,
        Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument, PromptMessage,
        ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
        Reference, Resource, ResourceContents, ResourceTemplate, Role, ServerCapabilities,
        ServerConfig, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, Tool,
        UnsubscribeRequestParams, UpdateTaskParams,
    },
    service::{RequestContext, SubscriptionContext, SubscriptionSink},
    task_manager::TaskManager,
};
use serde_json::json;

const GREETING_URI: &str = "example://greeting";
const ITEM_URI_PREFIX: &str = "example://items/";
const ITEM_URI_TEMPLATE: &str = "example://items/{id}";
const GREET_PROMPT: &str = "greet";

/// One MCP session's handler. Sessions of one process share the name and the tool
/// list (tools added with `add_tool` are visible to all); resource subscriptions
/// are per session.
#[derive(Clone)]
pub struct ExampleServer {
    shared: Arc<Shared>,
    subscriptions: Arc<Mutex<BTreeSet<String>>>,
}

/// How long a change waits for a listen stream acknowledged but not yet
/// handed to `listen` (see `Shared::opening`).
const OPENING_AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);

struct Shared {
    name: String,
    /// Speaks 2026-07-28 alone (`--stateless`): no `initialize`, each
    /// request carries its envelope.
    stateless: bool,
    /// Copy-on-write so that a call never holds the lock (tools may add tools).
    tools: RwLock<Arc<ToolRouter<ExampleServer>>>,
    /// The open `subscriptions/listen` streams (2026-07-28): list changes
    /// and resource updates go on them.
    listeners: Mutex<Vec<SubscriptionSink>>,
    /// When each listen stream accepted but not yet handed to `listen` was
    /// accepted: rmcp sends a stream's acknowledgement before it hands the
    /// stream to `listen`, so a client told its stream stands may ask for a
    /// change before the stream can carry it. A change waits for them
    /// ([`ExampleServer::listeners`]); one that never arrives (its
    /// acknowledgement failed, its request was dropped) is waited for once,
    /// [`OPENING_AT_MOST`], then forgotten.
    opening: Mutex<VecDeque<std::time::Instant>>,
    opened: tokio::sync::Notify,
    /// The tasks made for clients that take them (2026-07-28).
    tasks: TaskManager,
}

impl ExampleServer {
    pub fn new(name: String, stateless: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                name,
                stateless,
                tools: RwLock::new(Arc::new(Self::tool_router())),
                listeners: Mutex::default(),
                opening: Mutex::default(),
                opened: tokio::sync::Notify::new(),
                tasks: TaskManager::new(),
            }),
            subscriptions: Arc::default(),
        }
    }

    /// A handler for another session of the same server.
    pub fn new_session(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            subscriptions: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn tools(&self) -> Arc<ToolRouter<Self>> {
        let tools = self
            .shared
            .tools
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&tools)
    }

    /// Adds a tool `name` that replies "dynamic NAME". False if the name is taken.
    pub fn add_dynamic_tool(&self, name: &str) -> bool {
        let mut tools = self
            .shared
            .tools
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if tools.map.contains_key(name) {
            return false;
        }
        Arc::make_mut(&mut tools).add_route(dynamic_tool(name));
        true
    }

    /// Adds the tool `env_digest`, which replies with the SHA-256 of the
    /// environment variable `var` (`sha256=HEX`, or `unset`): what a test
    /// of a token given in the environment compares, without the server
    /// ever showing the token (`--report-env`); or, `reveal`, the tool
    /// `env_value`, which replies with its value (`--reveal-env`). Only
    /// with those flags, so that every other test's tool list stays as it
    /// is.
    pub fn add_env_tool(&self, var: &str, reveal: bool) {
        self.add_route(if reveal {
            env_value_tool(var)
        } else {
            env_digest_tool(var)
        });
    }

    /// Adds a tool (`--page`, `--outbox`).
    pub fn add_route(&self, route: ToolRoute<Self>) {
        let mut tools = self
            .shared
            .tools
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::make_mut(&mut tools).add_route(route);
    }

    /// Replaces a tool's description (a rug pull, for pinning tests). False
    /// if there is no such tool.
    pub fn set_description(&self, name: &str, description: &str) -> bool {
        let mut tools = self
            .shared
            .tools
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(route) = Arc::make_mut(&mut tools).map.get_mut(name) else {
            return false;
        };
        route.attr.description = Some(description.to_owned().into());
        true
    }

    /// Whether this session subscribed to `uri` with resources/subscribe.
    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions().contains(uri)
    }

    /// Whether it speaks 2026-07-28 alone (`--stateless`).
    pub fn is_stateless(&self) -> bool {
        self.shared.stateless
    }

    /// The open listen streams (2026-07-28), to send a change on; each one
    /// sends only what it accepted. Streams already acknowledged but not
    /// yet handed to `listen` are waited for (each at most
    /// [`OPENING_AT_MOST`] after it was accepted).
    pub async fn listeners(&self) -> Vec<SubscriptionSink> {
        loop {
            let opened = self.shared.opened.notified();
            let oldest = {
                let mut opening = self.opening();
                opening.retain(|accepted| accepted.elapsed() < OPENING_AT_MOST);
                opening.front().copied()
            };
            let Some(oldest) = oldest else {
                break;
            };
            let given_up = tokio::time::Instant::from_std(oldest + OPENING_AT_MOST);
            let _ = tokio::time::timeout_at(given_up, opened).await;
        }
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The streams accepted and not yet in `listen`, oldest first.
    fn opening(&self) -> MutexGuard<'_, VecDeque<std::time::Instant>> {
        self.shared
            .opening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn subscriptions(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn dynamic_tool(name: &str) -> ToolRoute<ExampleServer> {
    let reply = format!("dynamic {name}");
    let tool = Tool::new(
        name.to_owned(),
        format!("A tool added at run time with add_tool; replies \"{reply}\"."),
        schema_for_empty_input(),
    );
    ToolRoute::new_dyn(tool, move |_context| {
        let result = CallToolResult::success(vec![ContentBlock::text(reply.clone())]);
        Box::pin(std::future::ready(Ok(result.into())))
    })
}

/// A tool that replies with what `answer` makes of the environment
/// variable `var` (`None` when unset).
fn env_tool(
    name: &str,
    description: String,
    var: &str,
    answer: fn(Option<String>) -> String,
) -> ToolRoute<ExampleServer> {
    let var = var.to_owned();
    let tool = Tool::new(name.to_owned(), description, schema_for_empty_input());
    ToolRoute::new_dyn(tool, move |_context| {
        let reply = answer(std::env::var(&var).ok());
        let result = CallToolResult::success(vec![ContentBlock::text(reply)]);
        Box::pin(std::future::ready(Ok(result.into())))
    })
}

fn env_digest_tool(var: &str) -> ToolRoute<ExampleServer> {
    env_tool(
        "env_digest",
        format!("Replies with the SHA-256 of the environment variable {var}, never its value."),
        var,
        |value| match value {
            Some(value) => {
                use sha2::Digest as _;
                let digest = sha2::Sha256::digest(value);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256={hex}")
            }
            None => "unset".to_owned(),
        },
    )
}

fn env_value_tool(var: &str) -> ToolRoute<ExampleServer> {
    env_tool(
        "env_value",
        format!("Replies with the value of the environment variable {var}."),
        var,
        Option::unwrap_or_default,
    )
}

fn completion(candidates: &[&str], prefix: &str) -> Result<CompleteResult, McpError> {
    let values = candidates
        .iter()
        .filter(|candidate| candidate.starts_with(prefix))
        .map(|candidate| (*candidate).to_owned())
        .collect();
    let info = CompletionInfo::with_all_values(values)
        .map_err(|error| McpError::internal_error(error, None))?;
    Ok(CompleteResult::new(info))
}

impl ServerHandler for ExampleServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_tools()
            .enable_tool_list_changed();
        // Tasks are a 2026-07-28 extension.
        let capabilities = if self.shared.stateless {
            capabilities.enable_tasks().build()
        } else {
            capabilities.build()
        };
        ServerConfig::new(capabilities)
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
            .with_server_info(Implementation::new(self.name(), env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Example server for Portcullis: test tools (echo, add, sleep, progress, \
                 sample, elicit, roots, log, ...), a greeting resource, an item template \
                 and a greet prompt.",
            )
    }

    /// Up to 2025-11-25: later versions forbid the server-to-client requests
    /// (sampling, elicitation, roots) that this server's tools make. With
    /// `--stateless`, 2026-07-28 alone (those tools then fail).
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        if self.shared.stateless {
            return Cow::Owned(vec![ProtocolVersion::V_2026_07_28]);
        }
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let takes_tasks = context
            .client_capabilities()
            .is_some_and(|capabilities| capabilities.supports_tasks());
        if self.shared.stateless
            && takes_tasks
            && let Some(task) = crate::tasks::start(&self.shared.tasks, &request)
        {
            return task;
        }
        let tools = self.tools();
        tools
            .call(ToolCallContext::new(self, request, context))
            .await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        Ok(GetTaskResult::new(
            self.shared.tasks.get_task(&request.task_id)?,
        ))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared
            .tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared.tasks.cancel_task(&request.task_id)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools().list_all()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().get(name).cloned()
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        // The `log` tool sends whatever level it is asked to; nothing to filter.
        tracing::info!(level = ?request.level, "client set the log level");
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let greeting = Resource::new(GREETING_URI, "greeting")
            .with_description("A greeting from this server.")
            .with_mime_type("text/plain");
        Ok(ListResourcesResult::with_all_items(vec![greeting]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let item = ResourceTemplate::new(ITEM_URI_TEMPLATE, "item")
            .with_description("An item by id; reads as \"item ID\".")
            .with_mime_type("text/plain");
        Ok(ListResourceTemplatesResult::with_all_items(vec![item]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let text = if uri == GREETING_URI {
            format!("hello from {}", self.name())
        } else if let Some(id) = uri
            .strip_prefix(ITEM_URI_PREFIX)
            .filter(|id| !id.is_empty() && !id.contains('/'))
        {
            format!("item {id}")
        } else {
            return Err(McpError::resource_not_found(
                format!("no resource {uri}"),
                Some(json!({ "uri": uri })),
            ));
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri)]).into())
    }

    /// 2026-07-28: every notification asked for that the capabilities
    /// offer (rmcp narrows the filter to them), and the resources it has
    /// (the greeting, items with a numeric id): no other URI is granted.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let exists = |uri: &String| {
            uri == GREETING_URI
                || uri
                    .strip_prefix(ITEM_URI_PREFIX)
                    .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        };
        let mut accepted = requested.clone();
        if let Some(uris) = accepted.resource_subscriptions.as_mut() {
            uris.retain(exists);
        }
        if !self.shared.stateless {
            return None;
        }
        // Waited for until `listen` holds its sink.
        self.opening().push_back(std::time::Instant::now());
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let sink = context.sink().clone();
        let id = sink.id().clone();
        tracing::info!(?id, accepted = ?sink.accepted(), "listen stream open");
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sink);
        // The oldest is this one's, or one that will never arrive.
        self.opening().pop_front();
        self.shared.opened.notify_waiters();
        context.cancelled().await;
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|sink| *sink.id() != id);
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscriptions().insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscriptions().remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let greet = Prompt::new(
            GREET_PROMPT,
            Some("Ask the model to greet someone."),
            Some(vec![
                PromptArgument::new("name")
                    .with_description("Who to greet.")
                    .with_required(true),
            ]),
        );
        Ok(ListPromptsResult::with_all_items(vec![greet]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != GREET_PROMPT {
            return Err(McpError::invalid_params(
                format!("no prompt {}", request.name),
                None,
            ));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|arguments| arguments.get("name"))
            .and_then(|name| name.as_str())
            .ok_or_else(|| {
                McpError::invalid_params("prompt greet needs a string argument `name`", None)
            })?;
        let message = PromptMessage::new_text(Role::User, format!("Please greet {name}"));
        Ok(GetPromptResult::new(vec![message])
            .with_description("Greet someone.")
            .into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let candidates: &[&str] = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Resource(template), "id") if template.uri == ITEM_URI_TEMPLATE => {
                &["1", "2", "3"]
            }
            (Reference::Prompt(prompt), "name") if prompt.name == GREET_PROMPT => &["alice", "bob"],
            _ => &[],
        };
        completion(candidates, &request.argument.value)
    }
}
