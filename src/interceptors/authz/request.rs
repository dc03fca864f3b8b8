//! What one authorization question is about, independent of Cedar: the
//! action, the target and the call's context — and how call arguments become
//! a Cedar record.

use std::sync::Arc;
use std::time::SystemTime;

pub use crate::protocol::datetime_literal;

use cedar_policy::RestrictedExpression;
use serde_json::{Map, Value};

use crate::config::{FlowConfig, Label, Labelled, Labels};
use crate::flow::Flow;

/// The actions of the Cedar model (DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    CallTool,
    ListTools,
    ReadResource,
    ListResources,
    SubscribeResource,
    GetPrompt,
    ListPrompts,
    Complete,
    Sampling,
    Elicitation,
    Roots,
    /// `portcullis__find` shows a catalog server ([`Target::Catalogued`]).
    FindServers,
    /// `portcullis__add` starts a catalog server for the session.
    AddServer,
    /// The client's user is given a link to sign in to a `sign_in` server.
    SignIn,
    /// `portcullis__code` is listed to the client, and runs its scripts
    /// (`[code_mode]`); in place of `list_tools` and `call_tool` for that
    /// tool.
    UseCode,
}

impl Action {
    pub const ALL: [Self; 15] = [
        Self::CallTool,
        Self::ListTools,
        Self::ReadResource,
        Self::ListResources,
        Self::SubscribeResource,
        Self::GetPrompt,
        Self::ListPrompts,
        Self::Complete,
        Self::Sampling,
        Self::Elicitation,
        Self::Roots,
        Self::FindServers,
        Self::AddServer,
        Self::SignIn,
        Self::UseCode,
    ];

    /// The actions a schema may leave out (those of `[discovery]`,
    /// `sign_in` and `use_code`): a schema without them permits none of
    /// them.
    pub const OPTIONAL: [Self; 4] = [
        Self::FindServers,
        Self::AddServer,
        Self::SignIn,
        Self::UseCode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::CallTool => "call_tool",
            Self::ListTools => "list_tools",
            Self::ReadResource => "read_resource",
            Self::ListResources => "list_resources",
            Self::SubscribeResource => "subscribe_resource",
            Self::GetPrompt => "get_prompt",
            Self::ListPrompts => "list_prompts",
            Self::Complete => "complete",
            Self::Sampling => "sampling",
            Self::Elicitation => "elicitation",
            Self::Roots => "roots",
            Self::FindServers => "find_servers",
            Self::AddServer => "add_server",
            Self::SignIn => "sign_in",
            Self::UseCode => "use_code",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.name() == name)
    }
}

/// The annotations a server declared for a tool, with the MCP spec's
/// defaults for those it left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolAnnotations {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl Default for ToolAnnotations {
    fn default() -> Self {
        Self {
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: true,
        }
    }
}

impl ToolAnnotations {
    /// From a tool definition as listed by its server (`annotations.*Hint`).
    pub fn from_definition(tool: &Value) -> Self {
        let defaults = Self::default();
        let hint = |key: &str, default: bool| {
            tool.get("annotations")
                .and_then(|a| a.get(key))
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        Self {
            read_only: hint("readOnlyHint", defaults.read_only),
            destructive: hint("destructiveHint", defaults.destructive),
            idempotent: hint("idempotentHint", defaults.idempotent),
            open_world: hint("openWorldHint", defaults.open_world),
        }
    }

    /// The labels a tool has when no `[flow]` rule names it: one whose world
    /// is open answers an outsider's words and sends its arguments out (a
    /// read of the open world sends them too: a URL carries data), so it is
    /// `untrusted` and a `sink`; one whose world is closed answers what is
    /// the user's own: `private`.
    pub fn labels(&self) -> Labels {
        if self.open_world {
            Labels::of(&[Label::Untrusted, Label::Sink])
        } else {
            Labels::of(&[Label::Private])
        }
    }
}

/// The labels of an item of `server` (a tool with its `annotations`): the
/// `[flow]` rules', else the defaults. What the proxy cannot tell the origin
/// of is `untrusted`, as a tool whose server says nothing of its world is:
/// a prompt, a server's sampling request, and a resource, which may as well
/// be the user's own (a file, a row): `private` too.
pub fn labels_of(
    flow: &FlowConfig,
    server: &str,
    item: Labelled<'_>,
    annotations: Option<&ToolAnnotations>,
) -> Labels {
    let defaults = match (item, annotations) {
        (Labelled::Tool(_), Some(annotations)) => annotations.labels(),
        (Labelled::Tool(_), None) => ToolAnnotations::default().labels(),
        (Labelled::Resource(_), _) => Labels::of(&[Label::Untrusted, Label::Private]),
        (Labelled::Prompt(_) | Labelled::Sampling, _) => Labels::of(&[Label::Untrusted]),
    };
    flow.labels(server, item, defaults)
}

/// The resource of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `name` as clients see it: `<server><sep><tool>`.
    Tool {
        name: String,
        server: String,
        annotations: ToolAnnotations,
        /// `resource.labels` (`[flow]`).
        labels: Labels,
    },
    Prompt {
        name: String,
        server: String,
        labels: Labels,
    },
    Resource {
        uri: String,
        server: String,
        labels: Labels,
    },
    /// The server itself (server→client requests).
    Server { name: String },
    /// A server of a catalog, as `portcullis__find` shows it and
    /// `portcullis__add` starts it: `Server::"<name>"` with its catalog and
    /// image (with its digest when the catalog pins one).
    Catalogued {
        name: String,
        catalog: String,
        image: String,
    },
}

impl Target {
    pub fn server(&self) -> &str {
        match self {
            Self::Tool { server, .. }
            | Self::Prompt { server, .. }
            | Self::Resource { server, .. } => server,
            Self::Server { name } | Self::Catalogued { name, .. } => name,
        }
    }

    /// Its labels (`resource.labels`); a server has none.
    pub fn labels(&self) -> Labels {
        match self {
            Self::Tool { labels, .. }
            | Self::Prompt { labels, .. }
            | Self::Resource { labels, .. } => *labels,
            Self::Server { .. } | Self::Catalogued { .. } => Labels::NONE,
        }
    }

    /// The same target with `label` among its labels (a server has none).
    #[must_use]
    pub fn with_label(mut self, label: Label) -> Self {
        match &mut self {
            Self::Tool { labels, .. }
            | Self::Prompt { labels, .. }
            | Self::Resource { labels, .. } => *labels = labels.with(label),
            Self::Server { .. } | Self::Catalogued { .. } => {}
        }
        self
    }

    /// (entity type, entity id).
    pub fn entity(&self) -> (&'static str, &str) {
        match self {
            Self::Tool { name, .. } => ("Tool", name),
            Self::Prompt { name, .. } => ("Prompt", name),
            Self::Resource { uri, .. } => ("Resource", uri),
            Self::Server { name } | Self::Catalogued { name, .. } => ("Server", name),
        }
    }
}

/// One authorization question.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub client: &'a str,
    pub groups: &'a [Arc<str>],
    /// The client's attributes from the config (`[[clients]] attributes`).
    pub attributes: Option<&'a Map<String, Value>>,
    pub action: Action,
    pub target: &'a Target,
    pub arguments: Option<&'a Map<String, Value>>,
    pub transport: &'a str,
    /// The MCP revision the client speaks (`""` when not known).
    pub protocol: &'a str,
    pub session: &'a str,
    /// The scopes of the client's access token (`context.scopes`; none
    /// for a client without one).
    pub scopes: &'a [Arc<str>],
    pub time: SystemTime,
    /// The code-mode script that made the call (`context.script`: its
    /// id), if one did.
    pub script: Option<&'a str>,
    /// A client's answer to its server's question, decided as the call it
    /// was asked during (`context.answer`: the question's method).
    pub answer: Option<&'a str>,
    /// What the data given to the client so far carries (`context.flow`);
    /// `None`: nothing yet.
    pub flow: Option<&'a Flow>,
}

/// A Cedar type that call arguments may take, read from the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgType {
    String,
    Long,
    Bool,
    Set(Box<ArgType>),
    /// Attributes: (name, type, required).
    Record(Vec<(String, ArgType, bool)>),
    /// Declared, but nothing a JSON value converts to (entities, extensions).
    Unsupported,
}

impl ArgType {
    /// Whether [`ArgType::convert`] would convert this value.
    pub fn accepts(&self, value: &Value) -> bool {
        match (self, value) {
            (Self::String, Value::String(_)) | (Self::Bool, Value::Bool(_)) => true,
            (Self::Long, Value::Number(number)) => number.is_i64(),
            (Self::Set(element), Value::Array(items)) => items.iter().all(|i| element.accepts(i)),
            (Self::Record(attributes), Value::Object(object)) => {
                attributes
                    .iter()
                    .all(|(name, kind, required)| match object.get(name) {
                        Some(value) => kind.accepts(value) || !required,
                        None => !required,
                    })
            }
            _ => false,
        }
    }

    /// The Cedar value of a JSON value of this type; `None` when it does not
    /// convert.
    pub fn convert(&self, value: &Value) -> Option<RestrictedExpression> {
        match (self, value) {
            (Self::String, Value::String(text)) => {
                Some(RestrictedExpression::new_string(text.clone()))
            }
            (Self::Long, Value::Number(number)) => {
                number.as_i64().map(RestrictedExpression::new_long)
            }
            (Self::Bool, Value::Bool(flag)) => Some(RestrictedExpression::new_bool(*flag)),
            (Self::Set(element), Value::Array(items)) => items
                .iter()
                .map(|item| element.convert(item))
                .collect::<Option<Vec<_>>>()
                .map(RestrictedExpression::new_set),
            (Self::Record(attributes), Value::Object(object)) => {
                let (fields, _) = convert_record(attributes, object);
                fields.and_then(|fields| RestrictedExpression::new_record(fields).ok())
            }
            _ => None,
        }
    }
}

/// A JSON value as a Cedar value by its own shape: strings, integers,
/// booleans, arrays of those (the shapes `[[clients]] attributes` allows).
pub fn plain_value(value: &Value) -> Option<RestrictedExpression> {
    match value {
        Value::String(text) => Some(RestrictedExpression::new_string(text.clone())),
        Value::Number(number) => number.as_i64().map(RestrictedExpression::new_long),
        Value::Bool(flag) => Some(RestrictedExpression::new_bool(*flag)),
        Value::Array(items) => items
            .iter()
            .map(plain_value)
            .collect::<Option<Vec<_>>>()
            .map(RestrictedExpression::new_set),
        _ => None,
    }
}

/// The keys of a JSON object that do not convert to the declared attributes
/// (undeclared, or of another type), without converting anything.
pub fn left_out(
    attributes: &[(String, ArgType, bool)],
    object: &Map<String, Value>,
) -> Vec<String> {
    object
        .iter()
        .filter(|(key, value)| {
            !attributes
                .iter()
                .any(|(name, kind, _)| name == *key && kind.accepts(value))
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Converts the declared attributes of a JSON object. Returns the fields
/// (`None` when a required one is missing or does not convert) and the names
/// of the object's keys left out.
pub fn convert_record(
    attributes: &[(String, ArgType, bool)],
    object: &Map<String, Value>,
) -> (Option<Vec<(String, RestrictedExpression)>>, Vec<String>) {
    let mut fields = Vec::new();
    let mut complete = true;
    for (name, kind, required) in attributes {
        match object.get(name).and_then(|value| kind.convert(value)) {
            Some(converted) => fields.push((name.clone(), converted)),
            None if *required => complete = false,
            None => {}
        }
    }
    let dropped = object
        .keys()
        .filter(|key| !fields.iter().any(|(name, _)| name == *key))
        .cloned()
        .collect();
    (complete.then_some(fields), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotations_default_to_the_spec() {
        assert_eq!(
            ToolAnnotations::from_definition(&json!({"name": "x"})),
            ToolAnnotations::default()
        );
        let declared = ToolAnnotations::from_definition(
            &json!({"annotations": {"readOnlyHint": true, "destructiveHint": false, "openWorldHint": "yes"}}),
        );
        assert!(declared.read_only && !declared.destructive && declared.open_world);
    }

    #[test]
    fn arguments_convert_where_types_match() {
        let attributes = vec![
            ("path".to_owned(), ArgType::String, false),
            ("count".to_owned(), ArgType::Long, false),
            (
                "tags".to_owned(),
                ArgType::Set(Box::new(ArgType::String)),
                false,
            ),
        ];
        let arguments =
            json!({"path": "/workspace/a", "count": 1.5, "tags": ["a", 2], "other": true});
        let object = arguments.as_object().cloned().unwrap_or_default();
        let (fields, mut dropped) = convert_record(&attributes, &object);
        let names: Vec<String> = fields
            .unwrap_or_default()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["path"]);
        dropped.sort();
        assert_eq!(dropped, ["count", "other", "tags"]);

        let required = vec![("path".to_owned(), ArgType::String, true)];
        let (fields, _) = convert_record(&required, &Map::new());
        assert!(
            fields.is_none(),
            "a missing required attribute fails the record"
        );
    }
}
