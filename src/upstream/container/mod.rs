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

mod attach;
mod engine;
mod fifo;
mod image;
mod orphans;
mod owner;
mod profile;
pub mod signature;

pub(super) use attach::spawn;
pub use engine::{describe, engine, engine_address, labelled, short};
pub use image::{Missing, ensure_image, ensure_image_present};
pub use orphans::{remove_orphaned_fifos, remove_orphans, remove_owned};
pub use owner::owner;
pub use profile::{create_body, labels};

/// Every container Portcullis starts carries these labels.
pub const LABEL_MANAGED: &str = "dev.portcullis.managed";
pub const LABEL_SERVER: &str = "dev.portcullis.server";
/// `HOST/PIDNS/PID/STARTTIME` of the proxy process that owns the container.
pub const LABEL_OWNER: &str = "dev.portcullis.owner";
/// How many times the server had been restarted when this container started.
pub const LABEL_RESTARTS: &str = "dev.portcullis.restarts";
/// The client a per-client container serves alone.
pub const LABEL_CLIENT: &str = "dev.portcullis.client";
