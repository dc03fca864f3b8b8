//! The image a container runs: present (pulled only when the server allows)
//! and the pinned one, and the command it runs.

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ImageInspect;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt as _;

use super::engine::describe;
use crate::config::{ContainerSpec, PullPolicy};

/// Makes sure the engine has the image (pulling it only if the server allows)
/// and that it is the pinned one; returns its id, which is what runs (a tag
/// moved between this check and the start cannot swap the image).
pub async fn ensure_image(docker: &Docker, spec: &ContainerSpec) -> Result<ImageInspect, String> {
    match ensure_image_present(docker, spec).await {
        Err(Missing::No(message)) if spec.pull == PullPolicy::Missing => {
            tracing::debug!("{message}");
            pull(docker, &spec.image).await?;
            ensure_image_present(docker, spec)
                .await
                .map_err(Missing::into_message)
        }
        other => other.map_err(Missing::into_message),
    }
}

/// Why an image cannot be used.
pub enum Missing {
    /// The engine does not have it.
    No(String),
    /// It is there but unusable (wrong digest), or the engine failed.
    Unusable(String),
}

impl Missing {
    pub fn into_message(self) -> String {
        match self {
            Self::No(message) | Self::Unusable(message) => message,
        }
    }
}

/// The image, if the engine has it and it is the pinned one. Never pulls.
pub async fn ensure_image_present(
    docker: &Docker,
    spec: &ContainerSpec,
) -> Result<ImageInspect, Missing> {
    let image = match docker.inspect_image(&spec.image).await {
        Ok(image) => image,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(Missing::No(format!(
                "image `{}` is not in the Docker engine; build it (`docker build -t {} …`) or load it (`docker load -i …`). Portcullis pulls only when the server sets `pull = \"missing\"`",
                spec.image, spec.image
            )));
        }
        Err(err) => {
            return Err(Missing::Unusable(format!(
                "image `{}`: {}",
                spec.image,
                describe(&err)
            )));
        }
    };
    if let Some(digest) = &spec.digest {
        let id = image.id.as_deref().unwrap_or_default();
        let repo_matches = image
            .repo_digests
            .iter()
            .flatten()
            .any(|repo| repo.ends_with(&format!("@{digest}")));
        if !(id == digest || repo_matches) {
            return Err(Missing::Unusable(format!(
                "image `{}` is `{id}`, not the pinned digest `{digest}`; refusing to start it",
                spec.image
            )));
        }
    }
    Ok(image)
}

async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    tracing::info!(image, "pulling the image (`pull = \"missing\"`)");
    let (name, tag) = match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
        Some((name, tag)) => (name, tag),
        None => (image, "latest"),
    };
    let mut progress = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(name.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(step) = progress.next().await {
        step.map_err(|err| format!("cannot pull image `{image}`: {}", describe(&err)))?;
    }
    Ok(())
}

/// The server's own command: the spec's entrypoint and args, else the image's.
pub(super) fn server_command(
    spec: &ContainerSpec,
    image: &ImageInspect,
) -> Result<Vec<String>, String> {
    let config = image.config.clone().unwrap_or_default();
    let mut command = match &spec.entrypoint {
        Some(entrypoint) => entrypoint.clone(),
        None => config.entrypoint.unwrap_or_default(),
    };
    if !spec.args.is_empty() {
        command.extend(spec.args.iter().cloned());
    } else if spec.entrypoint.is_none() {
        command.extend(config.cmd.unwrap_or_default());
    }
    if command.is_empty() {
        return Err(format!(
            "image `{}` names no program to run; set `entrypoint`",
            spec.image
        ));
    }
    Ok(command)
}
