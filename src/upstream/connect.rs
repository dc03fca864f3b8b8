//! The real [`Connector`]: the link a server's config names, with its
//! secrets resolved at each start.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::link::{Connected, Connector, Inbox};
use super::{UpstreamError, container, process, remote};
use tokio_util::sync::CancellationToken;

use crate::config::{ContainerSpec, LimitsConfig, ServerConfig, UpstreamSpec};

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
    /// none (revoked) closes the link, so that the supervisor starts the
    /// container again with what the vault holds then.
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
        let watched = CancellationToken::new();
        let token =
            super::remote_token::users_token(&sign_in.remote, &inbox, &self.tokens, &watched, true)
                .await?;
        let Some(bare) = token.bare() else {
            watched.cancel();
            return Err(UpstreamError::Start {
                server: inbox.server().to_string(),
                reason: "the user's token cannot be given in the environment".into(),
            });
        };
        secrets.push((sign_in.env.clone(), bare));
        let spawned = (self
            .containers
            .spawn(spec, &secrets, self.limits, inbox, restarts))
        .await;
        let connected = match spawned {
            Ok(connected) => connected,
            Err(err) => {
                watched.cancel();
                return Err(err);
            }
        };
        let closed = connected.closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watched.cancelled() => closed.cancel(),
                () = closed.cancelled() => watched.cancel(),
            }
        });
        Ok(connected)
    }
}
