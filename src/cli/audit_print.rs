//! How `audit query` and `audit tail` print records: a table for a
//! terminal, or JSON. Records hold what clients, servers and plugins
//! wrote (tool names, methods, URIs, reasons): the table shows each field
//! escaped (`protocol::shown`), so that one record is one line and nothing
//! in it reaches the terminal as a control; JSON stays the same JSON, with
//! the characters a terminal acts on escaped as JSON escapes them.

use serde::Serialize;

use crate::audit::{AuditRecord, fleet};
use crate::protocol::{shown, shown_json};

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
    Jsonl,
}

/// `value` as one JSON line, or pretty, made safe for a terminal.
fn write_json(
    out: &mut impl std::io::Write,
    value: &impl Serialize,
    pretty: bool,
) -> anyhow::Result<()> {
    let text = match pretty {
        true => serde_json::to_string_pretty(value)?,
        false => serde_json::to_string(value)?,
    };
    writeln!(out, "{}", shown_json(&text))?;
    Ok(())
}

/// The fleet's records as JSON (an array) or JSON lines: each with its
/// `replica` and `store` beside the `record`.
pub(super) fn print_json(records: &[fleet::FleetRecord], lines: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if lines {
        for record in records {
            write_json(&mut out, record, false)?;
        }
    } else {
        write_json(&mut out, &records, true)?;
    }
    Ok(())
}

pub(super) fn print_records(
    records: &[(String, AuditRecord)],
    format: OutputFormat,
    with_store: bool,
    header: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Jsonl => {
            for (_, record) in records {
                write_json(&mut out, record, false)?;
            }
        }
        OutputFormat::Json => {
            let records: Vec<&AuditRecord> = records.iter().map(|(_, r)| r).collect();
            write_json(&mut out, &records, true)?;
        }
        OutputFormat::Table => print_table(&mut out, records, with_store, header)?,
    }
    Ok(())
}

fn print_table(
    out: &mut impl std::io::Write,
    records: &[(String, AuditRecord)],
    with_store: bool,
    header: bool,
) -> anyhow::Result<()> {
    let store = |name: &str| {
        if with_store {
            format!("{:<12} ", shown(name))
        } else {
            String::new()
        }
    };
    if header {
        writeln!(
            out,
            "{}{:>6} {:<24} {:<14} {:<18} {:<30} {:<6} {:>8} REASON",
            store("STORE"),
            "SEQ",
            "TIME",
            "CLIENT",
            "METHOD",
            "TARGET",
            "RESULT",
            "TOTAL µs"
        )?;
    }
    for (name, r) in records {
        let target = match (&r.server, &r.target) {
            (Some(server), Some(target)) => format!("{server}:{target}"),
            (Some(server), None) => server.clone(),
            (None, Some(target)) => target.clone(),
            (None, None) => String::new(),
        };
        let method = if r.kind == "exchange" {
            r.method.clone()
        } else {
            format!("[{}]", r.kind)
        };
        writeln!(
            out,
            "{}{:>6} {:<24} {:<14} {:<18} {:<30} {:<6} {:>8} {}",
            store(name),
            r.seq,
            shown(&r.time),
            shown(&r.client),
            shown(&method),
            shown(&target),
            shown(&r.decision),
            r.total_us,
            shown(r.reason.as_deref().unwrap_or_default())
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_hostile_fields_is_one_line_with_no_control() {
        let hostile = "x\u{1b}]0;pwned\u{7}\r\n     1 2026-01-01T00:00:00Z admin tools/call ok\u{9b}2J\u{202e}";
        let mut record = AuditRecord::event("exchange", "deny");
        record.client = hostile.into();
        record.method = hostile.into();
        record.server = Some(hostile.into());
        record.target = Some(hostile.into());
        record.reason = Some(hostile.into());
        let mut out = Vec::new();
        print_table(&mut out, &[(hostile.into(), record.clone())], true, false).unwrap_or_default();
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(crate::protocol::nothing_hidden(&text), "{text:?}");
        let mut out = Vec::new();
        write_json(&mut out, &record, false).unwrap_or_default();
        let line = String::from_utf8(out).unwrap_or_default();
        assert!(crate::protocol::nothing_hidden(&line), "{line:?}");
        let back: AuditRecord =
            serde_json::from_str(&line).unwrap_or_else(|_| AuditRecord::event("x", "y"));
        assert_eq!(back.client, hostile);
    }
}
