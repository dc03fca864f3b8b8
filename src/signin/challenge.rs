//! The `Bearer` challenge of a `WWW-Authenticate` header (RFC 6750 §3,
//! RFC 9728 §5.1): its `resource_metadata`, `scope` and `error`. A header
//! is a peer's text: read once, bounded, and never quoted back whole.

/// The most of a `WWW-Authenticate` header that is read.
pub const MAX_HEADER: usize = 8 * 1024;

/// What a `Bearer` challenge says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Where the server's protected resource metadata is (RFC 9728).
    pub resource_metadata: Option<String>,
    /// The scopes the server asks for, space-separated.
    pub scope: Option<String>,
    /// Why a token was refused (`invalid_token`, `insufficient_scope`).
    pub error: Option<String>,
}

/// The `Bearer` challenge among the challenges of `header`, if there is
/// one. Challenges of other schemes (`Basic realm="…"`, `DPoP …`) are
/// passed over; a parameter named twice keeps its first value; a
/// malformed parameter list ends the challenge where it breaks.
pub fn parse_bearer(header: &str) -> Option<Challenge> {
    let header = &header[..header.floor_char_boundary(MAX_HEADER)];
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let scheme_end = rest.find([' ', '\t', ',']).unwrap_or(rest.len());
        let (scheme, after) = rest.split_at(scheme_end);
        let (params, next) = parameters(after);
        if scheme.eq_ignore_ascii_case("bearer") {
            let mut challenge = Challenge::default();
            for (name, value) in params {
                let slot = match name.to_ascii_lowercase().as_str() {
                    "resource_metadata" => &mut challenge.resource_metadata,
                    "scope" => &mut challenge.scope,
                    "error" => &mut challenge.error,
                    _ => continue,
                };
                if slot.is_none() {
                    *slot = Some(value);
                }
            }
            return Some(challenge);
        }
        rest = next;
    }
}

/// The `name=value` parameters at the start of `text` (values as tokens or
/// quoted strings), and the text after them: the next challenge.
fn parameters(text: &str) -> (Vec<(String, String)>, &str) {
    let mut params = Vec::new();
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t', ',']);
        let Some(eq) = trimmed.find('=') else {
            return (params, trimmed);
        };
        let name = &trimmed[..eq];
        // A word without `=` after it starts the next challenge.
        if name.is_empty() || name.contains([' ', '\t', ',', '"']) {
            return (params, trimmed);
        }
        let after = trimmed[eq + 1..].trim_start_matches([' ', '\t']);
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted_string(quoted) {
                Some(found) => found,
                None => return (params, ""),
            }
        } else {
            let end = after.find([',', ' ', '\t']).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        params.push((name.to_owned(), value));
        rest = next;
    }
}

/// A quoted string's value (after its opening quote, `\` escaping the next
/// character) and the text after its closing quote; `None` if it never
/// closes.
fn quoted_string(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => value.push(chars.next()?.1),
            _ => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_challenge_is_found_among_others() {
        let challenge = parse_bearer(
            "Basic realm=\"x\", Bearer resource_metadata=\"https://s.example/.well-known/oauth-protected-resource/mcp\", scope=\"files:read files:write\", error=invalid_token",
        )
        .unwrap();
        assert_eq!(
            challenge.resource_metadata.as_deref(),
            Some("https://s.example/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(challenge.scope.as_deref(), Some("files:read files:write"));
        assert_eq!(challenge.error.as_deref(), Some("invalid_token"));
        assert_eq!(parse_bearer("Bearer"), Some(Challenge::default()));
        assert_eq!(parse_bearer("Basic realm=\"x\""), None);
        assert_eq!(parse_bearer(""), None);
    }

    #[test]
    fn hostile_headers_give_no_more_than_they_say() {
        // A parameter named twice keeps its first value.
        let twice = parse_bearer(
            "Bearer resource_metadata=\"https://a.example/m\", resource_metadata=\"https://b.example/m\"",
        )
        .unwrap();
        assert_eq!(
            twice.resource_metadata.as_deref(),
            Some("https://a.example/m")
        );
        // Escapes are undone; a quote never closed ends the parameters.
        let escaped = parse_bearer("Bearer scope=\"a\\\"b\"").unwrap();
        assert_eq!(escaped.scope.as_deref(), Some("a\"b"));
        let open = parse_bearer("Bearer scope=\"never closed").unwrap();
        assert_eq!(open.scope, None);
        // Another scheme's parameters are not the Bearer's.
        let other =
            parse_bearer("DPoP resource_metadata=\"https://evil.example/m\", Bearer scope=x")
                .unwrap();
        assert_eq!(other.resource_metadata, None);
        assert_eq!(other.scope.as_deref(), Some("x"));
        // A huge header is read only so far.
        let huge = format!("Bearer scope=\"{}\"", "a".repeat(MAX_HEADER * 2));
        assert_eq!(parse_bearer(&huge).unwrap().scope, None);
        // Not on a character boundary: still no panic.
        let multibyte = format!("Bearer scope=\"{}\"", "é".repeat(MAX_HEADER));
        assert!(parse_bearer(&multibyte).is_some());
    }
}
