//! A flow: which labels the data a client was given so far carries, and
//! which exchanges brought each. Policies read it as `context.flow`; a
//! refusal it decided names those exchanges in its record.
//!
//! A flow only grows (a window's end aside): a value is never changed in
//! place, each exchange that brings a label makes a new one, so a decision
//! holds the flow as it stood when it was taken. It is bounded: a tool's or
//! a prompt's name (the catalog bounds them) is kept among the last
//! [`MAX_NAMES`] of its label; a resource, named by a URI the client
//! writes, among the last [`MAX_URIS`], past which it counts under its
//! server's name (`<server>:*`), so that reads of many URIs never push a
//! tool's name out.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::config::{Label, Labels};

/// Names of tools and prompts kept per label: past it, the oldest is let
/// go (the label stays).
pub const MAX_NAMES: usize = 256;

/// Resources kept by URI per label: past it, a resource counts under its
/// server's name.
pub const MAX_URIS: usize = 16;

/// Bytes of a name kept: a longer tool or prompt name is cut at a
/// character's boundary; a longer URI counts under its server's name.
pub const MAX_NAME: usize = 256;

/// What an answer came from, as a flow names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named<'a> {
    /// A tool or a prompt, by the name the client knows it by (or
    /// `sampling:<server>`).
    Item(&'a str),
    /// A resource of `server`, by its URI.
    Uri { uri: &'a str, server: &'a str },
}

/// An exchange that brought a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub label: Label,
    /// What answered, as the client names it (`web__fetch`, a resource's
    /// URI without its user, query or fragment, `<server>:*`,
    /// `sampling:<server>`).
    pub name: Arc<str>,
    /// A resource's (bounded apart from tools and prompts).
    uri: bool,
    /// The exchange's audit record, when the log gave it a number.
    pub seq: Option<u64>,
    /// When it was delivered (for a window's end).
    pub at: Instant,
}

/// The labels the data given to a client carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flow {
    sources: Vec<Source>,
}

impl Flow {
    /// The labels a flow carries: those of data (`untrusted`, `private`);
    /// a sink names where data goes, not what it is.
    pub const CARRIED: [Label; 2] = [Label::Untrusted, Label::Private];

    /// A flow brought by these (label, tool or prompt name) pairs at once
    /// (fixtures, `policy explain`, benchmarks).
    pub fn of_names<'a>(pairs: impl IntoIterator<Item = (Label, &'a str)>) -> Self {
        let now = Instant::now();
        pairs
            .into_iter()
            .fold(Self::default(), |flow, (label, name)| {
                flow.with(Labels::of(&[label]), Named::Item(name), None, now)
                    .unwrap_or(flow)
            })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn has(&self, label: Label) -> bool {
        self.sources.iter().any(|source| source.label == label)
    }

    /// The exchanges that brought `label`, oldest first.
    pub fn sources(&self, label: Label) -> impl Iterator<Item = &Source> {
        self.sources
            .iter()
            .filter(move |source| source.label == label)
    }

    /// This flow with what one delivered answer brought: each of `labels` a
    /// flow carries, from `named` (its record `seq`). `None`: nothing new.
    pub fn with(
        &self,
        labels: Labels,
        named: Named<'_>,
        seq: Option<u64>,
        at: Instant,
    ) -> Option<Self> {
        let carried: Vec<Label> = Self::CARRIED
            .into_iter()
            .filter(|&label| labels.has(label))
            .collect();
        if carried.is_empty() {
            return None;
        }
        let mut next = self.clone();
        for label in carried {
            let (name, uri) = next.name_for(label, named);
            // The same name again: its newest exchange is the one kept.
            next.sources.retain(|s| s.label != label || s.name != name);
            let bound = if uri { MAX_URIS } else { MAX_NAMES };
            let kept = next
                .sources
                .iter()
                .filter(|s| s.label == label && s.uri == uri)
                .count();
            if kept >= bound
                && let Some(oldest) = next
                    .sources
                    .iter()
                    .position(|s| s.label == label && s.uri == uri)
            {
                next.sources.remove(oldest);
            }
            next.sources.push(Source {
                label,
                name,
                uri,
                seq,
                at,
            });
        }
        Some(next)
    }

    /// The name `named` is kept under for `label`, and whether it counts
    /// among the URIs.
    fn name_for(&self, label: Label, named: Named<'_>) -> (Arc<str>, bool) {
        match named {
            Named::Item(name) => (Arc::from(cut(name)), false),
            Named::Uri { uri, server } => {
                let plain = plain_uri(uri);
                let spilled = || (Arc::from(format!("{server}:*").as_str()), false);
                if plain.len() > MAX_NAME {
                    return spilled();
                }
                let known = self.sources(label).any(|s| s.uri && *s.name == plain);
                let full = self.sources(label).filter(|s| s.uri).count() >= MAX_URIS;
                if full && !known {
                    spilled()
                } else {
                    (Arc::from(plain), true)
                }
            }
        }
    }

    /// This flow without what was brought before `since`.
    #[must_use]
    pub fn since(&self, since: Instant) -> Self {
        Self {
            sources: self
                .sources
                .iter()
                .filter(|source| source.at >= since)
                .cloned()
                .collect(),
        }
    }

    /// Whether everything it holds was brought at or after `since`.
    pub fn sources_since(&self, since: Instant) -> bool {
        self.sources.iter().all(|source| source.at >= since)
    }

    /// When it was last added to.
    pub fn latest(&self) -> Option<Instant> {
        self.sources.iter().map(|source| source.at).max()
    }

    /// As a record says it: for each label, the exchanges that brought it
    /// (`{"untrusted": [{"name": "web__fetch", "seq": 12}], …}`).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for label in Self::CARRIED {
            let sources: Vec<Value> = self
                .sources(label)
                .map(|source| match source.seq {
                    Some(seq) => json!({"name": &*source.name, "seq": seq}),
                    None => json!({"name": &*source.name}),
                })
                .collect();
            if !sources.is_empty() {
                out.insert(label.name().to_owned(), Value::Array(sources));
            }
        }
        Value::Object(out)
    }
}

/// `name`, cut at [`MAX_NAME`] bytes on a character's boundary.
fn cut(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default()
}

/// A URI without what may carry a credential: its user part, its query and
/// its fragment (`https://u:p@host/a?t=1#x` → `https://host/a`).
fn plain_uri(uri: &str) -> String {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let uri = uri.get(..end).unwrap_or(uri);
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flow_grows_keeps_the_newest_of_a_name_and_never_carries_a_sink() {
        let now = Instant::now();
        let all = Labels::of(&[Label::Untrusted, Label::Sink]);
        let fetch = Named::Item("web__fetch");
        let flow = Flow::default().with(all, fetch, Some(3), now).unwrap();
        assert!(flow.has(Label::Untrusted) && !flow.has(Label::Sink));
        let sink = Labels::of(&[Label::Sink]);
        assert!(
            Flow::default()
                .with(sink, Named::Item("mail__send"), None, now)
                .is_none()
        );
        let later = now + Duration::from_secs(1);
        let again = flow.with(all, fetch, Some(9), later).unwrap();
        let seqs: Vec<_> = again.sources(Label::Untrusted).map(|s| s.seq).collect();
        assert_eq!(seqs, [Some(9)]);
        assert_eq!(
            again.to_json(),
            json!({"untrusted": [{"name": "web__fetch", "seq": 9}]})
        );
    }

    #[test]
    fn many_uris_never_push_a_tools_name_out() {
        let now = Instant::now();
        let private = Labels::of(&[Label::Private]);
        let mut flow = Flow::of_names([(Label::Private, "crm__search")]);
        for n in 0..MAX_URIS * 4 {
            let uri = format!("file:///junk/{n}");
            let named = Named::Uri {
                uri: &uri,
                server: "fs",
            };
            flow = flow.with(private, named, None, now).unwrap();
        }
        let names: Vec<_> = flow
            .sources(Label::Private)
            .map(|s| s.name.to_string())
            .collect();
        assert!(names.contains(&"crm__search".to_owned()), "{names:?}");
        assert!(names.contains(&"fs:*".to_owned()), "{names:?}");
        assert_eq!(names.len(), MAX_URIS + 2, "{names:?}");
        // Past its bound of tools' names, the oldest goes; the label stays.
        for n in 0..MAX_NAMES {
            let name = format!("db__q{n}");
            flow = flow.with(private, Named::Item(&name), None, now).unwrap();
        }
        assert!(
            !flow
                .sources(Label::Private)
                .any(|s| &*s.name == "crm__search")
        );
        assert!(flow.has(Label::Private));
    }

    #[test]
    fn a_uri_is_named_without_what_may_carry_a_credential() {
        let now = Instant::now();
        let untrusted = Labels::of(&[Label::Untrusted]);
        let named = |uri| Named::Uri { uri, server: "web" };
        let name_of = |uri| {
            let flow = Flow::default()
                .with(untrusted, named(uri), None, now)
                .unwrap();
            flow.sources(Label::Untrusted)
                .next()
                .unwrap()
                .name
                .to_string()
        };
        assert_eq!(
            name_of("https://user:hunter2@host.example/a/b?token=abc#frag"),
            "https://host.example/a/b"
        );
        assert_eq!(name_of("file:///etc/hosts"), "file:///etc/hosts");
        let long = format!("https://host/{}", "é".repeat(MAX_NAME));
        assert_eq!(name_of(&long), "web:*");
        // A long tool name is cut at a character's boundary.
        let long_tool = format!("srv__{}", "é".repeat(MAX_NAME));
        let flow = Flow::of_names([(Label::Private, long_tool.as_str())]);
        let kept = &flow.sources(Label::Private).next().unwrap().name;
        assert!(kept.len() <= MAX_NAME && long_tool.starts_with(&**kept));
    }

    #[test]
    fn a_window_lets_go_of_what_came_before_it() {
        let start = Instant::now();
        let later = start + Duration::from_secs(60);
        let flow = Flow::default()
            .with(
                Labels::of(&[Label::Untrusted]),
                Named::Item("web__fetch"),
                None,
                start,
            )
            .unwrap()
            .with(
                Labels::of(&[Label::Private]),
                Named::Item("git__log"),
                None,
                later,
            )
            .unwrap();
        let kept = flow.since(start + Duration::from_secs(1));
        assert!(!kept.has(Label::Untrusted) && kept.has(Label::Private));
        assert_eq!(kept.latest(), Some(later));
    }
}
