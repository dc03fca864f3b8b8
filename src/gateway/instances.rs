//! Which running copy of a server serves a client (per-client isolation), and
//! which sessions it serves.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::config::{Isolation, RemoteGrant, UpstreamSpec};
use crate::protocol::{self, At as _};
use crate::upstream::{BreakerState, Call, Round, Upstream};

use super::task_table;
use super::{Failure, Gateway, InstanceKey, Servers, Session, lock};

/// Per-client instances of one server running (or starting, or restarting)
/// at once at most; an idle one, stopped after its idle timeout, does not
/// count.
pub(super) const MAX_INSTANCES_PER_SERVER: usize = 256;

/// Whether a server refuses calls for failing: a shared server has one
/// breaker; each per-client instance has its own (one client's failing
/// instance does not stop another's calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakers {
    /// The breaker of the one instance every client shares.
    Shared(BreakerState),
    /// The per-client instances kept now, and how many of them have
    /// their breakers open.
    PerClient { instances: usize, open: usize },
}

impl Breakers {
    /// Whether any of the server's calls are refused for failing now.
    pub fn failing(self) -> bool {
        match self {
            Breakers::Shared(state) => state == BreakerState::Open,
            Breakers::PerClient { open, .. } => open > 0,
        }
    }
}

impl Servers {
    /// Whether each client gets its own instance of the server: a
    /// per-client container, or a remote server that acts as each
    /// client's user (by exchanging its token, or with its own sign-in).
    pub(super) fn per_client(&self, index: usize) -> bool {
        self.upstream_at(index).is_some_and(|upstream| {
            let kind = &upstream.config().kind;
            matches!(kind, UpstreamSpec::Container(spec) if spec.isolation == Isolation::PerClient)
                || matches!(kind, UpstreamSpec::Remote(spec) if spec.sign_in.is_some())
                || acts_as_user(kind).is_some()
        })
    }

    /// Whose credential server `index`'s calls carry, where it is a
    /// token: `user_sign_in` (the client's user's own sign-in, from the
    /// vault), `user_token_exchange` (a token issued for the client's user
    /// in exchange for its own), `proxy_oauth` (the proxy's own). For a
    /// call's record: it says whose token went, never which.
    pub(super) fn credential(&self, index: usize) -> Option<&'static str> {
        let upstream = self.upstream_at(index)?;
        let kind = &upstream.config().kind;
        if kind.sign_in().is_some() {
            return Some("user_sign_in");
        }
        let UpstreamSpec::Remote(spec) = kind else {
            return None;
        };
        match &spec.oauth {
            Some(oauth) if oauth.grant == RemoteGrant::TokenExchange => Some("user_token_exchange"),
            Some(_) => Some("proxy_oauth"),
            None => None,
        }
    }

    /// The provider whose users server `index` acts as
    /// (`grant = "token_exchange"`), if it does.
    pub(super) fn acts_as_user(&self, index: usize) -> Option<&str> {
        self.upstream_at(index)
            .and_then(|upstream| acts_as_user(&upstream.config().kind))
    }

    /// Refuses a session without an access token of the provider whose
    /// users server `index` acts as (if it does): there is nobody to
    /// act as.
    pub(super) fn may_act_as_user(&self, index: usize, session: &Session) -> Result<(), Failure> {
        let Some(provider) = self.acts_as_user(index) else {
            return Ok(());
        };
        let token = session.client.token.as_ref();
        if token.is_some_and(|facts| *facts.provider == *provider) {
            return Ok(());
        }
        let name = self.name_at(index).map(ToString::to_string);
        Err(Failure::NoUserToken(
            name.unwrap_or_default(),
            provider.to_owned(),
        ))
    }

    /// `client` came with the access token `token` (good until what
    /// `until` says, Unix seconds, asked only when it is kept): what its
    /// instances of servers that act as its user exchange. Kept in memory
    /// only, and only a token of a provider whose users some server acts
    /// as.
    pub fn keep_user_token(
        &self,
        client: &crate::chain::ClientIdentity,
        token: &str,
        until: impl FnOnce() -> Option<u64>,
    ) {
        let Some(facts) = &client.token else {
            return;
        };
        let exchanged = self.slots.iter().any(|(_, slot)| {
            !slot.is_retired()
                && slot.upstream.as_ref().is_some_and(|upstream| {
                    acts_as_user(&upstream.config().kind) == Some(&*facts.provider)
                })
        });
        if exchanged && let Some(until) = until() {
            self.user_tokens
                .keep(&client.name, &facts.provider, token, until);
        }
    }

    /// The instance of server `index` that serves `client`: the server's own,
    /// or for a per-client server the client's, created (lazy) at first use.
    pub(super) fn upstream_for(&self, index: usize, client: &Arc<str>) -> Option<Upstream> {
        let slot = self.slot(index)?;
        // A server a reload took out takes nothing new (a task's poll, a
        // call routed before it went).
        if slot.is_retired() {
            return None;
        }
        let primary = slot.upstream.as_ref()?;
        if !self.per_client(index) {
            return Some(primary.clone());
        }
        let mut instances = lock(&self.instances);
        if let Some(instance) = instances.get(&(index, client.clone())) {
            return Some(instance.clone());
        }
        if slot.stop.is_cancelled() {
            return None;
        }
        // Clients from an identity provider are as many as the
        // organisation's people: past the cap a new client is refused
        // rather than given one more container. One down until its client
        // calls again (a refused token exchange) holds nothing.
        let running = instances
            .iter()
            .filter(|((at, _), instance)| {
                *at == index
                    && instance.is_wanted()
                    && !matches!(
                        instance.status(),
                        crate::upstream::Status::Idle(_) | crate::upstream::Status::Stopped
                    )
            })
            .count();
        if running >= MAX_INSTANCES_PER_SERVER {
            tracing::warn!(server = %primary.name(), client = %client, cap = MAX_INSTANCES_PER_SERVER, "refused a per-client instance past the cap");
            return None;
        }
        let instance = (self.make)(
            primary.config_handle(),
            Some(client.clone()),
            self.events.clone(),
        );
        // Its own stop, under the server's: forgotten when idle, it ends.
        let stop = slot.stop.child_token();
        self.keep_tasks([instance.start(stop.clone())]);
        lock(&self.instance_stops).insert((index, client.clone()), stop);
        instances.insert((index, client.clone()), instance.clone());
        tracing::debug!(server = %primary.name(), client = %client, "per-client instance created");
        Some(instance)
    }

    /// Forgets `client`'s instance of server `index`, stopped for being
    /// idle or down and not to be started again, unless a call woke it
    /// meanwhile: its supervisor ends. Whether it was forgotten.
    pub(super) fn forget_unwanted(&self, index: usize, client: &Arc<str>) -> bool {
        let key = (index, client.clone());
        let mut instances = lock(&self.instances);
        if instances.get(&key).is_none_or(Upstream::is_wanted) {
            return false;
        }
        instances.remove(&key);
        if let Some(stop) = lock(&self.instance_stops).remove(&key) {
            stop.cancel();
        }
        drop(instances);
        self.keep_tasks([]);
        true
    }

    /// Why [`Servers::upstream_for`] gave server `index` no instance.
    pub(super) fn no_instance(&self, index: usize) -> super::Failure {
        if self.shutdown.is_cancelled() {
            super::Failure::ShuttingDown
        } else if self.is_retired(index) {
            super::Failure::ServerNotReady(self.name_or_none(index).to_string())
        } else {
            super::Failure::TooManyInstances(MAX_INSTANCES_PER_SERVER)
        }
    }

    /// The instances clients' calls reach, with their keys: the shared
    /// servers and the per-client instances (of `client` only, if given).
    pub(super) fn instances(&self, client: Option<&Arc<str>>) -> Vec<(InstanceKey, Upstream)> {
        let mut out: Vec<(InstanceKey, Upstream)> = self
            .slots
            .iter()
            .filter(|(index, slot)| !slot.is_retired() && !self.per_client(*index))
            .filter_map(|(index, slot)| Some(((index, None), slot.upstream.clone()?)))
            .collect();
        out.extend(
            lock(&self.instances)
                .iter()
                .filter(|((_, owner), _)| client.is_none_or(|client| owner == client))
                .map(|((index, owner), instance)| {
                    ((*index, Some(owner.clone())), instance.clone())
                }),
        );
        out
    }

    /// A server's breakers: its own, or (per-client) its instances'.
    pub(super) fn breakers_at(&self, index: usize, upstream: &Upstream) -> Breakers {
        if !self.per_client(index) {
            return Breakers::Shared(upstream.breaker());
        }
        let instances = lock(&self.instances);
        let mine = instances.iter().filter(|((at, _), _)| *at == index);
        let (mut running, mut open) = (0, 0);
        for (_, instance) in mine {
            running += 1;
            open += usize::from(instance.breaker() == BreakerState::Open);
        }
        Breakers::PerClient {
            instances: running,
            open,
        }
    }

    /// The servers in force (as [`Servers::upstreams`]), each with its
    /// breakers.
    pub fn with_breakers(&self) -> Vec<(Upstream, Breakers)> {
        self.configured()
            .into_iter()
            .map(|(index, upstream)| {
                let breakers = self.breakers_at(index, &upstream);
                (upstream, breakers)
            })
            .collect()
    }

    /// The instance an event came from.
    pub(super) fn upstream_of(
        &self,
        index: usize,
        instance: &Option<Arc<str>>,
    ) -> Option<Upstream> {
        match instance {
            None => self.upstream_at(index).cloned(),
            Some(client) => lock(&self.instances).get(&(index, client.clone())).cloned(),
        }
    }

    /// The index of the server an event came from: the server in force
    /// whose upstream (or per-client instance) sent it. The last words of
    /// a server a reload took out (as it stops) are nobody's.
    pub(super) fn index_of_source(&self, source: &crate::upstream::Source) -> Option<usize> {
        let index = self.index_of(&source.server)?;
        let sent_it = |upstream: &Upstream| Arc::ptr_eq(upstream.name(), &source.server);
        let ours = match &source.instance {
            None => self.upstream_at(index).is_some_and(sent_it),
            Some(client) => lock(&self.instances)
                .get(&(index, client.clone()))
                .is_some_and(sent_it),
        };
        ours.then_some(index)
    }

    /// The server an event came from, for its record: a retired one too
    /// (its last words as it stops are its own, not its successor's).
    pub(super) fn sender_of(&self, source: &crate::upstream::Source) -> Option<usize> {
        if source.instance.is_some() {
            return self
                .index_of_source(source)
                .or_else(|| self.index_of(&source.server));
        }
        self.slots
            .iter()
            .find(|(_, slot)| {
                slot.upstream
                    .as_ref()
                    .is_some_and(|upstream| Arc::ptr_eq(upstream.name(), &source.server))
            })
            .map(|(index, _)| index)
    }

    /// The index of server `server` in force (a reload may have retired
    /// others of that name).
    pub(super) fn index_of(&self, server: &str) -> Option<usize> {
        self.slots
            .iter()
            .find(|(_, slot)| &*slot.name == server && !slot.is_retired())
            .map(|(index, _)| index)
    }

    /// The start of the process of server `server` (for `client`) that
    /// makes a task now; `None` for a remote server.
    pub(super) fn generation(&self, server: usize, client: &Arc<str>) -> Option<u64> {
        let remote = matches!(
            self.upstream_at(server).map(|u| &u.config().kind),
            Some(crate::config::UpstreamSpec::Remote(_))
        );
        if remote {
            return None;
        }
        self.upstream_for(server, client)
            .map(|upstream| upstream.restarts())
    }

    /// Tells a server to cancel the task its `reply` made, if it made one
    /// (see [`Servers::cancel_task`]).
    pub(super) fn cancel_task_of(&self, server: usize, reply: &Value, client: &Arc<str>) {
        if task_table::is_task(reply)
            && let Some(server_task) = reply.at(&["result", "taskId"]).and_then(Value::as_str)
        {
            self.cancel_task(server, server_task, client);
        }
    }

    /// Tells a server to cancel its task `server_task` (one the proxy does
    /// not pass on, or one whose question was refused), in the background:
    /// the request that found it may end first.
    pub(super) fn cancel_task(&self, server: usize, server_task: &str, client: &Arc<str>) {
        let Some(upstream) = self.upstream_for(server, client) else {
            return;
        };
        let request = protocol::request(
            Value::Null,
            protocol::Method::TasksCancel.as_str(),
            json!({ "taskId": server_task }),
        );
        let told = Map::from_iter([(
            "extensions".to_owned(),
            json!({ task_table::EXTENSION: {} }),
        )]);
        let name = self.name_or_none(server);
        tokio::spawn(async move {
            let timeout = upstream.config().call_timeout;
            if upstream.ensure_running(timeout).await.is_err() {
                tracing::info!(server = %name, "a task the proxy did not pass on: not cancelled (the server is not running)");
                return;
            }
            let call = Call {
                message: request,
                origin: None,
                log_level: None,
                round: Some(Round {
                    capabilities: told,
                    answers: None,
                }),
            };
            let outcome = match upstream.call(call, |_| {}).await {
                Ok(reply) if reply.get("result").is_some() => "cancelled",
                Ok(_) | Err(_) => "not cancelled",
            };
            tracing::info!(server = %name, outcome, "a task the proxy did not pass on");
        });
    }
}

impl Gateway {
    /// Forgets `client`'s instance of server `index` (see
    /// [`Servers::forget_unwanted`]), and what the proxy kept of it: its
    /// log level, its notification window, the server's requests it had
    /// forwarded. Clients from an identity provider are as many as the
    /// organisation's people: none is kept for the life of the proxy. Its
    /// next call makes a new one.
    pub(super) fn forget_unwanted_instance(self: &Arc<Self>, index: usize, client: &Arc<str>) {
        if !self.servers.forget_unwanted(index, client) {
            return;
        }
        let instance = Some(client.clone());
        self.unattributed.forget(&(index, instance.clone()));
        self.forwarded.forget(index, &instance);
        let this = self.clone();
        tokio::spawn(async move {
            this.log_levels.forget(&(index, instance)).await;
        });
        tracing::debug!(server = %self.servers.name_or_none(index), client = %client, "an idle per-client instance was forgotten");
    }
}

/// The provider whose users a server acts as, if it does.
fn acts_as_user(kind: &UpstreamSpec) -> Option<&str> {
    let UpstreamSpec::Remote(spec) = kind else {
        return None;
    };
    let oauth = spec.oauth.as_ref()?;
    (oauth.grant == RemoteGrant::TokenExchange)
        .then(|| oauth.provider.as_deref().unwrap_or_default())
}
