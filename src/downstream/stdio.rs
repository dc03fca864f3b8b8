//! MCP over stdin/stdout for one client (Claude Desktop, Cursor, …).
//! Logs never go to stdout: it carries only protocol messages.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::DownstreamError;
use super::sessions::lock;
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Failure, Gateway, Outlet, Session, checked_envelope};
use crate::protocol::{self, At as _, Frame, FrameReader, IdKey, Kind, Method};

/// Lines waiting for a client that has not read them yet. Past it, what
/// servers send on their own (progress, logs, list changes) is dropped and
/// counted as undelivered; replies wait for room, and while they wait the
/// proxy stops reading the client's input (at most [`STDIO_IN_FLIGHT`]
/// requests of its are in the works), so a client that does not read cannot
/// make the proxy hold its output without end.
const STDIO_QUEUE_CAP: usize = 1024;
/// Places of the queue that only replies and the servers' requests
/// (sampling, elicitation, roots) may take: a burst of progress does not
/// crowd out a request a call waits on.
const STDIO_QUEUE_RESERVE: usize = 64;
/// Requests of the client's that run at once; past it the next one is read
/// when one of them has been answered.
const STDIO_IN_FLIGHT: usize = 256;

/// A line on its way to the client, with its share of the connection's
/// budget (none for a reply: replies are bounded by the requests in the
/// works).
type Line = (Vec<u8>, Option<protocol::Held>);

/// What servers send on their own, and their requests, for this client:
/// bounded in lines ([`STDIO_QUEUE_CAP`]) and in bytes (`[limits]
/// max_queued_bytes`); past either it is dropped (counted as undelivered).
struct StdioOutlet {
    lines: mpsc::Sender<Line>,
    queued: protocol::ByteBudget,
}

impl Outlet for StdioOutlet {
    fn deliver(&self, message: Value, _related: Option<&Value>) -> bool {
        if self.lines.capacity() < STDIO_QUEUE_RESERVE
            && protocol::classify(&message) == Some(Kind::Notification)
        {
            return false;
        }
        let line = protocol::encode_line(&message);
        let Some(held) = self.queued.try_take(line.len()) else {
            return false;
        };
        self.lines.try_send((line, Some(held))).is_ok()
    }
}

/// Serves one client on the process's stdin and stdout until stdin closes
/// or the gateway shuts down.
pub async fn serve(gateway: Arc<Gateway>, client: ClientIdentity) -> Result<(), DownstreamError> {
    let input: Box<dyn AsyncRead + Unpin + Send> = match stdin_pipe() {
        Some(pipe) => Box::new(pipe),
        None => Box::new(tokio::io::stdin()),
    };
    let output: Box<dyn AsyncWrite + Unpin + Send> = match stdout_pipe() {
        Some(pipe) => Box::new(pipe),
        None => Box::new(tokio::io::stdout()),
    };
    serve_on(
        gateway,
        client,
        BufReader::with_capacity(64 * 1024, input),
        output,
    )
    .await
}

// When stdin and stdout are pipes (as when an agent starts the proxy), they
// are read and written through the reactor. `tokio::io::stdin()` would hand
// every read to a blocking thread, a thread hop on each message that costs
// more than all of the proxy's own work on a call.
fn stdin_pipe() -> Option<pipe::Receiver> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    pipe::Receiver::from_owned_fd(fd).ok()
}

fn stdout_pipe() -> Option<pipe::Sender> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    pipe::Sender::from_owned_fd(fd).ok()
}

/// Serves one client on any reader and writer (tests use in-memory pipes).
pub async fn serve_on<R, W>(
    gateway: Arc<Gateway>,
    client: ClientIdentity,
    input: R,
    output: W,
) -> Result<(), DownstreamError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = gateway.config().limits;
    let (lines_tx, mut lines_rx) = mpsc::channel::<Line>(STDIO_QUEUE_CAP);
    let writer = tokio::spawn(async move {
        let mut output = BufWriter::with_capacity(64 * 1024, output);
        // Each line's share of the budget goes once it is written.
        while let Some((line, _held)) = lines_rx.recv().await {
            if output.write_all(&line).await.is_err() {
                break;
            }
            // Write out whatever else is queued before one flush.
            while let Ok((line, _held)) = lines_rx.try_recv() {
                if output.write_all(&line).await.is_err() {
                    return;
                }
            }
            if output.flush().await.is_err() {
                break;
            }
        }
    });

    let mut connection = Connection {
        gateway: gateway.clone(),
        client,
        outlet: Arc::new(StdioOutlet {
            lines: lines_tx.clone(),
            queued: protocol::ByteBudget::new(limits.max_queued_bytes),
        }),
        lines: lines_tx.clone(),
        era: Era::Undecided,
    };
    let mut reader = FrameReader::new(input, limits.max_message_bytes);
    let shutdown = gateway.shutdown_token();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(STDIO_IN_FLIGHT));
    let result = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            () = shutdown.cancelled() => break Ok(()),
        };
        let line = match frame {
            Ok(Some(Frame::Line(line))) => line,
            Ok(Some(Frame::Oversize(head))) => {
                let error = protocol::ParseError::TooLarge {
                    limit: limits.max_message_bytes,
                };
                // Answered with the request's own id when its head shows
                // it, so that the client's call ends instead of waiting.
                let id = protocol::refusal_id(&head);
                connection
                    .answer(Failure::from(error).to_response(id))
                    .await;
                continue;
            }
            Ok(None) => break Ok(()),
            Err(err) => break Err(DownstreamError::Stdio(err)),
        };
        let message = match protocol::parse(&line, limits.max_depth) {
            Ok(message) => message,
            Err(err) => {
                let id = protocol::refusal_id(&line);
                connection.answer(Failure::from(err).to_response(id)).await;
                continue;
            }
        };
        // Notifications, responses and `initialize` are handled in order, so
        // that `initialized` or a cancellation is never overtaken; other
        // requests run concurrently.
        let inline = protocol::classify(&message) != Some(Kind::Request)
            || Method::of(&message) == Some(Method::Initialize);
        // A request waits here, unread behind it, while all the client's
        // others are in the works (their replies wait for the client).
        let permit = if inline {
            None
        } else {
            tokio::select! {
                permit = in_flight.clone().acquire_owned() => permit.ok(),
                () = shutdown.cancelled() => break Ok(()),
            }
        };
        let Some(work) = connection.work(message) else {
            continue;
        };
        let work = async move {
            work.await;
            drop(permit);
        };
        if inline {
            work.await;
        } else {
            tokio::spawn(work);
        }
    };
    connection.close();
    drop(connection);
    drop(lines_tx);
    // Replies still being produced hold senders; the writer ends when the
    // last one is gone, or at shutdown.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    result
}

/// Which protocol a connection speaks, decided by its first request: the
/// handshake's `initialize` (or any request without a 2026-07-28 envelope)
/// makes it a handshake connection with one session; a request with that
/// envelope makes it a 2026-07-28 connection, where each request is a
/// session of its own. A connection does not change its mind.
enum Era {
    Undecided,
    Handshake(Arc<Session>),
    /// The requests in the works, by id: a `notifications/cancelled`
    /// names one.
    Modern(Arc<Mutex<HashMap<IdKey, Arc<Session>>>>),
}

/// One stdio client's connection to the gateway.
struct Connection {
    gateway: Arc<Gateway>,
    client: ClientIdentity,
    outlet: Arc<StdioOutlet>,
    lines: mpsc::Sender<Line>,
    era: Era,
}

type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Connection {
    /// Sends one line to the client, waiting for room.
    async fn answer(&self, message: Value) {
        let _ = self
            .lines
            .send((protocol::encode_line(&message), None))
            .await;
    }

    /// What to do with one message: the work that handles it, or `None`
    /// when it was dealt with here.
    fn work(&mut self, message: Value) -> Option<Work> {
        if matches!(self.era, Era::Undecided) && protocol::classify(&message) == Some(Kind::Request)
        {
            let modern = protocol::envelope_version(&message).is_some()
                && Method::of(&message) != Some(Method::Initialize);
            self.era = if modern {
                tracing::debug!(client = %self.client.name, "stdio connection speaks 2026-07-28");
                Era::Modern(Arc::default())
            } else {
                Era::Handshake(self.handshake_session())
            };
        }
        match &self.era {
            Era::Modern(calls) => self.modern(calls.clone(), message),
            Era::Handshake(session) => {
                if protocol::classify(&message) == Some(Kind::Request)
                    && protocol::envelope_version(&message) == Some(protocol::MODERN_VERSION)
                    && Method::of(&message) != Some(Method::Initialize)
                {
                    return Some(self.refusal(&message, Failure::ModernOnHandshake));
                }
                Some(self.relay(session.clone(), message))
            }
            // Before any request: a notification or a stray response is
            // for no session yet (the handshake's own `initialized` comes
            // after `initialize`); anything else is not a message.
            Era::Undecided => match protocol::classify(&message) {
                None => Some(self.refusal(&message, Failure::NotJsonRpc)),
                Some(_) => None,
            },
        }
    }

    fn handshake_session(&self) -> Arc<Session> {
        self.gateway.open_session(
            Arc::from(uuid::Uuid::new_v4().to_string()),
            self.client.clone(),
            Transport::Stdio,
            self.outlet.clone(),
        )
    }

    /// The message handled by the gateway in `session`, its reply sent.
    fn relay(&self, session: Arc<Session>, message: Value) -> Work {
        let gateway = self.gateway.clone();
        let lines = self.lines.clone();
        Box::pin(async move {
            if let Some(reply) = gateway.handle(&session, message).await {
                let _ = lines.send((protocol::encode_line(&reply), None)).await;
            }
        })
    }

    fn refusal(&self, message: &Value, failure: Failure) -> Work {
        let id = crate::gateway::reply_id(message);
        let lines = self.lines.clone();
        Box::pin(async move {
            let _ = lines
                .send((protocol::encode_line(&failure.to_response(id)), None))
                .await;
        })
    }

    /// One message of a 2026-07-28 connection: a request runs in a session
    /// of its own; `notifications/cancelled` cancels the request it names;
    /// any other notification or response is dropped (nothing outlives its
    /// request, and nothing was asked of the client).
    fn modern(
        &self,
        calls: Arc<Mutex<HashMap<IdKey, Arc<Session>>>>,
        mut message: Value,
    ) -> Option<Work> {
        match protocol::classify(&message) {
            Some(Kind::Request) => {}
            Some(Kind::Notification) => {
                if Method::of(&message) == Some(Method::Cancelled)
                    && let Some(id) = message
                        .at(&["params", "requestId"])
                        .and_then(IdKey::from_value)
                    && let Some(session) = lock(&calls).remove(&id)
                {
                    self.gateway.close_stateless(&session);
                }
                return None;
            }
            _ => return None,
        }
        if Method::of(&message) == Some(Method::Initialize) {
            let asked = message
                .at(&["params", "protocolVersion"])
                .and_then(Value::as_str)
                .map(|v| protocol::cut(v, 64).to_owned())
                .unwrap_or_default();
            return Some(self.refusal(&message, Failure::HandshakeOnModern(asked)));
        }
        let envelope = match checked_envelope(&mut message) {
            Ok(envelope) => envelope,
            Err(failure) => return Some(self.refusal(&message, failure)),
        };
        let Some(id) = message.get("id").and_then(IdKey::from_value) else {
            return Some(self.refusal(&message, Failure::NotJsonRpc));
        };
        // Only this reader adds entries (finished requests take theirs
        // out): an id free now is still free when its session is added.
        if lock(&calls).contains_key(&id) {
            return Some(self.refusal(&message, Failure::DuplicateId));
        }
        let session = self.gateway.open_stateless(
            self.client.clone(),
            Transport::Stdio,
            self.outlet.clone(),
            envelope,
        );
        lock(&calls).insert(id.clone(), session.clone());
        let gateway = self.gateway.clone();
        let lines = self.lines.clone();
        Some(Box::pin(async move {
            let reply = gateway.handle(&session, message).await;
            {
                // Only its own entry: a cancelled request's id may be
                // reused by a later one while this one winds down.
                let mut running = lock(&calls);
                if running
                    .get(&id)
                    .is_some_and(|found| Arc::ptr_eq(found, &session))
                {
                    running.remove(&id);
                }
            }
            gateway.close_stateless(&session);
            if let Some(reply) = reply {
                let _ = lines.send((protocol::encode_line(&reply), None)).await;
            }
        }))
    }

    /// The client is gone: its sessions end, and calls still at servers
    /// are cancelled.
    fn close(&mut self) {
        match std::mem::replace(&mut self.era, Era::Undecided) {
            Era::Handshake(session) => self.gateway.close_session(&session),
            Era::Modern(calls) => {
                for (_, session) in lock(&calls).drain() {
                    self.gateway.close_stateless(&session);
                }
                // And those waiting for its next round.
                let outlet: Arc<dyn Outlet> = self.outlet.clone();
                self.gateway.end_parked_from(&outlet);
            }
            Era::Undecided => {}
        }
    }
}
