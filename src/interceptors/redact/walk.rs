//! One message's walk: every member of the envelope but `id` (remapped
//! both ways) and `method` (refused if it holds a secret), every key, every
//! string, in every position. Where a value
//! stands in the MCP schema matters in one way only: the base64 fields the
//! schema defines are decoded and their bytes scanned, not read as text.
//!
//! ```text
//!   string ──► scan ──► + `key: value` context ──► + percent-decoded ──► + base64 runs decoded
//!   key    ──► scan                      (a finding renames the key, or refuses on a clash)
//!   array  ──► text blocks joined: findings across a join redact both sides
//!   schema base64 (image/audio `data`, resource `blob`) ──► decoded ──► scanned ──► re-encoded
//! ```

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::encoded;
use super::{Finding, Redact};
use crate::chain::Phase;
use crate::config::RedactAction;
use crate::protocol::Method;

/// Deeper than this, a message is refused rather than walked further
/// (parsed messages nest at most 128 levels; `limits` refuses far less).
const MAX_WALK_DEPTH: usize = 256;

/// Where a value stands in the MCP schema (only as far as base64 fields
/// need it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Plain,
    /// The `result` of `tools/call`.
    ToolResult,
    /// The `result` of `prompts/get`.
    PromptResult,
    /// The `result` of `resources/read`.
    ReadResult,
    /// The `params` of `sampling/createMessage`.
    SamplingParams,
    /// The `result` of `sampling/createMessage`.
    SamplingResult,
    /// A list of prompt or sampling messages.
    Messages,
    Message,
    /// A list of content blocks.
    Blocks,
    /// A content block or a list of them.
    BlockOrBlocks,
    Block,
    /// A list of resource contents.
    Resources,
    /// Resource contents (text or blob), alone or embedded in a block.
    Resource,
}

impl Position {
    /// The position of a top-level member of a message about `method`.
    fn top(method: Option<&Method>, phase: Phase, member: &str) -> Self {
        match (member, phase, method) {
            ("result", Phase::Response, Some(Method::ToolsCall)) => Self::ToolResult,
            ("result", Phase::Response, Some(Method::PromptsGet)) => Self::PromptResult,
            ("result", Phase::Response, Some(Method::ResourcesRead)) => Self::ReadResult,
            ("params", Phase::Request, Some(Method::SamplingCreateMessage)) => Self::SamplingParams,
            ("result", Phase::Response, Some(Method::SamplingCreateMessage)) => {
                Self::SamplingResult
            }
            _ => Self::Plain,
        }
    }

    /// The position of member `key` of an object here; `kind` is the
    /// object's `type`.
    fn member(self, key: &str, kind: Option<&str>) -> Self {
        match (self, key, kind) {
            (Self::ToolResult, "content", _) => Self::Blocks,
            (Self::PromptResult | Self::SamplingParams, "messages", _) => Self::Messages,
            (Self::ReadResult, "contents", _) => Self::Resources,
            (Self::SamplingResult | Self::Message, "content", _) => Self::BlockOrBlocks,
            (Self::Block, "resource", Some("resource")) => Self::Resource,
            (Self::Block, "content", Some("tool_result")) => Self::Blocks,
            _ => Self::Plain,
        }
    }

    /// The position of an array's items here.
    fn item(self) -> Self {
        match self {
            Self::Messages => Self::Message,
            Self::Blocks | Self::BlockOrBlocks => Self::Block,
            Self::Resources => Self::Resource,
            _ => Self::Plain,
        }
    }

    /// Whether member `key` of an object here is base64 by the schema.
    fn is_base64(self, key: &str, kind: Option<&str>) -> bool {
        match self {
            // (An object at `BlockOrBlocks` is walked as a `Block`.)
            Self::Block => key == "data" && matches!(kind, Some("image" | "audio")),
            Self::Resource => key == "blob",
            _ => false,
        }
    }
}

/// What a walk found.
pub(super) struct Pass<'a> {
    redact: &'a Redact,
    /// Redact every finding, whatever the actions (and count none).
    all: bool,
    /// 0: toward servers, 1: toward the client.
    side: usize,
    method: Option<&'a Method>,
    phase: Phase,
    pub counts: Vec<(u32, u64)>,
    pub denied_by: Option<u32>,
    /// Why the message cannot be passed on whatever the rules say (base64
    /// that does not decode, a renamed key that clashes, too deep).
    pub refused: Option<&'static str>,
    found: Vec<Finding>,
    more: Vec<Finding>,
    kept: Vec<Finding>,
    /// Findings across joins, already counted, waiting for the text they
    /// belong to (known by its address: it is redacted when its own walk
    /// reaches it, together with its own findings, so that neither
    /// redaction destroys the other's context).
    across: HashMap<usize, Vec<Finding>>,
}

impl<'a> Pass<'a> {
    pub fn new(
        redact: &'a Redact,
        side: usize,
        all: bool,
        method: Option<&'a Method>,
        phase: Phase,
    ) -> Self {
        Self {
            redact,
            all,
            side,
            method,
            phase,
            counts: Vec::new(),
            denied_by: None,
            refused: None,
            found: Vec::new(),
            more: Vec::new(),
            kept: Vec::new(),
            across: HashMap::new(),
        }
    }

    /// Moves what [`collect`](Self::collect) found into `out`.
    pub fn take_found(&mut self, out: &mut Vec<Finding>) {
        out.clear();
        out.append(&mut self.found);
    }

    /// Walks any value: nothing in it is the envelope's own.
    pub fn value(&mut self, value: &mut Value) {
        self.walk(value, Position::Plain, 0);
    }

    /// Walks a whole JSON-RPC message.
    pub fn message(&mut self, message: &mut Value) {
        match message {
            Value::Object(members) => {
                // A method name cannot be redacted: a secret in it refuses
                // the message (or, with `log`, counts).
                if let Some(Value::String(name)) = members.get("method") {
                    self.collect(name.as_bytes(), None);
                    if self.settle(name).is_some() && !self.all {
                        self.refused.get_or_insert("the method name holds a secret");
                    }
                }
                let (method, phase) = (self.method, self.phase);
                self.object(members, 0, |key, _, _| match key {
                    // `id` never crosses the proxy (ids are remapped both
                    // ways); `method` was read above. `jsonrpc` is walked:
                    // nothing checks a server's.
                    "id" | "method" => None,
                    _ => Some(Position::top(method, phase, key)),
                });
            }
            other => self.walk(other, Position::Plain, 0),
        }
    }

    fn walk(&mut self, value: &mut Value, position: Position, depth: usize) {
        if depth > MAX_WALK_DEPTH {
            if self.all {
                *value = Value::Null;
            } else {
                self.refused
                    .get_or_insert("it is nested too deeply to be scanned");
            }
            return;
        }
        match value {
            Value::String(text) => self.string(text, None),
            Value::Array(items) => {
                let item = position.item();
                self.joins(items);
                for value in items.iter_mut() {
                    self.walk(value, item, depth + 1);
                }
            }
            Value::Object(members) => {
                let position = match position {
                    Position::BlockOrBlocks => Position::Block,
                    other => other,
                };
                self.object(members, depth, |key, kind, member| {
                    if member.is_string() && position.is_base64(key, kind) {
                        None
                    } else {
                        Some(position.member(key, kind))
                    }
                });
                let kind = members
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                for key in ["data", "blob"] {
                    if position.is_base64(key, kind.as_deref())
                        && let Some(Value::String(text)) = members.get_mut(key)
                    {
                        self.binary(text);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Walks an object's keys and members. `child` gives a member's
    /// position, or `None` for a member that is not walked here (the
    /// envelope's own, or a base64 field the caller decodes).
    fn object(
        &mut self,
        members: &mut Map<String, Value>,
        depth: usize,
        child: impl Fn(&str, Option<&str>, &Value) -> Option<Position>,
    ) {
        let kind = members
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut renamed: Vec<(usize, String)> = Vec::new();
        for (index, (key, member)) in members.iter_mut().enumerate() {
            if let Some(new) = self.key(key) {
                renamed.push((index, new));
            }
            let Some(position) = child(key, kind.as_deref(), member) else {
                continue;
            };
            match member {
                Value::String(text) => self.string(text, Some(key)),
                other => self.walk(other, position, depth + 1),
            }
        }
        if !renamed.is_empty() {
            self.rename(members, renamed);
        }
    }

    /// Scans a key; `Some(new key)` when it is to be renamed.
    fn key(&mut self, key: &str) -> Option<String> {
        self.collect(key.as_bytes(), None);
        if self.found.is_empty() {
            return None;
        }
        self.settle(key)
    }

    /// Renames members, keeping their order. Two members cannot be given
    /// one name: the message is refused (or, for what is stored, the later
    /// member dropped).
    fn rename(&mut self, members: &mut Map<String, Value>, renamed: Vec<(usize, String)>) {
        let old = std::mem::take(members);
        let mut renamed = renamed.into_iter().peekable();
        for (index, (key, value)) in old.into_iter().enumerate() {
            let key = match renamed.next_if(|(at, _)| *at == index) {
                Some((_, new)) => new,
                None => key,
            };
            if members.contains_key(&key) {
                if !self.all {
                    self.refused.get_or_insert(
                        "a key holds a secret, and redacting it would merge two members",
                    );
                }
                continue;
            }
            members.insert(key, value);
        }
    }

    /// A base64 field of the schema: decoded, scanned, re-encoded if a
    /// secret in it is redacted.
    fn binary(&mut self, text: &mut String) {
        // Read as text first: a secret written there as it is (base64's
        // alphabet holds most tokens) decodes to noise and would pass.
        self.redact.scanner.scan(text.as_bytes(), &mut self.found);
        if self.settle(text).is_some() {
            if self.all {
                *text = "[REDACTED:base64-field]".to_owned();
            } else {
                self.refused
                    .get_or_insert("a base64 field of the MCP schema holds a secret as text");
            }
            return;
        }
        let Some(mut bytes) = encoded::decode_field(text) else {
            if self.all {
                *text = "[REDACTED:undecodable]".to_owned();
            } else {
                self.refused
                    .get_or_insert("a base64 field of the MCP schema does not decode");
            }
            return;
        };
        self.redact.scanner.scan(&bytes, &mut self.found);
        if self.found.is_empty() {
            return;
        }
        let mut found = std::mem::take(&mut self.found);
        found.retain(|finding| self.account(finding.rule));
        if !found.is_empty() {
            bytes = self.redact.scanner.redact_bytes(&bytes, &found);
            *text = encoded::encode_field(&bytes);
        }
        self.found = found;
    }

    /// Scans a string (with its key as context) and its decoded forms.
    pub fn string(&mut self, text: &mut String, key: Option<&str>) {
        self.collect(text.as_bytes(), key);
        let across = match self.across.is_empty() {
            true => None,
            false => {
                let at: *const String = text;
                self.across.remove(&(at as usize))
            }
        };
        if self.found.is_empty() && across.is_none() {
            return;
        }
        let mut found = std::mem::take(&mut self.found);
        found.retain(|finding| self.account(finding.rule));
        if let Some(across) = across {
            // A union, not the first of two overlapping spans: a piece found
            // across a join may reach past one the text's own scan found.
            found.extend(across);
            found.sort_by_key(|finding| finding.start);
        }
        if !found.is_empty() {
            *text = self.redact.scanner.redact(text, &found);
        }
        self.found = found;
    }

    /// Counts `self.found` and applies the actions: the rewritten text, if
    /// any finding is to be redacted.
    fn settle(&mut self, text: &str) -> Option<String> {
        let mut found = std::mem::take(&mut self.found);
        found.retain(|finding| self.account(finding.rule));
        let rewritten = (!found.is_empty()).then(|| self.redact.scanner.redact(text, &found));
        self.found = found;
        rewritten
    }

    /// Counts a finding of `rule`; whether its text is rewritten.
    fn account(&mut self, rule: u32) -> bool {
        if self.all {
            return true;
        }
        // A rule the table does not know (cannot happen) is redacted.
        let action = (self.redact.actions.get(rule as usize))
            .and_then(|actions| actions.get(self.side))
            .copied()
            .unwrap_or(RedactAction::Redact);
        if action == RedactAction::Off {
            return false;
        }
        match self.counts.iter_mut().find(|(r, _)| *r == rule) {
            Some((_, count)) => *count += 1,
            None => self.counts.push((rule, 1)),
        }
        match action {
            // The refused message is never forwarded, but what is derived
            // from it (the audit's hash of the arguments) must not be
            // derived from the secret either.
            RedactAction::Deny => {
                self.denied_by.get_or_insert(rule);
                true
            }
            RedactAction::Redact => true,
            RedactAction::Log | RedactAction::Off => false,
        }
    }

    /// The findings in `text` into `self.found`, in order, not
    /// overlapping: the text itself, read with its key as context, its
    /// percent-decoded form, and the base64 runs in it, decoded.
    pub fn collect(&mut self, text: &[u8], key: Option<&str>) {
        let redact = self.redact;
        let scanner = &*redact.scanner;
        scanner.scan(text, &mut self.found);
        if let Some(key) = key
            && scanner.may_match(key.as_bytes())
        {
            // The member's key as context: `key: value`.
            let mut keyed = Vec::with_capacity(key.len() + 2 + text.len());
            keyed.extend_from_slice(key.as_bytes());
            keyed.extend_from_slice(b": ");
            keyed.extend_from_slice(text);
            let offset = key.len() + 2;
            scanner.scan(&keyed, &mut self.more);
            self.more.retain_mut(|finding| {
                if finding.start < offset {
                    return false;
                }
                finding.start -= offset;
                finding.end -= offset;
                finding.match_start = finding.match_start.saturating_sub(offset);
                finding.match_end -= offset;
                true
            });
            add_disjoint(&mut self.found, &self.more);
        }
        let (found, more) = (&mut self.found, &mut self.more);
        encoded::percent_words(text, |start, decoded, origin| {
            scanner.scan(decoded, more);
            // `origin` has an entry per decoded byte and one past them.
            let back = |at: usize| start + origin.get(at).copied().unwrap_or(at);
            for finding in more.iter_mut() {
                finding.start = back(finding.start);
                finding.end = back(finding.end);
                finding.match_start = back(finding.match_start);
                finding.match_end = back(finding.match_end);
            }
            add_disjoint(found, more);
        });
        let mut runs = std::mem::take(&mut self.kept);
        runs.clear();
        let (found, more) = (&self.found, &mut self.more);
        encoded::base64_runs(text, |run| {
            // `found` is in order: the first finding that ends after the
            // run starts is the only one that can overlap it.
            let next = found.partition_point(|f| f.end <= run.start);
            if found.get(next).is_some_and(|f| f.start < run.end) {
                return true;
            }
            scanner.scan(run.decoded, more);
            let Some(first) = more.first() else {
                return false;
            };
            // The whole encoded run stands for the secret.
            runs.push(Finding {
                rule: first.rule,
                start: run.start,
                end: run.end,
                match_start: run.start,
                match_end: run.end,
            });
            true
        });
        add_disjoint(&mut self.found, &runs);
        self.kept = runs;
    }

    /// Secrets split across the text blocks of a list (content blocks,
    /// resource contents, messages whose content is a text block or a list
    /// of blocks), whatever stands between them: the texts are joined and
    /// scanned, and what is found across a join is redacted on both sides
    /// when the walk reaches each text.
    fn joins(&mut self, items: &mut [Value]) {
        // Every text of the list in order, across anything between them (a
        // secret split around an image block is read as one): (item, where
        // in it).
        let mut texts: Vec<(usize, String)> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            texts.extend(text_pointers(item).into_iter().map(|at| (index, at)));
        }
        if texts.len() >= 2 {
            self.join_run(items, &texts);
        }
    }

    /// Joins the texts of `items` at `texts`, in order. A secret within
    /// one item (the blocks of one message's content) is left to the walk
    /// of that item's own list.
    fn join_run(&mut self, items: &mut [Value], texts: &[(usize, String)]) {
        let text = |(index, at): &(usize, String)| {
            (items.get(*index))
                .and_then(|item| item.pointer(at))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let mut joined = Vec::new();
        let mut starts = Vec::with_capacity(texts.len() + 1);
        for place in texts {
            starts.push(joined.len());
            joined.extend_from_slice(text(place).as_bytes());
        }
        starts.push(joined.len());
        let redact = self.redact;
        let scanner = &*redact.scanner;
        scanner.scan(&joined, &mut self.more);
        // Only what crosses from one item to another: the rest each text's
        // own scan (or its item's list) finds. `starts` is in order.
        let text_at =
            |offset: usize| (starts.partition_point(|&start| start <= offset)).saturating_sub(1);
        let item_at = |offset: usize| texts.get(text_at(offset)).map(|(item, _)| *item);
        let crosses = |f: &Finding| {
            f.match_end > f.match_start && item_at(f.match_start) != item_at(f.match_end - 1)
        };
        let across: Vec<Finding> = self.more.iter().copied().filter(crosses).collect();
        if across.is_empty() {
            return;
        }
        let mut parts: Vec<Vec<Finding>> = vec![Vec::new(); texts.len()];
        for finding in across {
            if !self.account(finding.rule) {
                continue;
            }
            // The texts it covers: from the one it starts in on.
            let first = text_at(finding.start);
            let bounds = starts.iter().zip(starts.iter().skip(1));
            for ((&start, &end), part) in bounds.zip(parts.iter_mut()).skip(first) {
                if start >= finding.end {
                    break;
                }
                if finding.start < end {
                    let local_start = finding.start.max(start) - start;
                    let local_end = finding.end.min(end) - start;
                    part.push(Finding {
                        rule: finding.rule,
                        start: local_start,
                        end: local_end,
                        match_start: local_start,
                        match_end: local_end,
                    });
                }
            }
        }
        for ((index, at), part) in texts.iter().zip(parts) {
            if part.is_empty() {
                continue;
            }
            if let Some(Value::String(text)) =
                items.get_mut(*index).and_then(|item| item.pointer_mut(at))
            {
                let at: *const String = text;
                // A text may also be joined within its own item's list.
                let mut all = self.across.remove(&(at as usize)).unwrap_or_default();
                all.extend(part);
                all.sort_by_key(|finding| finding.start);
                self.across.insert(at as usize, all);
            }
        }
    }
}

/// Where the texts of an array item stand, in order: a `text` content
/// block or resource contents with `text` (`/text`), a message whose
/// content is a text block (`/content/text`), or one whose content is a
/// list of blocks (`/content/N/text` for each text block).
fn text_pointers(item: &Value) -> Vec<String> {
    let Some(object) = item.as_object() else {
        return Vec::new();
    };
    if is_text(object)
        || (object.get("text").is_some_and(Value::is_string) && object.contains_key("uri"))
    {
        return vec!["/text".to_owned()];
    }
    match object.get("content") {
        Some(Value::Object(content)) if is_text(content) => vec!["/content/text".to_owned()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .filter(|(_, block)| block.as_object().is_some_and(is_text))
            .map(|(index, _)| format!("/content/{index}/text"))
            .collect(),
        _ => Vec::new(),
    }
}

/// A `text` content block.
fn is_text(object: &Map<String, Value>) -> bool {
    object.get("type").and_then(Value::as_str) == Some("text")
        && object.get("text").is_some_and(Value::is_string)
}

/// Adds the findings of `more` that overlap none in `found` (and, among
/// themselves, none kept before them); both are in order by start and the
/// result is too. Linear: a string with many findings costs no more than
/// its length.
fn add_disjoint(found: &mut Vec<Finding>, more: &[Finding]) {
    if more.is_empty() {
        return;
    }
    let mut added: Vec<Finding> = Vec::new();
    let mut mine = 0;
    let mut end = 0;
    for finding in more {
        while found.get(mine).is_some_and(|f| f.end <= finding.start) {
            mine += 1;
        }
        let overlaps_mine = found.get(mine).is_some_and(|f| f.start < finding.end);
        if overlaps_mine || finding.start < end {
            continue;
        }
        end = finding.end;
        added.push(*finding);
    }
    if added.is_empty() {
        return;
    }
    let old = std::mem::take(found);
    found.reserve(old.len() + added.len());
    let (mut a, mut b) = (old.into_iter().peekable(), added.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        let next = if x.start <= y.start {
            a.next()
        } else {
            b.next()
        };
        found.extend(next);
    }
    found.extend(a);
    found.extend(b);
}
