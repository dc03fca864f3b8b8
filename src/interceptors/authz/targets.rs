//! The Cedar target of what a client asks for: a request's (once routing
//! knows its server and target), and each item of a merged list's, each
//! labelled by `[flow]`.

use serde_json::Value;

use super::request::{Action, Target, ToolAnnotations, labels_of};
use crate::chain::{Definition, Directory, Exchange};
use crate::config::{FlowConfig, Labelled};
use crate::protocol::{At as _, Method};

/// A request's target as routing found it, to be made a Cedar target:
/// `server`'s `target` (a tool's or prompt's own name, or a URI), labelled
/// by `flow` (`separator` names tools and prompts as clients see them).
pub(crate) struct Routed<'a> {
    pub server: &'a str,
    pub target: &'a str,
    pub definition: Option<&'a Definition>,
    pub separator: &'a str,
    pub flow: &'a FlowConfig,
}

impl Routed<'_> {
    fn namespaced(&self) -> String {
        format!("{}{}{}", self.server, self.separator, self.target)
    }

    /// The target as a tool, with the annotations its definition gives.
    pub(crate) fn tool(&self) -> Target {
        let name = self.namespaced();
        let annotations = self
            .definition
            .and_then(|d| d.get())
            .map(ToolAnnotations::from_definition)
            .unwrap_or_default();
        Target::Tool {
            labels: labels_of(
                self.flow,
                self.server,
                Labelled::Tool(&name),
                Some(&annotations),
            ),
            name,
            server: self.server.to_owned(),
            annotations,
        }
    }

    pub(crate) fn prompt(&self) -> Target {
        let name = self.namespaced();
        Target::Prompt {
            labels: labels_of(self.flow, self.server, Labelled::Prompt(&name), None),
            name,
            server: self.server.to_owned(),
        }
    }

    pub(crate) fn resource(&self) -> Target {
        Target::Resource {
            uri: self.target.to_owned(),
            server: self.server.to_owned(),
            labels: labels_of(
                self.flow,
                self.server,
                Labelled::Resource(self.target),
                None,
            ),
        }
    }
}

/// The action and target of a client's request, once routing knows its
/// server and target, labelled by `flow` (`separator` names tools and
/// prompts as clients see them); `None` for a request no action decides.
pub fn request_target(
    exchange: &Exchange,
    separator: &str,
    flow: &FlowConfig,
) -> Option<(Action, Target)> {
    let context = &exchange.context;
    let routed = Routed {
        server: context.server.as_deref()?,
        target: context.target.as_deref()?,
        definition: context.definition.as_ref(),
        separator,
        flow,
    };
    match &context.method {
        // A task's requests are decided as the call that created it
        // (routing found its tool).
        Method::ToolsCall | Method::TasksGet | Method::TasksUpdate | Method::TasksCancel => {
            Some((Action::CallTool, routed.tool()))
        }
        Method::PromptsGet => Some((Action::GetPrompt, routed.prompt())),
        Method::ResourcesRead => Some((Action::ReadResource, routed.resource())),
        // Unsubscribing is decided like subscribing: a client with no
        // rights on a resource has nothing to cancel.
        Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
            Some((Action::SubscribeResource, routed.resource()))
        }
        Method::CompletionComplete => {
            let kind = exchange.message.at(&["params", "ref", "type"]);
            if kind.and_then(Value::as_str) == Some("ref/prompt") {
                Some((Action::Complete, routed.prompt()))
            } else {
                Some((Action::Complete, routed.resource()))
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
