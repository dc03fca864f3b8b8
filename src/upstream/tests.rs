//! The client toward one server, driven through a scripted link: ids,
//! progress tokens, cancellation, crashes, restarts and idle stops, on
//! tokio's paused clock where time matters.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scripted::{self, Connections, ScriptedServer};
use super::{Origin, Status, Upstream, UpstreamError, UpstreamEvent};
use crate::config::ServerConfig;
use crate::protocol;

/// An upstream started on a scripted link, with what the test watches.
struct Running {
    upstream: Upstream,
    events: mpsc::Receiver<UpstreamEvent>,
    connections: Connections,
    shutdown: CancellationToken,
}

impl Running {
    /// Starts `config`'s upstream; nothing is connected yet.
    fn start(config: std::sync::Arc<ServerConfig>) -> Self {
        Self::start_for(config, None)
    }

    /// [`Running::start`] of the instance of client `instance` (or of none).
    fn start_for(config: std::sync::Arc<ServerConfig>, instance: Option<&str>) -> Self {
        let (events_tx, events) = mpsc::channel(64);
        let (connector, connections) = scripted::connector();
        let upstream =
            Upstream::instance_for_test(config, instance.map(Into::into), events_tx, connector);
        let shutdown = CancellationToken::new();
        upstream.start(shutdown.clone());
        Self {
            upstream,
            events,
            connections,
            shutdown,
        }
    }

    /// An eager server, started and ready (its `Ready` event taken).
    async fn ready(name: &str) -> (Self, ScriptedServer) {
        let mut running = Self::start(scripted::config(name));
        let server = running.next_ready().await;
        (running, server)
    }

    /// The next link, with the handshake done and `Ready` reported.
    async fn next_ready(&mut self) -> ScriptedServer {
        let mut server = self.connections.next().await;
        server.handshake().await;
        match self.next_event().await {
            UpstreamEvent::Ready { .. } => {}
            other => panic!("expected the server ready, got {other:?}"),
        }
        server
    }

    async fn next_event(&mut self) -> UpstreamEvent {
        match tokio::time::timeout(Duration::from_secs(60), self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the upstream is gone"),
            Err(_) => panic!("no event within 60s"),
        }
    }

    /// A call from a client session, sent in a task of its own.
    fn call(
        &self,
        session: u64,
        message: Value,
    ) -> (u64, tokio::task::JoinHandle<Result<Value, UpstreamError>>) {
        let origin = Origin {
            session,
            request_id: message.get("id").cloned().unwrap_or(Value::Null),
        };
        let call = self.upstream.begin(message, Some(origin));
        let id = call.upstream_id();
        (
            id,
            tokio::spawn(call.send_and_wait(Duration::from_secs(60))),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(err) => panic!("the task failed: {err}"),
    }
}

fn tool_call(client_id: Value, tool: &str) -> Value {
    protocol::request(client_id, "tools/call", json!({ "name": tool }))
}

/// The example of `upstream::scripted`'s module documentation, as written there.
#[tokio::test]
async fn the_scripted_server_example_runs() -> Result<(), Box<dyn std::error::Error>> {
    let (events_tx, mut events) = tokio::sync::mpsc::channel(16);
    let (connector, mut connections) = scripted::connector();
    let upstream = Upstream::for_test(scripted::config("files"), events_tx, connector);
    upstream.start(CancellationToken::new());
    let mut server = connections.next().await; // the link of the first start
    server.handshake().await; // answers `initialize`, takes `notifications/initialized`
    let call = upstream.begin(protocol::request(json!(7), "tools/list", json!({})), None);
    let reply = tokio::spawn(call.send_and_wait(Duration::from_secs(5)));
    let request = server.next_received().await; // `tools/list`, with the upstream's own id
    server.reply(&request, json!({ "tools": [] })).await;
    assert_eq!(reply.await??["result"], json!({ "tools": [] }));

    assert!(matches!(
        events.recv().await,
        Some(UpstreamEvent::Ready { .. })
    ));
    assert_eq!(
        upstream.status(),
        Status::Ready(scripted::initialize_result().into())
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_calls_get_distinct_ids_and_each_its_own_reply() {
    let (running, mut server) = Running::ready("files").await;
    // Two sessions, each with a call of id 1.
    let (first_id, first) = running.call(1, tool_call(json!(1), "first"));
    let (second_id, second) = running.call(2, tool_call(json!(1), "second"));
    let a = server.next_received().await;
    let b = server.next_received().await;
    let ids = [a["id"].clone(), b["id"].clone()];
    assert_ne!(ids[0], ids[1], "the server sees distinct ids");
    assert!(ids.contains(&json!(first_id)) && ids.contains(&json!(second_id)));

    // Answered in the other order: each reply still reaches its own caller.
    for request in [&b, &a] {
        let tool = request["params"]["name"].clone();
        server.reply(request, json!({ "answer": tool })).await;
    }
    let first = joined(first).await.unwrap_or_else(|err| panic!("{err}"));
    let second = joined(second).await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(first["result"]["answer"], "first");
    assert_eq!(second["result"]["answer"], "second");
    // The reply keeps the id the server saw; the gateway puts the client's
    // own id back (`reply["id"] = client_id`).
    assert_eq!(first["id"], json!(first_id));
    assert_eq!(second["id"], json!(second_id));
}

#[tokio::test]
async fn progress_tokens_are_remapped_both_ways() {
    let (running, mut server) = Running::ready("files").await;
    let mut message = tool_call(json!("c-1"), "slow");
    message["params"]["_meta"] = json!({ "progressToken": "client-token" });
    let call = running.upstream.begin(
        message,
        Some(Origin {
            session: 1,
            request_id: json!("c-1"),
        }),
    );
    let (followed_tx, mut followed) = mpsc::unbounded_channel();
    let task = tokio::spawn(
        call.send_and_follow(Duration::from_secs(60), move |message| {
            let _ = followed_tx.send(message);
        }),
    );
    let request = server.next_received().await;
    let token = request["params"]["_meta"]["progressToken"].clone();
    assert_eq!(
        token, request["id"],
        "the server sees a token of the proxy's own"
    );

    server
        .notify(
            "notifications/progress",
            json!({ "progressToken": token, "progress": 1, "total": 2 }),
        )
        .await;
    // Progress for a token nobody holds goes nowhere.
    server
        .notify(
            "notifications/progress",
            json!({ "progressToken": 999, "progress": 1 }),
        )
        .await;
    // What the call's stream carries belongs to the call.
    server
        .send_on_stream_of(
            &request,
            protocol::notification(
                "notifications/message",
                json!({ "level": "info", "data": "x" }),
            ),
        )
        .await;
    server.reply(&request, json!({ "content": [] })).await;
    let reply = joined(task).await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(reply["result"], json!({ "content": [] }));

    let progress = followed.recv().await.unwrap_or_default();
    assert_eq!(progress["method"], "notifications/progress");
    assert_eq!(progress["params"]["progressToken"], "client-token");
    assert_eq!(progress["params"]["progress"], 1);
    let log = followed.recv().await.unwrap_or_default();
    assert_eq!(log["method"], "notifications/message");
    assert!(
        followed.try_recv().is_err(),
        "nothing else reached the call"
    );
}

#[tokio::test]
async fn a_reply_with_an_unknown_id_is_dropped_and_disturbs_nothing() {
    let (mut running, mut server) = Running::ready("files").await;
    let (id, task) = running.call(1, tool_call(json!(1), "wait"));
    let request = server.next_received().await;
    assert_eq!(request["id"], json!(id));

    server
        .send(protocol::result(json!(id + 1000), json!({ "stray": true })))
        .await;
    server
        .send(protocol::result(
            json!("not-ours"),
            json!({ "stray": true }),
        ))
        .await;
    server.reply(&request, json!({ "mine": true })).await;
    let reply = joined(task).await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(reply["result"], json!({ "mine": true }));
    assert!(
        running.events.try_recv().is_err(),
        "no event came of the strays"
    );
    assert_eq!(
        running.upstream.status(),
        Status::Ready(scripted::initialize_result().into())
    );
    assert!(
        server.try_received().is_none(),
        "nor did the server hear of them"
    );
}

#[tokio::test]
async fn dropping_a_sent_call_tells_the_server_it_was_cancelled() {
    let (running, mut server) = Running::ready("files").await;
    let (id, task) = running.call(1, tool_call(json!("client-id"), "slow"));
    let request = server.next_received().await;
    assert_eq!(request["id"], json!(id));
    // The gateway drops the call when its client cancels.
    task.abort();
    let cancelled = server.next_received().await;
    assert_eq!(cancelled["method"], "notifications/cancelled");
    assert_eq!(
        cancelled["params"]["requestId"],
        json!(id),
        "the id the server knows"
    );
    assert_eq!(cancelled["params"]["reason"], "cancelled by the proxy");

    // A call dropped before it was sent tells the server nothing.
    drop(running.upstream.begin(tool_call(json!(2), "never"), None));
    let ping = running.upstream.request("ping", json!({}));
    let answered = async {
        let request = server.next_received().await;
        assert_eq!(request["method"], "ping", "the unsent call left no trace");
        server.reply(&request, json!({})).await;
    };
    let (pinged, ()) = tokio::join!(ping, answered);
    assert_eq!(pinged, Ok(json!({})));
}

#[tokio::test(start_paused = true)]
async fn a_call_that_times_out_fails_and_is_cancelled_at_the_server() {
    let (mut running, mut server) = Running::ready("files").await;
    let call = running.upstream.begin(tool_call(json!(1), "slow"), None);
    let id = call.upstream_id();
    let task = tokio::spawn(call.send_and_wait(Duration::from_secs(3)));
    let request = server.next_received().await;
    let started = Instant::now();
    let failed = joined(task).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3010),
        "{waited:?}"
    );
    assert_eq!(
        failed.map_err(|err| err.to_string()),
        Err("server `files` did not answer within 3s".into())
    );
    let cancelled = server.next_received().await;
    assert_eq!(cancelled["method"], "notifications/cancelled");
    assert_eq!(cancelled["params"]["requestId"], json!(id));
    // The late reply goes nowhere.
    server.reply(&request, json!({})).await;
    assert!(running.events.try_recv().is_err());
    assert!(server.try_received().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_link_that_closes_mid_call_fails_the_call_and_the_server_restarts() {
    let (mut running, mut server) = Running::ready("files").await;
    let (_, task) = running.call(1, tool_call(json!(1), "crash"));
    let _ = server.next_received().await;
    server.close();
    assert_eq!(
        joined(task).await,
        Err(UpstreamError::Unavailable {
            server: "files".into(),
            reason: "it stopped while the call was in flight".into(),
        })
    );
    match running.next_event().await {
        UpstreamEvent::Down { source, reason } => {
            assert_eq!(&*source.server, "files");
            assert_eq!(reason, "the server exited or its connection closed");
        }
        other => panic!("expected the server down, got {other:?}"),
    }
    assert_eq!(running.upstream.restarts(), 1);
    assert!(matches!(running.upstream.status(), Status::Down(_)));
    // Meanwhile nothing is linked: what the proxy sends fails at once.
    assert_eq!(
        running.upstream.send(json!({})).await,
        Err(UpstreamError::Unavailable {
            server: "files".into(),
            reason: "it is not running".into(),
        })
    );

    let mut server = running.next_ready().await;
    let (_, task) = running.call(1, tool_call(json!(2), "again"));
    let request = server.next_received().await;
    server.reply(&request, json!({ "ok": true })).await;
    let reply = joined(task).await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(reply["result"], json!({ "ok": true }));
}

#[tokio::test(start_paused = true)]
async fn restarts_back_off_and_a_stable_run_resets_the_backoff() {
    let (mut running, server) = Running::ready("files").await;
    let mut server = Some(server);
    // Each quick crash doubles the wait before the next start.
    for backoff_ms in [100, 200, 400, 800] {
        let crashed = Instant::now();
        if let Some(server) = server.take() {
            server.close();
        }
        assert!(matches!(
            running.next_event().await,
            UpstreamEvent::Down { .. }
        ));
        let next = running.next_ready().await;
        let waited = crashed.elapsed();
        let backoff = Duration::from_millis(backoff_ms);
        assert!(
            waited >= backoff && waited < backoff + Duration::from_millis(10),
            "waited {waited:?}, expected {backoff:?}"
        );
        server = Some(next);
    }
    // A start that fails counts too, and says why.
    running.connections.refuse_next("no such image");
    let crashed = Instant::now();
    drop(server.take());
    assert!(matches!(
        running.next_event().await,
        UpstreamEvent::Down { .. }
    ));
    // Just after the next start (1.6s after the crash) was refused.
    tokio::time::sleep_until(crashed + Duration::from_millis(1601)).await;
    assert_eq!(
        running.upstream.status(),
        Status::Down("server `files` failed to start: no such image".into())
    );
    // Reported, with its reason (a new one in this run of failures).
    match running.next_event().await {
        UpstreamEvent::Down { reason, .. } => assert!(reason.contains("no such image"), "{reason}"),
        other => panic!("expected the failed start reported, got {other:?}"),
    }
    let next = running.next_ready().await;
    let waited = crashed.elapsed();
    assert!(
        waited >= Duration::from_millis(1600 + 3200) && waited < Duration::from_millis(4810),
        "1.6s after the crash, then 3.2s after the failed start: {waited:?}"
    );
    // Up for longer than 30s: the next crash restarts after the shortest wait.
    tokio::time::advance(Duration::from_secs(31)).await;
    let crashed = Instant::now();
    next.close();
    assert!(matches!(
        running.next_event().await,
        UpstreamEvent::Down { .. }
    ));
    let _server = running.next_ready().await;
    assert!(
        crashed.elapsed() < Duration::from_millis(110),
        "{:?}",
        crashed.elapsed()
    );
    assert!(running.connections.try_next().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_lazy_server_starts_at_its_first_use_and_stops_when_idle() {
    let idle_timeout = Duration::from_secs(60);
    let mut running = Running::start(scripted::lazy_config("box", idle_timeout));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        running.connections.try_next().is_none(),
        "not started before its first use"
    );
    assert_eq!(running.upstream.status(), Status::Idle(None));

    let upstream = running.upstream.clone();
    let ensure =
        tokio::spawn(async move { upstream.ensure_running(Duration::from_secs(10)).await });
    let mut server = running.connections.next().await;
    let info = json!({
        "protocolVersion": protocol::LATEST_VERSION,
        "capabilities": {},
        "serverInfo": { "name": "box", "version": "2" }
    });
    server.handshake_with(info.clone()).await;
    assert_eq!(joined(ensure).await, Ok(()));
    assert!(matches!(
        running.next_event().await,
        UpstreamEvent::Ready { .. }
    ));

    // A call 40s in puts the stop off: idle is measured from the last use.
    tokio::time::advance(Duration::from_secs(40)).await;
    let (_, task) = running.call(1, tool_call(json!(1), "use"));
    let request = server.next_received().await;
    server.reply(&request, json!({})).await;
    assert!(joined(task).await.is_ok());
    let used = Instant::now();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(!server.is_closed(), "59s after its last use it still runs");

    // Held (a resource subscription lives in it): it keeps running.
    running.upstream.hold(true);
    tokio::time::advance(Duration::from_secs(120)).await;
    assert!(!server.is_closed(), "a held server is not idle");
    running.upstream.hold(false);

    server.closed().await;
    assert!(used.elapsed() >= idle_timeout);
    match running.next_event().await {
        UpstreamEvent::Stopped { source, reason } => {
            assert_eq!(&*source.server, "box");
            assert_eq!(reason, "idle");
        }
        other => panic!("expected an idle stop, got {other:?}"),
    }
    assert_eq!(running.upstream.status(), Status::Idle(Some(info.into())));
    assert_eq!(running.upstream.restarts(), 0, "an idle stop is no restart");

    // The next call starts it again.
    let (_, task) = running.call(1, tool_call(json!(2), "again"));
    let mut server = running.next_ready().await;
    let request = server.next_received().await;
    server.reply(&request, json!({ "again": true })).await;
    let reply = joined(task).await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(reply["result"], json!({ "again": true }));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_speaks_an_unknown_version_is_refused_and_retried() {
    let mut running = Running::start(scripted::config("old"));
    let mut server = running.connections.next().await;
    let initialize = server.next_received().await;
    server
        .reply(
            &initialize,
            json!({ "protocolVersion": "1999-01-01", "capabilities": {} }),
        )
        .await;
    server.closed().await;
    assert_eq!(
        running.upstream.wait_settled().await,
        Status::Down(
            "server `old` refused the handshake: it answered with protocol version `1999-01-01`, which Portcullis does not speak"
                .into()
        )
    );
    // Reported (the gateway records it as `server_down`), once.
    match running.next_event().await {
        UpstreamEvent::Down { reason, .. } => {
            assert!(reason.contains("1999-01-01"), "{reason}");
        }
        other => panic!("expected the failed start reported, got {other:?}"),
    }
    let _server = running.next_ready().await;
}

#[tokio::test]
async fn what_the_server_sends_on_its_own_becomes_events() {
    let (mut running, mut server) = Running::ready("files").await;
    server
        .notify("notifications/tools/list_changed", json!({}))
        .await;
    match running.next_event().await {
        UpstreamEvent::Notification {
            message, ambiguous, ..
        } => {
            assert_eq!(message["method"], "notifications/tools/list_changed");
            assert!(!ambiguous);
        }
        other => panic!("expected a notification, got {other:?}"),
    }

    // During a call of one session, the server's request is that call's.
    let (_, task) = running.call(7, tool_call(json!("c-9"), "ask"));
    let request = server.next_received().await;
    server
        .request(
            json!("s-1"),
            "sampling/createMessage",
            json!({ "messages": [] }),
        )
        .await;
    match running.next_event().await {
        UpstreamEvent::Request {
            message, origin, ..
        } => {
            assert_eq!(message["id"], "s-1", "the server's own id");
            assert_eq!(
                origin,
                Some(Origin {
                    session: 7,
                    request_id: json!("c-9"),
                })
            );
        }
        other => panic!("expected a request, got {other:?}"),
    }
    // A ping is the proxy's to answer.
    server.request(json!("p-1"), "ping", json!({})).await;
    assert_eq!(
        server.next_received().await,
        protocol::result(json!("p-1"), json!({}))
    );
    server.reply_error(&request, -32000, "boom").await;
    let reply = joined(task).await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(reply["error"]["message"], "boom");

    // A request of the proxy's own that fails says what failed.
    let listed = running.upstream.request("tools/list", json!({}));
    let answered = async {
        let request = server.next_received().await;
        server.reply_error(&request, -32601, "no tools here").await;
    };
    let (listed, ()) = tokio::join!(listed, answered);
    assert_eq!(
        listed.map_err(|err| err.to_string()),
        Err("server `files` is not available: `tools/list` failed: no tools here".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_clients_instance_that_fails_to_start_waits_for_the_clients_next_call() {
    let mut running = Running::start_for(
        scripted::lazy_config("box", Duration::from_secs(600)),
        Some("alice"),
    );
    running.connections.refuse_next("no such image");
    let refused = running
        .upstream
        .ensure_running(Duration::from_secs(10))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(running.connections.try_next().is_none());
    // Nobody calls: an hour passes without another start.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        running.connections.try_next().is_none(),
        "started again for nobody"
    );
    assert!(!running.upstream.is_wanted());
    // The client calls again: started at once.
    let upstream = running.upstream.clone();
    let ensure =
        tokio::spawn(async move { upstream.ensure_running(Duration::from_secs(10)).await });
    let mut server = running.connections.next().await;
    server.handshake().await;
    assert!(ensure.await.unwrap().is_ok());
}
