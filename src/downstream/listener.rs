//! The HTTP listener: accepts connections under a global and a per-source
//! cap, and serves each with hyper's HTTP/1.1 server under the listener's
//! timeouts (`[listener]`).
//!
//! Timeouts: hyper's own `header_read_timeout` bounds a request's headers.
//! hyper times it from the moment the connection waits for a request, which
//! on a keep-alive connection is also its idle time; the timer given to
//! hyper here tells the two apart, as Go's server does: while a keep-alive
//! connection has sent no byte of its next request it may idle for
//! `idle_timeout`, and from its first byte the headers must be complete
//! within `header_read_timeout`. A new connection's first request gets
//! `header_read_timeout` from the connection's start. Bodies are read by the
//! handlers under `body_read_timeout`.
//!
//! Past a cap, a connection is answered with a fixed 503 (written only if
//! the socket takes it at once) and closed; it never reaches hyper.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use super::slots::{Cap, Slots};
use super::throttle::Source;
use super::tls::{PeerCertificate, Tls};
use crate::config::ListenerConfig;
use crate::metrics::Metrics;

/// File descriptors kept free beyond the connection cap (the audit store,
/// servers' pipes, containers' FIFOs, the Docker socket).
const SPARE_DESCRIPTORS: u64 = 256;

/// Serves `app` on `listener` until `shutdown`, then lets open requests
/// finish (up to a grace period).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    config: ListenerConfig,
    tls: Option<Arc<Tls>>,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) {
    raise_descriptor_limit(config.max_connections);
    let caps = Slots::new(config.max_connections, config.max_connections_per_ip);
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let connections = TaskTracker::new();
    let mut refusals = Refusals::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors (or a connection reset before it
                    // was accepted): wait a moment rather than spin.
                    refusals.accept_failed(&err);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        let slot = match caps.take(&Source::of(peer.ip())) {
            Ok(slot) => slot,
            Err(cap) => {
                let cap = cap_label(cap);
                refusals.note(cap, peer);
                if let Some(metrics) = &metrics {
                    metrics.connections_refused.get([cap]).add(1);
                }
                // Answered once its request head is in (an HTTP client
                // takes a reply before its request for a broken
                // connection), within a second, by a bounded number of
                // tasks; past them the connection is just closed.
                // Over TLS a plain answer would be noise: just closed.
                if tls.is_none()
                    && let Ok(permit) = refusing.clone().try_acquire_owned()
                {
                    tokio::spawn(async move {
                        refuse(stream).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        // Without TCP_NODELAY the last chunk of a streamed reply waits for
        // the client's delayed ACK (~40 ms on Linux) behind Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        let config = config.clone();
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, None, app, &config, shutdown).await,
                // The handshake is part of the request head's time.
                Some(acceptor) => {
                    match tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            let certificate = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(<[_]>::first)
                                .map(PeerCertificate::of);
                            serve_connection(stream, peer, certificate, app, &config, shutdown)
                                .await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, %peer, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    // SSE streams end with the shutdown token; a request still running
    // gets a few seconds.
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.wait()).await;
}

/// Refused connections being answered at once (each for at most
/// [`REFUSAL_TIME`] twice).
const MAX_REFUSING: usize = 64;
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Answers a connection past a cap with [`SERVICE_UNAVAILABLE`]: after its
/// request head (or what came of it within [`REFUSAL_TIME`]), so that the
/// client reads it as the answer to its request, then closes it.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = [0u8; 4096];
    let mut seen = 0;
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        while let Some(rest) = head.get_mut(seen..).filter(|rest| !rest.is_empty()) {
            match stream.read(rest).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
            if (head.get(..seen)).is_some_and(|read| read.windows(4).any(|w| w == b"\r\n\r\n")) {
                return;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(SERVICE_UNAVAILABLE.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// The whole answer to a connection past a cap.
static SERVICE_UNAVAILABLE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let body = "{\"error\":\"too many connections; try again\"}\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
});

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
    app: Router,
    config: &ListenerConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        write_timeout: config.write_timeout,
        stalled: None,
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            activity.request_began();
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(certificate) = &certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            let mut app = app.clone();
            async move { app.call(request.map(axum::body::Body::new)).await }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(IdleTimer {
            activity,
            header: config.header_read_timeout,
            idle: config.idle_timeout,
        })
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(err) = served {
                tracing::debug!(error = %err, %peer, "connection ended");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

fn cap_label(cap: Cap) -> &'static str {
    match cap {
        Cap::Total => "max_connections",
        Cap::PerKey => "max_connections_per_ip",
    }
}

/// Logs refused connections at most once every ten seconds, with how many
/// were refused since, so that a flood does not flood the log too.
#[derive(Default)]
struct Refusals {
    last: Option<Instant>,
    since: u64,
}

impl Refusals {
    fn accept_failed(&mut self, err: &std::io::Error) {
        if self.due() {
            tracing::warn!(error = %err, "cannot accept connections (out of file descriptors?)");
        }
    }

    /// Whether ten seconds have passed since the last warning.
    fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(10));
        if due {
            self.last = Some(now);
        }
        due
    }

    fn note(&mut self, cap: &'static str, peer: SocketAddr) {
        self.since += 1;
        if self.due() {
            tracing::warn!(
                cap,
                %peer,
                refused = self.since,
                "refusing connections past the listener's cap"
            );
            self.since = 0;
        }
    }
}

/// Raises the soft limit on open files to the hard one, and warns when
/// even that cannot hold the connection cap.
fn raise_descriptor_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::debug!(soft, hard, "cannot raise the open-file limit");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    let needed = max_connections as u64 + SPARE_DESCRIPTORS;
    if limit < needed {
        tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below listener.max_connections plus {SPARE_DESCRIPTORS} spare: lower max_connections or raise the limit (ulimit -n)"
        );
    }
}

/// What the timer needs to know of its connection: whether a request has
/// been served on it, and when its client sent the first byte since the
/// connection began waiting for a request.
#[derive(Default)]
struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Default)]
struct ActivityState {
    served: bool,
    waiting_since: Option<Instant>,
    first_byte: Option<Instant>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request_began(&self) {
        self.lock().served = true;
    }

    fn waiting(&self, now: Instant) {
        let mut state = self.lock();
        state.waiting_since = Some(now);
        state.first_byte = None;
    }

    fn read(&self, now: Instant) {
        let mut state = self.lock();
        if state.waiting_since.is_some() && state.first_byte.is_none() {
            state.first_byte = Some(now);
        }
    }

    /// When a connection waiting for a request since `since` is closed.
    fn deadline(&self, since: Instant, header: Duration, idle: Duration) -> Instant {
        let state = self.lock();
        match state.first_byte {
            Some(first) => first + header,
            None if !state.served => since + header,
            None => since + idle,
        }
    }
}

/// The connection's IO, telling its [`Activity`] when bytes arrive, and
/// failing a write the peer has not made room for within `write_timeout`:
/// a client that stops reading (a reply, a pipelined reply, an SSE stream)
/// is cut off instead of holding its connection for good. hyper has no
/// timer of its own for that.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    write_timeout: Duration,
    /// Running while a write waits on the peer.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Watched<S> {
    /// What a write that came back `polled` means, given how long writes
    /// have waited on the peer: a wait past the timeout is an error.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer took no bytes within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// hyper's timer for one connection. hyper asks it only for the header
/// read timeout; the sleep it gives ends at the connection's deadline as
/// [`Activity::deadline`] tells it, which moves when the first byte comes.
struct IdleTimer {
    activity: Arc<Activity>,
    header: Duration,
    idle: Duration,
}

impl hyper::rt::Timer for IdleTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let now = Instant::now();
        self.activity.waiting(now);
        Box::pin(HeaderSleep {
            activity: self.activity.clone(),
            since: now,
            header: self.header,
            idle: self.idle,
            sleep: Box::pin(tokio::time::sleep_until((now + self.header).into())),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, deadline: Instant) {
        *sleep = self.sleep_until(deadline);
    }
}

struct PlainSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for PlainSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

struct HeaderSleep {
    activity: Arc<Activity>,
    since: Instant,
    header: Duration,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.activity.deadline(self.since, self.header, self.idle);
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_request_gets_the_header_time_and_a_kept_connection_its_idle_time() {
        let activity = Activity::default();
        let (header, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let start = Instant::now();
        activity.waiting(start);
        assert_eq!(activity.deadline(start, header, idle), start + header);

        activity.request_began();
        let kept = start + Duration::from_secs(5);
        activity.waiting(kept);
        assert_eq!(activity.deadline(kept, header, idle), kept + idle);
        // From the next request's first byte, its headers have the header time.
        let first = kept + Duration::from_secs(40);
        activity.read(first);
        activity.read(first + Duration::from_secs(1));
        assert_eq!(activity.deadline(kept, header, idle), first + header);
    }
}
