//! `portcullis tools pins` and `portcullis tools approve`, and the audit
//! records of pin events.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::Format;
use crate::audit::{Audit, AuditRecord, SledStorage};
use crate::config::Config;
use crate::interceptors::pinning::{
    Files, Finding, Pin, PinEvent, poison::Rules, review, rule_ids, short, store,
};
use crate::protocol::{At, shown, shown_json};

/// The audit record of a pin event.
pub fn record(event: &PinEvent, separator: &str) -> AuditRecord {
    let (kind, decision, name, detail, reason) = match event {
        PinEvent::Added { tool, sha256 } => (
            "pin_added",
            "allow",
            Some(tool),
            json!({ "sha256": sha256, "by": store::FIRST_USE }),
            None,
        ),
        PinEvent::Changed {
            tool,
            pinned,
            seen,
            withheld,
        } => (
            "pin_changed",
            if *withheld { "deny" } else { "allow" },
            Some(tool),
            json!({ "pinned": pinned, "seen": seen, "withheld": withheld }),
            Some("the tool's definition is not the pinned one".to_owned()),
        ),
        PinEvent::Unpinned { tool, sha256 } => (
            "pin_unpinned",
            "deny",
            Some(tool),
            json!({ "seen": sha256 }),
            Some("the tool is not in the pin file".to_owned()),
        ),
        PinEvent::Flagged {
            kind,
            name,
            sha256,
            rules,
            withheld,
        } => (
            "tool_flagged",
            if *withheld { "deny" } else { "allow" },
            Some(name),
            json!({ "kind": kind, "sha256": sha256, "rules": rules, "withheld": withheld }),
            Some(format!("flagged by poisoning rules: {}", rules.join(", "))),
        ),
        PinEvent::Reloaded { changed, removed } => (
            "pins_reloaded",
            "allow",
            None,
            json!({ "changed": changed, "removed": removed }),
            None,
        ),
        PinEvent::Rejected { message } => (
            "pins_reloaded",
            "error",
            None,
            json!({}),
            Some(message.clone()),
        ),
    };
    let mut record = AuditRecord::event(kind, decision);
    if let Some(name) = name {
        name_in(&mut record, name, separator);
    }
    record.detail = Some(detail);
    record.reason = reason;
    record
}

/// A record's `server` and `target` from a namespaced name (`target` alone
/// for a name without the separator).
fn name_in(record: &mut AuditRecord, name: &str, separator: &str) {
    match name.split_once(separator) {
        Some((server, own)) => {
            record.server = Some(server.to_owned());
            record.target = Some(own.to_owned());
        }
        None => record.target = Some(name.to_owned()),
    }
}

fn files_of(config: &Config) -> Files {
    Files::new(&config.pinning.file, &config.pinning.data_dir)
}

fn rules_of(config: &Config) -> anyhow::Result<Rules> {
    Ok(Rules::load(config.pinning.extra_rules.as_deref())?)
}

fn flags(findings: &[Finding]) -> String {
    if findings.is_empty() {
        "-".into()
    } else {
        rule_ids(findings).join(",")
    }
}

/// `tools pins`: every pin and every definition awaiting approval, with
/// its state, poisoning flags and what changed.
pub fn list(config: &Config, format: Format) -> anyhow::Result<()> {
    let files = files_of(config);
    let pins = files.load_pins()?;
    let seen = files.load_seen()?;
    let rules = rules_of(config)?;
    let rows: Vec<Value> = review::tools(&pins, &seen, Some(&rules))
        .into_iter()
        .map(|tool| {
            json!({
                "tool": tool.tool,
                "state": tool.state.as_str(),
                "pinned": tool.pin.map(|p| json!({"sha256": p.sha256, "by": p.by, "pinned_at": p.pinned_at})),
                "seen": tool.seen.map(|n| json!({"sha256": n.sha256, "seen_at": n.seen_at})),
                "findings": tool.findings,
                "diff": tool.diff,
            })
        })
        .collect();
    match format {
        Format::Json => println!(
            "{}",
            shown_json(&serde_json::to_string_pretty(&rows).unwrap_or_default())
        ),
        Format::Table => print_table(&rows, &files),
    }
    Ok(())
}

fn print_table(rows: &[Value], files: &Files) {
    if rows.is_empty() {
        println!(
            "no pins yet in {} (tools are pinned when the proxy first lists them)",
            files.pins.display()
        );
        return;
    }
    println!(
        "{:<36} {:<9} {:<12} {:<12} {:<22} FLAGS",
        "TOOL", "STATE", "PINNED", "SEEN", "BY"
    );
    // Tool names and times come from the pin files, which servers filled.
    let text =
        |value: Option<&Value>| shown(value.and_then(Value::as_str).unwrap_or("-")).into_owned();
    for row in rows {
        let findings: Vec<Finding> =
            serde_json::from_value(row.at(&["findings"]).cloned().unwrap_or_default())
                .unwrap_or_default();
        println!(
            "{:<36} {:<9} {:<12} {:<12} {:<22} {}",
            text(row.at(&["tool"])),
            text(row.at(&["state"])),
            short(
                row.at(&["pinned", "sha256"])
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            ),
            short(
                row.at(&["seen", "sha256"])
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            ),
            text(row.at(&["pinned", "by"])),
            flags(&findings),
        );
    }
    for row in rows {
        let name = text(row.at(&["tool"]));
        let findings: Vec<Finding> =
            serde_json::from_value(row.at(&["findings"]).cloned().unwrap_or_default())
                .unwrap_or_default();
        if let Some(diff) = row
            .at(&["diff"])
            .and_then(Value::as_array)
            .filter(|d| !d.is_empty())
        {
            println!(
                "\n{name}: pinned {} ({}, {}) -> seen {} ({}):",
                short(
                    row.at(&["pinned", "sha256"])
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                text(row.at(&["pinned", "by"])),
                text(row.at(&["pinned", "pinned_at"])),
                short(
                    row.at(&["seen", "sha256"])
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                text(row.at(&["seen", "seen_at"])),
            );
            for line in diff {
                // Escaped where it was made (`store::diff`); shown again in
                // case the file was written by hand.
                let line = line.as_str().unwrap_or_default();
                println!("  {}", shown_json(line).replace('\n', "\\u000a"));
            }
        }
        if !findings.is_empty() {
            println!("\n{name}: flagged by poisoning rules:");
            for finding in &findings {
                println!("  {finding}");
            }
        }
    }
    let waiting = rows
        .iter()
        .filter(|row| row.at(&["seen"]).is_some_and(Value::is_object))
        .count();
    if waiting > 0 {
        println!(
            "\n{waiting} awaiting approval: `portcullis tools approve TOOL --config FILE` pins what was seen"
        );
    }
}

/// `tools approve`: pins what the proxy saw of each named tool (or of every
/// tool of `--all SERVER` awaiting approval), and records the approval.
pub async fn approve(
    config: &Config,
    tools: &[String],
    all: Option<&str>,
    by: Option<&str>,
    reviewed: Option<&str>,
) -> anyhow::Result<()> {
    if tools.is_empty() && all.is_none() {
        bail!("name the tools to approve (SERVER__TOOL), or `--all SERVER`");
    }
    if let Some(reviewed) = reviewed
        && (tools.len() != 1 || all.is_some() || reviewed.len() < 8)
    {
        bail!(
            "`--sha256 {reviewed}` names one reviewed definition: give one tool, and at least 8 hex digits"
        );
    }
    let separator = &config.proxy.namespace_separator;
    if let Some(server) = all
        && !config.servers.iter().any(|s| *s.name == *server)
    {
        bail!("`{server}` is not a configured server");
    }
    let who = by
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "cli".into());
    let files = files_of(config);
    let approved = {
        let _lock = files.lock()?;
        let mut pins = files.load_pins()?;
        let mut seen = files.load_seen()?;
        let mut names: Vec<String> = tools.to_vec();
        if let Some(server) = all {
            let prefix = format!("{server}{separator}");
            let waiting: Vec<String> = seen
                .tools
                .keys()
                .filter(|name| name.starts_with(&prefix))
                .cloned()
                .collect();
            if waiting.is_empty() {
                bail!("no tool of server `{server}` awaits approval");
            }
            names.extend(waiting);
        }
        names.sort();
        names.dedup();
        let mut approved = Vec::new();
        for name in &names {
            let Some(noted) = seen.tools.remove(name) else {
                match pins.tools.get(name) {
                    Some(pin) => bail!(
                        "`{name}` awaits no approval: its pinned definition ({}, {}) is the one served",
                        short(&pin.sha256),
                        pin.by
                    ),
                    None => bail!(
                        "`{name}` has not been seen: no proxy with this config has listed it (run `portcullis tools list --config …` or let a client list tools)"
                    ),
                }
            };
            if let Some(reviewed) = reviewed
                && !noted.sha256.starts_with(&reviewed.to_ascii_lowercase())
            {
                bail!(
                    "`{name}`: the definition awaiting approval is {} now, not the {reviewed} reviewed: the server changed it again; review `portcullis tools pins` once more",
                    short(&noted.sha256)
                );
            }
            if store::sha256(&noted.definition) != noted.sha256 {
                bail!(
                    "{}: the definition noted for `{name}` does not match its sha256; the file was edited: delete the entry and let the proxy see the tool again",
                    files.seen.display()
                );
            }
            let previous = pins.tools.get(name).map(|pin| pin.sha256.clone());
            pins.tools.insert(
                name.clone(),
                Pin {
                    sha256: noted.sha256.clone(),
                    pinned_at: store::now(),
                    by: format!("approved by {who}"),
                    definition: noted.definition,
                },
            );
            approved.push((name.clone(), previous, noted.sha256));
        }
        files.save_pins(&pins)?;
        files.save_seen(&seen)?;
        approved
    };
    for (name, previous, sha256) in &approved {
        match previous {
            Some(previous) => println!(
                "approved {}: {} -> {} (by {who})",
                shown(name),
                short(previous),
                short(sha256)
            ),
            None => println!("approved {}: {} (by {who})", shown(name), short(sha256)),
        }
    }
    record_approvals(config, &approved, &who).await
}

/// The approvals, in the CLI's own audit store (`cli` in the data folder's
/// `audit/`, read by `audit query` with the others).
async fn record_approvals(
    config: &Config,
    approved: &[(String, Option<String>, String)],
    who: &str,
) -> anyhow::Result<()> {
    let dir = config.proxy.data_dir.join("audit");
    let store = SledStorage::open_for(&dir, "cli", None)
        .with_context(|| format!("{}: cannot record the approval", dir.display()))?;
    // Sealed like the proxy's own stores, so that `audit verify` with the
    // chain key checks this one too.
    let sealing = super::audit_keys::sealing(config, &store)?;
    let audit = Audit::start_sealed(store, true, config.audit.retention, sealing)?;
    let separator = &config.proxy.namespace_separator;
    for (name, previous, sha256) in approved {
        let mut record = AuditRecord::event("pin_approved", "allow");
        name_in(&mut record, name, separator);
        record.client = who.to_owned();
        record.detail = Some(json!({ "sha256": sha256, "previous": previous, "by": who }));
        audit.commit(record).await?;
    }
    audit.flush().await?;
    Ok(())
}
