//! The real [`Connector`]: the link a server's config names, with its
//! secrets resolved at each start.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::link::{Connected, Connector, Inbox};
use super::{UpstreamError, container, process, remote};
use tokio_util::sync::CancellationToken;

use crate::config::{ContainerSpec, LimitsConfig, ServerConfig, UpstreamSpec};

/// Starts of a container whose user's token changes meanwhile, at most
/// in a row.
const START_TRIES: usize = 3;

pub(super) struct ConfigConnector {
    pub(super) config: Arc<ServerConfig>,
    pub(super) limits: LimitsConfig,
    /// Clients' access tokens, for a `token_exchange` server's instances.
    pub(super) tokens: Arc<super::UserTokens>,
    /// What runs `container` servers (the Docker engine).
    pub(super) containers: Arc<dyn container::Backend>,
}

impl Connector for ConfigConnector {
    fn connect(
        &self,
        inbox: Arc<dyn Inbox>,
        restarts: u64,
    ) -> BoxFuture<'_, Result<Connected, UpstreamError>> {
        self.open(inbox, restarts).boxed()
    }
}

impl ConfigConnector {
    async fn open(&self, inbox: Arc<dyn Inbox>, restarts: u64) -> Result<Connected, UpstreamError> {
        let name = inbox.server().to_string();
        let secrets = self
            .config
            .secrets
            .iter()
            .map(|(key, reference)| {
                reference
                    .resolve()
                    .map(|value| (key.clone(), value))
                    .map_err(|reason| UpstreamError::Start {
                        server: name.clone(),
                        reason: format!("secret `{key}`: {reason}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        match &self.config.kind {
            UpstreamSpec::Process(spec) => process::spawn(spec, &secrets, self.limits, inbox).await,
            UpstreamSpec::Remote(spec) => {
                remote::open(spec, &secrets, self.limits, inbox, &self.tokens).await
            }
            UpstreamSpec::Container(spec) => self.container(spec, secrets, inbox, restarts).await,
        }
    }

    /// A container, given its user's token where its users sign in: the
    /// token is got first (the user may be told to sign in), watched while
    /// the container runs, and a new one (refreshed, signed in anew) or
    /// none (revoked) closes a client's instance, so that the supervisor
    /// starts it again with what the vault holds then. The server's own
    /// instance, which only lists, is closed only when there is none.
    async fn container(
        &self,
        spec: &ContainerSpec,
        mut secrets: Vec<(String, String)>,
        inbox: Arc<dyn Inbox>,
        restarts: u64,
    ) -> Result<Connected, UpstreamError> {
        let Some(sign_in) = &spec.sign_in else {
            return (self
                .containers
                .spawn(spec, &secrets, self.limits, inbox, restarts))
            .await;
        };
        // The client's secret is the proxy's own: never the container's,
        // under its name or any other that holds the same value.
        let withheld: Option<String> = secrets
            .iter()
            .find(|(name, _)| Some(name.as_str()) == sign_in.withheld.as_deref())
            .map(|(_, value)| value.clone());
        secrets.retain(|(_, value)| Some(value) != withheld.as_ref());
        let once = inbox.instance().is_some();
        for _ in 0..START_TRIES {
            let watched = CancellationToken::new();
            // Whatever ends this start (an error, or the supervisor giving
            // it up) ends the watch with it.
            let guard = watched.clone().drop_guard();
            let token = super::remote_token::users_token(
                &sign_in.remote,
                &inbox,
                &self.tokens,
                &watched,
                once,
            )
            .await?;
            let Some(bare) = token.bare() else {
                return Err(UpstreamError::Start {
                    server: inbox.server().to_string(),
                    reason: "the user's token cannot be given in the environment".into(),
                });
            };
            let mut given = secrets.clone();
            given.push((sign_in.env.clone(), bare));
            let connected =
                (self
                    .containers
                    .spawn(spec, &given, self.limits, inbox.clone(), restarts))
                .await?;
            if watched.is_cancelled() {
                // The token changed or went while the container started:
                // started again with what the vault holds now.
                connected.link.close().await;
                continue;
            }
            let watched = guard.disarm();
            let closed = connected.closed.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = watched.cancelled() => closed.cancel(),
                    () = closed.cancelled() => watched.cancel(),
                }
            });
            return Ok(connected);
        }
        Err(UpstreamError::Start {
            server: inbox.server().to_string(),
            reason: "the user's token changed at each of its starts".into(),
        })
    }
}
