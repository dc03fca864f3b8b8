//! `container` upstreams: an MCP server image run through the Docker Engine
//! API (bollard; `DOCKER_HOST` honoured) under the hardened profile, speaking
//! MCP over the container's attached stdin and stdout.
//!
//! Order matters when starting: the container is created, attached, and only
//! then started, so that not one byte of its output is missed. From creation
//! on, a container never outlives the link that owns it: every failure path
//! removes it, and so does closing the link. Containers left behind by a proxy
//! that was killed are found by their labels at the next start and removed.
//!
//! `profile` says what Docker is asked for (the hardened create request),
//! `image` finds (and may pull) the image, `fifo` sets up stdio through
//! FIFOs, `attach` creates, attaches and starts a container and is its link,
//! `owner` tells which proxy process a container belongs to, `orphans`
//! removes what dead proxies left, and `engine` reaches the Docker engine.
//!
//! [`Backend`] is where the engine plugs in: [`Docker`] is the one there
//! is. A Kubernetes backend (pods under the same profile as a
//! `securityContext`, stdio over the pod's attach stream) would be another
//! implementation; docs/ARCHITECTURE.md, "Kubernetes", maps it out.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::UpstreamError;
use super::link::{Connected, Inbox};
use crate::config::{ContainerSpec, LimitsConfig};

mod attach;
mod engine;
mod fifo;
mod image;
mod orphans;
mod owner;
mod profile;
pub mod signature;

pub use engine::{describe, engine, engine_address, labelled, short};
pub use image::{Missing, ensure_image, ensure_image_present};
pub use orphans::{remove_orphaned_fifos, remove_orphans, remove_owned};
pub use owner::owner;
pub use profile::{create_body, labels};

/// What runs a `container` server: it starts the server's workload under
/// the hardened profile and returns the link over its stdio, which removes
/// the workload when closed; what it started is labelled so that
/// [`remove_orphans`] finds what a killed proxy left.
pub(crate) trait Backend: Send + Sync {
    fn spawn<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        secrets: &'a [(String, String)],
        limits: LimitsConfig,
        inbox: Arc<dyn Inbox>,
        restarts: u64,
    ) -> BoxFuture<'a, Result<Connected, UpstreamError>>;
}

/// The Docker Engine API (bollard; `DOCKER_HOST` honoured).
pub(crate) struct Docker;

impl Backend for Docker {
    fn spawn<'a>(
        &'a self,
        spec: &'a ContainerSpec,
        secrets: &'a [(String, String)],
        limits: LimitsConfig,
        inbox: Arc<dyn Inbox>,
        restarts: u64,
    ) -> BoxFuture<'a, Result<Connected, UpstreamError>> {
        attach::spawn(spec, secrets, limits, inbox, restarts).boxed()
    }
}

/// Every container Portcullis starts carries these labels.
pub const LABEL_MANAGED: &str = "dev.portcullis.managed";
pub const LABEL_SERVER: &str = "dev.portcullis.server";
/// `HOST/PIDNS/PID/STARTTIME` of the proxy process that owns the container.
pub const LABEL_OWNER: &str = "dev.portcullis.owner";
/// How many times the server had been restarted when this container started.
pub const LABEL_RESTARTS: &str = "dev.portcullis.restarts";
/// The client a per-client container serves alone.
pub const LABEL_CLIENT: &str = "dev.portcullis.client";
