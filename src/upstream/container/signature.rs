//! Cosign signatures of the images servers run (Docker's
//! `--verify-signatures`), checked before a container is created: the
//! image's digest in its registry, the signature manifest cosign puts at
//! `REPOSITORY:sha256-<hex>.sig`, each of its simple-signing layers'
//! signatures (ECDSA P-256 over the layer's bytes, base64 DER in the
//! `dev.cosignproject.cosign/signature` annotation) against the operator's
//! keys, and what the signed payload names: this very digest (Docker's
//! gateway does not check it; a signature of another image does not pass
//! here).

use bollard::models::ImageInspect;
use futures_util::StreamExt as _;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde_json::Value;

use crate::config::{ContainerSpec, SignatureKey};

/// The media type of a cosign simple-signing layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// A payload is read up to this size.
const MAX_PAYLOAD: usize = 64 * 1024;
/// Signature layers looked at, at most.
const MAX_LAYERS: usize = 16;

/// The image's repository without its tag or digest (`registry/name`).
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    super::image::tag_of(image).map_or(image, |(name, _)| name)
}

/// The image's digest in its registry: the pinned one, or the one the
/// engine recorded when it pulled or pushed it.
fn registry_digest(spec: &ContainerSpec, image: &ImageInspect) -> Option<String> {
    if let Some(digest) = &spec.digest
        && image
            .repo_digests
            .iter()
            .flatten()
            .any(|repo| repo.ends_with(&format!("@{digest}")))
    {
        return Some(digest.clone());
    }
    let prefix = format!("{}@", repository(&spec.image));
    image
        .repo_digests
        .iter()
        .flatten()
        .find_map(|repo| repo.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// Checks that the image about to run is signed by one of the operator's
/// keys, for its own digest. `Ok` names the digest and the key.
pub async fn verify(
    spec: &ContainerSpec,
    image: &ImageInspect,
    keys: &[SignatureKey],
) -> Result<String, String> {
    let name = repository(&spec.image);
    let Some(digest) = registry_digest(spec, image) else {
        return Err(format!(
            "image `{}` must be signed, but the engine has no registry digest for `{name}` (a signed image is pulled from, or pushed to, its registry)",
            spec.image
        ));
    };
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!(
            "image `{}`: digest `{digest}` is not sha256",
            spec.image
        ));
    };
    let tag = format!("sha256-{hex}.sig");
    let reference: Reference = format!("{name}:{tag}")
        .parse()
        .map_err(|_| format!("image `{}`: `{name}` is not a repository", spec.image))?;
    let client = super::super::oci::client_for(&reference);
    let auth = RegistryAuth::Anonymous;
    let (manifest, _) = match client.pull_image_manifest(&reference, &auth).await {
        Ok(found) => found,
        Err(err) => {
            return Err(format!(
                "image `{}@{digest}` is not signed: no signature at `{name}:{tag}` ({})",
                spec.image,
                super::super::oci::shown(&err.to_string())
            ));
        }
    };
    let verifying: Vec<(&SignatureKey, VerifyingKey)> = keys
        .iter()
        .filter_map(|key| Some((key, VerifyingKey::from_public_key_pem(&key.pem).ok()?)))
        .collect();
    let mut by_our_keys_for_others = Vec::new();
    for layer in manifest
        .layers
        .iter()
        .filter(|layer| layer.media_type == SIMPLE_SIGNING)
        .take(MAX_LAYERS)
    {
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(SIGNATURE_ANNOTATION))
            .and_then(|text| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).ok()
            })
            .and_then(|der| Signature::from_der(&der).ok())
        else {
            continue;
        };
        let Some(payload) = read_payload(&client, &reference, layer)
            .await
            .map_err(|err| {
                format!(
                    "image `{}`: its signature cannot be read: {}",
                    spec.image,
                    super::super::oci::shown(&err)
                )
            })?
        else {
            continue;
        };
        let Some((key, _)) = verifying
            .iter()
            .find(|(_, verifying)| verifying.verify(&payload, &signature).is_ok())
        else {
            continue;
        };
        // Signed by the operator's key: for this very image?
        let signed = serde_json::from_slice::<Value>(&payload).ok();
        let signed_digest = signed
            .as_ref()
            .and_then(|p| p.pointer("/critical/image/docker-manifest-digest"))
            .and_then(Value::as_str);
        let kind = signed
            .as_ref()
            .and_then(|p| p.pointer("/critical/type"))
            .and_then(Value::as_str);
        // Signed for this repository too: a signature of another image of
        // the operator's (an older version, another tool) copied here does
        // not pass, even for the same digest under another name.
        let signed_for = signed
            .as_ref()
            .and_then(|p| p.pointer("/critical/identity/docker-reference"))
            .and_then(Value::as_str);
        if signed_for.is_some_and(|signed_for| signed_for != name) {
            by_our_keys_for_others.push(format!(
                "repository {}",
                super::super::oci::shown(signed_for.unwrap_or_default())
            ));
            continue;
        }
        if signed_digest == Some(digest.as_str())
            && kind == Some("cosign container image signature")
        {
            return Ok(format!("{digest} signed by {}", key.path.display()));
        }
        by_our_keys_for_others.push(
            signed_digest
                .map(|d| crate::protocol::cut(d, 80).escape_default().to_string())
                .unwrap_or_else(|| "no image".into()),
        );
    }
    if let Some(other) = by_our_keys_for_others.first() {
        return Err(format!(
            "image `{}@{digest}`: its signature by your key is for another image ({other}); refusing to start it",
            spec.image
        ));
    }
    Err(format!(
        "image `{}@{digest}` is not signed by any key of `[signatures] keys`; refusing to start it",
        spec.image
    ))
}

/// A signature layer's payload, checked against its digest; `None` when it
/// is too large or not what its digest says.
async fn read_payload(
    client: &oci_client::Client,
    reference: &Reference,
    layer: &oci_client::manifest::OciDescriptor,
) -> Result<Option<Vec<u8>>, String> {
    if usize::try_from(layer.size).map_or(true, |size| size > MAX_PAYLOAD) {
        return Ok(None);
    }
    let mut stream = client
        .pull_blob_stream(reference, &super::super::oci::registry_only(layer))
        .await
        .map_err(|err| err.to_string())?;
    let mut payload = Vec::new();
    while let Some(chunk) = stream.stream.next().await {
        payload.extend_from_slice(&chunk.map_err(|err| err.to_string())?);
        if payload.len() > MAX_PAYLOAD {
            return Ok(None);
        }
    }
    Ok((super::super::oci::sha256_digest(&payload) == layer.digest).then_some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_tags_and_digests() {
        assert_eq!(
            repository("127.0.0.1:5000/signed:v1"),
            "127.0.0.1:5000/signed"
        );
        assert_eq!(repository("127.0.0.1:5000/signed"), "127.0.0.1:5000/signed");
        assert_eq!(
            repository(&format!("registry.example/a/b@sha256:{}", "0".repeat(64))),
            "registry.example/a/b"
        );
        assert_eq!(repository("alpine:3"), "alpine");
    }
}
