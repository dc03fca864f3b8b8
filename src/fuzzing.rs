//! What the fuzz targets (`fuzz/`, cargo-fuzz on the nightly toolchain)
//! drive: every parser a peer reaches, each given arbitrary bytes, with the
//! properties it must keep whatever they are. A panic, or a property
//! broken, is a finding. `tests/fuzz_corpus.rs` runs every input kept in
//! `fuzz/corpus/` through the same functions on the stable toolchain, so a
//! finding fixed stays fixed (its input is added to the corpus).
//!
//! Not part of the proxy's interface: hidden, and free to change.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::chain::ClientIdentity;
use crate::downstream::authority::host_of;
use crate::downstream::sealed::Sealer;
use crate::interceptors::redact::Scanner;
use crate::protocol::{self, Frame, FrameReader, HEAD_BYTES};
use crate::upstream::sse::{SseEvent, SseParser};

/// One fuzz target: what it drives, given arbitrary bytes.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, for the corpus test and the script.
pub const TARGETS: &[(&str, Target)] = &[
    ("framing", framing),
    ("sse", sse),
    ("envelope", envelope),
    ("redact", redact),
    ("sealed", sealed),
    ("token", token),
];

/// The bound the framing and SSE targets read under: small, so that lines
/// and events past it are common.
const LIMIT: usize = 256;

/// JSON-RPC over stdio: lines read under a bound from arbitrary bytes, and
/// what each line is taken for (parsed, classified, its id sniffed).
pub fn framing(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let mut frames = FrameReader::new(data, LIMIT);
        let mut read = 0usize;
        while let Ok(Some(frame)) = frames.next().await {
            read += 1;
            assert!(read <= data.len() + 1, "more frames than bytes");
            match frame {
                Frame::Line(line) => {
                    assert!(line.len() <= LIMIT, "a line past the bound");
                    assert!(!line.contains(&b'\n'));
                    if let Ok(message) = protocol::parse(&line, 16) {
                        let _ = protocol::classify(&message);
                        let _ = protocol::method(&message);
                        let _ = protocol::progress_token(&message);
                        assert!(protocol::value_depth(&message, 64) <= 16);
                    }
                    let _ = protocol::refusal_id(&line);
                }
                Frame::Oversize(head) => {
                    assert!(
                        head.len() <= HEAD_BYTES,
                        "an oversize line's head past its bound"
                    );
                    let _ = protocol::sniff_id(&head);
                    let _ = protocol::sniff_has_method(&head);
                }
            }
        }
    });
}

/// A remote server's event stream: the same events however the bytes are
/// cut into chunks, none past the bound.
pub fn sse(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = events(body, body.len().max(1));
    let chunked = events(body, usize::from(cut % 17) + 1);
    assert_eq!(
        whole, chunked,
        "the events depend on how the bytes were cut"
    );
    for event in whole {
        if let SseEvent::Data(data) = event {
            assert!(data.len() <= LIMIT + 64, "an event past the bound");
        }
    }
}

fn events(body: &[u8], chunk: usize) -> Vec<SseEvent> {
    let mut parser = SseParser::new(LIMIT);
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        parser.feed(piece, &mut out);
    }
    out
}

/// A 2026-07-28 request's envelope taken out of it: nothing of the
/// protocol's left for the server when it is taken, the request untouched
/// when it is refused.
pub fn envelope(data: &[u8]) {
    let Ok(mut message) = protocol::parse(data, 32) else {
        return;
    };
    let before = message.clone();
    let _ = protocol::envelope_version(&message);
    let _ = protocol::routing_name(&message);
    match protocol::take_envelope(&mut message) {
        Ok(_) => {
            let meta = message
                .get("params")
                .and_then(|params| params.get("_meta"))
                .and_then(Value::as_object);
            let left = meta
                .into_iter()
                .flatten()
                .any(|(key, _)| key.starts_with("io.modelcontextprotocol/"));
            assert!(!left, "a protocol key was left for the server");
        }
        Err(_) => assert_eq!(message, before, "a refused request was changed"),
    }
}

fn scanner() -> Option<&'static Scanner> {
    static SCANNER: OnceLock<Option<Scanner>> = OnceLock::new();
    SCANNER
        .get_or_init(|| {
            crate::interceptors::redact::scanner(&crate::config::RedactConfig::default()).ok()
        })
        .as_ref()
}

/// The redaction engine on arbitrary text: what it redacts holds no
/// finding of its rules any more (redacting twice changes nothing).
pub fn redact(data: &[u8]) {
    let Some(scanner) = scanner() else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let mut findings = Vec::new();
    scanner.scan(text.as_bytes(), &mut findings);
    let redacted = scanner.redact(&text, &findings);
    let mut again = Vec::new();
    scanner.scan(redacted.as_bytes(), &mut again);
    let twice = scanner.redact(&redacted, &again);
    assert_eq!(twice, redacted, "redacting the redacted text changed it");
    let _ = scanner.redact_bytes(data, &findings);
}

fn sealer() -> Option<&'static Sealer> {
    static SEALER: OnceLock<Option<Sealer>> = OnceLock::new();
    SEALER
        .get_or_init(|| {
            let key = "9f".repeat(32);
            Sealer::from_hex(&[key], Duration::from_secs(3600)).ok()
        })
        .as_ref()
}

/// Sealed session ids: arbitrary text opens nothing (only the key seals),
/// and what the key sealed opens for its own client alone.
pub fn sealed(data: &[u8]) {
    let Some(sealer) = sealer() else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let client = ClientIdentity::new("fuzz", &[]);
    assert!(
        sealer.open(&text, &client).is_none(),
        "an id the key never sealed opened"
    );
    let message = protocol::parse(data, 16).unwrap_or(Value::Null);
    if let Ok(id) = sealer.seal(&client, &message) {
        assert!(
            sealer.open(&id, &client).is_some(),
            "a sealed id does not open"
        );
        let other = ClientIdentity::new("other", &[]);
        assert!(
            sealer.open(&id, &other).is_none(),
            "another client opened it"
        );
    }
}

/// What a request's headers bring: a `Host` value parsed as an authority,
/// and a bearer token read as a JWT (before anything checks it).
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some((host, port)) = host_of(&text) {
        assert!(!host.is_empty());
        assert!(!host.chars().any(|c| c.is_control() || c == '/' || c == '@'));
        assert!(text.len() >= host.len());
        let _ = port;
    }
    let _ = crate::identity::jwt_issuer(&text);
}
