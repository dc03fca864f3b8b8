//! Where a client's flow is kept (`[flow]`): in its session, which lasts
//! as long as the client's conversation with the proxy (and, once the
//! session is closed, kept under its id, so that a session resumed here
//! goes on with its flow); or, for a client without one (2026-07-28: each
//! request is a session of its own), under the client's identity over
//! `[flow] window`, across every request it makes. A flow grows when an
//! answer that carries a label is delivered: a tool's result, a prompt, a
//! resource read (a code-mode script's calls alike: they run on the
//! client's session), a server's sampling request put to the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{ClientIdentity, Exchange};
use crate::config::{FlowConfig, Labelled, Labels};
use crate::flow::{Flow, Named};
use crate::interceptors::authz::{Action, Target, labels_of, request_target};
use crate::protocol::Method;

use super::Session;

/// Flows kept apart from a session (clients without one, sessions closed
/// that may be resumed), at most; past it, those whose time is up go
/// first, then the ones touched longest ago.
const MAX_KEPT: usize = 10_000;

/// What an answer brought: its labels, and what it came from.
pub(super) struct Brought {
    labels: Labels,
    name: String,
    /// A resource's server (the name is its URI).
    server_of_uri: Option<String>,
}

pub(super) struct Flows {
    config: Arc<FlowConfig>,
    separator: String,
    /// How long a closed session's flow is kept for its resumption
    /// (`[proxy] session_max_age` with `session_keys`; nothing without).
    resumable: Option<Duration>,
    /// By client identity (2026-07-28), and by closed session's id.
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    clients: HashMap<Arc<str>, (Arc<Flow>, Instant)>,
    closed: HashMap<Arc<str>, (Arc<Flow>, Instant)>,
}

impl Flows {
    pub(super) fn new(
        config: Arc<FlowConfig>,
        separator: &str,
        resumable: Option<Duration>,
    ) -> Self {
        Self {
            config,
            separator: separator.to_owned(),
            resumable,
            kept: Mutex::new(Kept::default()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flow of `session`'s client as it stands (`None`: nothing yet).
    pub(super) fn of(&self, session: &Session) -> Option<Arc<Flow>> {
        if session.revision.lasting() {
            return session.flow();
        }
        let key = client_key(&session.client);
        let mut kept = self.kept();
        let (flow, _) = kept.clients.get(&*key)?;
        // A window longer than the process has run: the whole flow.
        let Some(since) = Instant::now().checked_sub(self.config.window) else {
            return Some(flow.clone());
        };
        if flow.latest().is_none_or(|latest| latest < since) {
            kept.clients.remove(&*key);
            return None;
        }
        // Copied only when part of it is past the window.
        if flow.sources_since(since) {
            return Some(flow.clone());
        }
        let kept = flow.since(since);
        (!kept.is_empty()).then(|| Arc::new(kept))
    }

    /// What the answer to a client's request brings, when it is delivered:
    /// its target's labels (a tool's, prompt's or resource's, as authz
    /// decided on them), and what it came from. `None`: nothing a flow
    /// carries.
    pub(super) fn brought(&self, exchange: &Exchange) -> Option<Brought> {
        let method = &exchange.context.method;
        // A task's update or cancel answers nothing of its tool's.
        if matches!(method, Method::TasksUpdate | Method::TasksCancel) {
            return None;
        }
        let (action, target) = request_target(exchange, &self.separator, &self.config)?;
        let labels = target.labels();
        let carries = Flow::CARRIED.iter().any(|&label| labels.has(label));
        let brought = match (action, target) {
            (Action::CallTool, Target::Tool { name, .. })
            | (Action::GetPrompt, Target::Prompt { name, .. }) => Brought {
                labels,
                name,
                server_of_uri: None,
            },
            (Action::ReadResource, Target::Resource { uri, server, .. }) => Brought {
                labels,
                name: uri,
                server_of_uri: Some(server),
            },
            _ => return None,
        };
        carries.then_some(brought)
    }

    /// Server `server`'s request `method` is put to `session`'s client: a
    /// sampling request's words reach its model.
    pub(super) fn asked(&self, session: &Session, method: &Method, server: &str) {
        if *method != Method::SamplingCreateMessage {
            return;
        }
        let labels = labels_of(&self.config, server, Labelled::Sampling, None);
        let name = format!("sampling:{server}");
        self.add(session, labels, Named::Item(&name), None);
    }

    /// What a delivered answer `brought` joins the flow of `session`'s
    /// client, from its record `seq`.
    pub(super) fn delivered(&self, session: &Session, brought: &Brought, seq: Option<u64>) {
        let named = match &brought.server_of_uri {
            Some(server) => Named::Uri {
                uri: &brought.name,
                server,
            },
            None => Named::Item(&brought.name),
        };
        self.add(session, brought.labels, named, seq);
    }

    fn add(&self, session: &Session, labels: Labels, named: Named<'_>, seq: Option<u64>) {
        let now = Instant::now();
        if session.revision.lasting() {
            session.add_to_flow(|flow| flow.with(labels, named, seq, now));
            return;
        }
        let key = client_key(&session.client);
        let mut kept = self.kept();
        let current = kept
            .clients
            .get(&*key)
            .map(|(flow, _)| flow.clone())
            .unwrap_or_default();
        let Some(next) = current.with(labels, named, seq, now) else {
            return;
        };
        let window = self.config.window;
        make_room(&mut kept.clients, &key, now, window);
        kept.clients.insert(key, (Arc::new(next), now));
    }

    /// `session` is closed: its flow is kept under its id while it may be
    /// resumed.
    pub(super) fn closed(&self, session: &Session) {
        let (Some(life), Some(flow)) = (self.resumable, session.flow()) else {
            return;
        };
        if !session.revision.lasting() {
            return;
        }
        let now = Instant::now();
        let mut kept = self.kept();
        make_room(&mut kept.closed, &session.id, now, life);
        kept.closed.insert(session.id.clone(), (flow, now));
    }

    /// `session` resumes one closed here: it goes on with its flow.
    pub(super) fn resumed(&self, session: &Session) {
        let flow = self.kept().closed.remove(&session.id);
        if let Some((flow, _)) = flow {
            session.add_to_flow(|current| current.is_empty().then(|| (*flow).clone()));
        }
    }
}

/// Room for one more in `map` (unless `key` is in it already): entries
/// untouched for `life` go; then, if it is still full, the one touched
/// longest ago.
fn make_room(
    map: &mut HashMap<Arc<str>, (Arc<Flow>, Instant)>,
    key: &str,
    now: Instant,
    life: Duration,
) {
    if map.contains_key(key) || map.len() < MAX_KEPT {
        return;
    }
    map.retain(|_, (_, touched)| now.duration_since(*touched) < life);
    if map.len() >= MAX_KEPT
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, (_, touched))| *touched)
            .map(|(key, _)| key.clone())
    {
        map.remove(&oldest);
    }
}

/// Whose flow a client without a session adds to: its name, and, for one
/// that came with an access token, who the token was issued for (two people
/// of one OAuth client named by it keep flows of their own).
fn client_key(client: &ClientIdentity) -> Arc<str> {
    match &client.token {
        Some(token) => Arc::from(format!(
            "{}\u{0}{}\u{0}{}",
            client.name,
            token.provider,
            token.subject.as_deref().unwrap_or_default()
        )),
        None => client.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::session::{Nowhere, Revision};
    use super::*;
    use crate::chain::Transport;
    use crate::config::Label;

    fn session(id: &str, client: &str, revision: Revision) -> Session {
        let mut session = Session::new(
            1,
            Arc::from(id),
            ClientIdentity::new(client, &[]),
            Transport::Http,
            Arc::new(Nowhere),
        );
        session.revision = revision;
        session
    }

    fn flows(window: Duration, resumable: Option<Duration>) -> Flows {
        let config = FlowConfig {
            window,
            ..FlowConfig::default()
        };
        Flows::new(Arc::new(config), "__", resumable)
    }

    fn page(flows: &Flows, session: &Session) {
        let labels = Labels::of(&[Label::Untrusted]);
        flows.add(session, labels, Named::Item("web__fetch"), Some(7));
    }

    #[test]
    fn a_session_keeps_its_own_and_a_resumed_one_goes_on_with_it() {
        let flows = flows(Duration::from_secs(60), Some(Duration::from_secs(600)));
        let first = session("s1", "alice", Revision::Handshake);
        let other = session("s2", "alice", Revision::Handshake);
        page(&flows, &first);
        assert!(flows.of(&first).unwrap().has(Label::Untrusted));
        assert!(flows.of(&other).is_none(), "another session starts clean");
        flows.closed(&first);
        let resumed = session("s1", "alice", Revision::Handshake);
        flows.resumed(&resumed);
        assert!(flows.of(&resumed).unwrap().has(Label::Untrusted));
        // Without session keys, nothing resumes: nothing is kept.
        let unkept = self::flows(Duration::from_secs(60), None);
        page(&unkept, &first);
        unkept.closed(&first);
        assert!(unkept.kept().closed.is_empty());
    }

    #[test]
    fn a_client_without_a_session_keeps_its_flow_across_requests_and_windows_end() {
        let flows = flows(Duration::from_secs(3600), None);
        let request = session("r1", "bob", Revision::PerRequest);
        page(&flows, &request);
        let next = session("r2", "bob", Revision::PerRequest);
        assert!(flows.of(&next).unwrap().has(Label::Untrusted));
        let someone = session("r3", "carol", Revision::PerRequest);
        assert!(flows.of(&someone).is_none());
        // A window longer than the process has run keeps the whole flow.
        let long = self::flows(Duration::from_secs(u64::MAX / 4), None);
        page(&long, &request);
        assert!(long.of(&next).is_some());
    }
}
