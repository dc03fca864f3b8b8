//! Cedar on the proxy's own decisions in a call: a user asked to sign in
//! to a server (`sign_in`), a catalog server added (`add_server`, from
//! `discovery`); what each leaves in the exchange for its record.

use std::sync::Arc;

use crate::chain::{Annotation, Denial, Exchange, Refusal};
use crate::interceptors::authz::{Action, Decision, Target};
use crate::protocol;
use crate::upstream::UpstreamError;

use super::{Failure, Gateway, Session};

/// How long a removed `sign_in` server stays out of the config before its
/// users' sign-ins are revoked: a removal undone at once (a write caught
/// half way, an operator's second thought) revokes nothing.
const REVOKE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl Gateway {
    /// The `sign_in` servers configured now, by name.
    fn sign_in_servers(&self) -> std::collections::BTreeSet<String> {
        self.servers
            .configured()
            .iter()
            .filter(|(_, upstream)| upstream.config().kind.sign_in().is_some())
            .map(|(_, upstream)| upstream.name().to_string())
            .collect()
    }

    /// The settings `server`'s users sign in under now, if it is a
    /// `sign_in` server of this config.
    pub fn sign_in_remote(&self, server: &str) -> Option<crate::config::RemoteSpec> {
        self.servers
            .configured()
            .iter()
            .find(|(_, upstream)| &**upstream.name() == server)
            .and_then(|(_, upstream)| upstream.config().kind.sign_in().cloned())
    }

    /// After a reload: which `sign_in` servers the config names now, kept
    /// beside the vault (see [`crate::signin::SignIns::name_servers`]); not
    /// by a proxy running a profile.
    pub(super) fn name_sign_in_servers(&self) {
        if self.config.profile.is_some() {
            return;
        }
        if let Some(sign_ins) = self.servers.sign_ins() {
            sign_ins.name_servers(&self.config.file, &self.sign_in_servers());
        }
    }

    /// `serve` at its start (not the CLI's one-shot commands): sign-ins
    /// to servers this config named and no longer does, revoked in
    /// [`REVOKE_AFTER`].
    pub fn revoke_removed_while_stopped(self: &Arc<Self>) {
        self.revoke_later(None);
    }

    /// In [`REVOKE_AFTER`], if the server is still out of the config, its
    /// users' sign-ins revoked and forgotten: `removed` (its name and
    /// settings) a reload took out; `None`, at start, every server the
    /// vault keeps sign-ins to and the config does not name.
    pub(super) fn revoke_later(
        self: &Arc<Self>,
        removed: Option<(String, crate::config::RemoteSpec)>,
    ) {
        let Some(sign_ins) = self.servers.sign_ins() else {
            return;
        };
        // A vault other replicas share (`[vault] dir`): one replica cannot
        // tell a server the fleet removed from one its old or new config
        // lacks, mid-rollout; what it revoked would be every replica's.
        if self.config.vault.dir.is_some() {
            match &removed {
                Some((server, _)) => {
                    tracing::info!(%server, "a sign_in server left the config: its users' sign-ins are kept, the vault being shared (`[vault] dir`); `oauth revoke` revokes them");
                }
                None => {
                    tracing::info!(
                        "the vault is shared (`[vault] dir`): sign-ins to servers the config no longer names are not revoked at start; `oauth revoke` does it"
                    );
                }
            }
            return;
        }
        // Narrowed to a profile, the proxy cannot tell a server taken out
        // of the file from one outside its profile, which another proxy of
        // the same config may serve with the same vault.
        if let Some(profile) = &self.config.profile {
            match &removed {
                Some((server, _)) => {
                    tracing::info!(%server, profile = %profile.name, "a sign_in server left the profile's config: its users' sign-ins are kept (a proxy running a profile revokes none; `oauth revoke` does)");
                }
                None => {
                    tracing::info!(profile = %profile.name, "running a profile: sign-ins to servers outside it are not looked at");
                }
            }
            return;
        }
        if removed.is_none() {
            // At once: a reload or a stop in the next seconds keeps what
            // the pass below would revoke (still named, still signed in).
            sign_ins.name_servers(&self.config.file, &self.sign_in_servers());
        }
        let gateway = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = gateway.shutdown.cancelled() => return,
                () = tokio::time::sleep(REVOKE_AFTER) => {}
            }
            let configured = |server: &str| gateway.servers.index_of(server).is_some();
            match removed {
                Some((server, remote)) => {
                    if configured(&server) {
                        tracing::info!(%server, "a removed server is in the config again: its users' sign-ins are kept");
                    } else {
                        sign_ins
                            .revoke_removed(&server, &remote, || !configured(&server))
                            .await;
                    }
                }
                None => {
                    let named = gateway.sign_in_servers();
                    let file = gateway.config.file.clone();
                    let revoked = sign_ins.revoke_orphans((&file, &named), configured).await;
                    tracing::info!(
                        revoked = revoked.len(),
                        "sign-ins to servers removed while the proxy was stopped: looked at"
                    );
                }
            }
        });
    }
}

/// Notes Cedar's `decision` on `action` for `server` in the exchange (its
/// record carries it, in place of the chain's); a denial is the call's
/// refusal, naming the decision.
pub(super) fn note_decision(
    exchange: &mut Exchange,
    client: &str,
    (action, server): (Action, &str),
    decision: Decision,
) -> Result<(), Failure> {
    let decision_id = uuid::Uuid::new_v4().to_string();
    exchange.annotations.retain(|a| {
        &*a.interceptor != "authz"
            || !matches!(
                a.key.as_str(),
                "decision" | "decision_id" | "policy_ids" | "policy_set"
            )
    });
    for (key, value) in [
        (
            "decision",
            if decision.allowed { "allow" } else { "deny" }.to_owned(),
        ),
        ("decision_id", decision_id.clone()),
        ("policy_ids", decision.policies.join(",")),
        ("policy_set", decision.policy_set.to_string()),
    ] {
        exchange.annotations.push(Annotation {
            interceptor: Arc::from("authz"),
            key: key.to_owned(),
            value,
        });
    }
    if decision.allowed {
        return Ok(());
    }
    let action = action.name();
    tracing::info!(%client, %server, %decision_id, %action, "denied by policy");
    Err(Failure::Denied(Refusal {
        interceptor: Arc::from("authz"),
        denial: Denial::new(
            protocol::code::DENIED,
            format!(
                "{action} on `{}` is not permitted (decision {decision_id})",
                server.escape_debug()
            ),
        )
        .with("decision_id", decision_id)
        .with("policy_set", decision.policy_set.to_string()),
    }))
}

impl Gateway {
    /// A call that found no usable sign-in of its client's user, who would
    /// be given a link (`failure`): Cedar decides whether that user may be
    /// asked to sign in to the server (`sign_in` on `Server::"<name>"`).
    /// Permitted, or no policies: `failure` as it is (the words and the
    /// link; the record keeps the call's own decision). Denied: the call's
    /// refusal, its record naming the `sign_in` decision, and the link
    /// made for it forgotten (it never leaves the proxy).
    pub(super) fn may_sign_in(
        &self,
        session: &Session,
        exchange: &mut Exchange,
        failure: Failure,
    ) -> Failure {
        let Failure::Upstream(UpstreamError::SignInNeeded { server, link, .. }) = &failure else {
            return failure;
        };
        let Some(access) = self.access.as_ref() else {
            return failure;
        };
        let protocol = session.protocol_version().unwrap_or_default();
        let target = Target::Server {
            name: server.clone(),
        };
        let Some(decision) = access.decide(
            &session.client,
            (session.transport, &protocol, &session.id),
            Action::SignIn,
            &target,
        ) else {
            return failure;
        };
        // Permitted: the record keeps the call's own decision.
        if decision.allowed {
            return failure;
        }
        let noted = note_decision(
            exchange,
            &session.client.name,
            (Action::SignIn, server),
            decision,
        );
        match noted {
            Ok(()) => failure,
            Err(denied) => {
                if let Some(sign_ins) = self.servers().sign_ins() {
                    sign_ins.pendings().forget(link);
                }
                denied
            }
        }
    }
}

/// The most sign-in links given as URL elicitations whose sessions wait to
/// be told they were answered (the oldest forgotten first).
const MAX_ELICITATIONS: usize = 10_000;

/// The sign-in links given as URL elicitations (by `elicitationId`), the
/// sessions each was given to, and until when it may be answered.
#[derive(Default)]
pub(super) struct Elicitations(std::sync::Mutex<ElicitationsHeld>);

#[derive(Default)]
pub(super) struct ElicitationsHeld {
    by_id: std::collections::HashMap<String, (std::time::Instant, Vec<u64>)>,
    order: std::collections::VecDeque<String>,
}

impl Elicitations {
    /// `session` was given the link named `id`, which lives `life`.
    pub(super) fn told(&self, id: String, session: u64, life: std::time::Duration) {
        let now = std::time::Instant::now();
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held = &mut *held;
        if let Some((_, sessions)) = held.by_id.get_mut(&id) {
            if !sessions.contains(&session) {
                sessions.push(session);
            }
            return;
        }
        held.by_id.insert(id.clone(), (now + life, vec![session]));
        held.order.push_back(id);
        // The oldest, and those past their life, go first.
        while let Some(oldest) = held.order.front() {
            let expired = held
                .by_id
                .get(oldest)
                .is_none_or(|(until, _)| *until <= now);
            if !expired && held.order.len() <= MAX_ELICITATIONS {
                break;
            }
            if let Some(oldest) = held.order.pop_front() {
                held.by_id.remove(&oldest);
            }
        }
    }

    /// The sessions the link named `id` was given to, forgotten.
    fn answered(&self, id: &str) -> Vec<u64> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.order.retain(|other| other != id);
        held.by_id
            .remove(id)
            .filter(|(until, _)| *until > std::time::Instant::now())
            .map(|(_, sessions)| sessions)
            .unwrap_or_default()
    }
}

impl Gateway {
    /// The sign-in given as the URL elicitation `id` was answered: each
    /// session it was given to, still open, is told
    /// (`notifications/elicitation/complete`), so that its client may retry
    /// the call at once.
    pub fn elicitation_complete(&self, id: &str) {
        let message = protocol::notification(
            "notifications/elicitation/complete",
            serde_json::json!({ "elicitationId": id }),
        );
        for key in self.elicitations.answered(id) {
            if let Some(session) = self.sessions.get(key) {
                self.notify(&session, None, message.clone(), None, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn an_elicitation_tells_its_sessions_once_while_it_lives() {
        let held = Elicitations::default();
        let life = std::time::Duration::from_secs(600);
        held.told("e1".into(), 7, life);
        held.told("e1".into(), 7, life);
        held.told("e1".into(), 9, life);
        assert_eq!(held.answered("e1"), vec![7, 9]);
        // Once only; an id never given, nothing.
        assert!(held.answered("e1").is_empty());
        assert!(held.answered("e2").is_empty());
        // Past its life: nobody is told.
        held.told("e3".into(), 1, std::time::Duration::ZERO);
        assert!(held.answered("e3").is_empty());
    }

    #[test]
    fn the_oldest_elicitations_go_first_past_the_bound() {
        let held = Elicitations::default();
        let life = std::time::Duration::from_secs(600);
        for n in 0..=MAX_ELICITATIONS {
            held.told(format!("e{n}"), 1, life);
        }
        assert!(held.answered("e0").is_empty());
        assert_eq!(held.answered("e1"), vec![1]);
        assert_eq!(held.answered(&format!("e{MAX_ELICITATIONS}")), vec![1]);
        assert!(held.0.lock().unwrap().by_id.len() < MAX_ELICITATIONS);
    }
}
