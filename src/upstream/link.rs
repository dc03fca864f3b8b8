//! What the client and its links share: the [`Link`] a client sends through,
//! the [`Inbox`] a link hands what the server sends to, the [`Connector`]
//! that opens a link, and the line framing of the stdio links.
//!
//! The links (`process`, `container`, `remote`) use this module and nothing
//! of the client's; the client uses this module and the links' constructors.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use crate::config::LimitsConfig;
use crate::protocol::{self, Frame, FrameReader};

/// Why a message did not reach a server: the link seam's one error. The
/// client turns it into the call's [`UpstreamError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The server's input would not take the line: the server is gone.
    #[error("cannot write to the server: {0}")]
    Write(#[source] std::io::Error),
    /// The link is closed (its server stopped, or ended the session).
    #[error("{0}")]
    Closed(&'static str),
    /// A remote server could not be reached (or a redirect was refused).
    #[error("{0}")]
    Unreachable(String),
    /// A remote server answered with an HTTP error status.
    #[error("the server answered HTTP {0}")]
    Status(reqwest::StatusCode),
    /// A remote server's answer could not be taken as a message.
    #[error("{0}")]
    Answer(String),
    /// The server did not take the message in time.
    #[error("it did not take the {what} within {}", super::humanize(*after))]
    Slow {
        what: &'static str,
        after: std::time::Duration,
    },
}

/// A way to send bytes to a running server. What the server sends back is
/// handed to the client's [`Inbox`] by the link's own reader.
pub(crate) trait Link: Send + Sync {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), LinkError>>;
    /// Called once the handshake settled the protocol version.
    fn set_protocol_version(&self, _version: &str) {}
    /// Stops the link: kills the process, removes the container or ends the
    /// HTTP session, and returns once that is done.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A running link and the token it cancels when the connection dies.
pub(crate) struct Connected {
    pub link: Arc<dyn Link>,
    pub closed: CancellationToken,
}

/// Where a link hands what the server sends: the client of one server, with
/// its calls in flight.
pub(crate) trait Inbox: Send + Sync {
    /// The server's name, for logs and errors.
    fn server(&self) -> &Arc<str>;
    /// The client this instance serves alone (per-client isolation).
    fn instance(&self) -> Option<&str>;
    /// Routes one message the server sent. `related` is the id of our
    /// request whose HTTP response stream carried it, when the transport
    /// knows. Messages are handed over one at a time, in the order the
    /// server sent them: the next waits until this one is routed.
    fn dispatch(&self, message: Value, related: Option<u64>) -> BoxFuture<'_, ()>;
    /// Whether the call with this upstream id still waits for its reply.
    fn in_flight(&self, id: u64) -> bool;
    /// Ends a call in flight with an error of the proxy's own (its reply was
    /// refused).
    fn fail_call(&self, id: u64, reason: &str);
    /// The link in use, to answer the server on (the server's own request
    /// refused while it was read).
    fn current_link(&self) -> Option<Arc<dyn Link>>;
}

/// Opens a link to a server: the supervisor calls it for every start and
/// restart. The real one is chosen from the server's config; tests script
/// one in memory (`scripted`).
pub(crate) trait Connector: Send + Sync {
    /// Starts the server and connects to it; what it sends goes to `inbox`.
    /// `restarts`: how many times it had been restarted before this start.
    fn connect(
        &self,
        inbox: Arc<dyn Inbox>,
        restarts: u64,
    ) -> BoxFuture<'_, Result<Connected, UpstreamError>>;
}

/// A server's input, written a line at a time by however many senders: a
/// send cancelled mid-line (its caller's timeout, a client gone) leaves
/// the rest of its line here, and the next send writes that rest first, so
/// no message is ever glued to a piece of another. The line cut short
/// arrives late but whole.
pub(crate) struct LineWriter<W> {
    output: W,
    /// The line being written, and how much of it is written.
    line: Vec<u8>,
    written: usize,
}

impl<W: tokio::io::AsyncWrite + Unpin> LineWriter<W> {
    pub(crate) fn new(output: W) -> Self {
        Self {
            output,
            line: Vec::new(),
            written: 0,
        }
    }

    /// Writes the rest of the current line. Each write is cancel-safe
    /// (nothing is written when it is dropped), and what it wrote is
    /// counted before the next: a cancelled call leaves an exact rest.
    async fn finish_line(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        while let Some(rest) = self
            .line
            .get(self.written..)
            .filter(|rest| !rest.is_empty())
        {
            let wrote = self.output.write(rest).await?;
            if wrote == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += wrote;
        }
        Ok(())
    }

    async fn send(&mut self, line: Vec<u8>) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.finish_line().await?;
        self.line = line;
        self.written = 0;
        self.finish_line().await?;
        self.output.flush().await
    }
}

/// Writes one message to a server's input as a line, and flushes. A write
/// that fails closes the link (`closed`): the server is gone.
pub(crate) async fn write_message<W: tokio::io::AsyncWrite + Unpin>(
    input: &tokio::sync::Mutex<LineWriter<W>>,
    message: &Value,
    closed: &CancellationToken,
) -> Result<(), LinkError> {
    let line = protocol::encode_line(message);
    let mut input = input.lock().await;
    input.send(line).await.map_err(|err| {
        closed.cancel();
        LinkError::Write(err)
    })
}

/// Reads a server's output, one message per line (each bounded while it is
/// read), and dispatches each in order until the output ends or `closed`
/// fires; then fires `closed`.
pub(crate) async fn read_messages(
    output: impl tokio::io::AsyncRead + Unpin,
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    closed: CancellationToken,
) {
    let mut frames = FrameReader::new(
        tokio::io::BufReader::with_capacity(64 * 1024, output),
        limits.max_message_bytes,
    );
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = closed.cancelled() => break,
        };
        match frame {
            Ok(Some(Frame::Line(line))) => match protocol::parse(&line, limits.max_depth) {
                Ok(message) => inbox.dispatch(message, None).await,
                Err(err) => {
                    tracing::warn!(server = %inbox.server(), error = %err, "dropped a message from the server")
                }
            },
            Ok(Some(Frame::Oversize(head))) => {
                tracing::warn!(
                    server = %inbox.server(),
                    limit = limits.max_message_bytes,
                    "dropped a message from the server: too large"
                );
                let error = protocol::ParseError::TooLarge {
                    limit: limits.max_message_bytes,
                };
                let id = protocol::sniff_id(&head);
                if protocol::sniff_has_method(&head) {
                    // The server's own request: refused to the server, whose
                    // ids are not ours to match against our calls.
                    if let (Some(id), Some(link)) = (id, inbox.current_link()) {
                        let refusal = error.to_response(id);
                        let _ = link.send(refusal).await;
                    }
                } else if let Some(id) = id.and_then(|id| id.as_u64()) {
                    // A reply too large to relay still ends its call, at once.
                    let reason = format!("the server's reply was refused: {error}");
                    inbox.fail_call(id, &reason);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A send that times out with its line half written leaves no piece
    /// for the next message to be glued to: the reader gets whole lines.
    #[tokio::test]
    async fn a_send_cut_short_never_glues_the_next_message_to_its_rest() {
        // A pipe that holds 64 bytes until its reader reads.
        let (writer, mut reader) = tokio::io::duplex(64);
        let input = tokio::sync::Mutex::new(LineWriter::new(writer));
        let closed = CancellationToken::new();
        let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"text": "x".repeat(1024)}});
        let small = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
        // Nobody reads: the first send stops after 64 bytes, and is dropped
        // by its timeout there (the timeout fires only once the pipe is
        // full, whatever the machine's speed).
        let cut = tokio::time::timeout(
            Duration::from_millis(50),
            write_message(&input, &big, &closed),
        )
        .await;
        assert!(cut.is_err(), "the send cannot finish without a reader");
        assert!(
            !closed.is_cancelled(),
            "a send cut short is no failure of the link"
        );
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = reader.read_to_end(&mut all).await;
            all
        });
        write_message(&input, &small, &closed)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        drop(input);
        let all = reading.await.unwrap_or_default();
        let lines: Vec<serde_json::Value> = all
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line)
                    .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(line)))
            })
            .collect();
        assert_eq!(lines, vec![big, small]);
    }
}
