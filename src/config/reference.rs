//! The configuration reference (`docs/configuration-reference.md`), generated from the
//! config's types as written: the JSON Schema that `schemars` derives from
//! the `Raw*` types, read back into one section per table and one row per
//! key, with its type, its default and its doc comment.
//!
//! A field's default is its schema's `default` (a TOML value, which a test
//! writes into a config to check that it changes nothing) or, where it
//! depends on other keys, `x-default`: words, set with
//! `#[schemars(extend("x-default" = "…"))]`.

use std::collections::BTreeMap;

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use super::RawConfig;
use super::values::FORMS;

/// The reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(INTRO);
    out.push_str("\n## Value forms\n\nSome strings have a form of their own:\n\n| form | written as |\n|---|---|\n");
    for (form, written) in FORMS {
        out.push_str(&format!("| {form} | {} |\n", cell(written)));
    }
    for table in tables() {
        out.push_str(&format!("\n## `{}`\n\n", table.header));
        if !table.intro.is_empty() {
            out.push_str(&format!("{}\n\n", table.intro));
        }
        out.push_str("| key | type | default | what it does |\n|---|---|---|---|\n");
        for key in &table.keys {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                key.name,
                cell(&key.kind),
                cell(&key.default.to_string()),
                cell(&key.description)
            ));
        }
    }
    out
}

const INTRO: &str = "# Configuration reference

<!-- Generated from the config's types (src/config) by `config::reference`: do not edit.
     `PORTCULLIS_BLESS=1 cargo test --lib config::reference` writes it again. -->

Portcullis reads one TOML file, `portcullis.toml` (`--config FILE`). Every table and
key below is optional unless its default says *required*. Unknown keys are refused;
every error names the file, the line and column, and the key's path, e.g.
``portcullis.toml:12:1: `servers[0].process`: unknown field `comand` ``. Relative paths
are relative to the config file's folder. Secrets are never written in the config:
it holds references to them (`file:PATH`, `env:VAR` or `dotenv:PATH#KEY`).
";

/// One table of the config: `[proxy]`, `[[servers]]`, `[servers.container]`.
pub(super) struct Table {
    /// As TOML writes its header: `[[servers]]`, `[redact.rules.<id>]`.
    pub(super) header: String,
    /// The doc comment of the key that holds it.
    intro: String,
    pub(super) keys: Vec<Key>,
}

pub(super) struct Key {
    pub(super) name: String,
    /// `duration`, `integer`, `` `lazy` \| `eager` ``, `table`, …
    kind: String,
    pub(super) default: Default,
    description: String,
}

/// A key's default, as the reference gives it.
pub(super) enum Default {
    /// The value it has when left out (checked by a test).
    Value(Value),
    /// What it is when left out, in words (it depends on other keys).
    Words(String),
    Required,
    /// Left out, it is not set.
    Unset,
}

impl std::fmt::Display for Default {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(value) => write!(f, "`{}`", toml_literal(value)),
            Self::Words(words) => f.write_str(words),
            Self::Required => f.write_str("*required*"),
            Self::Unset => f.write_str("—"),
        }
    }
}

/// Every table of the config, each followed by the tables below it.
pub(super) fn tables() -> Vec<Table> {
    let root = SchemaGenerator::new(SchemaSettings::draft2020_12())
        .into_root_schema_for::<RawConfig>()
        .to_value();
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut schemas = Schemas {
        defs,
        explained: BTreeMap::new(),
    };
    let mut tables = Vec::new();
    for (name, property) in properties(&root) {
        let property = schemas.resolve(property);
        let (table, array) = match schemas.table_of(&property) {
            Some(table) => (table, false),
            None => match property.get("items").map(|items| schemas.resolve(items)) {
                Some(items) if schemas.table_of(&items).is_some() => (items, true),
                _ => continue,
            },
        };
        let header = if array {
            format!("[[{name}]]")
        } else {
            format!("[{name}]")
        };
        schemas.walk(&mut tables, header, name.clone(), &property, &table);
    }
    tables
}

/// The schema's definitions, to resolve `$ref`s against.
struct Schemas {
    defs: Map<String, Value>,
    /// Choices of words already explained (their words joined), and the key
    /// that explains them: a later key of the same choice points there.
    explained: BTreeMap<String, String>,
}

impl Schemas {
    /// A property's schema with its `$ref` resolved and `null` taken out
    /// (an `Option` is a key that may be left out); its own keys
    /// (description, defaults) win over the definition's.
    fn resolve(&self, schema: &Value) -> Value {
        let mut own = schema.as_object().cloned().unwrap_or_default();
        if let Some(Value::Array(alternatives)) = own.remove("anyOf") {
            let mut kept = alternatives
                .into_iter()
                .filter(|alternative| alternative.get("type") != Some(&Value::from("null")));
            if let Some(Value::Object(only)) = kept.next() {
                for (key, value) in only {
                    own.entry(key).or_insert(value);
                }
            }
        }
        if let Some(Value::Array(types)) = own.get("type") {
            let kept: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
            if let [only] = kept[..] {
                let only = only.clone();
                own.insert("type".into(), only);
            }
        }
        let target = own
            .remove("$ref")
            .and_then(|target| target.as_str().map(str::to_owned));
        if let Some(def) = target
            .and_then(|target| target.strip_prefix("#/$defs/").map(str::to_owned))
            .and_then(|name| self.defs.get(&name))
        {
            let mut merged = self.resolve(def).as_object().cloned().unwrap_or_default();
            merged.extend(own);
            return Value::Object(merged);
        }
        Value::Object(own)
    }

    /// The schema itself when it is a table with keys of its own.
    fn table_of(&self, schema: &Value) -> Option<Value> {
        schema.get("properties").is_some().then(|| schema.clone())
    }

    /// Adds `table` (held by `holder`) and the tables below it.
    fn walk(
        &mut self,
        tables: &mut Vec<Table>,
        header: String,
        path: String,
        holder: &Value,
        table: &Value,
    ) {
        let required: Vec<&str> = table
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut keys = Vec::new();
        let mut below = Vec::new();
        for (name, property) in properties(table) {
            let property = self.resolve(property);
            let child = format!("{path}.{name}");
            let (kind, nested) = self.kind(&property, &child);
            if let Some((header, nested)) = nested {
                below.push((header, child, property.clone(), nested));
            }
            let default = if let Some(words) = property.get("x-default").and_then(Value::as_str) {
                Default::Words(words.to_owned())
            } else if let Some(value) = property.get("default") {
                Default::Value(value.clone())
            } else if required.contains(&name.as_str()) {
                Default::Required
            } else {
                Default::Unset
            };
            let description = self.description(&property, &format!("`{header}` `{name}`"));
            keys.push(Key {
                name: name.clone(),
                kind,
                default,
                description,
            });
        }
        tables.push(Table {
            header,
            intro: text(holder.get("description")),
            keys,
        });
        for (header, path, holder, nested) in below {
            self.walk(tables, header, path, &holder, &nested);
        }
    }

    /// A key's type in words, and the table it holds (its header and
    /// schema), if it holds one.
    fn kind(&self, property: &Value, path: &str) -> (String, Option<(String, Value)>) {
        if let Some(table) = self.table_of(property) {
            return (
                format!("table: `[{path}]`"),
                Some((format!("[{path}]"), table)),
            );
        }
        if let Some(items) = property.get("items") {
            let items = self.resolve(items);
            if let Some(table) = self.table_of(&items) {
                let header = format!("[[{path}]]");
                return (
                    format!("array of tables: `{header}`"),
                    Some((header, table)),
                );
            }
            return (
                format!("array of {}", plural(&self.kind(&items, path).0)),
                None,
            );
        }
        match property.get("additionalProperties") {
            Some(Value::Bool(true)) => return ("table of any values".into(), None),
            Some(values @ Value::Object(_)) => {
                let values = self.resolve(values);
                if let Some(table) = self.table_of(&values) {
                    let header = format!("[{path}.<name>]");
                    return (format!("tables: `{header}`"), Some((header, table)));
                }
                return (
                    format!("table of {}", plural(&self.kind(&values, path).0)),
                    None,
                );
            }
            _ => {}
        }
        if let Some(words) = choices(property) {
            return (
                words
                    .iter()
                    .map(|(word, _)| format!("`{word}`"))
                    .collect::<Vec<_>>()
                    .join(" | "),
                None,
            );
        }
        let kind = match (
            property.get("type").and_then(Value::as_str),
            property.get("format").and_then(Value::as_str),
        ) {
            (Some("string"), Some(form)) if FORMS.iter().any(|(known, _)| *known == form) => {
                format!("[{form}](#value-forms)")
            }
            (Some("string"), _) => "string".into(),
            (Some("integer"), _) => "integer".into(),
            (Some("number"), _) => "number".into(),
            (Some("boolean"), _) => "boolean".into(),
            _ => "any value".into(),
        };
        (kind, None)
    }

    /// A key's doc comment, and what each of its words means when it is a
    /// choice of words (or a list of them) not explained before; `key`
    /// names it for the keys after it.
    fn description(&mut self, property: &Value, key: &str) -> String {
        let mut description = text(property.get("description"));
        let choices = choices(property)
            .or_else(|| {
                property
                    .get("items")
                    .and_then(|items| choices(&self.resolve(items)))
            })
            .unwrap_or_default();
        if choices.is_empty() {
            return description;
        }
        if !description.ends_with('.') {
            description.push('.');
        }
        let words: Vec<&str> = choices.iter().map(|(word, _)| word.as_str()).collect();
        if let Some(first) = self.explained.get(&words.join(" ")) {
            description.push_str(&format!(" The words: as for {first}."));
            return description;
        }
        self.explained.insert(words.join(" "), key.to_owned());
        for (word, meaning) in &choices {
            description.push_str(&format!(" `{word}`: {meaning}"));
        }
        description
    }
}

/// A table's keys in the order the type declares them.
fn properties(table: &Value) -> Vec<(String, &Value)> {
    table
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, schema)| (name.clone(), schema))
                .collect()
        })
        .unwrap_or_default()
}

/// The words of a choice (a serde enum of unit variants), each with its
/// doc comment.
fn choices(schema: &Value) -> Option<Vec<(String, String)>> {
    if let Some(words) = schema.get("enum").and_then(Value::as_array) {
        return Some(
            words
                .iter()
                .filter_map(Value::as_str)
                .map(|word| (word.to_owned(), String::new()))
                .collect(),
        );
    }
    let variants = schema.get("oneOf").and_then(Value::as_array)?;
    variants
        .iter()
        .map(|variant| {
            let word = variant.get("const").and_then(Value::as_str)?;
            Some((word.to_owned(), text(variant.get("description"))))
        })
        .collect()
}

/// A doc comment on one line.
fn text(description: Option<&Value>) -> String {
    description
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `string` → `strings`, for `array of …` and `table of …`.
fn plural(kind: &str) -> String {
    match kind {
        "string" | "integer" | "number" | "boolean" => format!("{kind}s"),
        "any value" => "any values".into(),
        other => other.to_owned(),
    }
}

/// Text for a Markdown table's cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A default as TOML writes it.
pub(super) fn toml_literal(value: &Value) -> String {
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(toml_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(members) => format!(
            "{{{}}}",
            members
                .iter()
                .map(|(key, value)| format!("{key} = {}", toml_literal(value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Null => String::new(),
        // JSON writes strings, numbers and booleans as TOML does.
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn the_reference_in_docs_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration-reference.md");
        let generated = markdown();
        if std::env::var_os("PORTCULLIS_BLESS").is_some() {
            if let Err(err) = std::fs::write(&path, &generated) {
                panic!("cannot write {}: {err}", path.display());
            }
            return;
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == generated,
            "docs/configuration-reference.md is not what the config's types say: write it again with `PORTCULLIS_BLESS=1 cargo test --lib config::reference` (and commit it)"
        );
    }

    #[test]
    fn every_table_key_and_word_has_a_description() {
        let root = SchemaGenerator::new(SchemaSettings::draft2020_12())
            .into_root_schema_for::<RawConfig>()
            .to_value();
        let mut missing = Vec::new();
        let mut schemas = vec![("RawConfig".to_owned(), &root)];
        if let Some(defs) = root.get("$defs").and_then(Value::as_object) {
            schemas.extend(defs.iter().map(|(name, schema)| (name.clone(), schema)));
        }
        for (name, schema) in schemas {
            if text(schema.get("description")).is_empty() {
                missing.push(name.clone());
            }
            for (key, property) in properties(schema) {
                if text(property.get("description")).is_empty() {
                    missing.push(format!("{name}.{key}"));
                }
            }
            let variants = schema.get("oneOf").and_then(Value::as_array);
            for variant in variants.into_iter().flatten() {
                if text(variant.get("description")).is_empty() {
                    missing.push(format!(
                        "{name}: {}",
                        variant.get("const").unwrap_or(variant)
                    ));
                }
            }
            if schema.get("enum").is_some() {
                missing.push(format!("{name}: its words"));
            }
        }
        assert!(
            missing.is_empty(),
            "write a doc comment (it is the configuration reference) on: {}",
            missing.join(", ")
        );
    }

    /// A config in which a table's keys can be set: the table's header
    /// with what it requires, and what it requires around it.
    fn context(path: &str) -> Option<String> {
        let server = "[[servers]]\nname = \"a\"\n";
        let container = format!("{server}container = {{ image = \"i\" }}\n");
        let plugin = "[[chain]]\nkind = \"wasm\"\npath = \"p.wasm\"\n";
        let listen = "[proxy]\nlisten = \"127.0.0.1:8811\"\n";
        let provider = "[[oauth.providers]]\nname = \"p\"\nissuer = \"https://idp.example\"\n";
        let oauth = format!("{listen}[oauth]\nresource = \"https://p.example/mcp\"\n");
        let oauth_provider = format!("{listen}{provider}");
        Some(match path {
            "proxy"
            | "listener"
            | "limits"
            | "audit"
            | "redact"
            | "ratelimit"
            | "schema"
            | "pinning"
            | "observability"
            | "observability.traces" => format!("[{path}]\n"),
            "clients" => "[[clients]]\nname = \"c\"\n".into(),
            "servers" => format!("{server}process = {{ command = \"x\" }}\n"),
            "servers.process" => format!("{server}[servers.process]\ncommand = \"x\"\n"),
            "servers.remote" => {
                format!("{server}[servers.remote]\nurl = \"https://example.com/mcp\"\n")
            }
            "servers.remote.oauth" => format!(
                "{server}secrets = {{ s = \"env:S\" }}\n[servers.remote]\nurl = \"https://example.com/mcp\"\n[servers.remote.oauth]\ntoken_endpoint = \"https://idp.example/token\"\nclient_id = \"c\"\nclient_secret = \"secret:s\"\n"
            ),
            "servers.remote.sign_in" => format!(
                "[[clients]]\nname = \"ops\"\n[vault]\nkeys = [\"env:K\"]\n{server}[servers.remote]\nurl = \"https://example.com/mcp\"\n[servers.remote.sign_in]\nlist_as = \"ops\"\n"
            ),
            "servers.container" => format!("{server}[servers.container]\nimage = \"i\"\n"),
            "servers.container.sign_in" => format!(
                "[[clients]]\nname = \"ops\"\n[vault]\nkeys = [\"env:K\"]\n{server}[servers.container]\nimage = \"i\"\nisolation = \"per-client\"\n[servers.container.sign_in]\nenv = \"T\"\nissuer = \"https://idp.example\"\nresource = \"https://api.example\"\nlist_as = \"ops\"\n"
            ),
            "servers.breaker" => {
                format!("{server}process = {{ command = \"x\" }}\n[servers.breaker]\n")
            }
            "servers.sandbox" => format!("{container}[servers.sandbox]\n"),
            "servers.sandbox.mounts" => format!(
                "{container}[[servers.sandbox.mounts]]\nsource = \"/srv\"\ntarget = \"/srv\"\n"
            ),
            "servers.sandbox.tmpfs" => {
                format!("{container}[[servers.sandbox.tmpfs]]\ntarget = \"/cache\"\n")
            }
            "oauth" => format!("{oauth_provider}[oauth]\nresource = \"https://p.example/mcp\"\n"),
            "oauth.providers" => format!("{oauth}{provider}"),
            "oauth.providers.introspection" => format!(
                "{oauth}{provider}[oauth.providers.introspection]\nclient_id = \"c\"\nclient_secret = \"env:S\"\n"
            ),
            // Without a catalog file to read: the defaults of an empty one.
            "discovery" => "[discovery]\n".into(),
            "code_mode" => "[code_mode]\nenabled = true\n".into(),
            "flow" => "[flow]\n".into(),
            "flow.rule" => "[[flow.rule]]\nservers = [\"a\"]\nlabels = []\n".into(),
            "signatures" => "[signatures]\n".into(),
            "egress" => "[egress]\n".into(),
            "vault" => "[vault]\n".into(),
            "ratelimit.shared" => "[ratelimit]\ndefault = \"5/min\"\n[ratelimit.shared]\nredis = \"redis://127.0.0.1\"\n".into(),
            "audit.ship" => {
                "[audit.ship]\nto = \"postgres://log@127.0.0.1/audit\"\nreplica = \"r\"\n".into()
            }
            "chain" => plugin.into(),
            "chain.breaker" => format!("{plugin}[chain.breaker]\n"),
            "ratelimit.concurrency" => format!(
                "{server}process = {{ command = \"x\" }}\n[[ratelimit.concurrency]]\nserver = \"a\"\nmax_in_flight = 1\n"
            ),
            _ => return None,
        })
    }

    #[test]
    fn every_default_is_what_leaving_the_key_out_gives() {
        let load = |text: &str| {
            Config::parse(text, Path::new("/etc/portcullis/portcullis.toml"))
                .map(|config| format!("{config:?}"))
                .map_err(|err| err.to_string())
        };
        let mut checked = 0;
        for table in tables() {
            for key in &table.keys {
                let Default::Value(value) = &key.default else {
                    continue;
                };
                let Some(context) = context(table.header.trim_matches(['[', ']'])) else {
                    panic!(
                        "`{}` has a default: give its table a context in this test",
                        table.header
                    );
                };
                let written = format!("{context}{} = {}\n", key.name, toml_literal(value));
                let left_out = load(&context);
                assert!(left_out.is_ok(), "{context}: {left_out:?}");
                assert_eq!(
                    load(&written),
                    left_out,
                    "`{}` `{}`: the reference says its default is `{}`, but writing it changes the config",
                    table.header,
                    key.name,
                    toml_literal(value)
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} defaults checked");
    }
}
