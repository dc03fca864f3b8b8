//! The auditors' HTTP API under `/admin/audit`, on the proxy's listener.
//!
//! Authenticated by auditor tokens (`[[auditors]]`) only ([`Auditor`]): a
//! client's token gets 401 here, and an auditor's token gets 401 at `/mcp`.
//! The same Host and Origin checks as `/mcp` apply (the router's layer).
//!
//! - `GET /admin/audit?client=&server=&tool=&decision=&kind=&since=&until=&after=&limit=`:
//!   `{"records": [...], "last_seq": N}`, oldest first: the newest `limit`
//!   matches (default 100, at most 10 000), or with `after` the first
//!   `limit` after that sequence number (to page forward).
//! - `GET /admin/audit/export?…`: every match as JSON lines, oldest first.
//! - `GET /admin/audit/tail?…`: JSON lines as records are committed; starts
//!   after `after`, else with the newest `limit` (default 10). An empty line
//!   every 15 s keeps idle connections open.
//! - `GET /admin/audit/verify`: the chain walk, `{"state": "intact", …}` or
//!   `{"state": "broken", "seq": N, "problem": "…"}`.
//! - `GET /admin/audit/fleet?…`: the fleet's log (`[audit.ship]`'s
//!   database), `{"records": [{"replica", "store", "record"}, …]}`, oldest
//!   first, the newest `limit` matches across every replica; 404 when this
//!   replica ships no log, 502 when the database cannot be read.
//! - `GET /metrics`: Prometheus text (version 0.0.4); 404 with
//!   `[observability] metrics = false`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::Auditor;
use super::state::{HttpState, plain_error};
use crate::audit::{AuditError, Filter, FilterParams, Reader};

/// The most records one `/admin/audit` answer holds.
const MAX_PAGE: usize = 10_000;
/// Records read per step of an export or a tail.
const STEP: usize = 1_000;
/// What `tail` shows first when it is not told where to start.
const TAIL_BACKLOG: usize = 10;

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin/audit", get(query))
        .route("/admin/audit/export", get(export))
        .route("/admin/audit/tail", get(tail))
        .route("/admin/audit/verify", get(verify))
        .route("/admin/audit/fleet", get(fleet))
        .route("/metrics", get(metrics))
}

/// The store an auditor's request reads (Host, Origin and the auditor
/// were checked before the handler ran).
fn admit(state: &HttpState, Auditor(auditor): Auditor) -> Result<Reader, Box<Response>> {
    tracing::debug!(%auditor, "admin request");
    match state
        .gateway
        .records()
        .audit()
        .and_then(|audit| audit.reader())
    {
        Some(reader) => Ok(reader.clone()),
        None => Err(Box::new(plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this proxy keeps no audit log",
        ))),
    }
}

/// `GET /metrics`, for an auditor's token (a scraper is given one).
async fn metrics(State(state): State<Arc<HttpState>>, _: Auditor) -> Response {
    match state.gateway.render_metrics() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        None => plain_error(
            StatusCode::NOT_FOUND,
            "metrics are off (`[observability] metrics = false`)",
        ),
    }
}

fn bad_filter(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

fn store_error(err: &AuditError) -> Response {
    tracing::error!(error = %err, "AUDIT: the store cannot be read");
    plain_error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string())
}

type Params = Result<Query<FilterParams>, axum::extract::rejection::QueryRejection>;

/// [`admit`], and the request's filter (`limit` capped at `max`), or a 400
/// naming what is wrong.
fn admit_with_filter(
    state: &HttpState,
    auditor: Auditor,
    params: Params,
    max: Option<usize>,
) -> Result<(Reader, Filter), Box<Response>> {
    let reader = admit(state, auditor)?;
    let Query(params) = params.map_err(|rejection| Box::new(bad_filter(rejection.body_text())))?;
    let filter = params
        .to_filter(SystemTime::now(), max)
        .map_err(|err| Box::new(bad_filter(err.to_string())))?;
    Ok((reader, filter))
}

/// Runs a read off the async threads (a query may walk much of the store).
async fn read<T: Send + 'static>(
    reader: &Reader,
    work: impl FnOnce(&Reader) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || work(&reader))
        .await
        .map_err(|err| AuditError::Read(format!("the read task failed: {err}")))?
}

async fn query(State(state): State<Arc<HttpState>>, auditor: Auditor, params: Params) -> Response {
    let (reader, filter) = match admit_with_filter(&state, auditor, params, Some(MAX_PAGE)) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let separator = state.gateway.config().proxy.namespace_separator.clone();
    state.caught_up().await;
    // `last_seq` is read before the query: a follower that pages on from
    // it never skips a record written in between.
    let found = read(&reader, move |reader| {
        let last_seq = reader.last_seq()?;
        Ok((reader.query(&filter, &separator)?, last_seq))
    })
    .await;
    match found {
        Ok((records, last_seq)) => {
            axum::Json(json!({ "records": records, "last_seq": last_seq })).into_response()
        }
        Err(err) => store_error(&err),
    }
}

async fn fleet(
    State(state): State<Arc<HttpState>>,
    Auditor(auditor): Auditor,
    params: Params,
) -> Response {
    tracing::debug!(%auditor, "admin request for the fleet's log");
    let filter = match params {
        Ok(Query(params)) => match params.to_filter(SystemTime::now(), Some(MAX_PAGE)) {
            Ok(filter) => filter,
            Err(err) => return bad_filter(err.to_string()),
        },
        Err(rejection) => return bad_filter(rejection.body_text()),
    };
    if filter.after.is_some() {
        return bad_filter(
            "`after` is a sequence number of one store: the fleet's log has one per chain; narrow by `since`/`until`".into(),
        );
    }
    match state.fleet_records(&filter).await {
        Ok(Some(records)) => axum::Json(json!({ "records": records })).into_response(),
        Ok(None) => plain_error(
            StatusCode::NOT_FOUND,
            "this replica ships no log (`[audit.ship]`)",
        ),
        Err(message) => plain_error(StatusCode::BAD_GATEWAY, message),
    }
}

async fn verify(State(state): State<Arc<HttpState>>, auditor: Auditor) -> Response {
    let reader = match admit(&state, auditor) {
        Ok(reader) => reader,
        Err(response) => return *response,
    };
    state.caught_up().await;
    // The proxy checks with its own keys: MACs and signed checkpoints.
    let keys = state
        .gateway
        .records()
        .audit()
        .map(|audit| audit.keys().clone())
        .unwrap_or_default();
    match read(&reader, move |reader| {
        reader.verify_with(&keys, &mut |_, _| {})
    })
    .await
    {
        Ok(verification) => axum::Json(verification).into_response(),
        Err(err) => store_error(&err),
    }
}

/// A streamed body of JSON lines, fed by `lines`.
fn json_lines(lines: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        lines
            .recv()
            .await
            .map(|line| (Ok::<_, Infallible>(line), lines))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Sends one page of records as JSON lines; `false` once the reader left.
async fn send_page(lines: &mpsc::Sender<Bytes>, records: &[crate::audit::AuditRecord]) -> bool {
    for record in records {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        if lines.send(Bytes::from(line)).await.is_err() {
            return false;
        }
    }
    true
}

async fn export(State(state): State<Arc<HttpState>>, auditor: Auditor, params: Params) -> Response {
    let (reader, filter) = match admit_with_filter(&state, auditor, params, None) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    state.caught_up().await;
    let separator = state.gateway.config().proxy.namespace_separator.clone();
    let shutdown = state.gateway.shutdown_token();
    let (lines, body) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut left = filter.limit;
        let mut filter = filter;
        loop {
            let step = left.map_or(STEP, |left| left.min(STEP));
            let page = {
                let (mut from, separator) = (filter.clone(), separator.clone());
                read(&reader, move |reader| {
                    let page = reader.next_page(&mut from, &separator, step)?;
                    Ok((page, from))
                })
                .await
            };
            let page = match page {
                Ok((page, from)) => {
                    filter = from;
                    page
                }
                Err(err) => {
                    // The body ends early; the log says why.
                    tracing::error!(error = %err, "AUDIT: the export stopped");
                    return;
                }
            };
            if shutdown.is_cancelled() || !send_page(&lines, &page).await {
                return;
            }
            left = left.map(|left| left - page.len());
            if page.len() < step || left == Some(0) {
                return;
            }
        }
    });
    json_lines(body)
}

async fn tail(State(state): State<Arc<HttpState>>, auditor: Auditor, params: Params) -> Response {
    let (reader, mut filter) = match admit_with_filter(&state, auditor, params, Some(MAX_PAGE)) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    // `admit` found the log: it has a writer to follow.
    let Some(mut written) = state
        .gateway
        .records()
        .audit()
        .map(crate::audit::Audit::written)
    else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this proxy keeps no audit log",
        );
    };
    state.caught_up().await;
    let separator = state.gateway.config().proxy.namespace_separator.clone();
    let shutdown = state.gateway.shutdown_token();
    let (lines, body) = mpsc::channel(64);
    tokio::spawn(async move {
        // Where to start: after `after`, or with the newest few.
        if filter.after.is_none() {
            let backlog = Filter {
                limit: Some(filter.limit.map_or(TAIL_BACKLOG, |l| l.min(TAIL_BACKLOG))),
                ..filter.clone()
            };
            let start = {
                let separator = separator.clone();
                read(&reader, move |reader| {
                    Ok((reader.last_seq()?, reader.query(&backlog, &separator)?))
                })
                .await
            };
            let Ok((last, records)) = start else { return };
            if !send_page(&lines, &records).await {
                return;
            }
            filter.after = Some(last);
        }
        loop {
            let page = {
                let (mut from, separator) = (filter.clone(), separator.clone());
                read(&reader, move |reader| {
                    let page = reader.next_page(&mut from, &separator, STEP)?;
                    Ok((page, from))
                })
                .await
            };
            let Ok((page, from)) = page else { return };
            filter = from;
            if !send_page(&lines, &page).await {
                return;
            }
            if page.len() == STEP {
                continue;
            }
            tokio::select! {
                changed = written.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(15)) => {
                    if lines.send(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    });
    json_lines(body)
}
