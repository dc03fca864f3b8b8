//! MCP over stdin/stdout for one client (Claude Desktop, Cursor, …).
//! Logs never go to stdout: it carries only protocol messages.

use std::os::fd::AsFd as _;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::DownstreamError;
use crate::chain::{ClientIdentity, Transport};
use crate::gateway::{Failure, Gateway, Outlet};
use crate::protocol::{self, Frame, FrameReader, Kind};

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

struct StdioOutlet(mpsc::Sender<Vec<u8>>);

impl Outlet for StdioOutlet {
    fn deliver(&self, message: Value, _related: Option<&Value>) -> bool {
        if self.0.capacity() < STDIO_QUEUE_RESERVE
            && protocol::classify(&message) == Some(Kind::Notification)
        {
            return false;
        }
        self.0.try_send(protocol::encode_line(&message)).is_ok()
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
    let (lines_tx, mut lines_rx) = mpsc::channel::<Vec<u8>>(STDIO_QUEUE_CAP);
    let writer = tokio::spawn(async move {
        let mut output = BufWriter::with_capacity(64 * 1024, output);
        while let Some(line) = lines_rx.recv().await {
            if output.write_all(&line).await.is_err() {
                break;
            }
            // Write out whatever else is queued before one flush.
            while let Ok(line) = lines_rx.try_recv() {
                if output.write_all(&line).await.is_err() {
                    return;
                }
            }
            if output.flush().await.is_err() {
                break;
            }
        }
    });

    let session_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let session = gateway.open_session(
        session_id,
        client,
        Transport::Stdio,
        Arc::new(StdioOutlet(lines_tx.clone())),
    );
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
                let _ = lines_tx
                    .send(protocol::encode_line(&Failure::from(error).to_response(id)))
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
                let _ = lines_tx
                    .send(protocol::encode_line(&Failure::from(err).to_response(id)))
                    .await;
                continue;
            }
        };
        // Notifications, responses and `initialize` are handled in order, so
        // that `initialized` or a cancellation is never overtaken; other
        // requests run concurrently.
        let inline = protocol::classify(&message) != Some(Kind::Request)
            || protocol::method(&message) == Some("initialize");
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
        let gateway = gateway.clone();
        let session = session.clone();
        let lines = lines_tx.clone();
        let work = async move {
            if let Some(reply) = gateway.handle(&session, message).await {
                let _ = lines.send(protocol::encode_line(&reply)).await;
            }
            drop(permit);
        };
        if inline {
            work.await;
        } else {
            tokio::spawn(work);
        }
    };
    gateway.close_session(&session);
    drop(lines_tx);
    drop(session);
    // Replies still being produced hold senders; the writer ends when the
    // last one is gone, or at shutdown.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    result
}
