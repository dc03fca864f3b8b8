//! What the servers offer, merged: tools and prompts namespaced
//! `server<sep>name`, resources kept under their own URIs with an index that
//! routes each URI back to the server that listed it.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::chain::{Definition, Directory, Offered};
use crate::protocol::{At, List};

/// One server's lists, as it sent them (lossless).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerLists {
    pub tools: Vec<Value>,
    pub prompts: Vec<Value>,
    pub resources: Vec<Value>,
    pub templates: Vec<Value>,
}

/// The merged view, rebuilt whenever one server's lists change.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Each server's lists as the catalog took them: shared (never
    /// copied) with the slot that keeps them as the server sent them.
    per_server: Vec<Option<Arc<ServerLists>>>,
    pub tools: Arc<Vec<Value>>,
    pub prompts: Arc<Vec<Value>>,
    pub resources: Arc<Vec<Value>>,
    pub templates: Arc<Vec<Value>>,
    /// Namespaced tool name → (server index, the server's own name, the
    /// position in `tools`).
    tool_index: HashMap<String, (usize, String, usize)>,
    prompt_index: HashMap<String, (usize, String, usize)>,
    /// Server names by index.
    names: Vec<Arc<str>>,
    resource_index: HashMap<String, usize>,
    /// Literal prefixes of URI templates (before the first `{`), longest first.
    template_prefixes: Vec<(String, usize)>,
    /// The servers that a catalog offers (`[discovery]`): a URI a
    /// configured server covers is never theirs.
    catalogued: std::ops::Range<usize>,
    /// The configured servers in the config's order, merged first (the
    /// others follow by index): where two list one URI, the first in the
    /// config keeps it, whatever index a reload gave it.
    order: Vec<usize>,
}

impl Catalog {
    pub fn new(servers: usize) -> Self {
        Self {
            per_server: vec![None; servers],
            ..Self::default()
        }
    }

    /// Servers `range` are a catalog's (see `resource_owner`).
    pub fn catalogued(mut self, range: std::ops::Range<usize>) -> Self {
        self.catalogued = range;
        self
    }

    pub fn server_lists(&self, server: usize) -> Option<&ServerLists> {
        self.per_server.get(server).and_then(Option::as_deref)
    }

    /// A catalog with one server's lists replaced (or removed with `None`),
    /// and which lists changed.
    pub fn with_server(
        &self,
        server: usize,
        lists: Option<Arc<ServerLists>>,
        names: &[Arc<str>],
        separator: &str,
    ) -> (Self, Vec<List>) {
        // Each server's lists are shared, not copied, into the next catalog.
        let mut per_server = self.per_server.clone();
        let empty = ServerLists::default();
        let old = self
            .per_server
            .get(server)
            .and_then(Option::as_deref)
            .unwrap_or(&empty);
        let new = lists.as_deref().unwrap_or(&empty);
        let mut changed = Vec::new();
        if old.tools != new.tools {
            changed.push(List::Tools);
        }
        if old.prompts != new.prompts {
            changed.push(List::Prompts);
        }
        if old.resources != new.resources || old.templates != new.templates {
            changed.push(List::Resources);
        }
        // A server a reload added is past the last one known.
        if per_server.len() <= server {
            per_server.resize(server + 1, None);
        }
        if let Some(slot) = per_server.get_mut(server) {
            *slot = lists;
        }
        let mut next = Self::build(per_server, names, separator, &self.order);
        next.catalogued = self.catalogued.clone();
        (next, changed)
    }

    /// The catalog with the configured servers merged in `order` (see
    /// [`Catalog::order`]).
    pub fn ordered(&self, order: Vec<usize>, names: &[Arc<str>], separator: &str) -> Self {
        let mut next = Self::build(self.per_server.clone(), names, separator, &order);
        next.catalogued = self.catalogued.clone();
        next
    }

    fn build(
        per_server: Vec<Option<Arc<ServerLists>>>,
        names: &[Arc<str>],
        separator: &str,
        order: &[usize],
    ) -> Self {
        let mut tools = Vec::new();
        let mut prompts = Vec::new();
        let mut resources = Vec::new();
        let mut templates = Vec::new();
        let mut tool_index = HashMap::new();
        let mut prompt_index = HashMap::new();
        let mut resource_index = HashMap::new();
        let mut template_prefixes = Vec::new();
        let count = per_server.len();
        let mut merged = vec![false; count];
        let ranked = order.iter().copied().chain(0..count);
        for server in ranked {
            match merged.get_mut(server) {
                Some(done) if !*done => *done = true,
                _ => continue,
            }
            let (Some(Some(lists)), Some(name)) = (per_server.get(server), names.get(server))
            else {
                continue;
            };
            namespace(
                &lists.tools,
                server,
                name,
                separator,
                &mut tools,
                &mut tool_index,
            );
            namespace(
                &lists.prompts,
                server,
                name,
                separator,
                &mut prompts,
                &mut prompt_index,
            );
            for resource in &lists.resources {
                let Some(uri) = resource.get("uri").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(&owner) = resource_index.get(uri) {
                    // A URI's query may carry credentials: logs show what
                    // comes before.
                    tracing::warn!(
                        uri = uri.split('?').next().unwrap_or_default(),
                        kept = %names.get(owner).map_or("?", |n: &Arc<str>| &**n),
                        dropped = %name,
                        "two servers list the same resource URI; the first in config order keeps it"
                    );
                    continue;
                }
                resource_index.insert(uri.to_owned(), server);
                resources.push(resource.clone());
            }
            for template in &lists.templates {
                let Some(uri_template) = template.get("uriTemplate").and_then(Value::as_str) else {
                    continue;
                };
                let prefix = uri_template
                    .split('{')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if template_prefixes.iter().any(|(p, _)| *p == prefix) {
                    tracing::warn!(uri_template, dropped = %name, "two servers list the same resource template prefix; the first in config order keeps it");
                    continue;
                }
                template_prefixes.push((prefix, server));
                templates.push(template.clone());
            }
        }
        template_prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            names: names.to_vec(),
            per_server,
            tools: Arc::new(tools),
            prompts: Arc::new(prompts),
            resources: Arc::new(resources),
            templates: Arc::new(templates),
            tool_index,
            prompt_index,
            resource_index,
            template_prefixes,
            catalogued: 0..0,
            order: order.to_vec(),
        }
    }

    pub fn tool(&self, namespaced: &str) -> Option<(usize, &str)> {
        self.tool_index
            .get(namespaced)
            .map(|(server, name, _)| (*server, name.as_str()))
    }

    pub fn prompt(&self, namespaced: &str) -> Option<(usize, &str)> {
        self.prompt_index
            .get(namespaced)
            .map(|(server, name, _)| (*server, name.as_str()))
    }

    /// The listed definition of a namespaced tool.
    pub fn tool_definition(&self, namespaced: &str) -> Option<Definition> {
        self.tool_index
            .get(namespaced)
            .map(|(_, _, position)| Definition::new(self.tools.clone(), *position))
    }

    /// The listed definition of a namespaced prompt.
    pub fn prompt_definition(&self, namespaced: &str) -> Option<Definition> {
        self.prompt_index
            .get(namespaced)
            .map(|(_, _, position)| Definition::new(self.prompts.clone(), *position))
    }

    fn name_of(&self, server: usize) -> Option<&str> {
        self.names.get(server).map(|name| &**name)
    }

    /// The server an item of the merged list `kind` (`tools`, `prompts`,
    /// `resources`, `resourceTemplates`) came from.
    pub fn owner_of(&self, kind: &str, item: &Value) -> Option<usize> {
        let text = |key: &str| item.get(key).and_then(Value::as_str);
        match kind {
            "tools" => self.tool(text("name")?).map(|(server, _)| server),
            "prompts" => self.prompt(text("name")?).map(|(server, _)| server),
            "resources" => self.resource_index.get(text("uri")?).copied(),
            _ => {
                let prefix = text("uriTemplate")?.split('{').next().unwrap_or_default();
                self.template_prefixes
                    .iter()
                    .find(|(known, _)| known == prefix)
                    .map(|(_, server)| *server)
            }
        }
    }

    /// The server a resource URI belongs to: a listed resource, or else the
    /// template with the longest matching literal prefix.
    /// A configured server's claim comes first: a URI it lists or its
    /// templates cover is never a catalog server's (one that a session
    /// added cannot take another's reads or updates).
    pub fn resource_owner(&self, uri: &str) -> Option<usize> {
        let exact = self.resource_index.get(uri).copied();
        if let Some(server) = exact.filter(|server| !self.catalogued.contains(server)) {
            return Some(server);
        }
        let mut covering = self
            .template_prefixes
            .iter()
            .filter(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
            .map(|(_, server)| *server);
        let first = covering.next();
        let configured = first
            .into_iter()
            .chain(covering)
            .find(|server| !self.catalogued.contains(server));
        configured.or(exact).or(first)
    }
}

impl Directory for Catalog {
    fn offered(&self) -> Offered<'_> {
        Offered {
            tools: &self.tools,
            prompts: &self.prompts,
            resources: &self.resources,
            templates: &self.templates,
        }
    }

    fn tool_definition(&self, namespaced: &str) -> Option<Definition> {
        Catalog::tool_definition(self, namespaced)
    }

    fn prompt_definition(&self, namespaced: &str) -> Option<Definition> {
        Catalog::prompt_definition(self, namespaced)
    }

    fn tool_server(&self, namespaced: &str) -> Option<&str> {
        self.tool(namespaced)
            .and_then(|(server, _)| self.name_of(server))
    }

    fn prompt_server(&self, namespaced: &str) -> Option<&str> {
        self.prompt(namespaced)
            .and_then(|(server, _)| self.name_of(server))
    }

    fn resource_server(&self, uri: &str) -> Option<&str> {
        self.resource_owner(uri)
            .and_then(|server| self.name_of(server))
    }

    fn template_server(&self, uri_template: &str) -> Option<&str> {
        let prefix = uri_template.split('{').next().unwrap_or_default();
        self.template_prefixes
            .iter()
            .find(|(p, _)| p == prefix)
            .and_then(|(_, server)| self.name_of(*server))
    }
}

fn namespace(
    items: &[Value],
    server: usize,
    server_name: &str,
    separator: &str,
    out: &mut Vec<Value>,
    index: &mut HashMap<String, (usize, String, usize)>,
) {
    for item in items {
        let Some(name) = item.get("name").and_then(Value::as_str) else {
            continue;
        };
        let namespaced = format!("{server_name}{separator}{name}");
        if index.contains_key(&namespaced) {
            continue;
        }
        let mut item = item.clone();
        item.put(&["name"], Value::from(namespaced.as_str()));
        index.insert(namespaced, (server, name.to_owned(), out.len()));
        out.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_configured_server_keeps_a_shared_uri_whatever_its_index() {
        let names: Vec<Arc<str>> = vec!["old".into(), "other".into(), "restarted".into()];
        let shared = |name: &str| {
            Arc::new(ServerLists {
                resources: vec![json!({"uri":"file:///shared","name":name})],
                templates: vec![json!({"uriTemplate":"file:///{path}","name":name})],
                ..Default::default()
            })
        };
        // `restarted` is first in the config: a reload started it anew at
        // index 2 (index 0 is its retired slot, which lists nothing).
        let (catalog, _) = Catalog::new(3).with_server(1, Some(shared("other")), &names, "__");
        let (catalog, _) = catalog.with_server(2, Some(shared("restarted")), &names, "__");
        assert_eq!(
            catalog.resource_owner("file:///shared"),
            Some(1),
            "index order"
        );
        let catalog = catalog.ordered(vec![2, 1], &names, "__");
        assert_eq!(catalog.resource_owner("file:///shared"), Some(2));
        assert_eq!(catalog.resource_owner("file:///elsewhere"), Some(2));
        // The order holds as lists change.
        let (catalog, _) = catalog.with_server(1, Some(shared("other2")), &names, "__");
        assert_eq!(catalog.resource_owner("file:///shared"), Some(2));
        assert_eq!(catalog.resources.len(), 1, "{:?}", catalog.resources);
    }

    #[test]
    fn merges_namespaces_and_routes() {
        let names: Vec<Arc<str>> = vec!["fs".into(), "time".into()];
        let catalog = Catalog::new(2);
        let (catalog, changed) = catalog.with_server(
            0,
            Some(Arc::new(ServerLists {
                tools: vec![json!({"name":"read","description":"r","x-extra":{"k":1}})],
                resources: vec![json!({"uri":"file:///a","name":"a"})],
                templates: vec![json!({"uriTemplate":"file:///{path}","name":"f"})],
                ..Default::default()
            })),
            &names,
            "__",
        );
        assert_eq!(changed, vec![List::Tools, List::Resources]);
        let (catalog, _) = catalog.with_server(
            1,
            Some(Arc::new(ServerLists {
                tools: vec![json!({"name":"now"})],
                resources: vec![json!({"uri":"file:///a","name":"dup"})],
                templates: vec![json!({"uriTemplate":"time://{zone}","name":"z"})],
                ..Default::default()
            })),
            &names,
            "__",
        );
        assert_eq!(
            *catalog.tools,
            vec![
                json!({"name":"fs__read","description":"r","x-extra":{"k":1}}),
                json!({"name":"time__now"})
            ]
        );
        assert_eq!(catalog.tool("fs__read"), Some((0, "read")));
        assert_eq!(catalog.tool("time__now"), Some((1, "now")));
        assert_eq!(catalog.tool("time__read"), None);
        assert_eq!(catalog.resources.len(), 1, "the duplicate URI is dropped");
        assert_eq!(catalog.resource_owner("file:///a"), Some(0));
        assert_eq!(catalog.resource_owner("file:///b/c"), Some(0));
        assert_eq!(catalog.resource_owner("time://utc"), Some(1));
        assert_eq!(catalog.resource_owner("other://x"), None);
        assert_eq!(catalog.tool_server("time__now"), Some("time"));
        assert_eq!(catalog.resource_server("time://utc"), Some("time"));
        assert_eq!(catalog.template_server("file:///{path}"), Some("fs"));
        assert_eq!(
            catalog
                .tool_definition("time__now")
                .as_ref()
                .and_then(Definition::get),
            Some(&json!({"name":"time__now"}))
        );

        let (catalog, changed) = catalog.with_server(0, None, &names, "__");
        assert_eq!(changed, vec![List::Tools, List::Resources]);
        assert_eq!(catalog.tool("fs__read"), None);
        assert_eq!(catalog.resource_owner("file:///a"), Some(1));
    }
}
