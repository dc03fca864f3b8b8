//! Policy test fixtures (`policies/tests/*.toml`) and the requests that
//! `policy test` and `policy explain` decide.
//!
//! ```toml
//! [[case]]
//! name = "analysts may read the time"
//! client = "alice"
//! groups = ["analysts"]            # default: the client's groups in the config
//! action = "call_tool"
//! tool = "time__get_current_time"  # or prompt = …, resource = "<uri>", server = …
//! annotations = { read_only = true }
//! arguments = { timezone = "UTC" }
//! expect = "allow"                 # or "deny"
//! decided_by = ["analysts-read-only"]   # optional: the policies that decide
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::request::{Action, Query, Target, ToolAnnotations, labels_of};
use super::store::{Decision, PolicyStore};
use crate::config::{FlowConfig, Label, Labelled, Labels};
use crate::flow::Flow;

/// A fixture file that failed to load, or a case that cannot be decided.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct FixtureError {
    pub file: PathBuf,
    pub location: Option<(usize, usize)>,
    pub message: String,
}

/// One request to decide, as written in a fixture or on the command line
/// (or as a record keeps the decision it was: `detail.decided`).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub name: String,
    pub client: String,
    pub groups: Option<Vec<String>>,
    /// The client's entity attributes (default: its attributes in the config).
    pub attributes: Option<toml::Table>,
    pub action: String,
    pub tool: Option<String>,
    pub prompt: Option<String>,
    pub resource: Option<String>,
    pub server: Option<String>,
    #[serde(default)]
    pub annotations: AnnotationsSpec,
    pub arguments: Option<toml::Table>,
    pub transport: Option<String>,
    /// The MCP revision the client speaks; default the latest handshake one.
    pub protocol: Option<String>,
    pub session: Option<String>,
    /// The scopes of the client's access token (`context.scopes`); default
    /// none.
    pub scopes: Option<Vec<String>>,
    /// A call made by a code-mode script (`context.script`, its id);
    /// default: the client's own call.
    pub script: Option<String>,
    /// A client's answer to its server's question (`context.answer`: the
    /// question's method, `sampling/createMessage` or
    /// `elicitation/create`, or `tasks/update` for a task's answers),
    /// decided as the request it was asked during, its target a sink (as
    /// the proxy decides it: the answer goes to the server); default: the
    /// request itself.
    pub answer: Option<String>,
    /// The target's labels (`resource.labels`); default: the `[flow]`
    /// defaults (a tool's from its annotations; a prompt's or resource's
    /// `untrusted`).
    pub labels: Option<Vec<Label>>,
    /// What the client was given before (`context.flow`): for each label,
    /// the names that brought it; default: nothing yet.
    #[serde(default)]
    pub flow: FlowSpec,
    /// A decision's record kept the case with its lists cut (groups,
    /// scopes, the flow's names: at most [`KEPT`] each).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    /// `YYYY-MM-DDThh:mm:ssZ`; default: now.
    pub time: Option<String>,
    /// `allow`, `deny`, or `ask` (a refusal the person may override:
    /// every deciding policy a forbid with `@ask`).
    #[serde(default)]
    pub expect: Option<String>,
    pub decided_by: Option<Vec<String>>,
}

/// Tool annotations as a fixture states them; unstated ones take the MCP
/// spec's defaults.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AnnotationsSpec {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

/// A flow as a fixture states it: for each label, the tools, prompts or
/// resources whose answers brought it.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    #[serde(default)]
    pub untrusted: Vec<String>,
    #[serde(default)]
    pub private: Vec<String>,
}

impl FlowSpec {
    /// The flow these names brought (`None`: none).
    pub fn to_flow(&self) -> Option<Flow> {
        let untrusted = self
            .untrusted
            .iter()
            .map(|n| (Label::Untrusted, n.as_str()));
        let private = self.private.iter().map(|n| (Label::Private, n.as_str()));
        let flow = Flow::of_names(untrusted.chain(private));
        (!flow.is_empty()).then_some(flow)
    }
}

/// Items of each list a decision's record keeps of its case.
pub const KEPT: usize = 32;

/// A case made concrete: what the store decides on.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub client: String,
    pub groups: Vec<Arc<str>>,
    pub attributes: serde_json::Map<String, Value>,
    pub action: Action,
    pub target: Target,
    pub arguments: Option<serde_json::Map<String, Value>>,
    pub transport: String,
    pub protocol: String,
    pub session: String,
    pub scopes: Vec<Arc<str>>,
    pub time: SystemTime,
    pub script: Option<String>,
    pub answer: Option<String>,
    pub flow: Option<Flow>,
}

impl Prepared {
    pub fn query(&self) -> Query<'_> {
        Query {
            client: &self.client,
            groups: &self.groups,
            attributes: Some(&self.attributes),
            action: self.action,
            target: &self.target,
            arguments: self.arguments.as_ref(),
            transport: &self.transport,
            protocol: &self.protocol,
            session: &self.session,
            scopes: &self.scopes,
            time: self.time,
            script: self.script.as_deref(),
            answer: self.answer.as_deref(),
            flow: self.flow.as_ref(),
        }
    }
}

impl Case {
    /// The case `query` is, as its decision's record keeps it for `policy
    /// replay` to decide again (`expect`: the verdict it was given). The
    /// arguments and the client's attributes are not in it: a record keeps
    /// the arguments apart, as `[audit] arguments` says, and the config
    /// gives configured clients' attributes.
    pub fn of(query: &Query<'_>, verdict: &str) -> Self {
        let (tool, prompt, resource) = match query.target {
            Target::Tool { name, .. } => (Some(name.clone()), None, None),
            Target::Prompt { name, .. } => (None, Some(name.clone()), None),
            Target::Resource { uri, .. } => (None, None, Some(uri.clone())),
            Target::Server { .. } | Target::Catalogued { .. } => (None, None, None),
        };
        let annotations = match query.target {
            Target::Tool { annotations: a, .. } => AnnotationsSpec {
                read_only: Some(a.read_only),
                destructive: Some(a.destructive),
                idempotent: Some(a.idempotent),
                open_world: Some(a.open_world),
            },
            _ => AnnotationsSpec::default(),
        };
        // The newest of each list: a record stays small whatever the
        // client brings.
        let mut cut = false;
        let mut kept = |all: Vec<String>| {
            cut |= all.len() > KEPT;
            all.into_iter().rev().take(KEPT).rev().collect::<Vec<_>>()
        };
        let names = |label| -> Vec<String> {
            query
                .flow
                .map(|flow| flow.sources(label).map(|s| s.name.to_string()).collect())
                .unwrap_or_default()
        };
        let groups = kept(query.groups.iter().map(|g| g.to_string()).collect());
        let scopes = kept(query.scopes.iter().map(|s| s.to_string()).collect());
        let untrusted = kept(names(Label::Untrusted));
        let private = kept(names(Label::Private));
        let labels = query.target.labels();
        let labelled = tool.is_some() || prompt.is_some() || resource.is_some();
        Self {
            client: query.client.to_owned(),
            groups: Some(groups),
            action: query.action.name().to_owned(),
            tool,
            prompt,
            resource,
            server: Some(query.target.server().to_owned()),
            annotations,
            transport: Some(query.transport.to_owned()),
            protocol: Some(query.protocol.to_owned()),
            scopes: Some(scopes),
            script: query.script.map(str::to_owned),
            answer: query.answer.map(str::to_owned),
            // Stated even when none: none is not the defaults.
            labels: labelled.then(|| labels.iter().collect()),
            flow: FlowSpec { untrusted, private },
            cut,
            time: Some(crate::protocol::datetime_literal(query.time)),
            expect: Some(verdict.to_owned()),
            ..Self::default()
        }
    }

    /// As JSON, without what is not set.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        strip_empty(&mut value);
        value
    }

    /// The case's action; with an `answer` (the method of a question),
    /// `call_tool`.
    fn action(&self) -> Result<Action, String> {
        let action = Action::parse(&self.action).ok_or_else(|| {
            format!(
                "unknown action `{}`; one of: {}",
                self.action,
                Action::ALL.map(Action::name).join(", ")
            )
        })?;
        let Some(answer) = &self.answer else {
            return Ok(action);
        };
        let questions = [
            "sampling/createMessage",
            "elicitation/create",
            "tasks/update",
        ];
        let answered = [Action::CallTool, Action::GetPrompt, Action::ReadResource];
        if !questions.contains(&answer.as_str()) || !answered.contains(&action) {
            return Err(format!(
                "`answer` is the method of the question answered (`{}`, `{}`, or `{}` for a task's answers), on a `call_tool`, `get_prompt` or `read_resource` case",
                questions[0], questions[1], questions[2]
            ));
        }
        Ok(action)
    }

    /// Makes the case concrete. `known` gives a client's groups and
    /// attributes from the config (used when the case names none);
    /// `separator` splits `server<sep>tool` names; `flow` labels the
    /// target a case gives no `labels` (the config's `[flow]`, or the
    /// defaults).
    pub fn prepare(
        &self,
        known: &Known,
        (separator, flow): (&str, &FlowConfig),
    ) -> Result<Prepared, String> {
        let action = self.action()?;
        let server_of = |name: &str| -> Result<String, String> {
            match &self.server {
                Some(server) => Ok(server.clone()),
                None => name
                    .split_once(separator)
                    .map(|(server, _)| server.to_owned())
                    .ok_or_else(|| {
                        format!("`{name}` has no `{separator}`: set `server` to name its server")
                    }),
            }
        };
        let stated = self.labels.as_deref().map(Labels::of);
        let labelled = |server: &str, item, annotations| {
            stated.unwrap_or_else(|| labels_of(flow, server, item, annotations))
        };
        let target = match (&self.tool, &self.prompt, &self.resource) {
            (Some(tool), None, None) => {
                let d = ToolAnnotations::default();
                let a = self.annotations;
                let annotations = ToolAnnotations {
                    read_only: a.read_only.unwrap_or(d.read_only),
                    destructive: a.destructive.unwrap_or(d.destructive),
                    idempotent: a.idempotent.unwrap_or(d.idempotent),
                    open_world: a.open_world.unwrap_or(d.open_world),
                };
                let server = server_of(tool)?;
                Target::Tool {
                    labels: labelled(&server, Labelled::Tool(tool), Some(&annotations)),
                    name: tool.clone(),
                    server,
                    annotations,
                }
            }
            (None, Some(prompt), None) => {
                let server = server_of(prompt)?;
                Target::Prompt {
                    labels: labelled(&server, Labelled::Prompt(prompt), None),
                    name: prompt.clone(),
                    server,
                }
            }
            (None, None, Some(uri)) => {
                let server = self
                    .server
                    .clone()
                    .ok_or("a `resource` needs `server`: the server that lists it")?;
                Target::Resource {
                    labels: labelled(&server, Labelled::Resource(uri), None),
                    uri: uri.clone(),
                    server,
                }
            }
            (None, None, None) => Target::Server {
                name: self
                    .server
                    .clone()
                    .ok_or("name one of `tool`, `prompt`, `resource` or `server`")?,
            },
            _ => return Err("name only one of `tool`, `prompt` and `resource`".into()),
        };
        let configured = known.get(&self.client);
        let groups = match &self.groups {
            Some(groups) => groups.clone(),
            None => configured.map(|c| c.0.clone()).unwrap_or_default(),
        };
        let attributes = match &self.attributes {
            Some(table) => match serde_json::to_value(table) {
                Ok(Value::Object(map)) => map,
                _ => return Err("`attributes` must be a table".into()),
            },
            None => configured.map(|c| c.1.clone()).unwrap_or_default(),
        };
        let arguments = match &self.arguments {
            None => None,
            Some(table) => match serde_json::to_value(table) {
                Ok(Value::Object(map)) => Some(map),
                _ => return Err("`arguments` must be a table".into()),
            },
        };
        let time = match &self.time {
            None => SystemTime::now(),
            Some(text) => parse_datetime(text)
                .ok_or_else(|| format!("`time` must be `YYYY-MM-DDThh:mm:ssZ`, not `{text}`"))?,
        };
        let target = match self.answer {
            Some(_) => target.with_label(Label::Sink),
            None => target,
        };
        Ok(Prepared {
            client: self.client.clone(),
            groups: groups.iter().map(|g| Arc::from(g.as_str())).collect(),
            attributes,
            action,
            target,
            arguments,
            transport: self.transport.clone().unwrap_or_else(|| "stdio".into()),
            protocol: self
                .protocol
                .clone()
                .unwrap_or_else(|| crate::protocol::LATEST_VERSION.into()),
            session: self.session.clone().unwrap_or_else(|| "policy-test".into()),
            scopes: self
                .scopes
                .iter()
                .flatten()
                .map(|scope| Arc::from(scope.as_str()))
                .collect(),
            time,
            script: self.script.clone(),
            answer: self.answer.clone(),
            flow: self.flow.to_flow(),
        })
    }

    /// Why the decision does not meet the case's expectations, if it does not.
    pub fn mismatch(&self, decision: &Decision) -> Option<String> {
        let expected = self.expect.as_deref().unwrap_or_default();
        let actual = decision.verdict();
        if expected != actual {
            return Some(format!("expected {expected}, got {actual}"));
        }
        if let Some(decided_by) = &self.decided_by {
            let mut wanted = decided_by.clone();
            wanted.sort();
            if wanted != decision.policies {
                return Some(format!(
                    "expected decided by [{}], got [{}]",
                    wanted.join(", "),
                    decision.policies.join(", ")
                ));
            }
        }
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    #[serde(default, rename = "case")]
    cases: Vec<toml::Spanned<Case>>,
}

/// The cases of one fixture file, each with its line.
pub fn load_file(path: &Path) -> Result<Vec<(usize, Case)>, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|err| FixtureError {
        file: path.to_owned(),
        location: None,
        message: format!("cannot read: {err}"),
    })?;
    let file: FixtureFile = toml::from_str(&text).map_err(|err| FixtureError {
        file: path.to_owned(),
        location: err
            .span()
            .map(|span| crate::config::line_col(&text, span.start)),
        message: err.message().to_owned(),
    })?;
    let mut cases = Vec::new();
    for spanned in file.cases {
        let (line, _) = crate::config::line_col(&text, spanned.span().start);
        let case = spanned.into_inner();
        match case.expect.as_deref() {
            Some("allow" | "deny" | "ask") => {}
            other => {
                return Err(FixtureError {
                    file: path.to_owned(),
                    location: Some((line, 1)),
                    message: format!(
                        "`expect` must be \"allow\", \"deny\" or \"ask\", not {}",
                        other.map_or("missing".to_owned(), |o| format!("\"{o}\""))
                    ),
                });
            }
        }
        cases.push((line, case));
    }
    Ok(cases)
}

/// Every `*.toml` fixture file in a folder, sorted.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, FixtureError> {
    let entries = std::fs::read_dir(dir).map_err(|err| FixtureError {
        file: dir.to_owned(),
        location: None,
        message: format!("cannot read the fixture folder: {err}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The result of one case.
#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    pub decision: Option<Decision>,
    /// `None` when the case passed.
    pub failure: Option<String>,
}

/// Runs every case of every fixture file in `dir` against `store`.
pub fn run(
    store: &PolicyStore,
    dir: &Path,
    known: &Known,
    naming: (&str, &FlowConfig),
) -> Result<Vec<Outcome>, FixtureError> {
    let mut outcomes = Vec::new();
    for file in files(dir)? {
        for (line, case) in load_file(&file)? {
            let name = if case.name.is_empty() {
                format!("{} {}", case.client, case.action)
            } else {
                case.name.clone()
            };
            let outcome = match case.prepare(known, naming) {
                Err(message) => Outcome {
                    file: file.clone(),
                    line,
                    name,
                    decision: None,
                    failure: Some(message),
                },
                Ok(prepared) => {
                    let decision = store.decide(&prepared.query());
                    Outcome {
                        file: file.clone(),
                        line,
                        name,
                        failure: case.mismatch(&decision),
                        decision: Some(decision),
                    }
                }
            };
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

pub use crate::protocol::parse_datetime;

/// The configured clients' groups and attributes, by name.
pub type Known = BTreeMap<String, (Vec<String>, serde_json::Map<String, Value>)>;

/// The clients of a config, for [`Case::prepare`].
pub fn known(clients: &[crate::config::ClientConfig]) -> Known {
    clients
        .iter()
        .map(|c| (c.name.clone(), (c.groups.clone(), c.attributes.clone())))
        .collect()
}

/// `value` without its nulls and empty objects, at any depth (an empty
/// list is kept: no groups is not the config's groups).
fn strip_empty(value: &mut Value) {
    if let Value::Object(map) = value {
        for item in map.values_mut() {
            strip_empty(item);
        }
        map.retain(|_, item| match item {
            Value::Null => false,
            Value::Object(fields) => !fields.is_empty(),
            _ => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interceptors::authz::request::datetime_literal;

    #[test]
    fn datetimes_round_trip() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T12:34:56Z",
            "2026-11-23T07:00:00Z",
            "2099-12-31T23:59:59Z",
        ] {
            let parsed = parse_datetime(text);
            assert_eq!(parsed.map(datetime_literal).as_deref(), Some(text));
        }
        assert_eq!(parse_datetime("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_datetime("2026-01-01 00:00:00"), None);
    }
}
