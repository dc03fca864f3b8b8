//! Masks e-mail addresses and phone numbers in what servers send back.
//!
//! ```toml
//! [[chain]]
//! kind = "wasm"
//! path = "plugins/examples/mask-pii/mask_pii.wasm"
//! phases = ["response"]
//! config = { email_mask = "[email]", phone_mask = "[phone]" }
//! ```
//!
//! Every string in a response's `result` (at any depth) is scanned:
//! - an e-mail address is `local@domain.tld`, the local part of letters,
//!   digits and `._%+-`, the domain of labels with a final label of two or
//!   more letters;
//! - a phone number is a run of digits and separators (space, `-`, `.`, `(`,
//!   `)`), not touching a letter or digit, with 8–15 digits after a leading
//!   `+`, or 10–15 digits otherwise (so dates and short numbers stay).
//!
//! The audit record gets how many of each were masked.

wit_bindgen::generate!({ path: "../../wit", world: "interceptor" });

use std::sync::OnceLock;

use exports::portcullis::interceptor::handler::{Context, Guest, Outcome, Phase, Verdict};
use portcullis::interceptor::host;
use serde_json::Value;

struct Config {
    email_mask: String,
    phone_mask: String,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

#[derive(Default)]
struct Counts {
    emails: u32,
    phones: u32,
}

fn is_local(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-')
}

/// The end of the e-mail address whose `@` is at `at`, and its start.
fn email_at(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > 0 && is_local(bytes[start - 1]) {
        start -= 1;
    }
    // A local part does not start with a dot.
    while start < at && bytes[start] == b'.' {
        start += 1;
    }
    if start == at {
        return None;
    }
    let mut end = at + 1;
    while end < bytes.len() && is_domain(bytes[end]) {
        end += 1;
    }
    while end > at + 1 && matches!(bytes[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = &bytes[at + 1..end];
    let last_dot = domain.iter().rposition(|b| *b == b'.')?;
    let tld = &domain[last_dot + 1..];
    let first_ok = domain.first().is_some_and(u8::is_ascii_alphanumeric);
    (first_ok && last_dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic))
        .then_some((start, end))
}

fn is_phone_part(byte: u8) -> bool {
    byte.is_ascii_digit() || matches!(byte, b' ' | b'-' | b'.' | b'(' | b')')
}

/// The end of a phone number starting at `start`, if one does.
fn phone_at(bytes: &[u8], start: usize) -> Option<usize> {
    let plus = bytes[start] == b'+';
    let mut end = if plus { start + 1 } else { start };
    let mut digits = 0;
    let mut last_digit = start;
    while end < bytes.len() && is_phone_part(bytes[end]) {
        if bytes[end].is_ascii_digit() {
            digits += 1;
            last_digit = end;
        }
        end += 1;
    }
    let end = last_digit + 1;
    let touches = |index: Option<&u8>| index.is_some_and(|b| b.is_ascii_alphanumeric());
    if touches(bytes.get(end)) {
        return None;
    }
    let enough = if plus {
        (8..=15).contains(&digits)
    } else {
        (10..=15).contains(&digits)
    };
    enough.then_some(end)
}

/// `text` with its addresses and numbers masked, if it has any.
fn mask(text: &str, config: &Config, counts: &mut Counts) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut index = 0;
    let mut changed = false;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'@' {
            if let Some((start, end)) = email_at(bytes, index) {
                if start >= copied {
                    out.push_str(&text[copied..start]);
                    out.push_str(&config.email_mask);
                    counts.emails += 1;
                    changed = true;
                    copied = end;
                    index = end;
                    continue;
                }
            }
        } else if (byte == b'+' || byte == b'(' || byte.is_ascii_digit())
            && (index == 0 || !bytes[index - 1].is_ascii_alphanumeric())
        {
            // A number that is the local part of an address is left to the
            // address rule.
            if let Some(end) = phone_at(bytes, index) {
                if bytes.get(end) != Some(&b'@') {
                    out.push_str(&text[copied..index]);
                    out.push_str(&config.phone_mask);
                    counts.phones += 1;
                    changed = true;
                    copied = end;
                    index = end;
                    continue;
                }
            }
        }
        index += 1;
    }
    if !changed {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

fn mask_all(value: &mut Value, config: &Config, counts: &mut Counts) {
    match value {
        Value::String(text) => {
            if let Some(masked) = mask(text, config, counts) {
                *text = masked;
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| mask_all(item, config, counts)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|item| mask_all(item, config, counts)),
        _ => {}
    }
}

fn pass() -> Outcome {
    Outcome {
        verdict: Verdict::Continue,
        annotations: Vec::new(),
    }
}

fn text_option(config: &Value, key: &str, default: &str) -> Result<String, String> {
    match config.get(key) {
        None => Ok(default.to_owned()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

struct MaskPii;

impl Guest for MaskPii {
    fn configure(config_json: String) -> Result<(), String> {
        let config: Value = serde_json::from_str(&config_json)
            .map_err(|err| format!("config is not JSON: {err}"))?;
        let config = Config {
            email_mask: text_option(&config, "email_mask", "[email]")?,
            phone_mask: text_option(&config, "phone_mask", "[phone]")?,
        };
        CONFIG
            .set(config)
            .map_err(|_| "configure was called twice".to_owned())
    }

    fn on_message(phase: Phase, _context: Context, payload_json: String) -> Outcome {
        let Some(config) = CONFIG.get() else {
            return pass();
        };
        // Cheap test first: most results hold neither.
        if phase != Phase::Response
            || !payload_json
                .bytes()
                .any(|b| b == b'@' || b.is_ascii_digit())
        {
            return pass();
        }
        let Ok(mut message) = serde_json::from_str::<Value>(&payload_json) else {
            return pass();
        };
        let Some(result) = message.get_mut("result") else {
            return pass();
        };
        let mut counts = Counts::default();
        mask_all(result, config, &mut counts);
        if counts.emails == 0 && counts.phones == 0 {
            return pass();
        }
        host::counter_add("emails", i64::from(counts.emails));
        host::counter_add("phones", i64::from(counts.phones));
        Outcome {
            verdict: Verdict::Modify(message.to_string()),
            annotations: vec![
                ("emails".into(), counts.emails.to_string()),
                ("phones".into(), counts.phones.to_string()),
            ],
        }
    }
}

export!(MaskPii);

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(text: &str) -> (String, u32, u32) {
        let config = Config {
            email_mask: "[email]".into(),
            phone_mask: "[phone]".into(),
        };
        let mut counts = Counts::default();
        let out = mask(text, &config, &mut counts).unwrap_or_else(|| text.to_owned());
        (out, counts.emails, counts.phones)
    }

    #[test]
    fn masks_addresses_and_numbers_and_leaves_the_rest() {
        assert_eq!(
            masked("mail ada.l+x@example.co.uk or call +44 20 7946 0958."),
            ("mail [email] or call [phone].".into(), 1, 1)
        );
        assert_eq!(masked("(555) 123-4567"), ("[phone]".into(), 0, 1));
        assert_eq!(
            masked("on 2026-11-23 at 10:30, id 1234567"),
            ("on 2026-11-23 at 10:30, id 1234567".into(), 0, 0)
        );
        assert_eq!(
            masked("a@b, x@localhost, @home"),
            ("a@b, x@localhost, @home".into(), 0, 0)
        );
        assert_eq!(
            masked("ümlaut bob@example.org"),
            ("ümlaut [email]".into(), 1, 0)
        );
    }
}
