//! Secrets in the config: where their values come from (`file:PATH`,
//! `env:VAR` and `dotenv:PATH#KEY` references, `secret:NAME` at the end of a
//! header value), and
//! the checks that keep literal secrets out of environments and command
//! lines.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret's value comes from. The value itself is never stored in
/// the config, printed, or logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
    /// `KEY` of a `.env` file (`KEY=VALUE` lines, as Docker's gateway reads
    /// its `--secrets` files).
    DotEnv {
        file: PathBuf,
        key: String,
    },
}

impl SecretRef {
    /// Reads the secret's value (trailing newlines trimmed).
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|err| format!("cannot read secret file `{}`: {err}", path.display())),
            Self::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            Self::DotEnv { file, key } => {
                let text = read_small_file(file)?;
                match dotenv_value(&text, key) {
                    Ok(Some(value)) => Ok(value),
                    Ok(None) => Err(format!("secrets file `{}` has no `{key}`", file.display())),
                    Err(message) => Err(format!("secrets file `{}`: {message}", file.display())),
                }
            }
        }
    }
}

/// The largest `.env` file read.
const MAX_DOTENV_BYTES: usize = 1024 * 1024;

fn read_small_file(path: &Path) -> Result<String, String> {
    super::values::read_regular(path, MAX_DOTENV_BYTES)
        .map_err(|err| format!("cannot read secrets file `{}`: {err}", path.display()))
}

/// `key`'s value in a `.env` file: the last `KEY=VALUE` line of that key
/// (`export` before it allowed; `#` lines are comments). A value is taken
/// whole on its line: in double or single quotes (`"…"` with `\"`, `\\`
/// and `\n` escapes; `'…'` as written), then an optional `# comment`; or
/// bare, up to ` #`. An empty value, an unclosed quote, or text after a
/// closing quote is an error (by line number; the value is never shown):
/// a wrong secret must not reach a server silently.
fn dotenv_value(text: &str, key: &str) -> Result<Option<String>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut found = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.trim() != key {
            continue;
        }
        let bad = |why: &str| Err(format!("line {}: `{key}` {why}", number + 1));
        let value = value.trim();
        let parsed = match value.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let mut out = String::new();
                let mut chars = value[1..].chars();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        c if c == quote => {
                            closed = true;
                            break;
                        }
                        '\\' if quote == '"' => match chars.next() {
                            Some('n') => out.push('\n'),
                            Some(other @ ('"' | '\\')) => out.push(other),
                            Some(other) => {
                                out.push('\\');
                                out.push(other);
                            }
                            None => break,
                        },
                        c => out.push(c),
                    }
                }
                let rest = chars.as_str().trim_start();
                if !closed {
                    return bad("has a quote that does not close on its line");
                }
                if !rest.is_empty() && !rest.starts_with('#') {
                    return bad("has text after its closing quote");
                }
                out
            }
            _ => value
                .split_once(" #")
                .map_or(value, |(bare, _)| bare)
                .trim_end()
                .to_owned(),
        };
        if parsed.is_empty() {
            return bad("is empty");
        }
        found = Some(parsed);
    }
    Ok(found)
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Env(var) => write!(f, "env:{var}"),
            Self::DotEnv { file, key } => write!(f, "dotenv:{}#{key}", file.display()),
        }
    }
}

/// A header value: literal text, or text ending in a secret reference
/// (`"Bearer secret:github_token"`) resolved when the connection opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Literal(String),
    Secret { prefix: String, secret: String },
}

/// A client id or secret as HTTP Basic carries them to an OAuth server
/// (RFC 6749 2.3.1: form-urlencoded first, so that `:`, `%` or `+` in a
/// secret reach the server as written).
pub fn form_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `file:PATH` (relative to `base`), `env:VAR` or `dotenv:PATH#KEY`;
/// anything else is refused.
pub(super) fn parse_secret_ref(text: &str, base: &Path) -> Result<SecretRef, String> {
    if let Some(rest) = text.strip_prefix("dotenv:") {
        let Some((path, key)) = rest
            .rsplit_once('#')
            .filter(|(path, key)| !path.is_empty() && super::names::is_identifier(key))
        else {
            return Err("`dotenv:` is `dotenv:PATH#KEY`: a `.env` file and the name in it".into());
        };
        let path = PathBuf::from(path);
        Ok(SecretRef::DotEnv {
            file: if path.is_absolute() {
                path
            } else {
                base.join(path)
            },
            key: key.to_owned(),
        })
    } else if let Some(path) = text.strip_prefix("file:") {
        let path = PathBuf::from(path);
        Ok(SecretRef::File(if path.is_absolute() {
            path
        } else {
            base.join(path)
        }))
    } else if let Some(var) = text.strip_prefix("env:") {
        if var.is_empty() {
            return Err("`env:` needs a variable name".into());
        }
        Ok(SecretRef::Env(var.to_owned()))
    } else {
        Err(
            "a secret must be `file:PATH`, `env:VAR` or `dotenv:PATH#KEY`; literal values do not belong in the config"
                .into(),
        )
    }
}

pub(super) fn parse_header_value(text: &str) -> HeaderValue {
    let (prefix, last) = match text.rsplit_once(' ') {
        Some((prefix, last)) => (format!("{prefix} "), last),
        None => (String::new(), text),
    };
    match last.strip_prefix("secret:") {
        Some(secret) if !secret.is_empty() => HeaderValue::Secret {
            prefix,
            secret: secret.to_owned(),
        },
        _ => HeaderValue::Literal(text.to_owned()),
    }
}

/// Header values as written, each secret they name checked with `known`.
/// Errors are (header, the secret no table defines).
pub(super) fn headers(
    raw: BTreeMap<String, String>,
    known: impl Fn(&str) -> bool,
) -> Result<Vec<(String, HeaderValue)>, (String, String)> {
    let mut headers = Vec::new();
    for (header, value) in raw {
        let parsed = parse_header_value(&value);
        if let HeaderValue::Secret { secret, .. } = &parsed
            && !known(secret)
        {
            return Err((header, secret.clone()));
        }
        headers.push((header, parsed));
    }
    Ok(headers)
}

/// Words in an environment variable's name that say it holds a secret.
const SECRET_NAME_HINTS: &[&str] = &[
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "ACCESS_KEY",
    "SECRET_KEY",
    "SIGNING_KEY",
    "BEARER",
];

/// Prefixes of well-known credential formats.
const SECRET_VALUE_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "sk-",
    "sk_live_",
    "rk_live_",
    "AKIA",
    "ASIA",
    "AIza",
    "-----BEGIN",
];

/// Whether a value is shaped like a well-known credential, or is a URL with
/// a password in it.
fn shaped_like_secret(value: &str) -> bool {
    let known = SECRET_VALUE_PREFIXES
        .iter()
        .any(|prefix| value.contains(prefix) && value.len() >= prefix.len() + 8);
    known || url_with_password(value)
}

/// Whether a value is a URL with a password in it.
fn url_with_password(value: &str) -> bool {
    value
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Whether free text (a description, a title, any value of a server's
/// metadata) holds something shaped like a well-known credential: a word
/// that begins with one of the credentials' prefixes and goes on for at
/// least 16 characters of a key with letters and digits (a placeholder,
/// `ghp_your_token`, `sk-proj-xxxx…`, has no digit; the documentation's
/// `…EXAMPLE` keys are let through), a URL with a password that is not a
/// placeholder (`user:password@`, an empty one), or a PEM private key.
/// Read word by word: `task-runner` is not an `sk-` key. Hygiene, not a
/// boundary: a publisher who means to hide a key can encode it.
pub(super) fn credential_in_text(text: &str) -> bool {
    let keyish = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let private_key = text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----");
    private_key
        || text
            .split(|c: char| c.is_whitespace() || "\"'`<>()[]{},;".contains(c))
            .filter(|word| !word.contains("EXAMPLE"))
            .any(|word| {
                if url_with_real_password(word) {
                    return true;
                }
                word.split(['=', ':', '@', '/']).any(|part| {
                    SECRET_VALUE_PREFIXES.iter().any(|prefix| {
                        part.strip_prefix(prefix).is_some_and(|rest| {
                            let key: String = rest.chars().take_while(|c| keyish(*c)).collect();
                            key.len() >= 16
                                && key.chars().any(|c| c.is_ascii_digit())
                                && key.chars().any(|c| c.is_ascii_alphabetic())
                        })
                    })
                })
            })
}

/// A URL with a password in it that looks like one: with a digit or a
/// sign, or long (`user:password@` and `root:@` are examples, not secrets).
fn url_with_real_password(word: &str) -> bool {
    let password = word
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    password.is_some_and(|password| {
        password.len() >= 16
            || password
                .chars()
                .any(|c| c.is_ascii_digit() || !c.is_ascii_alphanumeric())
    })
}

/// Refuses command-line arguments that look like literal secrets: a command
/// line is visible to every process on the host. Errors are (index, message).
pub(super) fn check_args(args: &[String]) -> Result<(), (usize, String)> {
    match args.iter().position(|arg| shaped_like_secret(arg)) {
        Some(index) => Err((
            index,
            "looks like a literal secret on a command line, where every process on the host can read it; pass it in the server's `secrets` (as environment) instead".into(),
        )),
        None => Ok(()),
    }
}

/// Refuses `env` entries that look like literal secrets: secrets belong in
/// `secrets` (file or environment references), never in the config.
/// Errors are (variable, message); the message never repeats the value.
pub(super) fn check_env(env: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (name, value) in env {
        let upper = name.to_ascii_uppercase();
        let named_like_secret = SECRET_NAME_HINTS.iter().any(|hint| upper.contains(hint));
        if (named_like_secret && !value.is_empty()) || shaped_like_secret(value) {
            return Err((
                name.clone(),
                format!(
                    "`{name}` looks like a literal secret; put a reference in the server's `secrets` instead, e.g. `secrets = {{ {name} = \"file:./secrets/{}\" }}` or `\"env:{name}\"`",
                    name.to_ascii_lowercase()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_text_are_found_word_by_word() {
        // Each made at run time: this file holds no credential's shape
        // (the redaction tests scan the sources as text that has none).
        for found in [
            [
                "Use gh",
                "p_R8xT2mQ9vL4nK7pW3sZ6yB1cD5fG0hJ8aE2u to sign in",
            ]
            .concat(),
            ["token=xo", "xb-2048-4096-Ab3dEf6hIj9kLm"].concat(),
            ["key: AK", "IAZ7QX3VMPL2RT8NB4"].concat(),
            ["https://admin:hunter2", "@db.example.com/"].concat(),
            ["-----BEGIN OPENSSH ", "PRIVATE KEY-----"].concat(),
            ["(s", "k-proj-Ab3dEf6hIj9kLm0pQr5tUv)"].concat(),
        ] {
            assert!(credential_in_text(&found), "{found}");
        }
        for clean in [
            "A task-runner for desk-top and risk-free disk-backed jobs",
            "e.g. postgresql+asyncpg://user:password@localhost:5432/db or mysql://root:@localhost",
            "Set it to sk-your-openai-api-key, xoxb-your-slack-bot-token or ghp_your_personal_access_token",
            "sk-proj-xxxxxxxxxxxxxxxx and the region ASIA_PACIFIC_SOUTHEAST_REGION",
            "(-----BEGIN CERTIFICATE-----)",
            "sk-learn-compatible-estimators-for-everyone",
            "Set GITHUB_TOKEN to your ghp_XXXXXXXXXXXXXXXXXXXXXXXX token",
            "Needs an sk- key (OpenAI)",
            "https://api.example.com/v1?user=me",
            "https://example.com/docs/task-runner-and-more",
            "",
        ] {
            assert!(!credential_in_text(clean), "{clean}");
        }
    }

    #[test]
    fn a_dotenv_reference_reads_its_key_from_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join(".env"),
            "\u{feff}FIRST=1\r\n# the team's keys\nA=1\nexport GITHUB_TOKEN=\"ghp x\" # work\nA = 2\nQUOTED='q \\n'\nEQ=a=b # note\nESC=\"a\\\"b\\nc\"\nOPEN=\"abc\nTRAIL=\"abc\" x\nEMPTY=\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let read = |key: &str| {
            parse_secret_ref(&format!("dotenv:.env#{key}"), dir.path())
                .unwrap_or_else(|e| panic!("{e}"))
                .resolve()
        };
        assert_eq!(read("FIRST"), Ok("1".into()));
        assert_eq!(read("GITHUB_TOKEN"), Ok("ghp x".into()));
        assert_eq!(read("A"), Ok("2".into()));
        assert_eq!(read("QUOTED"), Ok("q \\n".into()));
        assert_eq!(read("EQ"), Ok("a=b".into()));
        assert_eq!(read("ESC"), Ok("a\"b\nc".into()));
        for (key, why) in [
            ("OPEN", "line 9: `OPEN` has a quote"),
            ("TRAIL", "line 10: `TRAIL` has text after"),
            ("EMPTY", "line 11: `EMPTY` is empty"),
            ("NOPE", "has no `NOPE`"),
        ] {
            let refused = read(key).err().unwrap_or_default();
            assert!(
                refused.contains(why) && !refused.contains("abc"),
                "{key}: {refused}"
            );
        }
        for bad in ["dotenv:.env", "dotenv:#KEY", "dotenv:.env#bad-key"] {
            assert!(parse_secret_ref(bad, dir.path()).is_err(), "{bad}");
        }
        let fifo = parse_secret_ref("dotenv:/dev/zero#KEY", dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .resolve();
        assert!(
            fifo.err()
                .unwrap_or_default()
                .contains("not a regular file")
        );
    }

    #[test]
    fn client_credentials_are_form_encoded_for_basic_auth() {
        assert_eq!(form_encoded("portcullis"), "portcullis");
        assert_eq!(form_encoded("a:b%c+d e/é"), "a%3Ab%25c%2Bd+e%2F%C3%A9");
    }

    #[test]
    fn header_secret_references() {
        assert_eq!(
            parse_header_value("Bearer secret:gh"),
            HeaderValue::Secret {
                prefix: "Bearer ".into(),
                secret: "gh".into()
            }
        );
        assert_eq!(
            parse_header_value("plain"),
            HeaderValue::Literal("plain".into())
        );
    }

    #[test]
    fn literal_secrets_in_env_are_refused_without_echoing_them() {
        for (name, value) in [
            ("GITHUB_TOKEN", "abc"),
            ("db_password", "hunter2"),
            ("OPENAI", "sk-0123456789abcdef"),
            ("X", "ghp_0123456789abcdefghij"),
        ] {
            let env = BTreeMap::from([(name.to_owned(), value.to_owned())]);
            let Err((key, message)) = check_env(&env) else {
                panic!("{name} should be refused");
            };
            assert_eq!(key, name);
            assert!(message.contains("secrets"), "{message}");
            assert!(!message.contains(value), "{message}");
        }
        assert!(check_args(&["--token".into(), "ghp_0123456789abcdefghij".into()]).is_err());
        assert!(check_args(&["--db".into(), "postgres://app:pw@db/app".into()]).is_err());
        assert!(check_args(&["--url".into(), "https://example.com/a@b".into()]).is_ok());
        let fine = BTreeMap::from([
            ("LOG_LEVEL".to_owned(), "debug".to_owned()),
            ("TOKEN_CACHE".to_owned(), String::new()),
            ("SKETCH".to_owned(), "sk-short".to_owned()),
        ]);
        assert_eq!(check_env(&fine), Ok(()));
    }
}
