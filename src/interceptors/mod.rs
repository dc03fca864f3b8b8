//! The native interceptors, one file each.

mod limits;

pub use limits::Limits;

use std::sync::Arc;

use crate::chain::{Chain, Interceptor};
use crate::config::{ChainEntry, Config};

/// Builds the chain in the config's order.
pub fn build_chain(config: &Config) -> Chain {
    let interceptors = config
        .chain
        .iter()
        .map(|entry| match entry {
            ChainEntry::Limits => Arc::new(Limits::new(config.limits)) as Arc<dyn Interceptor>,
        })
        .collect();
    Chain::new(interceptors)
}
