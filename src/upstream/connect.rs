//! The real [`Connector`]: the link a server's config names, with its
//! secrets resolved at each start.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::link::{Connected, Connector, Inbox};
use super::{UpstreamError, container, process, remote};
use crate::config::{LimitsConfig, ServerConfig, UpstreamSpec};

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
            UpstreamSpec::Container(spec) => {
                (self
                    .containers
                    .spawn(spec, &secrets, self.limits, inbox, restarts))
                .await
            }
        }
    }
}
