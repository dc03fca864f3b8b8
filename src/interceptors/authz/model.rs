//! The Cedar model the proxy builds its requests in: the entity types and
//! actions it names, the check that a schema declares them as the proxy
//! uses them, the context each action's schema declares, and the client
//! entity.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema};
use serde_json::Value;

use super::request::{Action, ArgType, plain_value};

pub(super) struct Types {
    pub(super) client: EntityTypeName,
    pub(super) group: EntityTypeName,
    pub(super) server: EntityTypeName,
    pub(super) tool: EntityTypeName,
    pub(super) prompt: EntityTypeName,
    pub(super) resource: EntityTypeName,
    pub(super) actions: HashMap<Action, EntityUid>,
}

impl Types {
    pub(super) fn new() -> Option<Self> {
        let name = |n: &str| EntityTypeName::from_str(n).ok();
        let action = EntityTypeName::from_str("Action").ok()?;
        Some(Self {
            client: name("Client")?,
            group: name("Group")?,
            server: name("Server")?,
            tool: name("Tool")?,
            prompt: name("Prompt")?,
            resource: name("Resource")?,
            actions: Action::ALL
                .into_iter()
                .map(|a| {
                    (
                        a,
                        EntityUid::from_type_name_and_id(action.clone(), EntityId::new(a.name())),
                    )
                })
                .collect(),
        })
    }

    pub(super) fn uid(&self, kind: &str, id: &str) -> EntityUid {
        let type_name = match kind {
            "Tool" => &self.tool,
            "Prompt" => &self.prompt,
            "Resource" => &self.resource,
            "Group" => &self.group,
            "Client" => &self.client,
            _ => &self.server,
        };
        EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
    }
}

/// Why a schema does not describe the entities the proxy builds, if it does
/// not. A schema that renamed `Server`, or put the model in a namespace,
/// would validate policies that can never match a request — and a forbid
/// that never matches fails open.
pub(super) fn model_problem(schema: &Schema) -> Option<String> {
    let types: HashSet<String> = schema.entity_types().map(ToString::to_string).collect();
    if let Some(namespaced) = types.iter().find(|t| t.contains("::")) {
        return Some(format!(
            "entity type `{namespaced}` is in a namespace; the proxy builds the model's entities without one"
        ));
    }
    for required in ["Client", "Group", "Server", "Tool", "Prompt", "Resource"] {
        if !types.contains(required) {
            return Some(format!(
                "the schema does not declare entity type `{required}`, which the proxy builds for every decision"
            ));
        }
    }
    let action_type = EntityTypeName::from_str("Action").ok()?;
    for action in Action::ALL {
        let uid =
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(action.name()));
        let principals: Vec<String> = schema
            .principals_for_action(&uid)
            .map(|it| it.map(ToString::to_string).collect())
            .unwrap_or_default();
        let resources: Vec<String> = schema
            .resources_for_action(&uid)
            .map(|it| it.map(ToString::to_string).collect())
            .unwrap_or_default();
        let expected: &[&str] = match action {
            Action::CallTool | Action::ListTools | Action::UseCode => &["Tool"],
            Action::GetPrompt | Action::ListPrompts => &["Prompt"],
            Action::ReadResource | Action::ListResources | Action::SubscribeResource => {
                &["Resource"]
            }
            Action::Complete => &["Prompt", "Resource"],
            Action::Sampling
            | Action::Elicitation
            | Action::Roots
            | Action::FindServers
            | Action::AddServer
            | Action::SignIn => &["Server"],
        };
        if Action::OPTIONAL.contains(&action) && principals.is_empty() && resources.is_empty() {
            continue;
        }
        if !principals.iter().any(|p| p == "Client")
            || !expected.iter().all(|e| resources.iter().any(|r| r == e))
        {
            return Some(format!(
                "action `{}` must apply to principal `Client` and resource {}",
                action.name(),
                expected
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
    }
    None
}

/// The context attributes an action's context type declares.
#[derive(Debug, Clone, Default)]
pub(super) struct ContextShape {
    pub(super) attributes: HashSet<String>,
    /// The declared arguments (a record type), if `arguments` is declared.
    pub(super) arguments: Option<Vec<(String, ArgType, bool)>>,
}

/// Reads, from the schema's JSON form, each action's context attributes and
/// the type of its `arguments`.
pub(super) fn context_shapes(json: &Value) -> HashMap<Action, ContextShape> {
    let mut shapes = HashMap::new();
    let Some(namespaces) = json.as_object() else {
        return shapes;
    };
    for namespace in namespaces.values() {
        let common = namespace.get("commonTypes").cloned().unwrap_or(Value::Null);
        let Some(actions) = namespace.get("actions").and_then(Value::as_object) else {
            continue;
        };
        for (name, action) in actions {
            let Some(parsed) = Action::parse(name) else {
                continue;
            };
            let Some(context) = action.pointer("/appliesTo/context") else {
                shapes.insert(parsed, ContextShape::default());
                continue;
            };
            let Some(ArgType::Record(attributes)) = arg_type(context, &common, 0) else {
                continue;
            };
            let mut shape = ContextShape::default();
            for (attribute, kind, _) in attributes {
                if attribute == "arguments"
                    && let ArgType::Record(fields) = &kind
                {
                    shape.arguments = Some(fields.clone());
                }
                shape.attributes.insert(attribute);
            }
            shapes.insert(parsed, shape);
        }
    }
    shapes
}

/// A schema type (JSON form) as an argument type, resolving common types.
fn arg_type(ty: &Value, common: &Value, depth: usize) -> Option<ArgType> {
    if depth > 16 {
        return None;
    }
    let kind = ty.get("type").and_then(Value::as_str)?;
    let named = |name: &str| -> Option<ArgType> {
        match name {
            "String" | "__cedar::String" => Some(ArgType::String),
            "Long" | "__cedar::Long" => Some(ArgType::Long),
            "Bool" | "Boolean" | "__cedar::Bool" | "__cedar::Boolean" => Some(ArgType::Bool),
            other => match common.get(other) {
                Some(resolved) => arg_type(resolved, common, depth + 1),
                None => Some(ArgType::Unsupported),
            },
        }
    };
    match kind {
        "Record" => {
            let attributes = ty.get("attributes").and_then(Value::as_object)?;
            Some(ArgType::Record(
                attributes
                    .iter()
                    .map(|(name, attribute)| {
                        let required = attribute
                            .get("required")
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        let kind =
                            arg_type(attribute, common, depth + 1).unwrap_or(ArgType::Unsupported);
                        (name.clone(), kind, required)
                    })
                    .collect(),
            ))
        }
        "Set" => Some(ArgType::Set(Box::new(
            ty.get("element")
                .and_then(|element| arg_type(element, common, depth + 1))
                .unwrap_or(ArgType::Unsupported),
        ))),
        "EntityOrCommon" => named(ty.get("name").and_then(Value::as_str)?),
        "Entity" | "Extension" => Some(ArgType::Unsupported),
        other => named(other),
    }
}

pub(super) fn client_entity(
    types: &Types,
    name: &str,
    parents: HashSet<EntityUid>,
    attributes: Option<&serde_json::Map<String, Value>>,
) -> Result<Entity, String> {
    let mut values = HashMap::from([(
        "name".to_owned(),
        RestrictedExpression::new_string(name.to_owned()),
    )]);
    for (key, value) in attributes.into_iter().flatten() {
        let converted = plain_value(value).ok_or_else(|| {
            format!("client attribute `{key}` is not a string, integer, boolean or array")
        })?;
        values.insert(key.clone(), converted);
    }
    Entity::new(types.uid("Client", name), values, parents).map_err(|e| e.to_string())
}
