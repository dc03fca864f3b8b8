//! `portcullis redact scan|rules`: for security teams tuning the rule set.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use super::Format;
use crate::config::{Config, RedactConfig};
use crate::interceptors::redact::{self, Scanner};

#[derive(Subcommand)]
pub enum RedactCommand {
    /// Scan a file (or stdin) and print each secret found: rule, line,
    /// column and a masked preview. Exits with 1 when anything is found.
    Scan {
        /// The file to scan; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        /// Use this config's `[redact]` section (extra rules, disabled rules,
        /// allowlists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the rules: id, severity, keywords, description.
    Rules {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn run(command: RedactCommand) -> anyhow::Result<()> {
    match command {
        RedactCommand::Scan {
            file,
            config,
            format,
        } => scan(file, config, format),
        RedactCommand::Rules { config, format } => {
            let scanner = scanner(config)?;
            match format {
                Format::Json => {
                    let rules: Vec<_> = scanner
                        .rules()
                        .iter()
                        .map(|rule| {
                            json!({
                                "id": &*rule.id,
                                "severity": rule.severity.as_str(),
                                "keywords": rule.keywords,
                                "description": rule.description,
                                "origin": &*rule.origin,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rules)?);
                }
                Format::Table => {
                    for rule in scanner.rules() {
                        println!(
                            "{:<32} {:<8} {:<28} {}",
                            rule.id,
                            rule.severity.as_str(),
                            rule.keywords.join(","),
                            rule.description
                        );
                    }
                    println!("{} rules", scanner.rules().len());
                }
            }
            Ok(())
        }
    }
}

fn redact_config(config: Option<PathBuf>) -> anyhow::Result<RedactConfig> {
    Ok(match config {
        Some(path) => Config::load(&path)?.redact,
        None => RedactConfig::default(),
    })
}

fn scanner(config: Option<PathBuf>) -> anyhow::Result<Scanner> {
    Ok(redact::scanner(&redact_config(config)?)?)
}

fn scan(file: Option<PathBuf>, config: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    // The proxy's own string path: percent-escapes and base64 runs are
    // decoded and scanned too.
    let interceptor = redact::Redact::new(&redact_config(config)?)?;
    let scanner = interceptor.scanner();
    let (name, bytes) = match file {
        Some(path) if path.as_os_str() != "-" => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            (path.display().to_string(), bytes)
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            ("-".to_owned(), bytes)
        }
    };
    let mut findings = Vec::new();
    interceptor.scan_text(&bytes, &mut findings);
    let lines = LineIndex::new(&bytes);
    let rows: Vec<_> = findings
        .iter()
        .filter_map(|finding| {
            let rule = scanner.rule(finding.rule)?;
            let (line, column) = lines.locate(&bytes, finding.start);
            let secret = bytes.get(finding.start..finding.end).unwrap_or_default();
            Some((rule, line, column, secret.len(), masked(secret)))
        })
        .collect();
    match format {
        Format::Json => {
            let out: Vec<_> = rows
                .iter()
                .map(|(rule, line, column, length, preview)| {
                    json!({
                        "file": name,
                        "rule": &*rule.id,
                        "severity": rule.severity.as_str(),
                        "line": line,
                        "column": column,
                        "length": length,
                        "preview": preview,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Table => {
            for (rule, line, column, _, preview) in &rows {
                println!(
                    "{name}:{line}:{column}  {:<30} {:<8} {preview}",
                    rule.id,
                    rule.severity.as_str()
                );
            }
        }
    }
    if !rows.is_empty() {
        bail!("{} secret(s) found in {name}", rows.len());
    }
    eprintln!("no secrets found in {name}");
    Ok(())
}

/// A preview that shows what kind of value it is, never enough of it to be
/// useful: a few leading characters of long secrets, then the length.
pub fn masked(secret: &[u8]) -> String {
    let shown = match secret.len() {
        0..12 => 0,
        12..24 => 3,
        _ => 6,
    };
    let head = String::from_utf8_lossy(secret.get(..shown).unwrap_or_default());
    format!("{head}… ({} chars)", secret.len())
}

/// Line starts, for turning byte offsets into line:column (1-based;
/// columns count characters).
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(bytes: &[u8]) -> Self {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', bytes).map(|i| i + 1));
        Self { starts }
    }

    fn locate(&self, bytes: &[u8], offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = (line.checked_sub(1))
            .and_then(|line| self.starts.get(line))
            .copied()
            .unwrap_or_default();
        let column = String::from_utf8_lossy(bytes.get(start..offset).unwrap_or_default())
            .chars()
            .count()
            + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_never_show_most_of_a_secret() {
        assert_eq!(masked(b"hunter2x"), "… (8 chars)");
        assert_eq!(masked(b"abcdefghijklmno"), "abc… (15 chars)");
        assert_eq!(
            masked(b"abcdefghijklmnopqrstuvwxyz0123456789ABCD"),
            "abcdef… (40 chars)"
        );
    }

    #[test]
    fn offsets_become_lines_and_character_columns() {
        let text = "first\nsécond key\n".as_bytes();
        let index = LineIndex::new(text);
        assert_eq!(index.locate(text, 0), (1, 1));
        let key = text.windows(3).position(|w| w == b"key").unwrap_or(0);
        assert_eq!(index.locate(text, key), (2, 8));
    }
}
