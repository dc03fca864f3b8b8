//! The forms of value the config writes as strings (durations, sizes,
//! quotas, paths, secret references), their parsers, and their names in the
//! configuration reference.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// `"30s"`, `"500ms"`, `"2m"`, `"1h"`, `"90d"`: more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("`{text}` is not a duration like `500ms`, `30s`, `2m`, `1h` or `90d`");
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        "d" => Duration::from_secs(number.saturating_mul(86_400)),
        _ => return Err(invalid()),
    };
    if duration.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(duration)
}

/// `"512m"`, `"1g"`, `"64k"`, `"1048576"` (bytes); binary units.
pub fn parse_size(text: &str) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let factor: i64 = match unit.trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A string value of one form: what the reference calls it (`format` in
/// its schema) and how it is written. Raw fields name one with
/// `#[schemars(with = "…")]`.
macro_rules! forms {
    ($($(#[$doc:meta])* $marker:ident => $form:literal: $written:literal;)*) => {
        $(
            $(#[$doc])*
            pub(super) struct $marker;

            impl JsonSchema for $marker {
                fn inline_schema() -> bool {
                    true
                }

                fn schema_name() -> Cow<'static, str> {
                    stringify!($marker).into()
                }

                fn json_schema(_: &mut SchemaGenerator) -> Schema {
                    json_schema!({ "type": "string", "format": $form })
                }
            }
        )*

        /// Every form as (name, how it is written), for the reference.
        pub(super) const FORMS: &[(&str, &str)] = &[$(($form, $written)),*];
    };
}

forms! {
    /// [`parse_duration`].
    DurationText => "duration":
        "a whole number and a unit, `ms`, `s`, `m` (or `min`), `h` or `d`: `500ms`, `30s`, `2m`, `1h`, `90d`; never zero";
    /// [`parse_size`].
    SizeText => "size":
        "bytes, or a whole number and a binary unit `k`, `m` or `g` (`kb`, `KiB` … too): `64k`, `512m`, `1g`";
    /// [`super::Quota`].
    QuotaText => "quota":
        "`COUNT/UNIT` (`s`, `min`, `h` or `day`), optionally followed by `burst N`: `60/min`, `5/s`, `1000/h burst 50`; `COUNT` calls per unit, up to `N` (else `COUNT`) at once";
    /// A file or folder; a relative one is relative to the config file.
    PathText => "path":
        "a file or folder; a relative path is relative to the config file's folder";
    /// [`super::SecretRef`].
    SecretText => "secret reference":
        "`file:PATH` (the file's contents, trailing newlines trimmed; a relative path is relative to the config file's folder) or `env:VAR` (an environment variable of the proxy) or `dotenv:PATH#KEY` (`KEY` of a `.env` file of `KEY=VALUE` lines, relative like `file:`); read when needed, never printed or logged. A literal secret is refused";
    /// [`super::HeaderValue`].
    HeaderText => "header value":
        "literal text, or text whose last word is `secret:NAME`, replaced by the secret `NAME` of the same table when the connection opens: `Bearer secret:gh_token`";
    /// A socket address.
    AddressText => "address":
        "an IP address and a port: `127.0.0.1:8811`, `[::1]:8811`";
}

/// The text of a file the config names (a catalog, a server's description,
/// a `.env` file, a profile): a regular file only (not a FIFO that never
/// ends, not a device), checked on the handle that is read, and at most
/// `max` bytes.
pub fn read_regular(path: &std::path::Path, max: usize) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("is not a regular file"));
    }
    let mut text = String::new();
    file.take(max as u64 + 1).read_to_string(&mut text)?;
    if text.len() > max {
        return Err(std::io::Error::other(format!(
            "is over {} MiB",
            max / 1024 / 1024
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999g"), None);
    }
}
