//! The Docker engine: reached once, and the small calls every part makes.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};

/// How long engine calls that should be quick (inspect, remove) may take.
pub(super) const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

static ENGINE: tokio::sync::OnceCell<Docker> = tokio::sync::OnceCell::const_new();

/// Where the engine is, for messages: `DOCKER_HOST` or the default socket.
pub fn engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// The Docker engine, connected once with the API version negotiated (so an
/// older engine is spoken to in its own version).
pub async fn engine() -> Result<&'static Docker, String> {
    ENGINE
        .get_or_try_init(|| async {
            let unreachable = |err: String| {
                format!(
                    "the Docker engine at `{}` is not reachable: {err}",
                    engine_address()
                )
            };
            let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
            match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await {
                Ok(Ok(docker)) => Ok(docker),
                Ok(Err(err)) => Err(unreachable(err.to_string())),
                Err(_) => Err(unreachable("no answer within 10s".into())),
            }
        })
        .await
}

/// Every container (running or not) with the label `label` (`KEY=VALUE`).
pub async fn labelled(docker: &Docker, label: &str) -> Result<Vec<ContainerSummary>, String> {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|err| format!("cannot list containers: {}", describe(&err)))
}

/// A short, client-safe description of an engine error.
pub fn describe(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => format!("the engine answered {status_code}: {message}"),
        other => other.to_string(),
    }
}

pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

pub(super) async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let removed = docker.remove_container(
        id,
        Some(RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        }),
    );
    match tokio::time::timeout(ENGINE_TIMEOUT, removed).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        })) => Ok(()),
        Ok(Err(err)) => Err(describe(&err)),
        Err(_) => Err(format!("no answer within {}s", ENGINE_TIMEOUT.as_secs())),
    }
}
