//! Verification: the walk along the chain that finds the first record
//! changed, removed or reordered, with the keys there are (the chain key's
//! MACs, the checkpoint signer's signatures).

use super::index::{
    BLOCK_BITS, CLIENT, DECISION, KIND, SERVER, TARGET, block_key, index_keys, key_seq, postings,
};
use super::reader::{Anchor, Reader};
use super::record::{AuditRecord, GENESIS};
use super::seal::{Checkpoint, MacCheck, Seal, Verifier};
use super::{AuditError, read_error};

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verification {
    /// Every record is intact and in order, from `first_seq` (1, or where
    /// retention's checkpoint anchors the chain).
    Intact {
        records: u64,
        first_seq: u64,
        last_hash: String,
        /// Records sealed with a chain key (the rest, before them, plain).
        keyed: u64,
        /// Whether their MACs were checked (the key was given).
        macs_checked: bool,
        /// Signed checkpoints whose signature was checked and whose head
        /// the chain holds.
        signed_checkpoints: u64,
    },
    /// The first record that breaks the chain, and how.
    Broken { seq: u64, problem: String },
}

/// The keys a verification has: the chain key (or none) and the
/// checkpoint signer's public key (or none).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub seal: Seal,
    pub checkpoints: Option<Verifier>,
}

/// How many of the last hashes a walk keeps, for a signed checkpoint that
/// vouches for a record a little before it.
const RECENT: usize = 4_096;

/// The walk along one chain, a record at a time, whatever holds it (a
/// replica's store, the fleet's database): each record's `seq` follows the
/// one before, its `prev_hash` is that record's `hash`, its `hash` is its
/// own, its `mac` holds under the chain key, and each signed checkpoint
/// holds under the checkpoint key.
pub struct ChainWalk<'k> {
    keys: &'k Keys,
    /// The store's name, which a signed checkpoint names.
    store: String,
    anchor: Option<Anchor>,
    first_seq: u64,
    expected_seq: u64,
    expected_prev: String,
    count: u64,
    keyed: u64,
    signed: u64,
    /// Whether a `checkpoint` record names the anchor.
    anchor_named: bool,
    recent: std::collections::VecDeque<(u64, String)>,
    /// The time of the last record checked.
    last_time: String,
}

impl<'k> ChainWalk<'k> {
    /// A walk of store `store`'s chain from its start: the genesis, or
    /// where retention anchored it.
    pub fn new(keys: &'k Keys, store: &str, anchor: Option<Anchor>) -> Self {
        let (first_seq, expected_prev) = match &anchor {
            Some(anchor) => (anchor.first_seq, anchor.prev_hash.clone()),
            None => (1, GENESIS.to_owned()),
        };
        Self {
            keys,
            store: store.to_owned(),
            anchor,
            first_seq,
            expected_seq: first_seq,
            expected_prev,
            count: 0,
            keyed: 0,
            signed: 0,
            anchor_named: false,
            recent: std::collections::VecDeque::new(),
            last_time: String::new(),
        }
    }

    /// Records checked so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Checks the record stored under `seq` (as stored: `value`): the
    /// record, or how it breaks the chain. `hash_at` finds an older
    /// record's hash for a signed checkpoint that vouches for one the walk
    /// no longer holds.
    pub fn step(
        &mut self,
        seq: u64,
        value: &[u8],
        hash_at: &dyn Fn(u64) -> Option<String>,
    ) -> Result<AuditRecord, Verification> {
        let broken = |problem: String| Err(Verification::Broken { seq, problem });
        let record: AuditRecord = match serde_json::from_slice(value) {
            Ok(record) => record,
            Err(err) => return broken(format!("the record does not parse: {err}")),
        };
        if record.seq != seq {
            return broken(format!(
                "the record stored under {seq} says it is {} (moved or reordered)",
                record.seq
            ));
        }
        if seq != self.expected_seq {
            let what = if self.count == 0 {
                "the first"
            } else {
                "the next"
            };
            return Err(Verification::Broken {
                seq: self.expected_seq,
                problem: format!("missing: {what} record is {seq} (removed)"),
            });
        }
        // Queries find a time range by the records' times, in chain order:
        // a time before the previous record's would hide a record from
        // them (the writer never writes one).
        if self.count > 0 && record.time < self.last_time {
            return broken(format!(
                "its time {} is before the previous record's {} (time filters would miss it)",
                record.time, self.last_time
            ));
        }
        if record.prev_hash != self.expected_prev {
            let problem = if self.count == 0 && self.anchor.is_some() {
                "its prev_hash is not the one retention's checkpoint anchored (records before it were removed or changed outside retention)"
            } else {
                "its prev_hash is not the previous record's hash (a record before it was removed, changed or reordered)"
            };
            return broken(problem.into());
        }
        if record.compute_hash() != record.hash {
            return broken("its hash does not match its content (changed)".into());
        }
        match self.keys.seal.check(&record.hash, record.mac.as_deref()) {
            MacCheck::Bad => {
                return broken(
                    "its mac does not match under this key (rewritten, or sealed with another key)"
                        .into(),
                );
            }
            MacCheck::Unkeyed if self.keyed > 0 => {
                return broken(
                    "it has no mac after records sealed with the chain key (rewritten by someone without the key)"
                        .into(),
                );
            }
            MacCheck::Unkeyed => {}
            MacCheck::Valid | MacCheck::Unchecked => self.keyed += 1,
        }
        if record.kind == "signed_checkpoint"
            && let Some(verifier) = &self.keys.checkpoints
        {
            if let Err(problem) = self.check_signed(&record, verifier, hash_at) {
                return broken(problem);
            }
            self.signed += 1;
        }
        if record.kind == "checkpoint"
            && let Some(anchor) = &self.anchor
        {
            let detail = record.detail.clone().unwrap_or_default();
            self.anchor_named |= detail.get("first_seq").and_then(serde_json::Value::as_u64)
                == Some(anchor.first_seq)
                && detail.get("prev_hash").and_then(serde_json::Value::as_str)
                    == Some(anchor.prev_hash.as_str());
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, record.hash.clone()));
        self.expected_prev.clone_from(&record.hash);
        self.last_time.clone_from(&record.time);
        self.expected_seq = seq + 1;
        self.count += 1;
        Ok(record)
    }

    /// What the walk found, once every record was stepped through.
    pub fn finish(self) -> Verification {
        // An anchor is believed only if a checkpoint record of the kept
        // chain (hash-chained like every record) names it: records removed
        // past it, outside retention, have no checkpoint to name the new
        // start. (Any checkpoint, not only the newest: the writer appends
        // a checkpoint before it moves the anchor.)
        if let Some(anchor) = &self.anchor
            && !self.anchor_named
        {
            return Verification::Broken {
                seq: anchor.first_seq,
                problem: "records before it were removed, but no checkpoint record names this start (removed outside retention?)".into(),
            };
        }
        if self.keys.seal.is_keyed() && self.count > 0 && self.keyed == 0 {
            return Verification::Broken {
                seq: self.first_seq,
                problem: "no record is sealed with the chain key: the log was written without it, or rewritten".into(),
            };
        }
        Verification::Intact {
            records: self.count,
            first_seq: self.first_seq,
            last_hash: self.expected_prev,
            keyed: self.keyed,
            macs_checked: self.keys.seal.is_keyed(),
            signed_checkpoints: self.signed,
        }
    }

    /// Checks a `signed_checkpoint` record: its statement is signed by
    /// `verifier`'s key, and the head it vouches for is the chain's.
    fn check_signed(
        &self,
        record: &AuditRecord,
        verifier: &Verifier,
        hash_at: &dyn Fn(u64) -> Option<String>,
    ) -> Result<(), String> {
        let checkpoint: Checkpoint = record
            .detail
            .clone()
            .and_then(|detail| serde_json::from_value(detail).ok())
            .ok_or("a signed checkpoint that does not parse")?;
        if !verifier.verifies(&checkpoint) {
            return Err(format!(
                "a signed checkpoint whose signature does not verify under key {} (forged, or signed with key {})",
                verifier.key_id(),
                checkpoint.key_id
            ));
        }
        if checkpoint.statement.store != self.store {
            return Err(format!(
                "a signed checkpoint of store `{}` in store `{}` (copied from another log)",
                checkpoint.statement.store, self.store
            ));
        }
        // What the checkpoint vouched for, against the chain as walked so
        // far: it ends just before this record.
        let at = checkpoint.statement.seq;
        let held = if at + 1 == record.seq {
            Some(self.expected_prev.clone())
        } else {
            self.recent
                .iter()
                .rev()
                .find(|(seq, _)| *seq == at)
                .map(|(_, hash)| hash.clone())
                .or_else(|| hash_at(at))
        };
        checkpoint
            .judge(
                self.first_seq,
                record.seq.saturating_sub(1),
                held.as_deref(),
            )
            .map_err(|(_, problem)| format!("the signed checkpoint names record {at}: {problem}"))
    }
}

impl Reader {
    /// Walks the chain: each key equals its record's `seq`, sequence numbers
    /// follow each other, each `prev_hash` is the previous record's `hash`,
    /// and each `hash` is the record's own.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        self.verify_with(&Keys::default(), &mut |_, _| {})
    }

    /// [`Reader::verify`] with the keys there are, telling `progress`
    /// (records checked, records to check) every few thousand records.
    ///
    /// With the chain key, every keyed record's MAC is checked, and a log
    /// with records but none keyed is broken (it was written without the
    /// key, or rewritten). Without it, keyed records are checked for their
    /// links only. With or without it, a plain record after a keyed one is
    /// broken: only a writer without the key writes one there. With the
    /// checkpoint key, each `signed_checkpoint` record's signature is
    /// checked and the head it vouches for must be in the chain.
    pub fn verify_with(
        &self,
        keys: &Keys,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Verification, AuditError> {
        let anchor = self.anchor()?;
        let store = self.store_name();
        let mut walk = ChainWalk::new(keys, &store, anchor);
        let first_seq = walk.first_seq;
        let to_check = (self.last_seq()? + 1).saturating_sub(first_seq);
        let hash_at = |seq: u64| self.get(seq).ok().flatten().map(|record| record.hash);
        let mut indexed = IndexCheck::default();
        // Records before an anchor are a prune in progress: not checked.
        for entry in self.records.range(first_seq.to_be_bytes()..) {
            if walk.count().is_multiple_of(4_096) {
                progress(walk.count(), to_check);
            }
            let (key, value) = entry.map_err(read_error)?;
            let seq = key_seq(&key);
            match walk.step(seq, &value, &hash_at) {
                Ok(record) => {
                    if let Some(broken) = indexed.add(self, seq, &record)? {
                        return Ok(broken);
                    }
                }
                Err(broken) => return Ok(broken),
            }
        }
        if let Some(broken) = indexed.check(self)? {
            return Ok(broken);
        }
        Ok(walk.finish())
    }
}

/// What verify checks of the index as it walks the chain: each record is
/// listed under every value a filtered query finds it by (its client,
/// decision, server, target, kind), so that no query can miss a record the
/// chain holds. A posting of a record that is not there harms nothing (a
/// query checks each record it finds against the whole filter).
#[derive(Default)]
struct IndexCheck {
    /// The block being walked, and for each index prefix the records of
    /// that block that must be listed under it.
    block: Option<u64>,
    wanted: std::collections::HashMap<Vec<u8>, Vec<u64>>,
}

impl IndexCheck {
    fn add(
        &mut self,
        reader: &Reader,
        seq: u64,
        record: &AuditRecord,
    ) -> Result<Option<Verification>, AuditError> {
        let block = seq >> BLOCK_BITS;
        if self.block.is_some_and(|current| current != block)
            && let Some(broken) = self.check(reader)?
        {
            return Ok(Some(broken));
        }
        self.block = Some(block);
        for prefix in index_keys(record) {
            self.wanted.entry(prefix).or_default().push(seq);
        }
        Ok(None)
    }

    /// Checks the block walked so far against the index.
    fn check(&mut self, reader: &Reader) -> Result<Option<Verification>, AuditError> {
        let Some(block) = self.block.take() else {
            return Ok(None);
        };
        let mut wanted: Vec<_> = std::mem::take(&mut self.wanted).into_iter().collect();
        wanted.sort();
        for (prefix, seqs) in wanted {
            let key = block_key(&prefix, block << BLOCK_BITS);
            let value = reader.index.get(&key).map_err(read_error)?;
            // Queries walk postings as sorted: out of order (or cut), they
            // skip what they list.
            let sorted = value.as_deref().is_none_or(|value| {
                value.len() % 2 == 0
                    && value
                        .as_chunks::<2>()
                        .0
                        .iter()
                        .map(|pair| u16::from_be_bytes(*pair))
                        .is_sorted_by(|a, b| a < b)
            });
            if !sorted {
                let (field, shown) = describe_prefix(&prefix);
                return Ok(Some(Verification::Broken {
                    seq: seqs.first().copied().unwrap_or(block << BLOCK_BITS),
                    problem: format!(
                        "the index's postings under its {field} `{shown}` are not in order: a query filtered by it would miss records (the index was changed)"
                    ),
                }));
            }
            let listed = value
                .map(|value| postings(&key, &value))
                .unwrap_or_default();
            for seq in seqs {
                if listed.binary_search(&seq).is_ok() {
                    continue;
                }
                // Pruned meanwhile (retention removes a block's postings
                // with its records): nothing to find.
                if !reader
                    .records
                    .contains_key(seq.to_be_bytes())
                    .map_err(read_error)?
                {
                    continue;
                }
                let (field, value) = describe_prefix(&prefix);
                return Ok(Some(Verification::Broken {
                    seq,
                    problem: format!(
                        "the index does not list it under its {field} `{value}`: a query filtered by it would miss it (the index was changed; the records were not)"
                    ),
                }));
            }
        }
        Ok(None)
    }
}

/// An index prefix's field and value, for a problem's words.
fn describe_prefix(prefix: &[u8]) -> (&'static str, String) {
    let field = match prefix.first() {
        Some(&CLIENT) => "client",
        Some(&SERVER) => "server",
        Some(&TARGET) => "target",
        Some(&DECISION) => "decision",
        Some(&KIND) => "kind",
        _ => "field",
    };
    let value = String::from_utf8_lossy(prefix.get(3..).unwrap_or_default()).into_owned();
    (field, value)
}
