//! `process` upstreams: a local command speaking MCP over stdio. These run
//! unsandboxed, with the proxy's own rights, and are announced as such.

use std::process::Stdio;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::io::{BufReader, BufWriter};
use tokio::process::{ChildStdin, Command};
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::link::{Connected, Inbox, LineWriter, Link, LinkError, read_messages, write_message};
use crate::config::{LimitsConfig, ProcessSpec};

struct ProcessLink {
    stdin: tokio::sync::Mutex<LineWriter<BufWriter<ChildStdin>>>,
    closed: CancellationToken,
}

impl Link for ProcessLink {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), LinkError>> {
        async move { write_message(&self.stdin, &message, &self.closed).await }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.cancel();
        std::future::ready(()).boxed()
    }
}

pub(super) async fn spawn(
    spec: &ProcessSpec,
    secrets: &[(String, String)],
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
) -> Result<Connected, UpstreamError> {
    let server = inbox.server().clone();
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .envs(&spec.env)
        .envs(secrets.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|err| UpstreamError::Start {
        server: server.to_string(),
        reason: format!("cannot run `{}`: {err}", spec.command),
    })?;
    let missing = |what: &str| UpstreamError::Start {
        server: server.to_string(),
        reason: format!("no {what} pipe"),
    };
    let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
    let closed = CancellationToken::new();

    // The child: reaped when it exits, killed when the link closes.
    {
        let closed = closed.clone();
        let server = server.clone();
        tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    match status {
                        Ok(status) => tracing::warn!(server = %server, %status, "server process exited"),
                        Err(err) => tracing::warn!(server = %server, error = %err, "cannot wait for the server process"),
                    }
                    closed.cancel();
                }
                () = closed.cancelled() => {
                    let _ = child.kill().await;
                }
            }
        });
    }

    // Its stdout: one message per line, each dispatched in order.
    {
        let closed = closed.clone();
        let inbox = inbox.clone();
        tokio::spawn(read_messages(stdout, limits, inbox, closed));
    }

    // Its stderr goes to the log at debug level: servers print anything
    // there, including what they were sent.
    {
        let server = server.clone();
        tokio::spawn(async move {
            // Read a bounded line at a time: a server that never ends a
            // line cannot make the proxy hold it all.
            let mut lines = crate::protocol::FrameReader::new(BufReader::new(stderr), 2000);
            while let Ok(Some(frame)) = lines.next().await {
                let (line, cut) = match &frame {
                    crate::protocol::Frame::Line(line) => (line, ""),
                    crate::protocol::Frame::Oversize(head) => (head, " …"),
                };
                let line = String::from_utf8_lossy(line);
                tracing::debug!(server = %server, "stderr: {line}{cut}");
            }
        });
    }

    Ok(Connected {
        link: Arc::new(ProcessLink {
            stdin: tokio::sync::Mutex::new(LineWriter::new(BufWriter::new(stdin))),
            closed: closed.clone(),
        }),
        closed,
    })
}
