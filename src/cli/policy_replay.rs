//! `portcullis policy replay`: a candidate policy set run over the
//! decisions the log recorded in a period, and what it would change. Each
//! decision's record keeps the case authz decided (`detail.decided`: the
//! client and its groups, the action, the target with its annotations and
//! labels, the flow, the transport, revision and scopes, the verdict
//! given) and, where `[audit] arguments` keeps them, the arguments; the
//! candidate decides that case again.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::audit::{AuditRecord, FilterParams};
use crate::config::Config;
use crate::interceptors::authz::fixtures::{self, Case};
use crate::interceptors::authz::{PolicyError, PolicyStore, Severity};

/// A period holding this many exchanges or more is refused (the admin
/// API gives no more in one answer): a replay never leaves part of a
/// period out.
const MAX_RECORDS: usize = 10_000;

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    log: super::audit::Source,
    /// The candidate policy folder (schema and `*.cedar`).
    #[arg(long)]
    policies: PathBuf,
    /// `YYYY-MM-DDThh:mm:ssZ`, or a duration ago such as `15m`, `2h`.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Print every decision replayed, not only the ones that change.
    #[arg(long)]
    all: bool,
}

/// What replaying one record gave.
struct Replayed {
    record: AuditRecord,
    recorded: String,
    candidate: String,
    policies: Vec<String>,
    /// Its arguments were not kept: rules on them decided without them.
    without_arguments: bool,
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.log.config)?;
    let store = load(&args.policies)?;
    let params = FilterParams {
        kind: Some("exchange".into()),
        since: args.since.clone(),
        until: args.until.clone(),
        limit: Some(MAX_RECORDS.to_string()),
        ..FilterParams::default()
    };
    super::audit::check(&params)?;
    let (records, _) = super::audit::read_records(&args.log, &params, MAX_RECORDS).await?;
    if records.len() >= MAX_RECORDS {
        bail!(
            "the period holds {MAX_RECORDS} exchanges or more: narrow it with --since and --until (a replay never leaves part of a period out)"
        );
    }
    let known = fixtures::known(&config.clients);
    let naming = (config.proxy.namespace_separator.as_str(), &config.flow);
    let mut replayed = Vec::new();
    let mut skipped = 0;
    // A record that does not replay is named, and the others go on.
    let mut failed = 0;
    for (_, record) in records {
        match replay_one(&store, &known, naming, record) {
            Ok(Some(done)) => replayed.push(done),
            Ok(None) => skipped += 1,
            Err(err) => {
                eprintln!("{}", crate::protocol::shown(&format!("{err:#}")));
                failed += 1;
            }
        }
    }
    let changed: Vec<&Replayed> = replayed
        .iter()
        .filter(|r| r.recorded != r.candidate)
        .collect();
    println!(
        "{:<8} {:<24} {:<16} {:<14} {:<32} {:<9} {:<9} CANDIDATE'S POLICIES",
        "SEQ", "TIME", "CLIENT", "ACTION", "TARGET", "RECORDED", "CANDIDATE"
    );
    for r in replayed
        .iter()
        .filter(|r| args.all || r.recorded != r.candidate)
    {
        let target = match (&r.record.server, &r.record.target) {
            (Some(server), Some(target)) => format!("{server}/{target}"),
            (server, target) => server.clone().or(target.clone()).unwrap_or_default(),
        };
        let shown = |text: &str| crate::protocol::shown(text).into_owned();
        println!(
            "{:<8} {:<24} {:<16} {:<14} {:<32} {:<9} {:<9} {}{}",
            r.record.seq,
            r.record.time,
            shown(&r.record.client),
            shown(&r.record.method),
            shown(&target),
            r.recorded,
            r.candidate,
            shown(&r.policies.join(", ")),
            if r.without_arguments {
                " (decided without its arguments: not kept)"
            } else {
                ""
            }
        );
    }
    let without = replayed.iter().filter(|r| r.without_arguments).count();
    println!(
        "{} decisions replayed, {} would change (candidate policy set {}); {} of them without their arguments; {} records not replayable (no decision kept)",
        replayed.len(),
        changed.len(),
        store.id,
        without,
        skipped
    );
    if failed > 0 {
        bail!("{failed} record(s) did not replay (named above)");
    }
    Ok(())
}

/// One record's decision, decided again by `store`; `None` for a record
/// that kept none (not decided by authz, or written before records kept
/// the case).
fn replay_one(
    store: &PolicyStore,
    known: &fixtures::Known,
    naming: (&str, &crate::config::FlowConfig),
    record: AuditRecord,
) -> anyhow::Result<Option<Replayed>> {
    let Some(decided) = record.detail.as_ref().and_then(|d| d.get("decided")) else {
        return Ok(None);
    };
    let mut case: Case = serde_json::from_value(decided.clone())
        .with_context(|| format!("record {}: its decided case does not parse", record.seq))?;
    // As kept: where a size was kept in their place, none.
    let arguments = record
        .detail
        .as_ref()
        .and_then(|d| d.get("arguments"))
        .filter(|a| !omitted(a))
        .and_then(|a| serde_json::from_value::<toml::Table>(a.clone()).ok());
    // The record's own session (`context.session`).
    case.session = Some(record.session.clone());
    let without_arguments =
        arguments.is_none() && matches!(case.action.as_str(), "call_tool" | "get_prompt");
    case.arguments = arguments;
    let recorded = case.expect.clone().unwrap_or_default();
    let prepared = case
        .prepare(known, naming)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("record {}", record.seq))?;
    let decision = store.decide(&prepared.query());
    if recorded.is_empty() {
        bail!("record {}: its decided case names no verdict", record.seq);
    }
    Ok(Some(Replayed {
        record,
        recorded,
        candidate: decision.verdict().to_owned(),
        policies: decision.policies,
        without_arguments,
    }))
}

/// Whether a record's `detail.arguments` is what the log keeps in place of
/// arguments too large to keep (`{"omitted": "N bytes, over the M kept"}`).
fn omitted(arguments: &serde_json::Value) -> bool {
    let Some(kept) = arguments.as_object() else {
        return false;
    };
    kept.len() == 1
        && kept
            .get("omitted")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|text| text.contains(" bytes, over the ") && text.ends_with(" kept"))
}

/// A policy folder loaded (every policy command's), each problem printed
/// with its file, line and column.
pub(super) fn load(dir: &Path) -> anyhow::Result<PolicyStore> {
    match PolicyStore::load(dir) {
        Ok(store) => Ok(store),
        Err(PolicyError::Invalid(diagnostics)) => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            let errors = diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            bail!("{}: {errors} error(s) in the policies", dir.display())
        }
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store() -> PolicyStore {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies/schema.cedarschema"),
            dir.path().join("schema.cedarschema"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("main.cedar"),
            r#"@id("in-the-session") permit (principal, action, resource) when { context.session == "s-1" };
@id("no-big") forbid (principal, action, resource) when { context.arguments has omitted };"#,
        )
        .unwrap();
        load(dir.path()).unwrap()
    }

    fn record(decided: serde_json::Value, arguments: Option<serde_json::Value>) -> AuditRecord {
        let mut record = AuditRecord::event("exchange", "allow");
        record.seq = 7;
        record.session = "s-1".into();
        let mut detail = json!({ "decided": decided });
        if let Some(arguments) = arguments {
            detail["arguments"] = arguments;
        }
        record.detail = Some(detail);
        record
    }

    fn case() -> serde_json::Value {
        json!({ "client": "tester", "action": "call_tool", "tool": "example__echo", "expect": "allow" })
    }

    #[test]
    fn a_record_replays_in_its_own_session_with_its_arguments_as_kept() {
        let store = store();
        let known = fixtures::known(&[]);
        let flow = crate::config::FlowConfig::default();
        let naming = ("__", &flow);
        // Its session decides; arguments too large to keep are none.
        let big = json!({ "omitted": "70000 bytes, over the 65536 kept" });
        let done = replay_one(&store, &known, naming, record(case(), Some(big)))
            .unwrap()
            .unwrap();
        assert_eq!(done.candidate, "allow", "{:?}", done.policies);
        assert!(done.without_arguments);
        // An argument that merely looks like the marker is an argument.
        let kept = json!({ "omitted": "yes" });
        let done = replay_one(&store, &known, naming, record(case(), Some(kept)))
            .unwrap()
            .unwrap();
        assert!(!done.without_arguments);
        // A record without a decided case is not replayable; one whose case
        // does not parse is an error that names the record.
        let mut none = record(case(), None);
        none.detail = None;
        assert!(replay_one(&store, &known, naming, none).unwrap().is_none());
        let err = replay_one(&store, &known, naming, record(json!({ "nope": 1 }), None))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("record 7"), "{err:#}");
    }
}
