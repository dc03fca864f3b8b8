//! What the config accepts as a name: of a server, a client, a plugin, and
//! of an identifier (a client attribute, a server's secret).

/// A character of a server name: `a-z`, `0-9`, `-`.
pub(super) fn is_server_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// 1-63 characters of `a-z`, `0-9` and `-`, starting and ending with a
/// letter or digit (a DNS label: it names containers and tools).
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(is_server_name_char)
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Letters, digits, `-`, `_` and `.`.
pub(super) fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// 1 to 64 letters, digits, `-` or `_`.
pub(super) fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Letters, digits and `_`, not starting with a digit: what Cedar takes as
/// an attribute and a container as an environment variable's name.
pub(super) fn is_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Text from a file someone else wrote (a catalog, an image's label), as an
/// error shows it: at most 80 characters, control characters escaped.
pub(super) fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

/// Checks a catalog's or registry's `name` (what `KIND://NAME/…` uses: the
/// form of a server name) and that no other of its kind has it, then
/// counts it among `names`.
pub(super) fn claim(
    at: &super::Entry<'_>,
    kind: &str,
    name: &str,
    names: &mut Vec<String>,
) -> Result<(), super::ConfigError> {
    if !valid_server_name(name) {
        return Err(at.error(
            ".name",
            format!(
                "{kind} name `{}` must be 1-63 characters of a-z, 0-9 and `-`",
                shown(name)
            ),
        ));
    }
    if names.iter().any(|taken| taken == name) {
        return Err(at.error(".name", format!("{kind} `{name}` is named twice")));
    }
    names.push(name.to_owned());
    Ok(())
}
