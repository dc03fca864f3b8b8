//! The audit record (DESIGN.md, "Audit record") and its hash chain.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kinds of record: exchanges, and the events around them.
pub const KINDS: &[&str] = &["exchange"];

/// One redaction count, per rule and direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redaction {
    pub rule: String,
    pub direction: String,
    pub count: u64,
}

/// One exchange, as the log keeps it. Field order is the canonical order the
/// hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// `YYYY-MM-DDThh:mm:ss.mmmZ`, UTC.
    pub time: String,
    /// `exchange` (one message exchange with a client or a server).
    pub kind: String,
    pub session: String,
    pub client: String,
    pub transport: String,
    pub server: Option<String>,
    pub method: String,
    pub target: Option<String>,
    pub request_id: Option<Value>,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    /// The interceptor that refused (for `deny`).
    pub decided_by: Option<String>,
    pub policy_ids: Vec<String>,
    /// The authz decision id a denied client was shown, and the policy set.
    pub decision_id: Option<String>,
    pub policy_set: Option<String>,
    pub reason: Option<String>,
    pub redactions: Vec<Redaction>,
    /// SHA-256 of the call's arguments in canonical JSON (sorted keys); the
    /// arguments themselves are not stored.
    pub arguments_sha256: Option<String>,
    pub result_bytes: u64,
    pub is_error: bool,
    pub upstream_us: Option<u64>,
    pub total_us: u64,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// SHA-256 (hex) over the record's canonical JSON without `hash`,
    /// `prev_hash` included: a changed, removed or reordered record breaks
    /// the chain.
    pub fn compute_hash(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(hash) = value.get_mut("hash") {
            *hash = Value::from("");
        }
        hex::encode(Sha256::digest(canonical_json(&value).as_bytes()))
    }

    /// Sets `seq`, `prev_hash` and `hash`: the record joins the chain.
    pub fn seal(&mut self, seq: u64, prev_hash: &str) {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash();
    }
}

/// JSON with object keys sorted at every level and no insignificant space:
/// one byte string per value, whatever the key order it was built with.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_canonical(item, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The SHA-256 (hex) of a value's canonical JSON.
pub fn sha256_canonical(value: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(value).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
        let b: Value = serde_json::from_str(r#"{"a":{"y":[1,{"c":3,"d":2}],"x":"s"},"b":1}"#)
            .unwrap_or(Value::Null);
        assert_eq!(sha256_canonical(&a), sha256_canonical(&b));
    }
}
