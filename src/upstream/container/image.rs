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
            pull(docker, spec).await?;
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
    let mut found = None;
    for name in lookups(spec) {
        match docker.inspect_image(&name).await {
            Ok(image) => {
                found = Some(image);
                break;
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(err) => {
                return Err(Missing::Unusable(format!(
                    "image `{}`: {}",
                    spec.image,
                    describe(&err)
                )));
            }
        }
    }
    let Some(image) = found else {
        return Err(Missing::No(format!(
            "image `{}` is not in the Docker engine; build it (`docker build -t {} …`) or load it (`docker load -i …`). Portcullis pulls only when the server sets `pull = \"missing\"`",
            spec.image, spec.image
        )));
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

/// An image reference's repository and tag (`repo:tag`), if it names one
/// (a port in the registry's host is not a tag).
pub(super) fn tag_of(image: &str) -> Option<(&str, &str)> {
    image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))
}

/// The names the engine is asked for an image by, in order: its reference
/// as written; for one pinned by digest without a tag (`repo@sha256:…`,
/// which the engine would read as `repo:latest`), the repository at that
/// digest, then the digest as the image's own id (an image built or loaded
/// here has no repository digest). What is found is checked against the
/// digest either way.
fn lookups(spec: &ContainerSpec) -> Vec<String> {
    match &spec.digest {
        Some(digest) if tag_of(&spec.image).is_none() => {
            vec![format!("{}@{digest}", spec.image), digest.clone()]
        }
        _ => vec![spec.image.clone()],
    }
}

async fn pull(docker: &Docker, spec: &ContainerSpec) -> Result<(), String> {
    let image = spec.image.as_str();
    tracing::info!(image, "pulling the image (`pull = \"missing\"`)");
    // Pinned by digest without a tag: pulled by its digest, not `latest`.
    let (name, tag) = match (tag_of(image), &spec.digest) {
        (Some((name, tag)), _) => (name, tag),
        (None, Some(digest)) => (image, digest.as_str()),
        (None, None) => (image, "latest"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str, digest: Option<&str>) -> ContainerSpec {
        let config = crate::upstream::scripted::lazy_config("s", std::time::Duration::from_secs(1));
        let crate::config::UpstreamSpec::Container(spec) = &config.kind else {
            panic!("a container spec");
        };
        let mut spec = (**spec).clone();
        spec.image = image.to_owned();
        spec.digest = digest.map(str::to_owned);
        spec
    }

    #[test]
    fn an_image_pinned_by_digest_without_a_tag_is_looked_up_at_that_digest() {
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            lookups(&spec("example/server", Some(&digest))),
            [format!("example/server@{digest}"), digest.clone()]
        );
        // A registry's port is not a tag.
        assert_eq!(
            lookups(&spec("127.0.0.1:5000/server", Some(&digest))),
            [format!("127.0.0.1:5000/server@{digest}"), digest.clone()]
        );
        assert_eq!(
            lookups(&spec("example/server:1.2", Some(&digest))),
            ["example/server:1.2"]
        );
        assert_eq!(lookups(&spec("example/server", None)), ["example/server"]);
    }
}
