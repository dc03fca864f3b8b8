//! The Cedar target of what a client asks for: a request's (once routing
//! knows its server and target), and each item of a merged list's, each
//! labelled by `[flow]`.

use serde_json::Value;

use super::request::{Action, Target, ToolAnnotations, labels_of};
use crate::chain::{Directory, Exchange};
use crate::config::{FlowConfig, Labelled};
use crate::protocol::{At as _, Method};

/// The action and target of a client's request, once routing knows its
/// server and target, labelled by `flow` (`separator` names tools and
/// prompts as clients see them); `None` for a request no action decides.
pub fn request_target(
    exchange: &Exchange,
    separator: &str,
    flow: &FlowConfig,
) -> Option<(Action, Target)> {
    let context = &exchange.context;
    let server = context.server.as_deref()?;
    let target = context.target.as_deref()?;
    let namespaced = || format!("{server}{separator}{target}");
    let tool = || {
        let name = namespaced();
        let annotations = context
            .definition
            .as_ref()
            .and_then(|d| d.get())
            .map(ToolAnnotations::from_definition)
            .unwrap_or_default();
        Target::Tool {
            labels: labels_of(flow, server, Labelled::Tool(&name), Some(&annotations)),
            name,
            server: server.to_owned(),
            annotations,
        }
    };
    let prompt = || {
        let name = namespaced();
        Target::Prompt {
            labels: labels_of(flow, server, Labelled::Prompt(&name), None),
            name,
            server: server.to_owned(),
        }
    };
    let resource = || Target::Resource {
        uri: target.to_owned(),
        server: server.to_owned(),
        labels: labels_of(flow, server, Labelled::Resource(target), None),
    };
    match &context.method {
        // A task's requests are decided as the call that created it
        // (routing found its tool).
        Method::ToolsCall | Method::TasksGet | Method::TasksUpdate | Method::TasksCancel => {
            Some((Action::CallTool, tool()))
        }
        Method::PromptsGet => Some((Action::GetPrompt, prompt())),
        Method::ResourcesRead => Some((Action::ReadResource, resource())),
        // Unsubscribing is decided like subscribing: a client with no
        // rights on a resource has nothing to cancel.
        Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
            Some((Action::SubscribeResource, resource()))
        }
        Method::CompletionComplete => {
            let kind = exchange.message.at(&["params", "ref", "type"]);
            if kind.and_then(Value::as_str) == Some("ref/prompt") {
                Some((Action::Complete, prompt()))
            } else {
                Some((Action::Complete, resource()))
            }
        }
        _ => None,
    }
}

/// The Cedar target of an item of the merged list `key` (`tools`,
/// `prompts`, `resources`, `resourceTemplates`), with its server; `None`
/// when no server is known for it (such an item is hidden: fail closed).
pub(crate) fn list_target(
    directory: &dyn Directory,
    key: &str,
    item: &Value,
    flow: &FlowConfig,
) -> Option<Target> {
    let name = |k: &str| item.get(k).and_then(Value::as_str);
    match key {
        "tools" => {
            let name = name("name")?;
            let server = directory.tool_server(name)?;
            let annotations = ToolAnnotations::from_definition(item);
            Some(Target::Tool {
                labels: labels_of(flow, server, Labelled::Tool(name), Some(&annotations)),
                name: name.to_owned(),
                server: server.to_owned(),
                annotations,
            })
        }
        "prompts" => {
            let name = name("name")?;
            let server = directory.prompt_server(name)?;
            Some(Target::Prompt {
                labels: labels_of(flow, server, Labelled::Prompt(name), None),
                name: name.to_owned(),
                server: server.to_owned(),
            })
        }
        "resources" => {
            let uri = name("uri")?;
            let server = directory.resource_server(uri)?;
            Some(Target::Resource {
                labels: labels_of(flow, server, Labelled::Resource(uri), None),
                uri: uri.to_owned(),
                server: server.to_owned(),
            })
        }
        _ => {
            let template = name("uriTemplate")?;
            let server = directory.template_server(template)?;
            Some(Target::Resource {
                labels: labels_of(flow, server, Labelled::Resource(template), None),
                uri: template.to_owned(),
                server: server.to_owned(),
            })
        }
    }
}
