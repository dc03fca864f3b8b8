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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression, Schema, SchemaFragment, ValidationMode, Validator,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::request::{
    Action, ArgType, Query, Target, convert_record, datetime_literal, left_out, plain_value,
};
use crate::config::ClientConfig;

/// The schema's file name inside the policies folder.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// Slices kept per policy set before the cache starts over.
const MAX_CACHED_SLICES: usize = 8_192;

/// Longer keys (long resource URIs, many attributes) are not cached.
const MAX_CACHED_KEY_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a policy or schema file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Why a policy folder did not load.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<Diagnostic>),
    #[error(
        "client `{client}`: its `[[clients]]` attributes do not fit the schema's `Client` entity: {message}"
    )]
    Clients { client: String, message: String },
}

fn list(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a policy came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub effect: &'static str,
}

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
}

/// The context attributes an action's context type declares.
#[derive(Debug, Clone, Default)]
struct ContextShape {
    attributes: HashSet<String>,
    /// The declared arguments (a record type), if `arguments` is declared.
    arguments: Option<Vec<(String, ArgType, bool)>>,
}

#[derive(Debug, Clone)]
struct Indexed {
    policy: Policy,
    principal: Option<EntityUid>,
    resource: Option<EntityUid>,
    reads: Reads,
}

struct Types {
    client: EntityTypeName,
    group: EntityTypeName,
    server: EntityTypeName,
    tool: EntityTypeName,
    prompt: EntityTypeName,
    resource: EntityTypeName,
    actions: HashMap<Action, EntityUid>,
}

impl Types {
    fn new() -> Option<Self> {
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

    fn uid(&self, kind: &str, id: &str) -> EntityUid {
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

/// A loaded, validated policy set.
pub struct PolicyStore {
    schema: Schema,
    all: Arc<PolicySet>,
    origins: HashMap<String, Origin>,
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

/// The files of a policy folder, read: (path, text), schema first.
pub struct Sources {
    pub schema: (PathBuf, String),
    pub policies: Vec<(PathBuf, String)>,
}

impl Sources {
    /// Reads the schema and every `*.cedar` file under `dir` (sorted).
    pub fn read(dir: &Path) -> Result<Self, PolicyError> {
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = match std::fs::read_to_string(&schema_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                return Err(PolicyError::Invalid(vec![Diagnostic {
                    file: schema_path,
                    line: 1,
                    column: 1,
                    severity: Severity::Error,
                    message: "the schema is missing: every policy folder needs a `schema.cedarschema`; policies are validated strictly against it".into(),
                    help: Some("start from the schema in the repository's `policies/` folder".into()),
                }]));
            }
            Err(source) => {
                return Err(PolicyError::Io {
                    path: if dir.is_dir() {
                        schema_path
                    } else {
                        dir.to_owned()
                    },
                    source,
                });
            }
        };
        let mut paths = Vec::new();
        collect_cedar_files(dir, &mut paths)?;
        paths.sort();
        let mut policies = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
                path: path.clone(),
                source,
            })?;
            policies.push((path, text));
        }
        Ok(Self {
            schema: (schema_path, schema),
            policies,
        })
    }

    /// A short hash over every file's path (inside the folder) and content.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let dir = self.schema.0.parent().unwrap_or(Path::new(""));
        for (path, text) in std::iter::once(&self.schema).chain(&self.policies) {
            let name = path.strip_prefix(dir).unwrap_or(path).to_string_lossy();
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hex::encode(&hasher.finalize()[..6])
    }
}

fn collect_cedar_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    collect_cedar_files_at(dir, out, 0)
}

fn collect_cedar_files_at(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), PolicyError> {
    if depth > 16 {
        return Err(PolicyError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other("folders nest deeper than 16 levels (a symlink loop?)"),
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        // Followed through symlinks (a folder swapped in by a link, as
        // configuration systems do, is read like any other).
        let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if is_dir {
            collect_cedar_files_at(&path, out, depth + 1)?;
        } else if path.extension().is_some_and(|e| e == "cedar") {
            out.push(path);
        }
    }
    Ok(())
}

/// A diagnostic from a Cedar error that points into `text`.
fn diagnostic(
    error: &dyn miette::Diagnostic,
    file: &Path,
    text: &str,
    severity: Severity,
    fallback_offset: usize,
) -> Diagnostic {
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(fallback_offset, |label| label.offset());
    let (line, column) = crate::config::line_col(text, offset);
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        severity,
        message: error.to_string(),
        help: error.help().map(|h| h.to_string()),
    }
}

impl PolicyStore {
    /// Loads and validates a policy folder.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        Self::from_sources(&Sources::read(dir)?)
    }

    pub fn from_sources(sources: &Sources) -> Result<Self, PolicyError> {
        let (schema_path, schema_text) = &sources.schema;
        let schema = match Schema::from_cedarschema_str(schema_text) {
            Ok((schema, _warnings)) => schema,
            Err(err) => {
                return Err(PolicyError::Invalid(vec![diagnostic(
                    &err,
                    schema_path,
                    schema_text,
                    Severity::Error,
                    0,
                )]));
            }
        };
        if let Some(problem) = model_problem(&schema) {
            return Err(PolicyError::Invalid(vec![Diagnostic {
                file: schema_path.clone(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: problem,
                help: Some("start from the schema in the repository's `policies/` folder; add attributes and types, do not rename or namespace the model's".into()),
            }]));
        }
        let shapes = SchemaFragment::from_cedarschema_str(schema_text)
            .ok()
            .and_then(|(fragment, _)| fragment.to_json_value().ok())
            .map(|json| context_shapes(&json))
            .unwrap_or_default();

        let mut errors = Vec::new();
        let mut policies: Vec<Policy> = Vec::new();
        let mut origins: HashMap<String, Origin> = HashMap::new();
        // Policy id → (file, text, offset of the policy in the file).
        let mut located: HashMap<String, (usize, usize)> = HashMap::new();
        for (file_index, (path, text)) in sources.policies.iter().enumerate() {
            let set = match PolicySet::from_str(text) {
                Ok(set) => set,
                Err(err) => {
                    for error in err.iter() {
                        errors.push(diagnostic(error, path, text, Severity::Error, 0));
                    }
                    continue;
                }
            };
            if set.templates().next().is_some() {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line: 1,
                    column: 1,
                    severity: Severity::Error,
                    message: "policy templates (`?principal`, `?resource`) are not supported; write static policies".into(),
                    help: None,
                });
                continue;
            }
            // `from_str` names policies policy0, policy1, … in source order.
            let mut parsed: Vec<&Policy> = set.policies().collect();
            parsed.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            let mut cursor = 0;
            for policy in parsed {
                let source = policy.to_string();
                let offset = text
                    .get(cursor..)
                    .and_then(|rest| rest.find(source.as_str()))
                    .map_or(cursor, |found| cursor + found);
                cursor = offset + source.len().min(text.len().saturating_sub(offset));
                let (line, column) = crate::config::line_col(text, offset);
                let id = match policy.annotation("id") {
                    Some(id) => id.to_owned(),
                    None => format!("{}:{line}", display_name(path)),
                };
                if let Some(first) = origins.get(&id) {
                    errors.push(Diagnostic {
                        file: path.clone(),
                        line,
                        column,
                        severity: Severity::Error,
                        message: format!(
                            "policy id `{id}` is used twice (first at {}:{})",
                            first.file.display(),
                            first.line
                        ),
                        help: Some("give every policy a unique `@id(\"…\")`".into()),
                    });
                    continue;
                }
                let effect = match policy.effect() {
                    cedar_policy::Effect::Permit => "permit",
                    cedar_policy::Effect::Forbid => "forbid",
                };
                origins.insert(
                    id.clone(),
                    Origin {
                        file: path.clone(),
                        line,
                        effect,
                    },
                );
                located.insert(id.clone(), (file_index, offset));
                policies.push(policy.new_id(PolicyId::new(&id)));
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
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

        let validation = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        let locate = |id: &PolicyId| {
            located
                .get(&id.to_string())
                .and_then(|(file, offset)| sources.policies.get(*file).map(|f| (f, *offset)))
        };
        let mut warnings = Vec::new();
        for error in validation.validation_errors() {
            if let Some(((path, text), offset)) = locate(error.policy_id()) {
                errors.push(diagnostic(error, path, text, Severity::Error, offset));
            }
        }
        for warning in validation.validation_warnings() {
            if let Some(((path, text), offset)) = locate(warning.policy_id()) {
                warnings.push(diagnostic(warning, path, text, Severity::Warning, offset));
            }
        }
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }

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
        Ok(Self {
            schema,
            all: Arc::new(all),
            origins,
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
    pub fn decide(&self, query: &Query<'_>) -> Decision {
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
        Decision {
            allowed,
            policies,
            errors,
            dropped_arguments: dropped,
            policy_set: self.id.clone(),
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
        let server = Entity::new(
            server_uid.clone(),
            HashMap::from([("name".to_owned(), string(server_name))]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
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
            Target::Server { .. } => None,
        };
        if let Some(attributes) = attributes {
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
        if reads.session && declared("session") {
            pairs.push((
                "session".to_owned(),
                RestrictedExpression::new_string(query.session.to_owned()),
            ));
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

fn client_entity(
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

/// A slice of the policies and the entities of one kind of request.
struct Prepared {
    policies: Arc<PolicySet>,
    entities: Arc<Entities>,
    /// The context attributes a policy of the slice may read.
    reads: Reads,
}

/// Which context attributes a policy may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reads {
    arguments: bool,
    transport: bool,
    session: bool,
    time: bool,
}

impl Reads {
    const ALL: Self = Self {
        arguments: true,
        transport: true,
        session: true,
        time: true,
    };
    const NONE: Self = Self {
        arguments: false,
        transport: false,
        session: false,
        time: false,
    };

    /// From a policy's source: an attribute is read if the policy names it
    /// as an identifier (`context.x`, `context has x`), and all are if it
    /// reaches the context any other way — as a whole value, or through a
    /// string (`context["x"]`, `context has "x"`), where escapes could spell
    /// a name the text does not show. Over-approximates, never under.
    fn of(source: &str) -> Self {
        let mut rest = source;
        while let Some(found) = rest.find("context") {
            let after = rest[found + "context".len()..].trim_start();
            let by_identifier = after.starts_with('.')
                || after
                    .strip_prefix("has")
                    .is_some_and(|name| !name.trim_start().starts_with('"'));
            if !by_identifier {
                return Self::ALL;
            }
            rest = &rest[found + "context".len()..];
        }
        Self {
            arguments: source.contains("arguments"),
            transport: source.contains("transport"),
            session: source.contains("session"),
            time: source.contains("time"),
        }
    }

    fn union(self, other: Self) -> Self {
        Self {
            arguments: self.arguments || other.arguments,
            transport: self.transport || other.transport,
            session: self.session || other.session,
            time: self.time || other.time,
        }
    }
}

/// Why a schema does not describe the entities the proxy builds, if it does
/// not. A schema that renamed `Server`, or put the model in a namespace,
/// would validate policies that can never match a request — and a forbid
/// that never matches fails open.
fn model_problem(schema: &Schema) -> Option<String> {
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
            Action::CallTool | Action::ListTools => &["Tool"],
            Action::GetPrompt | Action::ListPrompts => &["Prompt"],
            Action::ReadResource | Action::ListResources | Action::SubscribeResource => {
                &["Resource"]
            }
            Action::Complete => &["Prompt", "Resource"],
            Action::Sampling | Action::Elicitation | Action::Roots => &["Server"],
        };
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

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Indexes each policy under the actions its action scope includes, with
/// the entity its principal and resource scopes are tied to (if any).
fn index_by_action(
    policies: &[Policy],
    schema: &Schema,
    types: &Types,
) -> HashMap<Action, Vec<Indexed>> {
    let action_entities = schema.action_entities().ok();
    let covers = |scope: &EntityUid, action: &EntityUid| {
        scope == action
            || action_entities
                .as_ref()
                .is_some_and(|entities| entities.is_ancestor_of(scope, action))
    };
    let mut by_action: HashMap<Action, Vec<Indexed>> = HashMap::new();
    for policy in policies {
        let principal = match policy.principal_constraint() {
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
            PrincipalConstraint::In(uid)
            | PrincipalConstraint::Eq(uid)
            | PrincipalConstraint::IsIn(_, uid) => Some(uid),
        };
        let resource = match policy.resource_constraint() {
            ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
            ResourceConstraint::In(uid)
            | ResourceConstraint::Eq(uid)
            | ResourceConstraint::IsIn(_, uid) => Some(uid),
        };
        let constraint = policy.action_constraint();
        let reads = Reads::of(&policy.to_string());
        for (action, uid) in &types.actions {
            let applies = match &constraint {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(scope) => covers(scope, uid),
                ActionConstraint::In(scopes) => scopes.iter().any(|scope| covers(scope, uid)),
            };
            if applies {
                by_action.entry(*action).or_default().push(Indexed {
                    policy: policy.clone(),
                    principal: principal.clone(),
                    resource: resource.clone(),
                    reads,
                });
            }
        }
    }
    by_action
}

/// Reads, from the schema's JSON form, each action's context attributes and
/// the type of its `arguments`.
fn context_shapes(json: &Value) -> HashMap<Action, ContextShape> {
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
