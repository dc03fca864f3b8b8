//! The audit record (DESIGN.md, "Audit record") and its hash chain.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::seal::Seal;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kinds of record: exchanges, and the events around them.
pub const KINDS: &[&str] = &[
    "exchange",
    "session_start",
    "session_end",
    "auth_failure",
    "proxy_start",
    "proxy_stop",
    "policy_reload",
    "config_reload",
    "server_ready",
    "server_down",
    "server_stopped",
    "server_circuit_open",
    "server_circuit_closed",
    "sandbox_relaxed",
    "pin_added",
    "pin_changed",
    "pin_unpinned",
    "pin_approved",
    "pins_reloaded",
    "tool_flagged",
    "list_cut",
    "server_notification",
    "plugin_loaded",
    "plugin_circuit_open",
    "plugin_circuit_closed",
    "checkpoint",
    "signed_checkpoint",
];

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
    /// What an event record adds (a session's agent, a reload's policy
    /// set, a server's restarts, …); absent on exchanges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    pub prev_hash: String,
    /// The MCP revision the exchange's client spoke (`2026-07-28`,
    /// `2025-11-25`, …), once it is known; absent on events and on records
    /// written before the field came in (so their hashes still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Who vouched for the client, when it came with an access token from
    /// an identity provider (`[oauth]`); absent otherwise (and on records
    /// written before the field came in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<TokenIdentity>,
    /// The profile the proxy ran under (`serve --profile`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub hash: String,
    /// With a chain key: HMAC-SHA256 of `hash` under it (hex). Not part of
    /// the bytes `hash` covers; absent on records sealed without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The identity provider, subject and OAuth client of a call made with an
/// access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIdentity {
    /// The `[[oauth.providers]]` name.
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl AuditRecord {
    /// An event record of `kind` (one of [`KINDS`]) at the current time,
    /// its other fields empty: the caller fills in what the event has.
    pub fn event(kind: &str, decision: &str) -> Self {
        Self {
            seq: 0,
            time: super::timestamp(std::time::SystemTime::now()),
            kind: kind.to_owned(),
            session: String::new(),
            client: String::new(),
            transport: String::new(),
            server: None,
            method: String::new(),
            target: None,
            request_id: None,
            decision: decision.to_owned(),
            decided_by: None,
            policy_ids: Vec::new(),
            decision_id: None,
            policy_set: None,
            reason: None,
            redactions: Vec::new(),
            arguments_sha256: None,
            result_bytes: 0,
            is_error: decision == "error",
            upstream_us: None,
            total_us: 0,
            detail: None,
            prev_hash: String::new(),
            protocol: None,
            identity: None,
            profile: None,
            hash: String::new(),
            mac: None,
        }
    }

    /// SHA-256 (hex) over the record's canonical JSON (keys sorted, no
    /// space) with `hash` set to `""`; `prev_hash` is included, so a
    /// changed, removed or reordered record breaks the chain.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical()))
    }

    /// The bytes a record's seal covers: its canonical JSON with `hash`
    /// set to `""`.
    pub fn canonical(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1024);
        self.write_canonical(&mut bytes, "");
        bytes
    }

    /// The record as the log stores it: its canonical JSON with `hash`
    /// written in (any JSON of the record would read back the same; this
    /// one is what sealing writes anyway).
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1024);
        self.write_canonical(&mut bytes, &self.hash);
        self.append_mac(&mut bytes);
        bytes
    }

    /// Writes `mac` into stored bytes, as their last member (it is not
    /// part of what `hash` covers, so not of the canonical bytes).
    fn append_mac(&self, bytes: &mut Vec<u8>) {
        if let Some(mac) = &self.mac
            && bytes.last() == Some(&b'}')
        {
            bytes.pop();
            bytes.extend_from_slice(b",\"mac\":");
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *bytes, mac);
            bytes.push(b'}');
        }
    }

    /// Seals the record (as [`AuditRecord::seal`]) and returns it as the
    /// log stores it ([`AuditRecord::to_json`]): the bytes the hash covers,
    /// with the hash then written into them, so the record is written once.
    pub fn seal_to_json(&mut self, seq: u64, prev_hash: &str, seal: &Seal) -> Vec<u8> {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        let mut bytes = Vec::with_capacity(1024);
        let at = self.write_canonical(&mut bytes, "");
        self.hash = hex::encode(Sha256::digest(&bytes));
        self.mac = seal.mac(&self.hash);
        bytes.splice(at..at, self.hash.bytes());
        self.append_mac(&mut bytes);
        bytes
    }

    /// The record's canonical JSON with `hash` as given, written field by
    /// field in sorted key order: the same bytes as [`canonical_json`] of
    /// the record (a test holds them equal) without building a JSON tree.
    /// Where `hash`'s value starts.
    fn write_canonical(&self, out: &mut Vec<u8>, hash: &str) -> usize {
        fn key(out: &mut Vec<u8>, name: &str, first: bool) {
            if !first {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn text(out: &mut Vec<u8>, value: &str) {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
        }
        fn optional_text(out: &mut Vec<u8>, value: Option<&str>) {
            match value {
                Some(value) => text(out, value),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn number(out: &mut Vec<u8>, value: u64) {
            out.extend_from_slice(value.to_string().as_bytes());
        }
        fn value(out: &mut Vec<u8>, value: Option<&Value>) {
            match value {
                Some(value) => out.extend_from_slice(canonical_json(value).as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'{');
        key(out, "arguments_sha256", true);
        optional_text(out, self.arguments_sha256.as_deref());
        key(out, "client", false);
        text(out, &self.client);
        key(out, "decided_by", false);
        optional_text(out, self.decided_by.as_deref());
        key(out, "decision", false);
        text(out, &self.decision);
        key(out, "decision_id", false);
        optional_text(out, self.decision_id.as_deref());
        if let Some(detail) = &self.detail {
            key(out, "detail", false);
            value(out, Some(detail));
        }
        key(out, "hash", false);
        out.push(b'"');
        let hash_at = out.len();
        out.extend_from_slice(hash.as_bytes());
        out.push(b'"');
        if let Some(identity) = &self.identity {
            key(out, "identity", false);
            value(out, serde_json::to_value(identity).ok().as_ref());
        }
        key(out, "is_error", false);
        out.extend_from_slice(if self.is_error { b"true" } else { b"false" });
        key(out, "kind", false);
        text(out, &self.kind);
        key(out, "method", false);
        text(out, &self.method);
        key(out, "policy_ids", false);
        out.push(b'[');
        for (i, id) in self.policy_ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            text(out, id);
        }
        out.push(b']');
        key(out, "policy_set", false);
        optional_text(out, self.policy_set.as_deref());
        key(out, "prev_hash", false);
        text(out, &self.prev_hash);
        for (name, present) in [("profile", &self.profile), ("protocol", &self.protocol)] {
            if let Some(present) = present {
                key(out, name, false);
                text(out, present);
            }
        }
        key(out, "reason", false);
        optional_text(out, self.reason.as_deref());
        key(out, "redactions", false);
        out.push(b'[');
        for (i, redaction) in self.redactions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            key(out, "count", true);
            number(out, redaction.count);
            key(out, "direction", false);
            text(out, &redaction.direction);
            key(out, "rule", false);
            text(out, &redaction.rule);
            out.push(b'}');
        }
        out.push(b']');
        key(out, "request_id", false);
        value(out, self.request_id.as_ref());
        key(out, "result_bytes", false);
        number(out, self.result_bytes);
        key(out, "seq", false);
        number(out, self.seq);
        key(out, "server", false);
        optional_text(out, self.server.as_deref());
        key(out, "session", false);
        text(out, &self.session);
        key(out, "target", false);
        optional_text(out, self.target.as_deref());
        key(out, "time", false);
        text(out, &self.time);
        key(out, "total_us", false);
        number(out, self.total_us);
        key(out, "transport", false);
        text(out, &self.transport);
        key(out, "upstream_us", false);
        value(out, self.upstream_us.map(Value::from).as_ref());
        out.push(b'}');
        hash_at
    }

    /// Sets `seq`, `prev_hash` and `hash`: the record joins the chain.
    pub fn seal(&mut self, seq: u64, prev_hash: &str) {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash();
        self.mac = None;
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

    /// The field-by-field writer and the generic canonical form agree, for
    /// records with and without the optional parts.
    #[test]
    fn the_record_writer_matches_canonical_json() {
        let mut record = crate::audit::tests::sample();
        let generic = |record: &AuditRecord| {
            let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
            if let Some(hash) = value.get_mut("hash") {
                *hash = Value::from("");
            }
            canonical_json(&value)
        };
        let fast = |record: &AuditRecord| {
            let mut bytes = Vec::new();
            record.write_canonical(&mut bytes, "");
            String::from_utf8(bytes).unwrap_or_default()
        };
        assert_eq!(fast(&record), generic(&record));
        record.seal(7, GENESIS);
        record.client = "ünïcode \"quoted\" \u{1} tab\t".into();
        record.decided_by = Some("authz".into());
        record.policy_ids = vec!["a".into(), "b\\c".into()];
        record.redactions = vec![
            Redaction {
                rule: "aws-key".into(),
                direction: "request".into(),
                count: 2,
            },
            Redaction {
                rule: "jwt".into(),
                direction: "response".into(),
                count: 1,
            },
        ];
        record.request_id = Some(json!({"z": 1, "a": [true, null, 1.5]}));
        record.upstream_us = None;
        record.detail = Some(json!({"policies": 3, "agent": {"name": "x", "version": "1"}}));
        record.is_error = true;
        assert_eq!(fast(&record), generic(&record));
        record.identity = Some(TokenIdentity {
            provider: "corp".into(),
            subject: Some("alice \"a\"".into()),
            client_id: None,
        });
        assert_eq!(fast(&record), generic(&record));
        record.profile = Some("research".into());
        assert_eq!(fast(&record), generic(&record));
        let parsed: Value = serde_json::from_str(&fast(&record)).unwrap_or(Value::Null);
        assert_eq!(parsed["client"], json!(record.client));

        // Sealed to JSON: what `seal` gives, and the bytes read back as the
        // record, hash included.
        let mut sealed = record.clone();
        let bytes = sealed.seal_to_json(8, &record.hash, &Seal::Plain);
        record.seal(8, &record.hash.clone());
        assert_eq!(sealed, record);
        assert_eq!(bytes, record.to_json());
        let read: AuditRecord = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, record);
        assert_eq!(read.hash, read.compute_hash());
    }

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
