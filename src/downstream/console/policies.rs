//! `/admin/policies`: the Cedar policy set in force (its id, as audit
//! records name it, the folder, when it loaded, each policy as written)
//! and whether the folder validates now. A folder that stopped validating
//! does not replace the set in force: the page says so, with the error.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::detail_table;
use crate::downstream::auth::LoggedIn;
use crate::downstream::layout::page;
use crate::downstream::state::HttpState;
use crate::interceptors::authz::store::SCHEMA_FILE;
use crate::interceptors::authz::{PolicyStore, Rejection};

pub(super) async fn policies(
    State(state): State<Arc<HttpState>>,
    LoggedIn(auditor): LoggedIn,
) -> Response {
    let body = match &state.enforcement.policies {
        None => html! {
            p class="problem" id="no-policies" {
                "No policies are configured (" code { "[proxy] policies" }
                "): every client may use every tool, prompt and resource."
            }
        },
        Some(engine) => listing(&engine.current(), engine.dir(), engine.rejection().as_ref()),
    };
    page(StatusCode::OK, "Policies", Some(&auditor), body)
}

/// The page's body for the set in force and the last refused reload.
fn listing(store: &PolicyStore, dir: &Path, rejection: Option<&Rejection>) -> Markup {
    let within = |path: &Path| path.strip_prefix(dir).unwrap_or(path).display().to_string();
    let validation = match rejection {
        None => format!("valid against the schema ({SCHEMA_FILE})"),
        Some(_) => "the folder does not validate now; the set in force is the last that did".into(),
    };
    let fields: Vec<(&str, String)> = vec![
        ("policy set", store.id.to_string()),
        ("folder", dir.display().to_string()),
        ("loaded", crate::audit::timestamp(store.loaded_at)),
        ("policies", store.policy_count().to_string()),
        (
            "files",
            store
                .files
                .iter()
                .map(|file| within(file))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("validation", validation),
    ];
    let listed = store.policies();
    html! {
        h2 { "Policy set " (store.id) }
        (detail_table(&fields))
        p class="hint" {
            "Audit records name the set that decided by this id (" code { "policy_set" } "); "
            code { "policy_reload" } " records mark each change. The folder is read again every "
            code { "[proxy] policy_poll" } " and on SIGHUP."
        }
        @if let Some(rejection) = rejection {
            section class="rejected" role="alert" {
                h2 { "The last reload was refused" }
                p class="problem" {
                    "Since " (crate::audit::timestamp(rejection.at)) " the folder does not load, for \
                     the reason below. The proxy keeps enforcing the set above (" (store.id) "), the \
                     last that validated: a reload never replaces it with a set that does not, nor \
                     empties it. Fix the files, and the next poll loads them."
                }
                pre id="policy-error" { (rejection.message) }
            }
        }
        @if !store.warnings.is_empty() {
            h2 { "Warnings" }
            pre class="warnings" {
                @for warning in &store.warnings { (warning) "\n" }
            }
        }
        @if listed.is_empty() {
            p class="problem" { "The set has no policies: every request is denied." }
        } @else {
            table id="policies" {
                thead { tr { th { "@id" } th { "effect" } th { "where" } th { "policy" } } }
                tbody {
                    @for policy in &listed {
                        tr data-policy=(policy.id) {
                            td class="id" { (policy.id) }
                            td class={ "effect effect-" (policy.origin.effect) } { (policy.origin.effect) }
                            td class="where" { (within(&policy.origin.file)) ":" (policy.origin.line) }
                            td { pre { (policy.text) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn folder(policies: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema");
        let copied = std::fs::copy(schema, dir.path().join(SCHEMA_FILE))
            .and_then(|_| std::fs::write(dir.path().join("main.cedar"), policies));
        assert!(copied.is_ok(), "{copied:?}");
        dir
    }

    #[test]
    fn each_policy_is_listed_escaped_with_its_effect_and_place() {
        let dir = folder(
            "@id(\"echo\") permit(principal, action, resource == Tool::\"ex__echo\");\n\
             @id(\"<b>no-add</b>\") forbid(principal, action, resource == Tool::\"ex__add\");",
        );
        let store = PolicyStore::load(dir.path()).unwrap_or_else(|err| panic!("{err}"));
        let html = listing(&store, dir.path(), None).into_string();
        assert!(
            html.contains(&format!("<h2>Policy set {}</h2>", store.id)),
            "{html}"
        );
        assert!(html.contains("valid against the schema"), "{html}");
        assert!(html.contains("<td class=\"field-files\">schema.cedarschema, main.cedar</td>"));
        assert!(html.contains(
            "<tr data-policy=\"echo\"><td class=\"id\">echo</td><td class=\"effect effect-permit\">permit</td>\
             <td class=\"where\">main.cedar:1</td><td><pre>@id(&quot;echo&quot;) permit("
        ), "{html}");
        assert!(html.contains("<td class=\"id\">&lt;b&gt;no-add&lt;/b&gt;</td><td class=\"effect effect-forbid\">forbid</td>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("refused"), "{html}");
    }

    #[test]
    fn a_refused_reload_is_shown_beside_the_set_in_force() {
        let dir = folder("@id(\"all\") permit(principal, action, resource);");
        let store = PolicyStore::load(dir.path()).unwrap_or_else(|err| panic!("{err}"));
        let rejection = Rejection {
            message: "/p/bad.cedar:3:1: error: unexpected token `<`".into(),
            at: SystemTime::now(),
        };
        let html = listing(&store, dir.path(), Some(&rejection)).into_string();
        assert!(html.contains("does not validate now"), "{html}");
        assert!(html.contains(
            "<pre id=\"policy-error\">/p/bad.cedar:3:1: error: unexpected token `&lt;`</pre>"
        ));
        assert!(html.contains(&format!("keeps enforcing the set above ({})", store.id)));
        assert!(
            html.contains("<tr data-policy=\"all\">"),
            "the set in force is still listed"
        );
    }
}
