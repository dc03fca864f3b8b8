//! `/admin/fleet`: the fleet's log, every replica's calls as `[audit.ship]`
//! shipped them to PostgreSQL, newest first, with the replica and store
//! each came from; filtered as the live view is.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::{ViewFilter, call_cells};
use crate::audit::fleet::FleetRecord;
use crate::downstream::auth::LoggedIn;
use crate::downstream::layout::page;
use crate::downstream::state::HttpState;

pub(super) async fn fleet(
    State(state): State<Arc<HttpState>>,
    LoggedIn(auditor): LoggedIn,
    view: Result<Query<ViewFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let view = view.map(|Query(view)| view).unwrap_or_default();
    let problem = |status: StatusCode, text: String| {
        page(
            status,
            "Fleet",
            Some(&auditor),
            html! {
                (view.form_for("/admin/fleet"))
                p class="problem" role="alert" { (text) }
            },
        )
    };
    let filter = match view.params().to_filter(SystemTime::now(), None) {
        Ok(filter) => filter,
        Err(err) => return problem(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let records = match state.fleet_records(&filter).await {
        Ok(Some(records)) => records,
        Ok(None) => {
            return page(
                StatusCode::OK,
                "Fleet",
                Some(&auditor),
                html! {
                    p class="hint" {
                        "This replica ships no log: with `[audit.ship]`, every replica's calls are read here together."
                    }
                },
            );
        }
        Err(message) => return problem(StatusCode::BAD_GATEWAY, format!("{message}.")),
    };
    page(
        StatusCode::OK,
        "Fleet",
        Some(&auditor),
        html! {
            (view.form_for("/admin/fleet"))
            table id="fleet" {
                thead {
                    tr {
                        th { "replica / store" } th { "seq" } th { "time" } th { "client" }
                        th { "server" } th { "method" } th { "target" } th { "decision" }
                        th { "decided by" } th class="num" { "ms" }
                    }
                }
                tbody {
                    @for shipped in records.iter().rev() { (row(shipped)) }
                }
            }
            p class="hint" {
                "Every replica's calls as shipped to the fleet's database, newest first (what a replica has not shipped yet is in its own log, under Calls)."
            }
        },
    )
}

fn row(shipped: &FleetRecord) -> Markup {
    let record = &shipped.record;
    html! {
        tr class={ "decision-" (record.decision) } data-replica=(shipped.replica) {
            td { (shipped.replica) "/" (shipped.store) }
            td { (record.seq) }
            (call_cells(record))
        }
    }
}
