#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use super::*;
use crate::config::SecretRef;
use crate::egress::HttpClient;

const KEY: &str = "0001020304050607080900010203040506070809000102030405060708090001";
const PUBLIC: &str = "https://proxy.example";
const CALLBACK: &str = "https://proxy.example/oauth/callback";
/// The authorization server the operator's client was registered at.
const AS: &str = "https://as.example";

fn vault(root: &Path) -> Vault {
    let key = root.join("key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    Vault::open(
        &VaultConfig {
            keys: vec![SecretRef::File(key)],
            ..VaultConfig::default()
        },
        &root.join("data"),
    )
    .unwrap()
}

/// An authorization server that offers what is asked: documents,
/// registration (at an address nothing listens on: reaching it fails).
fn found(documents: bool, registration: bool, methods: &[&str]) -> Discovered {
    let base = "http://127.0.0.1:9";
    Discovered {
        url: format!("{base}/mcp"),
        resource: format!("{base}/mcp"),
        resource_metadata: format!("{base}/.well-known/oauth-protected-resource/mcp"),
        scopes: vec!["mcp".into()],
        issuer: "https://as.example".into(),
        issuer_metadata: "https://as.example/.well-known/oauth-authorization-server".into(),
        authorization_endpoint: "https://as.example/authorize".into(),
        token_endpoint: "https://as.example/token".into(),
        registration_endpoint: registration.then(|| format!("{base}/register")),
        revocation_endpoint: None,
        client_id_metadata_documents: documents,
        token_endpoint_auth_methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        iss_parameter: true,
        alias: None,
    }
}

fn http() -> HttpClient {
    crate::signin::test_http()
}

fn given(dir: &Path, secret: Option<&str>) -> WebClientConfig {
    WebClientConfig {
        client_id: "Iv1.hand-made".into(),
        client_secret: secret.map(|value| {
            let path = dir.join("client-secret");
            std::fs::write(&path, format!("{value}\n")).unwrap();
            SecretRef::File(path)
        }),
        auth_method: None,
    }
}

#[test]
fn the_document_names_its_own_url_and_the_callback_only() {
    let doc = document("https://proxy.example/");
    assert_eq!(doc["client_id"], "https://proxy.example/oauth/client");
    assert_eq!(doc["redirect_uris"], serde_json::json!([CALLBACK]));
    assert_eq!(doc["token_endpoint_auth_method"], "none");
    assert!(doc.get("client_secret").is_none());
    assert_eq!(
        doc["grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
}

#[tokio::test]
async fn the_operators_client_comes_first_then_the_document_then_a_registration() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path());
    let hand = given(dir.path(), Some("hand-secret-value"));
    let everything = found(true, true, &["client_secret_basic", "none"]);

    let ways = Ways {
        given: Some((&hand, AS)),
        public: Some(PUBLIC),
        offer_document: true,
    };
    let client = web_client(&vault, &http(), ("s", CALLBACK), &everything, ways)
        .await
        .unwrap();
    assert_eq!(client.client_id, "Iv1.hand-made");
    assert_eq!(client.client_secret.as_deref(), Some("hand-secret-value"));
    assert_eq!(client.auth_method, "client_secret_basic");
    assert_eq!(client.redirect_uri, CALLBACK);
    // Registered to send its secret in the form, as the operator says.
    let posting = WebClientConfig {
        auth_method: Some("client_secret_post".into()),
        ..hand.clone()
    };
    let ways = Ways {
        given: Some((&posting, AS)),
        public: Some(PUBLIC),
        offer_document: true,
    };
    let client = web_client(&vault, &http(), ("s", CALLBACK), &everything, ways)
        .await
        .unwrap();
    assert_eq!(client.auth_method, "client_secret_post");

    let ways = Ways {
        given: None,
        public: Some(PUBLIC),
        offer_document: true,
    };
    let client = web_client(&vault, &http(), ("s", CALLBACK), &everything, ways)
        .await
        .unwrap();
    assert_eq!(client.client_id, "https://proxy.example/oauth/client");
    assert_eq!(client.client_secret, None);
    assert_eq!(client.auth_method, "none");
    // Nothing kept: the document is the registration.
    assert!(
        vault
            .get_client::<Registration>("s", CALLBACK)
            .unwrap()
            .is_none()
    );

    // A server that takes documents but not public clients, or a proxy
    // without an https:// public URL: registration (which fails here,
    // nothing listens there).
    // So is one the operator keeps from documents (`client_document =
    // false`).
    for (offered, public, offer_document) in [
        (
            found(true, true, &["client_secret_basic"]),
            Some(PUBLIC),
            true,
        ),
        (everything.clone(), None, true),
        (everything.clone(), Some(PUBLIC), false),
    ] {
        let ways = Ways {
            given: None,
            public,
            offer_document,
        };
        let err = web_client(&vault, &http(), ("s", CALLBACK), &offered, ways)
            .await
            .unwrap_err();
        assert!(err.contains("registering with"), "{err}");
    }
}

#[tokio::test]
async fn a_server_offering_no_way_names_sign_in_client() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path());
    let ways = Ways {
        given: None,
        public: None,
        offer_document: true,
    };
    let err = web_client(
        &vault,
        &http(),
        ("s", CALLBACK),
        &found(true, false, &["none"]),
        ways,
    )
    .await
    .unwrap_err();
    assert!(err.contains("sign_in.client"), "{err}");
    assert!(err.contains("client ID metadata documents"), "{err}");
}

#[test]
fn the_operators_client_must_be_one_the_server_can_take() {
    let dir = tempfile::tempdir().unwrap();
    let hand = given(dir.path(), Some("s3"));
    let err = given_client(
        (&hand, AS),
        &found(false, false, &["private_key_jwt"]),
        CALLBACK,
    )
    .unwrap_err();
    assert!(err.contains("neither client_secret_basic"), "{err}");
    let public = given(dir.path(), None);
    let client = given_client(
        (&public, AS),
        &found(false, false, &["private_key_jwt"]),
        CALLBACK,
    )
    .unwrap();
    assert_eq!(client.auth_method, "none");
    assert_eq!(client.client_secret, None);
}

fn kept(client_id: &str, issuer: &str) -> Tokens {
    Tokens {
        access_token: "a".into(),
        refresh_token: Some("r".into()),
        expires_at: None,
        scopes: Vec::new(),
        issuer: issuer.into(),
        client_id: client_id.into(),
        resource: "https://mcp.example/mcp".into(),
        issuer_alias: None,
    }
}

#[test]
fn tokens_find_the_client_they_were_issued_to_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path());
    let hand = given(dir.path(), Some("hand-secret-value"));
    let found = found(true, true, &["client_secret_post", "none"]);
    let ways = Ways {
        given: Some((&hand, AS)),
        public: Some(PUBLIC),
        offer_document: true,
    };
    let issuer = found.issuer.clone();

    let client = registration(&vault, "s", &kept("Iv1.hand-made", &issuer), (&found, ways))
        .unwrap()
        .unwrap();
    // The secret read now, sent as the server takes it.
    assert_eq!(client.client_secret.as_deref(), Some("hand-secret-value"));
    assert_eq!(client.auth_method, "client_secret_post");

    let document = "https://proxy.example/oauth/client";
    let client = registration(&vault, "s", &kept(document, &issuer), (&found, ways))
        .unwrap()
        .unwrap();
    assert_eq!(
        (client.client_id.as_str(), client.auth_method.as_str()),
        (document, "none")
    );
    // Kept from new sign-ins (`client_document = false`): tokens issued
    // to it before are still its.
    let kept_from = Ways {
        offer_document: false,
        ..ways
    };
    let client = registration(&vault, "s", &kept(document, &issuer), (&found, kept_from))
        .unwrap()
        .unwrap();
    assert_eq!(client.client_id, document);
    // Learned through an alias, asked at the issuer itself (or the other
    // way): none, the refresh token stays where it was issued.
    let mut through_alias = kept(document, &issuer);
    through_alias.issuer_alias = Some("https://alias.example".into());
    assert!(
        registration(&vault, "s", &through_alias, (&found, ways))
            .unwrap()
            .is_none()
    );
    let mut at_alias = found.clone();
    at_alias.alias = Some("https://alias.example".into());
    assert!(
        registration(&vault, "s", &through_alias, (&at_alias, ways))
            .unwrap()
            .is_some()
    );
    assert!(
        registration(&vault, "s", &kept(document, &issuer), (&at_alias, ways))
            .unwrap()
            .is_none()
    );

    // Issued by another authorization server than the one asked: none.
    assert!(
        registration(
            &vault,
            "s",
            &kept("Iv1.hand-made", "https://elsewhere.example"),
            (&found, ways)
        )
        .unwrap()
        .is_none()
    );
    // A client id the proxy never had: none.
    assert!(
        registration(&vault, "s", &kept("someone-else", &issuer), (&found, ways))
            .unwrap()
            .is_none()
    );
    // The document no longer offered (no https:// public URL): none.
    let without = Ways {
        given: None,
        public: None,
        offer_document: true,
    };
    assert!(
        registration(&vault, "s", &kept(document, &issuer), (&found, without))
            .unwrap()
            .is_none()
    );
}

/// A server that names another authorization server than the one the
/// operator's client was registered at: the client (and its secret) is
/// not used there, for a link, a refresh or a revoke.
#[tokio::test]
async fn the_operators_client_goes_to_its_own_issuer_only() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault(dir.path());
    let hand = given(dir.path(), Some("hand-secret-value"));
    let mut elsewhere = found(true, true, &["client_secret_post", "none"]);
    elsewhere.issuer = "https://evil.example".into();
    let ways = Ways {
        given: Some((&hand, AS)),
        public: Some(PUBLIC),
        offer_document: true,
    };
    let err = web_client(&vault, &http(), ("s", CALLBACK), &elsewhere, ways)
        .await
        .unwrap_err();
    assert!(err.contains("its secret is not sent there"), "{err}");
    // Tokens a hostile server issued to a client it gave the operator's
    // client's id: not refreshed or revoked as the operator's client.
    let issued = kept("Iv1.hand-made", "https://evil.example");
    assert!(
        registration(&vault, "s", &issued, (&elsewhere, ways))
            .unwrap()
            .is_none()
    );
}

/// `sign_in.client_document = false`: the proxy is not known by its
/// document at that server (it registers instead), whatever `[vault]
/// public_url` offers.
#[test]
fn a_server_may_be_kept_from_the_document() {
    let vault = crate::config::VaultConfig {
        public_url: Some(PUBLIC.into()),
        ..crate::config::VaultConfig::default()
    };
    let remote = |client_document: bool| {
        let mut remote = crate::signin::test_remote(
            "https://mcp.example/mcp",
            crate::config::EgressConfig::default(),
        );
        if let Some(sign_in) = remote.sign_in.as_mut() {
            sign_in.client_document = client_document;
        }
        remote
    };
    let kept = remote(true);
    assert!(Ways::of(&kept, &vault).offer_document);
    let refused = remote(false);
    let ways = Ways::of(&refused, &vault);
    assert!(!ways.offer_document);
    // Tokens issued to the document before are still its.
    assert_eq!(ways.public, Some(PUBLIC));
}
