//! Trace and span ids, and the W3C Trace Context `traceparent` that
//! carries them across a call.

use std::cell::Cell;

/// A trace's id (16 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A span's id (8 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub(super) fn random() -> Self {
        let high = random_u64();
        let low = nonzero_random();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&high.to_be_bytes());
        id[8..].copy_from_slice(&low.to_be_bytes());
        Self(id)
    }
}

impl SpanId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn random() -> Self {
        Self(nonzero_random().to_be_bytes())
    }
}

/// A W3C Trace Context `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` value (version `00`; a later version by its
    /// first four fields, as the spec asks). Anything malformed is `None`:
    /// the exchange then starts a trace of its own.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let version = lower_hex::<1>(bytes.get(0..2)?)?[0];
        let valid_length = match version {
            0xff => false,
            0x00 => bytes.len() == 55,
            _ => bytes.len() == 55 || bytes.get(55) == Some(&b'-'),
        };
        if !valid_length || [2, 35, 52].iter().any(|&at| bytes.get(at) != Some(&b'-')) {
            return None;
        }
        let trace_id = lower_hex::<16>(bytes.get(3..35)?)?;
        let parent_id = lower_hex::<8>(bytes.get(36..52)?)?;
        let flags = lower_hex::<1>(bytes.get(53..55)?)?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            sampled: flags & 1 == 1,
        })
    }

    /// The header value for a sampled span of `trace`.
    pub fn format(trace: TraceId, span: SpanId) -> String {
        format!("00-{}-{}-01", trace.to_hex(), span.to_hex())
    }
}

/// Lowercase hex (the only form `traceparent` allows) into `N` bytes.
fn lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

thread_local! {
    /// Per thread, a SplitMix64 state seeded from the OS: ids must be
    /// unique and unguessable enough for tracing, and cheap (a span per
    /// interceptor per call).
    static RANDOM: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(seed)
}

fn random_u64() -> u64 {
    RANDOM.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero_random() -> u64 {
    loop {
        let value = random_u64();
        if value != 0 {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::SAMPLE;
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let parsed = TraceParent::parse(SAMPLE);
        let Some(parent) = parsed else {
            panic!("the spec's example must parse");
        };
        assert!(parent.sampled);
        assert_eq!(parent.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id.to_hex(), "00f067aa0ba902b7");
        assert_eq!(
            TraceParent::format(parent.trace_id, parent.parent_id),
            SAMPLE
        );
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceParent::parse(unsampled).map(|p| p.sampled),
            Some(false)
        );
        // A later version may append fields after a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceParent::parse(later).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }
}
