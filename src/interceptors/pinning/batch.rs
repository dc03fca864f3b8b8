//! What one judgement of a list writes down, and the counts that cap it.

use std::collections::HashMap;

use super::PinEvent;
use super::store::{Pin, PinFile, Seen, SeenFile};

/// Changes one judging pass makes, written together.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) pins: Vec<(String, Pin)>,
    pub(super) seen: Vec<(String, Option<Seen>)>,
    pub(super) events: Vec<PinEvent>,
    /// Per server: its tools in the pin file and in the file of tools
    /// awaiting review, this batch's included (counted once per batch).
    counts: HashMap<String, (usize, usize)>,
}

impl Batch {
    /// The server's tools pinned and awaiting review, with this batch's.
    pub(super) fn counts(
        &mut self,
        (server, separator): (&str, &str),
        pins: &PinFile,
        seen: &SeenFile,
    ) -> &mut (usize, usize) {
        self.counts.entry(server.to_owned()).or_insert_with(|| {
            let ours = |name: &&String| server_of(name, separator) == server;
            (
                pins.tools.keys().filter(ours).count(),
                seen.tools.keys().filter(ours).count(),
            )
        })
    }
}

/// The server part of a namespaced tool name (the whole name when it has
/// no separator: such names are counted together).
pub(super) fn server_of<'a>(name: &'a str, separator: &str) -> &'a str {
    name.split_once(separator)
        .map_or(name, |(server, _)| server)
}
