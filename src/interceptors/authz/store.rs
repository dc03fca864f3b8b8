//! A policy set loaded from a folder: the schema, every `*.cedar` file under
//! it, strict validation with file:line:col diagnostics, policy ids from
//! `@id` annotations, and decisions over the slice of policies whose scope
//! can match the request.
//!
//! Cedar evaluates every policy it is given. A policy whose principal,
//! action or resource scope names an entity the request cannot be in is never
//! satisfied and never errors (the scope is checked before any condition),
//! so leaving it out changes nothing: the slice for (action, principal and
//! its groups, resource and its server) decides exactly as the whole set
//! does. Slices are cached per such key.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, SchemaFragment,
};
use serde_json::Value;

use super::diagnostic::{Diagnostic, PolicyError, Severity};
use super::model::{ContextShape, Types, client_entity, context_shapes};
pub use super::parse::Origin;
use super::parse::{Parsed, parse_policies, schema_of, validate};
use super::request::{Action, Query, Target, convert_record, datetime_literal, left_out};
use super::slice::{Indexed, Prepared, Reads, index_by_action};
use super::sources::Sources;
use crate::config::ClientConfig;
use crate::flow::Flow;

/// The schema's file name, also here, where the console finds it.
pub use super::sources::SCHEMA_FILE;

/// Slices kept per policy set before the cache starts over.
const MAX_CACHED_SLICES: usize = 8_192;

/// Longer keys (long resource URIs, many attributes) are not cached.
const MAX_CACHED_KEY_BYTES: usize = 512;

/// A policy of a loaded set, as its file has it.
#[derive(Debug, Clone)]
pub struct ListedPolicy<'a> {
    pub id: &'a str,
    pub origin: &'a Origin,
    /// The policy's own text, annotations included.
    pub text: String,
}

/// What a decision came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that decided: the permits that allowed, or the forbids
    /// that denied (empty for a default deny), or those that failed to
    /// evaluate.
    pub policies: Vec<String>,
    /// Evaluation errors (each denies), as `policy: message`.
    pub errors: Vec<String>,
    /// Call arguments left out of `context.arguments` (names only).
    pub dropped_arguments: Vec<String>,
    /// The policy set that decided.
    pub policy_set: Arc<str>,
    /// A policy that decided may read `context.flow`, and the flow was not
    /// empty: what the client was given before counted.
    pub read_flow: bool,
    /// A refusal the person behind the agent may override: every policy
    /// that decided it is a forbid with `@ask`, and none failed. Their
    /// texts, in the policies' order.
    pub ask: Option<String>,
}

impl Decision {
    /// `allow`, `deny`, or `ask` (a refusal the person may override).
    pub fn verdict(&self) -> &'static str {
        match (self.allowed, &self.ask) {
            (true, _) => "allow",
            (false, Some(_)) => "ask",
            (false, None) => "deny",
        }
    }
}

/// A loaded, validated policy set.
pub struct PolicyStore {
    schema: Schema,
    all: Arc<PolicySet>,
    origins: HashMap<String, Origin>,
    /// The policies that may read `context.flow`, by id.
    flow_readers: HashSet<String>,
    /// The forbids whose refusal the person may override, by id: their
    /// `@ask` text.
    asks: HashMap<String, String>,
    /// Per action: the policies whose action scope includes it.
    by_action: HashMap<Action, Vec<Indexed>>,
    shapes: HashMap<Action, ContextShape>,
    /// The schema's action entities, when it declares action groups (needed
    /// for `action in` a group).
    action_entities: Vec<Entity>,
    types: Types,
    authorizer: Authorizer,
    slices: RwLock<HashMap<String, Arc<Prepared>>>,
    /// A short hash of the schema and policy files.
    pub id: Arc<str>,
    /// When the folder was read and validated into this set.
    pub loaded_at: SystemTime,
    pub files: Vec<PathBuf>,
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyStore")
            .field("id", &self.id)
            .field("policies", &self.origins.len())
            .finish()
    }
}

impl PolicyStore {
    /// Loads and validates a policy folder.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        Self::from_sources(&Sources::read(dir)?)
    }

    pub fn from_sources(sources: &Sources) -> Result<Self, PolicyError> {
        let (schema_path, schema_text) = &sources.schema;
        let schema = schema_of(schema_path, schema_text)?;
        let shapes = SchemaFragment::from_cedarschema_str(schema_text)
            .ok()
            .and_then(|(fragment, _)| fragment.to_json_value().ok())
            .map(|json| context_shapes(&json))
            .unwrap_or_default();

        let Parsed {
            policies,
            origins,
            located,
            asks,
        } = parse_policies(sources)?;
        let all = PolicySet::from_policies(policies.iter().cloned()).map_err(|err| {
            PolicyError::Invalid(vec![Diagnostic {
                file: schema_path.parent().map(Path::to_owned).unwrap_or_default(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: err.to_string(),
                help: None,
            }])
        })?;

        let warnings = validate(&schema, &all, sources, &located)?;

        let action_entities = if schema.action_groups().next().is_some() {
            schema
                .action_entities()
                .map(|entities| entities.iter().cloned().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let types = Types::new().ok_or_else(|| {
            PolicyError::Invalid(vec![Diagnostic {
                file: schema_path.clone(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: "internal: the model's type names do not parse".into(),
                help: None,
            }])
        })?;
        let by_action = index_by_action(&policies, &schema, &types);
        let flow_readers = policies
            .iter()
            .filter(|policy| Reads::of(&policy.to_string()).flow)
            .map(|policy| policy.id().to_string())
            .collect();
        Ok(Self {
            schema,
            all: Arc::new(all),
            origins,
            flow_readers,
            asks,
            by_action,
            shapes,
            action_entities,
            types,
            authorizer: Authorizer::new(),
            slices: RwLock::new(HashMap::new()),
            id: Arc::from(sources.fingerprint()),
            loaded_at: SystemTime::now(),
            files: std::iter::once(schema_path.clone())
                .chain(sources.policies.iter().map(|(p, _)| p.clone()))
                .collect(),
            warnings,
        })
    }

    /// Checks that the configured clients' entities (their attributes)
    /// fit the schema's `Client` type.
    pub fn check_clients(&self, clients: &[ClientConfig]) -> Result<(), PolicyError> {
        for client in clients {
            let parents = client
                .groups
                .iter()
                .map(|group| self.types.uid("Group", group))
                .collect();
            let entity =
                client_entity(&self.types, &client.name, parents, Some(&client.attributes))
                    .map_err(|message| PolicyError::Clients {
                        client: client.name.clone(),
                        message,
                    })?;
            Entities::from_entities([entity], Some(&self.schema)).map_err(|err| {
                PolicyError::Clients {
                    client: client.name.clone(),
                    message: err.to_string(),
                }
            })?;
        }
        Ok(())
    }

    pub fn policy_count(&self) -> usize {
        self.origins.len()
    }

    pub fn origin(&self, id: &str) -> Option<&Origin> {
        self.origins.get(id)
    }

    /// Every policy, in file and line order.
    pub fn policies(&self) -> Vec<ListedPolicy<'_>> {
        let mut listed: Vec<ListedPolicy<'_>> = self
            .origins
            .iter()
            .map(|(id, origin)| ListedPolicy {
                id,
                origin,
                // Parsed from text, a policy displays as written.
                text: self
                    .all
                    .policy(&PolicyId::new(id))
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            })
            .collect();
        listed.sort_by(|a, b| {
            (&a.origin.file, a.origin.line, a.id).cmp(&(&b.origin.file, b.origin.line, b.id))
        });
        listed
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// How many policies can apply to a query (its slice).
    pub fn slice_size(&self, query: &Query<'_>) -> usize {
        self.prepare(query)
            .map_or(0, |prepared| prepared.policies.policies().count())
    }

    /// Decides over the slice of policies that can apply, with the
    /// request's entities cached beside it.
    /// Whether the schema declares `action` (one of [`Action::OPTIONAL`]
    /// may be left out; then nothing permits it).
    pub fn declares(&self, action: Action) -> bool {
        !Action::OPTIONAL.contains(&action) || self.shapes.contains_key(&action)
    }

    pub fn decide(&self, query: &Query<'_>) -> Decision {
        // An action the schema may leave out and did: nothing permits it
        // (a policy with no action constraint would, unvalidated).
        if Action::OPTIONAL.contains(&query.action) && !self.shapes.contains_key(&query.action) {
            return self.failed(format!(
                "the schema does not declare action `{}`",
                query.action.name()
            ));
        }
        match self.prepare(query) {
            Ok(prepared) => self.evaluate(query, &prepared),
            Err(reason) => self.failed(reason),
        }
    }

    /// Decides over every policy, with everything built afresh (for tests and
    /// the benchmark: what slicing and caching must not change).
    pub fn decide_unsliced(&self, query: &Query<'_>) -> Decision {
        match self.entities(query) {
            Ok(entities) => self.evaluate(
                query,
                &Prepared {
                    policies: self.all.clone(),
                    entities: Arc::new(entities),
                    reads: Reads::ALL,
                },
            ),
            Err(reason) => self.failed(reason),
        }
    }

    fn failed(&self, reason: String) -> Decision {
        Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![reason],
            dropped_arguments: Vec::new(),
            policy_set: self.id.clone(),
            read_flow: false,
            ask: None,
        }
    }

    fn evaluate(&self, query: &Query<'_>, prepared: &Prepared) -> Decision {
        let (request, dropped) = match self.request(query, prepared.reads) {
            Ok(built) => built,
            Err(reason) => return self.failed(reason),
        };
        let response =
            self.authorizer
                .is_authorized(&request, &prepared.policies, &prepared.entities);
        let diagnostics = response.diagnostics();
        let mut failed = Vec::new();
        let mut errors = Vec::new();
        for error in diagnostics.errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = error;
            errors.push(format!("{}: {}", e.policy_id(), e.inner()));
            failed.push(e.policy_id().to_string());
        }
        let allowed = errors.is_empty() && response.decision() == cedar_policy::Decision::Allow;
        let mut policies = if errors.is_empty() {
            diagnostics.reason().map(ToString::to_string).collect()
        } else {
            failed
        };
        policies.sort();
        policies.dedup();
        let read_flow = query.flow.is_some_and(|flow| !flow.is_empty())
            && policies.iter().any(|id| self.flow_readers.contains(id));
        let asks: Option<Vec<&str>> = (!allowed && errors.is_empty())
            .then(|| {
                policies
                    .iter()
                    .map(|id| self.asks.get(id).map(String::as_str))
                    .collect()
            })
            .flatten();
        // Only what the `@ask` forbids refused: without them, a permit
        // allows (a missing permit is never the person's to override).
        let ask = asks
            .filter(|texts| !texts.is_empty())
            .filter(|_| {
                let rest = prepared
                    .policies
                    .policies()
                    .filter(|policy| !self.asks.contains_key(&policy.id().to_string()))
                    .cloned();
                PolicySet::from_policies(rest).is_ok_and(|rest| {
                    let answer = self
                        .authorizer
                        .is_authorized(&request, &rest, &prepared.entities);
                    answer.decision() == cedar_policy::Decision::Allow
                        && answer.diagnostics().errors().next().is_none()
                })
            })
            .map(|texts| texts.join(" "));
        Decision {
            allowed,
            policies,
            errors,
            dropped_arguments: dropped,
            policy_set: self.id.clone(),
            read_flow,
            ask,
        }
    }

    /// The entities of a query: the client in its groups, the target in its
    /// server, the server (and the schema's action groups, if any).
    fn entities(&self, query: &Query<'_>) -> Result<Entities, String> {
        let types = &self.types;
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let parents: HashSet<EntityUid> = query
            .groups
            .iter()
            .map(|group| types.uid("Group", group))
            .collect();
        let client = client_entity(types, query.client, parents, query.attributes)?;
        let server_name = query.target.server();
        let server_uid = types.uid("Server", server_name);
        let mut facts = HashMap::from([("name".to_owned(), string(server_name))]);
        if let Target::Catalogued { catalog, image, .. } = query.target {
            facts.insert("catalog".to_owned(), string(catalog));
            facts.insert("image".to_owned(), string(image));
        }
        let server =
            Entity::new(server_uid.clone(), facts, HashSet::new()).map_err(|e| e.to_string())?;
        let (kind, id) = query.target.entity();
        let mut entities = vec![client, server];
        let parent = HashSet::from([server_uid]);
        let attributes: Option<Vec<(&str, RestrictedExpression)>> = match query.target {
            Target::Tool {
                name, annotations, ..
            } => Some(vec![
                ("name", string(name)),
                ("server", string(server_name)),
                (
                    "read_only",
                    RestrictedExpression::new_bool(annotations.read_only),
                ),
                (
                    "destructive",
                    RestrictedExpression::new_bool(annotations.destructive),
                ),
                (
                    "idempotent",
                    RestrictedExpression::new_bool(annotations.idempotent),
                ),
                (
                    "open_world",
                    RestrictedExpression::new_bool(annotations.open_world),
                ),
            ]),
            Target::Prompt { name, .. } => Some(vec![
                ("name", string(name)),
                ("server", string(server_name)),
            ]),
            Target::Resource { uri, .. } => {
                Some(vec![("uri", string(uri)), ("server", string(server_name))])
            }
            Target::Server { .. } | Target::Catalogued { .. } => None,
        };
        if let Some(mut attributes) = attributes {
            // Every label the item has (`[flow]`), as a set.
            let labels = query.target.labels().names().into_iter().map(string);
            attributes.push(("labels", RestrictedExpression::new_set(labels)));
            entities.push(
                Entity::new(
                    types.uid(kind, id),
                    attributes
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), value))
                        .collect(),
                    parent,
                )
                .map_err(|e| e.to_string())?,
            );
        }
        entities.extend(self.action_entities.iter().cloned());
        Entities::from_entities(entities, None).map_err(|e| e.to_string())
    }

    /// The Cedar request of a query (its context built per call), and the
    /// arguments left out. A context attribute that no policy of the slice
    /// can read is not built: a `datetime` costs more to evaluate than the
    /// rest of the context together, and a policy that cannot read an
    /// attribute decides the same without it.
    fn request(&self, query: &Query<'_>, reads: Reads) -> Result<(Request, Vec<String>), String> {
        let types = &self.types;
        let shape = self.shapes.get(&query.action);
        let declared = |name: &str| shape.is_none_or(|s| s.attributes.contains(name));
        let mut pairs = Vec::with_capacity(4);
        let empty = serde_json::Map::new();
        let arguments = query.arguments.unwrap_or(&empty);
        let attributes = shape.and_then(|s| s.arguments.as_deref()).unwrap_or(&[]);
        let dropped = left_out(attributes, arguments);
        if reads.arguments && declared("arguments") {
            let (fields, _) = convert_record(attributes, arguments);
            let record = RestrictedExpression::new_record(fields.unwrap_or_default())
                .map_err(|e| e.to_string())?;
            pairs.push(("arguments".to_owned(), record));
        }
        if reads.transport && declared("transport") {
            pairs.push((
                "transport".to_owned(),
                RestrictedExpression::new_string(query.transport.to_owned()),
            ));
        }
        if reads.protocol && declared("protocol") {
            pairs.push((
                "protocol".to_owned(),
                RestrictedExpression::new_string(query.protocol.to_owned()),
            ));
        }
        if reads.session && declared("session") {
            pairs.push((
                "session".to_owned(),
                RestrictedExpression::new_string(query.session.to_owned()),
            ));
        }
        if reads.scopes && declared("scopes") {
            let scopes = query
                .scopes
                .iter()
                .map(|scope| RestrictedExpression::new_string(scope.to_string()));
            pairs.push(("scopes".to_owned(), RestrictedExpression::new_set(scopes)));
        }
        // Only on a call a code-mode script made: `context has script`.
        if reads.script
            && declared("script")
            && let Some(script) = query.script
        {
            pairs.push((
                "script".to_owned(),
                RestrictedExpression::new_string(script.to_owned()),
            ));
        }
        // Only on a client's answer to a server's question: `context has
        // answer`.
        if reads.answer
            && declared("answer")
            && let Some(answer) = query.answer
        {
            pairs.push((
                "answer".to_owned(),
                RestrictedExpression::new_string(answer.to_owned()),
            ));
        }
        if reads.flow && declared("flow") {
            pairs.push(("flow".to_owned(), flow_record(query.flow)?));
        }
        if reads.time && declared("time") {
            pairs.push((
                "time".to_owned(),
                RestrictedExpression::new_datetime(datetime_literal(query.time)),
            ));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let action = types
            .actions
            .get(&query.action)
            .cloned()
            .ok_or_else(|| format!("unknown action `{}`", query.action.name()))?;
        let (kind, id) = query.target.entity();
        let request = Request::new(
            types.uid("Client", query.client),
            action,
            types.uid(kind, id),
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok((request, dropped))
    }

    /// The policies that can apply to a query and its entities, cached per
    /// (action, client and groups, target and its annotations, server).
    fn prepare(&self, query: &Query<'_>) -> Result<Arc<Prepared>, String> {
        let (kind, id) = query.target.entity();
        let mut key = String::with_capacity(96);
        // Length-prefixed fields: no two requests share a key.
        let push = |key: &mut String, part: &str| {
            key.push_str(&part.len().to_string());
            key.push(':');
            key.push_str(part);
        };
        for part in [
            query.action.name(),
            query.client,
            kind,
            id,
            query.target.server(),
        ] {
            push(&mut key, part);
        }
        if let Target::Catalogued { catalog, image, .. } = query.target {
            push(&mut key, catalog);
            push(&mut key, image);
        }
        push(&mut key, &query.target.labels().names().join(","));
        if let Target::Tool { annotations: a, .. } = query.target {
            let flags: String = [a.read_only, a.destructive, a.idempotent, a.open_world]
                .iter()
                .map(|&flag| if flag { '1' } else { '0' })
                .collect();
            push(&mut key, &flags);
        }
        for group in query.groups {
            push(&mut key, group);
        }
        if let Some(attributes) = query.attributes.filter(|a| !a.is_empty()) {
            push(&mut key, &Value::Object(attributes.clone()).to_string());
        }
        if let Some(found) = self
            .slices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(found.clone());
        }
        let types = &self.types;
        let mut principals = vec![types.uid("Client", query.client)];
        principals.extend(query.groups.iter().map(|g| types.uid("Group", g)));
        let resources = [
            types.uid(kind, id),
            types.uid("Server", query.target.server()),
        ];
        let mut reads = Reads::NONE;
        let relevant: Vec<Policy> = self
            .by_action
            .get(&query.action)
            .map(|indexed| {
                indexed
                    .iter()
                    .filter(|entry| {
                        entry
                            .principal
                            .as_ref()
                            .is_none_or(|p| principals.contains(p))
                            && entry
                                .resource
                                .as_ref()
                                .is_none_or(|r| resources.contains(r))
                    })
                    .map(|entry| {
                        reads = reads.union(entry.reads);
                        entry.policy.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let prepared = Arc::new(Prepared {
            // Ids are unique (checked at load), so this cannot fail.
            policies: Arc::new(PolicySet::from_policies(relevant).unwrap_or_default()),
            entities: Arc::new(self.entities(query)?),
            reads,
        });
        // Resource URIs come from clients: a long one is decided without
        // being cached, so the cache stays small whatever clients send.
        if key.len() <= MAX_CACHED_KEY_BYTES {
            let mut slices = self.slices.write().unwrap_or_else(|p| p.into_inner());
            if slices.len() >= MAX_CACHED_SLICES {
                slices.clear();
            }
            slices.insert(key, prepared.clone());
        }
        Ok(prepared)
    }
}

/// `context.flow`: whether the data given to the client so far carries
/// each label, and the names of what brought it.
fn flow_record(flow: Option<&Flow>) -> Result<RestrictedExpression, String> {
    let mut fields = Vec::with_capacity(4);
    for label in Flow::CARRIED {
        let names: BTreeSet<&str> = flow
            .map(|flow| flow.sources(label).map(|s| &*s.name).collect())
            .unwrap_or_default();
        fields.push((
            label.name().to_owned(),
            RestrictedExpression::new_bool(!names.is_empty()),
        ));
        fields.push((
            format!("{}_from", label.name()),
            RestrictedExpression::new_set(
                names
                    .into_iter()
                    .map(|name| RestrictedExpression::new_string(name.to_owned())),
            ),
        ));
    }
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}
