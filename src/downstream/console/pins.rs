//! `/admin/pins`: the tools whose definitions await a person's approval
//! (changed since pinned, or never pinned under `first_use = "deny"`, or
//! flagged by the poisoning rules), with both hashes, what changed and the
//! command that approves. The page only shows: approvals go through
//! `portcullis tools approve`, which the audit log records.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::detail_table;
use crate::config::{FirstUse, OnChange, PinningConfig, Poisoning};
use crate::downstream::auth::LoggedIn;
use crate::downstream::layout::page;
use crate::downstream::state::HttpState;
use crate::interceptors::pinning::{Finding, ToolReview, short, store};

pub(super) async fn pins(
    State(state): State<Arc<HttpState>>,
    LoggedIn(auditor): LoggedIn,
) -> Response {
    let config = state.gateway.config();
    let body = match &state.enforcement.pinning {
        None => html! {
            p class="hint" id="pins-off" {
                "Tool pinning is off (" code { "[pinning] enabled = false" } ", or no "
                code { "pinning" } " in the " code { "[[chain]]" } "): tool definitions are served as \
                 the servers list them, and nothing awaits approval."
            }
        },
        Some(pinning) => {
            // As the command is typed where the proxy runs: the config's
            // path made absolute against the proxy's folder.
            let config_file =
                std::path::absolute(&config.file).unwrap_or_else(|_| config.file.clone());
            html! {
                @if let Some(problem) = pinning.rejected() {
                    p class="problem" role="alert" {
                        "The pin file changed and does not load: " (problem)
                        ". The pins in force are the last that loaded."
                    }
                }
                (listing(
                    &pinning.review(),
                    &config.pinning,
                    &config.proxy.namespace_separator,
                    &config_file,
                ))
            }
        }
    };
    page(StatusCode::OK, "Tool pins", Some(&auditor), body)
}

/// The page's body: a summary, each tool awaiting approval in full, then
/// the pinned tools that are served as pinned.
fn listing(
    reviewed: &[ToolReview],
    pinning: &PinningConfig,
    separator: &str,
    config_file: &Path,
) -> Markup {
    let (awaiting, fine): (Vec<&ToolReview>, Vec<&ToolReview>) =
        reviewed.iter().partition(|tool| tool.awaits_approval());
    let mode = format!(
        "first_use = \"{}\", on_change = \"{}\", poisoning = \"{}\"",
        match pinning.first_use {
            FirstUse::Pin => "pin",
            FirstUse::Deny => "deny",
        },
        match pinning.on_change {
            OnChange::Deny => "deny",
            OnChange::Warn => "warn",
        },
        match pinning.poisoning {
            Poisoning::Off => "off",
            Poisoning::Flag => "flag",
            Poisoning::Deny => "deny",
        },
    );
    html! {
        p id="pins-summary" {
            strong { (awaiting.len()) } " awaiting approval; "
            strong { (fine.len()) } " pinned tools are fine (served as pinned)."
        }
        p class="hint" {
            "Pin file " code { (pinning.file.display()) } "; " code { "[pinning] " (mode) } ". \
             The console does not approve: the security team reviews each change below and runs \
             the command shown, which pins that very definition and is recorded in the audit log."
        }
        h2 { "Awaiting approval" }
        @if awaiting.is_empty() {
            p class="hint" { "Nothing awaits approval." }
        }
        @for tool in &awaiting {
            (awaiting_section(tool, separator, config_file))
        }
        h2 { "Pinned (" (fine.len()) ")" }
        @if fine.is_empty() {
            p class="hint" {
                "No tool is pinned yet: tools are pinned when the proxy first lists them."
            }
        } @else {
            table id="pinned" {
                thead {
                    tr {
                        th { "tool" } th { "state" } th { "sha256" } th { "by" }
                        th { "pinned at" } th { "poisoning flags" }
                    }
                }
                tbody {
                    @for tool in &fine {
                        @let pin = tool.pin.as_ref();
                        tr data-tool=(tool.tool) {
                            td { (tool.tool) }
                            td { (tool.state.as_str()) }
                            td { code { (short(pin.map_or("", |p| &p.sha256))) } }
                            td { (pin.map_or("", |p| &p.by)) }
                            td { (pin.map_or("", |p| &p.pinned_at)) }
                            td { (flags(&tool.findings)) }
                        }
                    }
                }
            }
        }
    }
}

/// One tool awaiting approval: both hashes, when it was seen, what
/// changed, its flags, the definition awaiting approval, and the command.
fn awaiting_section(tool: &ToolReview, separator: &str, config_file: &Path) -> Markup {
    let (server, own) = tool
        .tool
        .split_once(separator)
        .unwrap_or(("", tool.tool.as_str()));
    let seen = tool.seen.as_ref();
    let new_sha256 = seen.map_or("", |s| s.sha256.as_str());
    let mut fields: Vec<(&str, String)> = vec![
        ("server", server.to_owned()),
        ("tool", own.to_owned()),
        ("state", tool.state.as_str().to_owned()),
    ];
    match &tool.pin {
        Some(pin) => {
            fields.push(("pinned sha256", pin.sha256.clone()));
            fields.push(("pinned", format!("{} ({})", pin.pinned_at, pin.by)));
        }
        None => fields.push(("pinned sha256", "none: not in the pin file".into())),
    }
    fields.push(("new sha256", new_sha256.to_owned()));
    fields.push(("seen", seen.map_or(String::new(), |s| s.seen_at.clone())));
    fields.push(("poisoning flags", flags(&tool.findings)));
    let definition = seen.map_or(String::new(), |s| store::shown_pretty(&s.definition));
    let command = format!(
        "portcullis tools approve {} --config {} --sha256 {new_sha256}",
        shell_word(&tool.tool),
        shell_word(&config_file.display().to_string()),
    );
    let state = tool.state.as_str();
    html! {
        section class="pin" data-tool=(tool.tool) {
            h2 { (tool.tool) " " span class={ "state state-" (state) } { (state) } }
            (detail_table(&fields))
            @if tool.diff.is_empty() {
                @if tool.pin.is_some() {
                    p class="hint" { "The definition is the pinned one; it is withheld by the poisoning rules." }
                } @else {
                    p class="hint" { "Never pinned: the whole definition is new." }
                }
            } @else {
                h3 { "What changed" }
                pre class="diff" {
                    @for line in &tool.diff {
                        span class=(diff_class(line)) { (line) } "\n"
                    }
                }
            }
            details {
                summary { "The definition awaiting approval" }
                pre class="definition" { (definition) }
            }
            p { "Once reviewed, approve it where the proxy runs:" }
            pre class="command" { (command) }
        }
    }
}

/// How a line of the diff is shown: taken out, put in, or the same.
fn diff_class(line: &str) -> &'static str {
    match line.trim_start().as_bytes().first() {
        Some(b'-') => "del",
        Some(b'+') => "add",
        _ => "same",
    }
}

fn flags(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "none".into();
    }
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A word a POSIX shell reads back as it is: tool names come from servers
/// and are pasted into a shell.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::interceptors::pinning::{Pin, ReviewState, Seen};

    fn pin(description: &str) -> Pin {
        let definition = json!({"name": "echo", "description": description});
        Pin {
            sha256: store::sha256(&definition),
            pinned_at: "2026-01-01T00:00:00.000Z".into(),
            by: store::FIRST_USE.into(),
            definition,
        }
    }

    fn changed(tool: &str, before: &str, after: &str) -> ToolReview {
        let pin = pin(before);
        let definition = json!({"name": "echo", "description": after});
        let seen = Seen {
            sha256: store::sha256(&definition),
            seen_at: "2026-01-02T00:00:00.000Z".into(),
            definition: definition.clone(),
            findings: Vec::new(),
        };
        ToolReview {
            tool: tool.into(),
            state: ReviewState::Changed,
            diff: store::diff(&pin.definition, &definition),
            pin: Some(pin),
            seen: Some(seen),
            findings: vec![Finding {
                rule: "important-tag".into(),
                path: "/description".into(),
            }],
        }
    }

    #[test]
    fn a_change_shows_both_hashes_the_diff_and_the_approve_command() {
        let change = changed("srv__echo", "Echo.", "Echo, and <b>keep</b> a copy.");
        let fine = ToolReview {
            tool: "srv__add".into(),
            state: ReviewState::Pinned,
            pin: Some(pin("Add.")),
            seen: None,
            findings: Vec::new(),
            diff: Vec::new(),
        };
        let html = listing(
            &[fine, change.clone()],
            &PinningConfig::in_data_dir(Path::new("/data")),
            "__",
            Path::new("/etc/portcullis.toml"),
        )
        .into_string();
        let pinned = change
            .pin
            .as_ref()
            .map(|p| p.sha256.clone())
            .unwrap_or_default();
        let seen = change
            .seen
            .as_ref()
            .map(|s| s.sha256.clone())
            .unwrap_or_default();
        assert!(
            html.contains("<strong>1</strong> awaiting approval"),
            "{html}"
        );
        assert!(
            html.contains("<strong>1</strong> pinned tools are fine"),
            "{html}"
        );
        assert!(html.contains(&format!("<td class=\"field-pinned-sha256\">{pinned}</td>")));
        assert!(html.contains(&format!("<td class=\"field-new-sha256\">{seen}</td>")));
        assert!(
            html.contains("<td class=\"field-server\">srv</td><"),
            "{html}"
        );
        assert!(html.contains(&format!(
            "portcullis tools approve srv__echo --config /etc/portcullis.toml --sha256 {seen}"
        )));
        // The server's text is escaped, in the diff and the definition.
        assert!(!html.contains("<b>keep</b>"), "{html}");
        assert!(html.contains("<span class=\"add\">+ /description: &quot;Echo, and &lt;b&gt;keep&lt;/b&gt; a copy.&quot;</span>"), "{html}");
        assert!(html.contains("important-tag at /description"));
        assert!(html.contains("<tr data-tool=\"srv__add\">"));
    }

    #[test]
    fn a_hostile_tool_name_is_escaped_and_quoted_for_the_shell() {
        let hostile = changed("srv__x'; rm -rf ~ #<script>", "a", "b");
        let html = awaiting_section(&hostile, "__", Path::new("/my configs/p.toml")).into_string();
        assert!(!html.contains("<script>"), "{html}");
        // (maud leaves `'` as it is: attributes are quoted with `"`.)
        assert!(
            html.contains(
                "portcullis tools approve 'srv__x'\\''; rm -rf ~ #&lt;script&gt;' \
                 --config '/my configs/p.toml' --sha256"
            ),
            "{html}"
        );
        assert_eq!(shell_word("srv__echo"), "srv__echo");
        assert_eq!(shell_word("a'b"), "'a'\\''b'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("$(id)"), "'$(id)'");
    }
}
