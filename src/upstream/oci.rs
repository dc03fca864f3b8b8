//! OCI registries: catalogs stored as artifacts in Docker's format (`docker
//! mcp catalog push|pull`): an image manifest whose `artifactType` is
//! [`CATALOG_ARTIFACT`], the empty config, and one `application/json` layer
//! holding the catalog.
//!
//! Plain HTTP only to a registry on loopback; TLS (with the system's roots,
//! through the proxy's rustls) to any other. Anonymous access: a registry
//! that asks for credentials is refused with its answer.

use std::str::FromStr;

use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// The artifact type of a catalog (Docker's).
pub const CATALOG_ARTIFACT: &str = "application/vnd.docker.mcp.catalog.v1+json";
/// The media type of the empty config (OCI 1.1).
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The media type of the catalog's layer.
pub const CATALOG_LAYER: &str = "application/json";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("`{0}` is not an OCI reference (REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST])")]
    Reference(String),
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("`{reference}` is not an MCP catalog: {why}")]
    NotACatalog { reference: String, why: String },
    #[error("`{reference}`: the catalog is {size} bytes, over the limit of {limit}")]
    TooLarge {
        reference: String,
        size: u64,
        limit: u64,
    },
    #[error("`{reference}` pins {pinned}, but the registry served {served}")]
    DigestMismatch {
        reference: String,
        pinned: String,
        served: String,
    },
}

/// A catalog as pulled: its manifest's digest, and its layer (the catalog
/// as JSON) with that layer's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledCatalog {
    pub digest: String,
    pub layer_digest: String,
    pub json: Vec<u8>,
}

/// `reference` parsed, or why not.
pub fn reference(text: &str) -> Result<Reference, OciError> {
    if text.len() > 512 || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(OciError::Reference(
            crate::protocol::cut(text, 64).escape_default().to_string(),
        ));
    }
    Reference::from_str(text).map_err(|_| OciError::Reference(text.to_owned()))
}

/// Whether `registry` (`host[:port]`) is on loopback, where plain HTTP is
/// allowed.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A registry client for `reference`: plain HTTP only on loopback.
pub(crate) fn client_for(reference: &Reference) -> Client {
    // The registry's TLS, with the proxy's crypto (ring), as every client of
    // the proxy's has it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_owned();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        // A registry that stalls fails the pull or the start, never holds
        // it: each read and connect is bounded (the whole operation too,
        // by its caller).
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..ClientConfig::default()
    })
}

fn registry_error(reference: &Reference, err: impl std::fmt::Display) -> OciError {
    OciError::Registry {
        registry: shown(reference.resolve_registry()),
        message: shown(&err.to_string()),
    }
}

/// How long a whole pull or push, or a signature check, may take.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// What a registry says, fit for a log line or a terminal: cut, and every
/// character a terminal acts on or a reader cannot see escaped.
pub fn shown(text: &str) -> String {
    crate::protocol::shown(crate::protocol::cut(text, 300)).into_owned()
}

/// A layer as it is fetched: from the registry alone, never from the
/// `urls` a manifest may list (a registry could point the proxy at any
/// address of its network that way).
pub fn registry_only(
    layer: &oci_client::manifest::OciDescriptor,
) -> oci_client::manifest::OciDescriptor {
    oci_client::manifest::OciDescriptor {
        urls: None,
        ..layer.clone()
    }
}

pub use crate::config::pulled::sha256_digest;

/// Pulls the catalog at `text`, at most `limit` bytes: refused unless its
/// manifest says it is one (its artifact type, one JSON layer), and, if
/// the reference pins a digest, unless the manifest is that one. The
/// layer's bytes are checked against its digest as they arrive.
pub async fn pull_catalog(text: &str, limit: u64) -> Result<PulledCatalog, OciError> {
    let reference = reference(text)?;
    let client = client_for(&reference);
    let (manifest, digest) = client
        .pull_image_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|err| registry_error(&reference, err))?;
    if let Some(pinned) = reference.digest()
        && pinned != digest
    {
        return Err(OciError::DigestMismatch {
            reference: text.to_owned(),
            pinned: pinned.to_owned(),
            served: digest,
        });
    }
    let not = |why: String| OciError::NotACatalog {
        reference: text.to_owned(),
        why,
    };
    if manifest.artifact_type.as_deref() != Some(CATALOG_ARTIFACT) {
        return Err(not(format!(
            "its artifact type is {}, not `{CATALOG_ARTIFACT}`",
            manifest
                .artifact_type
                .as_deref()
                .map_or("not set".to_owned(), |t| format!(
                    "`{}`",
                    t.escape_default()
                ))
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not(format!(
            "it has {} layers, not one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != CATALOG_LAYER {
        return Err(not(format!(
            "its layer is `{}`, not `{CATALOG_LAYER}`",
            layer.media_type.escape_default()
        )));
    }
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > limit {
        return Err(OciError::TooLarge {
            reference: text.to_owned(),
            size,
            limit,
        });
    }
    let mut stream = client
        .pull_blob_stream(&reference, &registry_only(layer))
        .await
        .map_err(|err| registry_error(&reference, err))?;
    let mut json = Vec::new();
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk.map_err(|err| registry_error(&reference, err))?;
        json.extend_from_slice(&chunk);
        if json.len() as u64 > limit.min(size) {
            return Err(OciError::TooLarge {
                reference: text.to_owned(),
                size: json.len() as u64,
                limit: limit.min(size),
            });
        }
    }
    // Checked again whole: what is kept is what the manifest names.
    let layer_digest = sha256_digest(&json);
    if layer_digest != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: text.to_owned(),
            pinned: layer.digest.clone(),
            served: layer_digest,
        });
    }
    Ok(PulledCatalog {
        digest,
        layer_digest,
        json,
    })
}

/// Pushes `json` (a catalog) to `text` as Docker's catalog artifact;
/// returns the manifest's digest.
pub async fn push_catalog(text: &str, json: Vec<u8>) -> Result<String, OciError> {
    let reference = reference(text)?;
    if reference.digest().is_some() {
        return Err(OciError::Reference(format!(
            "{text}: push to a tag, not a digest"
        )));
    }
    let client = client_for(&reference);
    let layers = [ImageLayer::new(json, CATALOG_LAYER.to_owned(), None)];
    let config = Config::new(b"{}".to_vec(), EMPTY_CONFIG.to_owned(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_owned());
    manifest.artifact_type = Some(CATALOG_ARTIFACT.to_owned());
    client
        .push(
            &reference,
            &layers,
            config,
            &RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await
        .map_err(|err| registry_error(&reference, err))?;
    client
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|err| registry_error(&reference, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        for registry in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in [
            "registry.example",
            "10.0.0.1:5000",
            "localhost.example:5000",
            "docker.io",
        ] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }

    #[test]
    fn references_are_checked() {
        assert!(reference("127.0.0.1:5000/catalogs/team:v1").is_ok());
        assert!(reference("bad ref").is_err());
        assert!(reference("a\u{1b}[31m").is_err());
        assert!(reference(&"a".repeat(600)).is_err());
    }
}
