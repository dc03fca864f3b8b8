//! Whether a client may use a server at all: what decides who sees the
//! notifications a server sends on its own (no call of anyone's in flight)
//! and whose `logging/setLevel` reaches it.
//!
//! A client *may use* a server when the lists it would see hold at least
//! one item of that server: Cedar's `list_tools`, `list_prompts` and
//! `list_resources` on the server's tools, prompts, resources and
//! templates, decided exactly as [`Authz`](super::Authz) filters lists. A
//! client denied everything on a server therefore hears nothing from it.
//! No action of its own: a policy author controls it through the lists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::request::Query;
use super::{PolicyEngine, list_action, list_target};
use crate::chain::{ClientIdentity, Directory, Transport};
use crate::config::FlowConfig;
use crate::protocol::List;

/// Decides (and remembers) whether a client may use a server. Without
/// authz in the chain ([`ServerAccess::everyone`]) every client may use
/// every server.
/// (client as decided on, transport, protocol revision, server).
type AccessKey = (String, Transport, Arc<str>, Arc<str>);

/// Decisions kept at most (a full cache starts afresh): clients from an
/// identity provider are as many as the organisation's people.
const MAX_DECIDED: usize = 10_000;

/// All a decision about a client depends on: its name, groups, attributes
/// and token scopes (a client from an identity provider may come back with
/// other groups under the same name), length-prefixed so that no two
/// clients share a key.
fn identity_key(client: &ClientIdentity) -> String {
    let mut key = String::with_capacity(64);
    let mut push = |part: &str| {
        key.push_str(&part.len().to_string());
        key.push(':');
        key.push_str(part);
    };
    push(&client.name);
    push(&client.groups.len().to_string());
    for group in client.groups.iter() {
        push(group);
    }
    push(&serde_json::Value::Object((*client.attributes).clone()).to_string());
    for scope in client.scopes() {
        push(scope);
    }
    key
}

pub struct ServerAccess {
    engine: Option<Arc<PolicyEngine>>,
    cache: Mutex<Cache>,
    /// `[flow]`: the labels of the items decided on.
    flow: Arc<FlowConfig>,
}

impl std::fmt::Debug for ServerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAccess")
            .field("enforced", &self.engine.is_some())
            .finish()
    }
}

/// Decisions for one policy set and one catalog: a reload or a new catalog
/// (any list of any server read again) starts afresh. Bounded by
/// [`MAX_DECIDED`].
#[derive(Default)]
struct Cache {
    policy_set: Option<Arc<str>>,
    /// Not kept alive by the cache: a catalog replaced is freed.
    directory: Option<std::sync::Weak<dyn Directory>>,
    /// By client, transport, protocol revision and server.
    decided: HashMap<AccessKey, bool>,
}

impl Cache {
    /// Whether these decisions were made under `policy_set` and on
    /// `directory` (the very catalog, not an equal one).
    fn is_for(&self, policy_set: &str, directory: &Arc<dyn Directory>) -> bool {
        self.policy_set.as_deref() == Some(policy_set)
            && self
                .directory
                .as_ref()
                .is_some_and(|known| std::ptr::addr_eq(known.as_ptr(), Arc::as_ptr(directory)))
    }
}

impl ServerAccess {
    /// Decided by the policies in force in `engine`.
    pub fn new(engine: Arc<PolicyEngine>, flow: Arc<FlowConfig>) -> Self {
        Self {
            engine: Some(engine),
            cache: Mutex::new(Cache::default()),
            flow,
        }
    }

    /// No authz: every client may use every server.
    pub fn everyone() -> Self {
        Self {
            engine: None,
            cache: Mutex::new(Cache::default()),
            flow: Arc::default(),
        }
    }

    /// Whether `client` (over `transport`, speaking the `protocol`
    /// revision) would see at least one item of `server` in the lists of
    /// `directory`. The decision is kept until the policy set or the catalog
    /// changes; a list policy that reads `context.time`, `context.session`
    /// or `context.flow` is evaluated once per client, transport and
    /// revision, at its first use (with an empty session and flow).
    pub fn may_use(
        &self,
        client: &ClientIdentity,
        (transport, protocol): (Transport, &str),
        server: &str,
        directory: &Arc<dyn Directory>,
    ) -> bool {
        let Some(engine) = &self.engine else {
            return true;
        };
        let store = engine.current();
        let key = (
            identity_key(client),
            transport,
            Arc::<str>::from(protocol),
            Arc::<str>::from(server),
        );
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if !cache.is_for(&store.id, directory) {
                cache.policy_set = Some(store.id.clone());
                cache.directory = Some(Arc::downgrade(directory));
                cache.decided.clear();
            }
            if let Some(decided) = cache.decided.get(&key) {
                return *decided;
            }
        }
        // Decided outside the lock: a server with many items takes many
        // decisions, and other sessions' lookups should not wait on them.
        let offered = directory.offered();
        let time = SystemTime::now();
        let allowed = List::ALL.into_iter().any(|kind| {
            let (list, action) = (kind.result_key(), list_action(kind));
            let items = match kind {
                List::Tools => offered.tools,
                List::Prompts => offered.prompts,
                List::Resources => offered.resources,
                List::ResourceTemplates => offered.templates,
            };
            items.iter().any(|item| {
                let Some(target) = list_target(&**directory, list, item, &self.flow) else {
                    return false;
                };
                if target.server() != server {
                    return false;
                }
                store
                    .decide(&Query {
                        client: &client.name,
                        groups: &client.groups,
                        attributes: Some(&client.attributes),
                        action,
                        target: &target,
                        arguments: None,
                        transport: transport.for_policies(),
                        protocol,
                        session: "",
                        scopes: client.scopes(),
                        time,
                        script: None,
                        answer: None,
                        flow: None,
                    })
                    .allowed
            })
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Kept only if nothing changed meanwhile.
        if cache.is_for(&store.id, directory) {
            if cache.decided.len() >= MAX_DECIDED {
                cache.decided.clear();
            }
            cache.decided.insert(key, allowed);
        }
        allowed
    }

    /// Decides `action` on `target` for `client` (over `transport`,
    /// speaking `protocol`, in `session`), uncached: `portcullis__find` and
    /// `portcullis__add` on a catalog's server. `None`: no authz, so
    /// allowed.
    pub fn decide(
        &self,
        client: &ClientIdentity,
        (transport, protocol, session): (Transport, &str, &str),
        action: super::Action,
        target: &super::Target,
    ) -> Option<super::Decision> {
        let engine = self.engine.as_ref()?;
        Some(engine.current().decide(&Query {
            client: &client.name,
            groups: &client.groups,
            attributes: Some(&client.attributes),
            action,
            target,
            arguments: None,
            transport: transport.for_policies(),
            protocol,
            session,
            scopes: client.scopes(),
            time: SystemTime::now(),
            script: None,
            answer: None,
            flow: None,
        }))
    }

    /// How many decisions are kept (for tests).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decided
            .len()
    }
}
