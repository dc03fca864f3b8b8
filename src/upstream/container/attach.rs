//! Starting a container and the link over its stdio: created, attached,
//! then started, so that not one byte of its output is missed; stdout (or
//! the output FIFO) read as MCP, stderr to the log.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ImageInspect};
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::engine::{ENGINE_TIMEOUT, describe, engine, remove, short};
use super::fifo::{FifoDir, use_fifos};
use super::image::{ensure_image, server_command};
use super::profile::{create_body, labels};
use crate::config::{ContainerSpec, LimitsConfig};
use crate::upstream::UpstreamError;
use crate::upstream::link::{
    Connected, Inbox, LineWriter, Link, LinkError, read_messages, write_message,
};

/// Removes a container when dropped, unless disarmed: no failure while
/// starting leaves one behind.
struct Created<'a> {
    docker: &'a Docker,
    id: String,
    armed: bool,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if self.armed {
            let id = std::mem::take(&mut self.id);
            let docker = self.docker.clone();
            tokio::spawn(async move {
                if let Err(err) = remove(&docker, &id).await {
                    tracing::warn!(
                        container = short(&id),
                        error = err,
                        "cannot remove a container that failed to start"
                    );
                }
            });
        }
    }
}

struct ContainerLink {
    /// Held for its `Drop`: the FIFO folder goes with the link.
    _fifos: Option<FifoDir>,
    docker: Docker,
    id: String,
    server: Arc<str>,
    stdin: tokio::sync::Mutex<LineWriter<Pin<Box<dyn AsyncWrite + Send>>>>,
    closed: CancellationToken,
}

impl Link for ContainerLink {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), LinkError>> {
        async move { write_message(&self.stdin, &message, &self.closed).await }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.closed.cancel();
            // Say how it ended before the evidence goes.
            if let Ok(Ok(info)) = tokio::time::timeout(
                ENGINE_TIMEOUT,
                self.docker.inspect_container(&self.id, None),
            )
            .await
                && let Some(state) = info.state
                && state.running != Some(true)
            {
                tracing::warn!(
                    server = %self.server,
                    container = short(&self.id),
                    exit_code = state.exit_code,
                    oom_killed = state.oom_killed,
                    "container exited"
                );
            }
            match remove(&self.docker, &self.id).await {
                Ok(()) => {
                    tracing::debug!(server = %self.server, container = short(&self.id), "container removed")
                }
                Err(err) => {
                    tracing::warn!(server = %self.server, container = short(&self.id), error = err, "cannot remove the container")
                }
            }
        }
        .boxed()
    }
}

/// Starts a container for `spec` and links to its stdio.
pub(in crate::upstream) async fn spawn(
    spec: &ContainerSpec,
    secrets: &[(String, String)],
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    restarts: u64,
) -> Result<Connected, UpstreamError> {
    let server = inbox.server().clone();
    let fail = |reason: String| UpstreamError::Start {
        server: server.to_string(),
        reason,
    };
    let docker = engine().await.map_err(fail)?;
    let image = ensure_image(docker, spec).await.map_err(fail)?;
    if spec.require_signature {
        let verified = tokio::time::timeout(
            crate::upstream::oci::DEADLINE,
            super::signature::verify(spec, &image, &spec.signature_keys),
        )
        .await
        .map_err(|_| {
            fail(format!(
                "image `{}`: its signature could not be checked within {:?}",
                spec.image,
                crate::upstream::oci::DEADLINE
            ))
        })?
        .map_err(fail)?;
        tracing::info!(server = %server, image = %spec.image, verified, "image signature verified");
    }
    // A `docker://` server runs as the label of this very image (the one
    // whose id is started) says, checked against its sandbox.
    let described = image
        .config
        .as_ref()
        .and_then(|config| config.labels.as_ref())
        .and_then(|labels| labels.get(crate::config::catalog::METADATA_LABEL));
    let resolved = crate::config::from_label(spec, described.map(String::as_str)).map_err(fail)?;
    let spec = &resolved;
    let labels = labels(&server, inbox.instance(), restarts);
    let (body, fifos) = create_request(spec, secrets, image, labels).map_err(fail)?;
    let attached = fifos.is_none();
    let (id, AttachContainerResults { output, input }) =
        create_and_start(docker, &server, body, attached)
            .await
            .map_err(fail)?;
    let relaxations = spec.sandbox.relaxations();
    tracing::info!(
        server = %server,
        client = inbox.instance().unwrap_or("(all)"),
        container = short(&id),
        image = %spec.image,
        relaxations = relaxations.len(),
        "container started"
    );

    let closed = CancellationToken::new();
    read_output(output, fifos.as_ref(), limits, inbox, closed.clone()).map_err(fail)?;
    let input: Pin<Box<dyn AsyncWrite + Send>> = match &fifos {
        None => input,
        Some(dir) => Box::pin(dir.open_input().map_err(fail)?),
    };

    Ok(Connected {
        link: Arc::new(ContainerLink {
            _fifos: fifos,
            docker: docker.clone(),
            id,
            server,
            stdin: tokio::sync::Mutex::new(LineWriter::new(input)),
            closed: closed.clone(),
        }),
        closed,
    })
}

/// The create request for `spec` (with the pinned image's id, which is what
/// runs), and the FIFO folder when its stdio goes through FIFOs.
fn create_request(
    spec: &ContainerSpec,
    secrets: &[(String, String)],
    image: ImageInspect,
    labels: HashMap<String, String>,
) -> Result<(ContainerCreateBody, Option<FifoDir>), String> {
    // Secrets travel only in the create request's environment: never on a
    // command line, never in a log line.
    let env = spec
        .env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .chain(
            secrets
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut body = create_body(spec, env, labels);
    // With FIFOs, the bridge is the entrypoint and execs the server's own
    // command with the FIFOs as its stdio; the attach carries stderr only.
    let fifos = match &spec.fifos {
        None => None,
        Some(setup) => {
            let command = server_command(spec, &image)?;
            let dir = FifoDir::create(&setup.run_dir, &spec.sandbox.user)?;
            use_fifos(&mut body, setup, &dir, command);
            Some(dir)
        }
    };
    if let Some(id) = image.id {
        body.image = Some(id);
    }
    Ok((body, fifos))
}

/// Creates the container, attaches to it (stdin and stdout too when
/// `attached`), and only then starts it. Returns its id and the attachment;
/// a container that fails on the way is removed.
async fn create_and_start(
    docker: &Docker,
    server: &str,
    body: ContainerCreateBody,
    attached: bool,
) -> Result<(String, AttachContainerResults), String> {
    let name = format!(
        "portcullis-{server}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let response = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|err| format!("cannot create the container: {}", describe(&err)))?;
    let mut created = Created {
        docker,
        id: response.id,
        armed: true,
    };
    let attachment = docker
        .attach_container(
            &created.id,
            Some(AttachContainerOptions {
                stdin: attached,
                stdout: attached,
                stderr: true,
                stream: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|err| format!("cannot attach to the container: {}", describe(&err)))?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(|err| format!("cannot start the container: {}", describe(&err)))?;
    created.armed = false;
    Ok((std::mem::take(&mut created.id), attachment))
}

/// Reads the container's output until it ends, then fires `closed`.
fn read_output(
    output: BoxStream<'static, Result<LogOutput, DockerError>>,
    fifos: Option<&FifoDir>,
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    closed: CancellationToken,
) -> Result<(), String> {
    let server = inbox.server().clone();
    // Its output: stdout carries MCP (in chunks not aligned to lines, so it
    // goes through the same bounded line reader as a process's stdout);
    // stderr goes to the log at debug level.
    let stdout = output.filter_map(move |item| {
        let server = server.clone();
        async move {
            match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok::<Bytes, std::io::Error>(message)),
                Ok(LogOutput::StdErr { message }) => {
                    if !tracing::enabled!(tracing::Level::DEBUG) {
                        return None;
                    }
                    for line in String::from_utf8_lossy(&message).lines() {
                        // A user's token the container was given, as it
                        // may print it, is not the log's (before the line
                        // is cut: never half a token in clear).
                        let line = crate::signin::known::known().scrub(line);
                        let line: String = line.chars().take(2000).collect();
                        tracing::debug!(server = %server, "stderr: {line}");
                    }
                    None
                }
                Ok(_) => None,
                Err(err) => Some(Err(std::io::Error::other(err.to_string()))),
            }
        }
    });
    match fifos {
        None => {
            let stdout = tokio_util::io::StreamReader::new(Box::pin(stdout));
            tokio::spawn(read_messages(stdout, limits, inbox, closed));
        }
        Some(dir) => {
            // The attach stream (stderr) ends when the container does;
            // the FIFO never does, since the proxy holds both its ends.
            let output = dir.open_output()?;
            tokio::spawn(read_messages(output, limits, inbox, closed.clone()));
            tokio::spawn(async move {
                let mut stderr = Box::pin(stdout);
                while stderr.next().await.is_some() {}
                closed.cancel();
            });
        }
    }
    Ok(())
}
