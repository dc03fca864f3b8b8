//! `[flow]`: the labels of tools, prompts and resources, which policies
//! follow across the calls of a session (`resource.labels`,
//! `context.flow`). Where no rule names an item, its labels come from what
//! the server says of it (a tool's annotations), never weaker than the
//! MCP spec's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::names::shown;
use super::values::{DurationText, parse_duration};
use super::{ConfigError, ServerConfig, UpstreamSpec, Validator};

/// Where data comes from, or where it goes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// What it answers may be an outsider's words (a web page, an issue
    /// comment, a mail): instructions an agent should not follow.
    Untrusted,
    /// What it answers is the user's or the organisation's own (a
    /// repository, a database, a mailbox).
    Private,
    /// What it is sent may leave for the outside (a post, a mail, a push,
    /// a URL fetched).
    Sink,
}

impl Label {
    pub const ALL: [Self; 3] = [Self::Untrusted, Self::Private, Self::Sink];

    /// The label as policies and records write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Private => "private",
            Self::Sink => "sink",
        }
    }

    /// The label a policy writes as `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|label| label.name() == name)
    }

    fn bit(self) -> u8 {
        match self {
            Self::Untrusted => 1,
            Self::Private => 2,
            Self::Sink => 4,
        }
    }
}

/// A set of labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Labels(u8);

impl Labels {
    pub const NONE: Self = Self(0);

    pub fn of(labels: &[Label]) -> Self {
        labels
            .iter()
            .fold(Self::NONE, |set, &label| set.with(label))
    }

    #[must_use]
    pub fn with(self, label: Label) -> Self {
        Self(self.0 | label.bit())
    }

    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn has(self, label: Label) -> bool {
        self.0 & label.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Label> {
        Label::ALL.into_iter().filter(move |&label| self.has(label))
    }

    /// The labels' names, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Label::name).collect()
    }
}

/// What kind of item a label is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labelled<'a> {
    /// A tool, by its namespaced name (`server__tool`).
    Tool(&'a str),
    /// A prompt, by its namespaced name.
    Prompt(&'a str),
    /// A resource, by its URI.
    Resource(&'a str),
    /// A server's `sampling/createMessage`: what it asks the client's
    /// model.
    Sampling,
}

/// One `[[flow.rule]]`: the items it names, and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRule {
    pub servers: Vec<String>,
    pub tools: Vec<String>,
    pub prompts: Vec<String>,
    pub resources: Vec<String>,
    pub labels: Labels,
}

/// A client without a session (2026-07-28) keeps what its data carried
/// for this long, unless `window` says: as long as a session lasts at most
/// (`[proxy] session_max_age`'s default).
const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The longest `window`.
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[flow]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowConfig {
    pub rules: Vec<LabelRule>,
    /// Labels from the servers' own words where no rule names an item.
    pub defaults: bool,
    /// How long a label stays with a client that has no session.
    pub window: Duration,
    /// What the descriptions of servers from a catalog (or `file://`) say
    /// of their items, by server: added to the defaults.
    pub described: BTreeMap<String, DescribedLabels>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            defaults: true,
            window: DEFAULT_WINDOW,
            described: BTreeMap::new(),
        }
    }
}

/// The most tools (or prompts) a description may label one by one.
const MAX_DESCRIBED_ITEMS: usize = 1024;

/// The labels a server's description (a catalog entry, a `file://`
/// server) gives its items, under its `flow` key:
///
/// ```yaml
/// flow:
///   labels: [untrusted]          # every item of the server, its sampling
///   tools:                       # by the server's own names: these instead
///     send_mail: [sink]
///   prompts:
///     summarise: []
/// ```
///
/// They are a publisher's words, as annotations are: they add to the
/// defaults and never take a label away; the operator's rules outrank them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribedLabels {
    pub server: Labels,
    /// By namespaced name once `FlowConfig::describe` has taken them (by
    /// the server's own name before).
    pub tools: BTreeMap<String, Labels>,
    pub prompts: BTreeMap<String, Labels>,
}

impl DescribedLabels {
    /// A description's `flow` value; the error says what is wrong where.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::Object(fields) = value else {
            return Err("`flow` must be a map of `labels`, `tools` and `prompts`".into());
        };
        let mut described = Self::default();
        for (key, value) in fields {
            match key.as_str() {
                "labels" => described.server = labels_at("flow.labels", value)?,
                "tools" => described.tools = items_at("flow.tools", value)?,
                "prompts" => described.prompts = items_at("flow.prompts", value)?,
                other => {
                    return Err(format!(
                        "`flow.{}` is not known: `labels`, `tools` and `prompts` are",
                        shown(other)
                    ));
                }
            }
        }
        Ok(described)
    }

    /// The labels of `item`: its own, if the description names it; else
    /// the server's.
    fn of(&self, item: Labelled<'_>) -> Labels {
        let named = match item {
            Labelled::Tool(name) => self.tools.get(name),
            Labelled::Prompt(name) => self.prompts.get(name),
            Labelled::Resource(_) | Labelled::Sampling => None,
        };
        named.copied().unwrap_or(self.server)
    }
}

/// A list of labels at `at`.
fn labels_at(at: &str, value: &Value) -> Result<Labels, String> {
    let Value::Array(items) = value else {
        return Err(format!("`{at}` must be a list of labels"));
    };
    let mut labels = Labels::NONE;
    for item in items {
        let label = item.as_str().and_then(Label::parse).ok_or_else(|| {
            let written = item.as_str().map_or_else(|| item.to_string(), shown);
            format!(
                "`{at}`: `{}` is not a label (`untrusted`, `private`, `sink`)",
                shown(&written)
            )
        })?;
        labels = labels.with(label);
    }
    Ok(labels)
}

/// A map of item names to their labels at `at`.
fn items_at(at: &str, value: &Value) -> Result<BTreeMap<String, Labels>, String> {
    let Value::Object(items) = value else {
        return Err(format!("`{at}` must map names to lists of labels"));
    };
    if items.len() > MAX_DESCRIBED_ITEMS {
        return Err(format!(
            "`{at}` names more than {MAX_DESCRIBED_ITEMS} items"
        ));
    }
    items
        .iter()
        .map(|(name, labels)| {
            if name.is_empty() || name.len() > 256 {
                return Err(format!("`{at}`: a name must be 1 to 256 bytes"));
            }
            Ok((
                name.clone(),
                labels_at(&format!("{at}.{}", shown(name)), labels)?,
            ))
        })
        .collect()
}

impl FlowConfig {
    /// The labels of an item of `server`: the rules that name the item
    /// itself (by tool, prompt or resource), together; else those that name
    /// its server; else `defaults` (what its server says of it), if
    /// `[flow] defaults` is on.
    pub fn labels(&self, server: &str, item: Labelled<'_>, defaults: Labels) -> Labels {
        let named = |patterns: &[String], name: &str| matches_any(patterns, name);
        let by_item = |rule: &LabelRule| match item {
            Labelled::Tool(name) => named(&rule.tools, name),
            Labelled::Prompt(name) => named(&rule.prompts, name),
            Labelled::Resource(uri) => named(&rule.resources, uri),
            Labelled::Sampling => false,
        };
        let mut found = None::<Labels>;
        for rule in self.rules.iter().filter(|rule| by_item(rule)) {
            found = Some(found.unwrap_or_default().union(rule.labels));
        }
        if found.is_none() {
            for rule in self.rules.iter().filter(|rule| {
                rule.servers.iter().any(|name| name == server)
                    && rule.tools.is_empty()
                    && rule.prompts.is_empty()
                    && rule.resources.is_empty()
            }) {
                found = Some(found.unwrap_or_default().union(rule.labels));
            }
        }
        match found {
            Some(labels) => labels,
            None if self.defaults => match self.described.get(server) {
                Some(described) => defaults.union(described.of(item)),
                None => defaults,
            },
            None => Labels::NONE,
        }
    }

    /// Takes what the descriptions of `servers` say of their items (see
    /// `DescribedLabels`), their names namespaced with `separator`.
    pub(super) fn describe<'a>(
        &mut self,
        servers: impl IntoIterator<Item = &'a ServerConfig>,
        separator: &str,
    ) {
        for server in servers {
            let UpstreamSpec::Container(spec) = &server.kind else {
                continue;
            };
            let Some(described) = &spec.described_labels else {
                continue;
            };
            let namespaced = |items: &BTreeMap<String, Labels>| {
                items
                    .iter()
                    .map(|(name, labels)| (format!("{}{separator}{name}", server.name), *labels))
                    .collect()
            };
            let described = DescribedLabels {
                server: described.server,
                tools: namespaced(&described.tools),
                prompts: namespaced(&described.prompts),
            };
            self.described.insert(server.name.clone(), described);
        }
    }
}

/// Whether `name` is one of `patterns` (exact, or a prefix ending in `*`).
fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => pattern == name,
        })
}

/// `[flow]` as written.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlow {
    /// Where no rule names a tool, prompt or resource, label it from what
    /// its server says of it: a tool whose world is open (`openWorldHint`,
    /// true unless the server says otherwise) is `untrusted` and a `sink`,
    /// one whose world is closed is `private`; a prompt, a resource and a
    /// server's sampling request are `untrusted`. Off: only the rules
    /// label.
    #[schemars(extend("x-default" = "`true`"))]
    defaults: Option<bool>,
    /// A client without a session (2026-07-28) keeps the labels of the
    /// data it was given for this long (at most 30d): its flow is its own,
    /// across all its requests, over this window.
    #[schemars(with = "Option<DurationText>", extend("default" = "24h"))]
    window: Option<String>,
    /// Labels given by the operator. A rule that names an item itself
    /// (`tools`, `prompts`, `resources`) outranks one that names its server
    /// alone, and either replaces the defaults; the rules that name an item
    /// at the same rank add up.
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// One `[[flow.rule]]`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Servers, by name: every tool, prompt and resource of each (unless a
    /// rule names the item itself), and its sampling requests.
    #[serde(default)]
    #[schemars(extend("x-default" = "`[]`"))]
    servers: Vec<String>,
    /// Tools, by namespaced name (`git__git_log`), or a prefix ending in
    /// `*` (`git__*`).
    #[serde(default)]
    tools: Vec<String>,
    /// Prompts, by namespaced name or a prefix ending in `*`.
    #[serde(default)]
    prompts: Vec<String>,
    /// Resources, by URI or a prefix ending in `*` (`file:///home/*`).
    #[serde(default)]
    resources: Vec<String>,
    /// The labels: `untrusted`, `private`, `sink`; `[]` labels the items
    /// clean.
    labels: Vec<Label>,
}

impl RawFlow {
    pub(super) fn validate(self, validator: &Validator<'_>) -> Result<FlowConfig, ConfigError> {
        let error =
            |key: &str, message: String| validator.error(None, &format!("flow.{key}"), message);
        let window = match &self.window {
            None => DEFAULT_WINDOW,
            Some(text) => parse_duration(text).map_err(|m| error("window", m))?,
        };
        if window > MAX_WINDOW {
            return Err(error("window", "must be at most 30d".into()));
        }
        let mut rules = Vec::with_capacity(self.rule.len());
        for (n, raw) in self.rule.into_iter().enumerate() {
            let at = |key: &str| format!("rule[{n}].{key}");
            if raw.servers.is_empty()
                && raw.tools.is_empty()
                && raw.prompts.is_empty()
                && raw.resources.is_empty()
            {
                return Err(error(
                    &at("labels"),
                    "names nothing: give it `servers`, `tools`, `prompts` or `resources`".into(),
                ));
            }
            for (key, patterns) in [
                ("tools", &raw.tools),
                ("prompts", &raw.prompts),
                ("resources", &raw.resources),
            ] {
                if let Some(bad) = patterns.iter().find(|p| !valid_pattern(p)) {
                    return Err(error(
                        &at(key),
                        format!("`{bad}` is not a name, nor a prefix ending in `*`"),
                    ));
                }
            }
            if let Some(bad) = raw.servers.iter().find(|s| s.is_empty() || s.contains('*')) {
                return Err(error(
                    &at("servers"),
                    format!("`{bad}` is not a server's name (servers are named exactly)"),
                ));
            }
            rules.push(LabelRule {
                servers: raw.servers,
                tools: raw.tools,
                prompts: raw.prompts,
                resources: raw.resources,
                labels: Labels::of(&raw.labels),
            });
        }
        Ok(FlowConfig {
            rules,
            defaults: self.defaults.unwrap_or(true),
            window,
            described: BTreeMap::new(),
        })
    }
}

/// A name, or a prefix ending in `*` (no other `*`).
fn valid_pattern(pattern: &str) -> bool {
    let stem = pattern.strip_suffix('*').unwrap_or(pattern);
    !pattern.is_empty() && !stem.contains('*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(servers: &[&str], tools: &[&str], labels: &[Label]) -> LabelRule {
        LabelRule {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            tools: tools.iter().map(|s| (*s).to_owned()).collect(),
            prompts: Vec::new(),
            resources: Vec::new(),
            labels: Labels::of(labels),
        }
    }

    #[test]
    fn an_item_rule_outranks_its_servers_and_both_replace_the_defaults() {
        let config = FlowConfig {
            rules: vec![
                rule(&["git"], &[], &[Label::Private]),
                rule(&[], &["git__push*"], &[Label::Sink]),
                rule(&[], &["git__push_tags"], &[Label::Private]),
                rule(&[], &["time__*"], &[]),
            ],
            ..FlowConfig::default()
        };
        let defaults = Labels::of(&[Label::Untrusted, Label::Sink]);
        let of = |server, name| config.labels(server, Labelled::Tool(name), defaults);
        assert_eq!(of("git", "git__log"), Labels::of(&[Label::Private]));
        assert_eq!(of("git", "git__push"), Labels::of(&[Label::Sink]));
        assert_eq!(
            of("git", "git__push_tags"),
            Labels::of(&[Label::Sink, Label::Private])
        );
        assert_eq!(of("time", "time__now"), Labels::NONE);
        assert_eq!(of("web", "web__fetch"), defaults);
        assert_eq!(
            config.labels("git", Labelled::Sampling, defaults),
            Labels::of(&[Label::Private])
        );
        let off = FlowConfig {
            defaults: false,
            ..config
        };
        assert_eq!(
            off.labels("web", Labelled::Tool("web__fetch"), defaults),
            Labels::NONE
        );
    }

    #[test]
    fn labels_read_in_a_fixed_order() {
        let labels = Labels::NONE.with(Label::Sink).with(Label::Untrusted);
        assert_eq!(labels.names(), ["untrusted", "sink"]);
        assert!(!labels.has(Label::Private));
        assert!(Labels::NONE.is_empty());
    }
}
