//! Loading a policy folder: the schema checked to declare the model, each
//! file's policies parsed and named by their `@id`, and the set validated
//! strictly, every problem placed at its file, line and column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::diagnostic::{Diagnostic, PolicyError, Severity, diagnostic};
use super::model::model_problem;
use super::sources::Sources;

/// The longest `@ask` text (it is shown to a person).
const MAX_ASK: usize = 1024;

/// Where a policy came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub effect: &'static str,
}

pub(super) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The folder's schema, parsed, and checked to declare the model the proxy
/// builds its requests in.
pub(super) fn schema_of(schema_path: &Path, schema_text: &str) -> Result<Schema, PolicyError> {
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
            file: schema_path.to_owned(),
            line: 1,
            column: 1,
            severity: Severity::Error,
            message: problem,
            help: Some("start from the schema in the repository's `policies/` folder; add attributes and types, do not rename or namespace the model's".into()),
        }]));
    }
    Ok(schema)
}

/// The policies of a folder's files, each under its id.
pub(super) struct Parsed {
    pub(super) policies: Vec<Policy>,
    pub(super) origins: HashMap<String, Origin>,
    /// Policy id → (its file's index in the sources, offset of the policy
    /// in the file).
    pub(super) located: HashMap<String, (usize, usize)>,
    /// Policy id → its `@ask` text: a forbid whose refusal the person
    /// behind the agent may override.
    pub(super) asks: HashMap<String, String>,
}

/// Every policy of the folder's files, named by its `@id` (or its file and
/// line), with where it came from; or every problem found in them.
pub(super) fn parse_policies(sources: &Sources) -> Result<Parsed, PolicyError> {
    let mut errors = Vec::new();
    let mut policies: Vec<Policy> = Vec::new();
    let mut origins: HashMap<String, Origin> = HashMap::new();
    // Policy id → (file, text, offset of the policy in the file).
    let mut located: HashMap<String, (usize, usize)> = HashMap::new();
    let mut asks = HashMap::new();
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
            if let Some(ask) = policy.annotation("ask") {
                match (effect, ask.trim()) {
                    ("forbid", text) if !text.is_empty() && text.len() <= MAX_ASK => {
                        asks.insert(id.clone(), text.to_owned());
                    }
                    (effect, text) => errors.push(Diagnostic {
                        file: path.clone(),
                        line,
                        column,
                        severity: Severity::Error,
                        message: if effect == "forbid" {
                            format!("`@ask` must say, in 1 to {MAX_ASK} bytes, why the person is asked ({} given)", text.len())
                        } else {
                            "`@ask` marks a refusal the person may override: only a `forbid` may carry it".into()
                        },
                        help: Some("`@ask(\"why this is stopped\")` on a forbid".into()),
                    }),
                }
            }
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
    Ok(Parsed {
        policies,
        origins,
        located,
        asks,
    })
}

/// Validates a set strictly against the schema, each error and warning
/// placed in its policy's file: the warnings, or every error.
pub(super) fn validate(
    schema: &Schema,
    all: &PolicySet,
    sources: &Sources,
    located: &HashMap<String, (usize, usize)>,
) -> Result<Vec<Diagnostic>, PolicyError> {
    let validation = Validator::new(schema.clone()).validate(all, ValidationMode::Strict);
    let locate = |id: &PolicyId| {
        located
            .get(&id.to_string())
            .and_then(|(file, offset)| sources.policies.get(*file).map(|f| (f, *offset)))
    };
    let mut errors = Vec::new();
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
    Ok(warnings)
}
