//! What an access token costs per call (`[oauth]`), against the static
//! token's lookup in the same run: the proxy's `OauthVerifier` on a token
//! it has seen (remembered by hash: its key cached, nothing verified
//! again), and on a token it has not (the signature verified with the
//! cached key, the claims checked and mapped), for RS256 (2048-bit), ES256
//! and EdDSA. The issuer is served here on loopback (metadata and JWKS,
//! read once before the measurement); the tokens are signed here with
//! `ring` (the RSA key made by `openssl`).
//!
//! `cargo bench --bench identity` (options after `--`: `--iterations N` per
//! sample, default 100; `--samples N`, default 50).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use portcullis::config::{JwtAlgorithm, OauthConfig, ProviderConfig};
use portcullis::identity::OauthVerifier;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUDIENCE: &str = "https://mcp.example.com/mcp";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
enum Signer {
    Rsa(signature::RsaKeyPair),
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
}

impl Signer {
    fn alg(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RS256",
            Self::Ec(_) => "ES256",
            Self::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> Value {
        let kid = self.alg();
        match self {
            Self::Rsa(key) => {
                let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                       "n": b64(&public.n), "e": b64(&public.e)})
            }
            Self::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Self::Ed(key) => json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA",
                                    "x": b64(key.public_key().as_ref())}),
        }
    }

    /// A JWT with `claims`, signed.
    fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "kid": self.alg(), "typ": "at+jwt"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signed = match self {
            Self::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .unwrap();
                out
            }
            Self::Ec(key) => key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Self::Ed(key) => key.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signed))
    }
}

/// A 2048-bit RSA key from `openssl`, as PKCS#8 DER.
fn rsa_key(dir: &std::path::Path) -> signature::RsaKeyPair {
    let pem = dir.join("rsa.pem");
    let der = dir.join("rsa.der");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem.to_str().unwrap(),
        ],
        vec![
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-outform",
            "DER",
            "-in",
            pem.to_str().unwrap(),
            "-out",
            der.to_str().unwrap(),
        ],
    ] {
        let status = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl (the RS256 line needs it)");
        assert!(status.status.success(), "openssl {args:?} failed");
    }
    signature::RsaKeyPair::from_pkcs8(&std::fs::read(der).unwrap()).unwrap()
}

/// Serves the issuer's metadata and key set on loopback; its URL.
async fn serve_issuer(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let metadata = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
    let jwks = jwks.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (metadata, jwks) = (metadata.clone(), jwks.clone());
            tokio::spawn(async move {
                let mut request = vec![0; 4096];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..read]).into_owned();
                let body = if line.starts_with("GET /jwks") {
                    jwks
                } else {
                    metadata
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    issuer
}

fn verifier(issuer: &str) -> OauthVerifier {
    let provider = ProviderConfig {
        name: "bench".into(),
        issuer: issuer.into(),
        audiences: vec![AUDIENCE.into()],
        jwks_uri: None,
        algorithms: vec![
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
            JwtAlgorithm::EdDsa,
        ],
        leeway: Duration::from_secs(60),
        introspection: None,
        client_claim: "sub".into(),
        name_prefix: String::new(),
        groups_claim: Some("groups".into()),
        group_prefix: String::new(),
        attributes: BTreeMap::from([("email".into(), "email".into())]),
        scopes_claim: "scope".into(),
        web_client: None,
    };
    let config = OauthConfig {
        resource: AUDIENCE.into(),
        scopes: vec![],
        required_scopes: vec![],
        providers: vec![provider],
        egress: Default::default(),
    };
    OauthVerifier::new(config, HashSet::new()).unwrap()
}

fn main() {
    let (iterations, samples) = common::sampling_args(100, 50);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let ec = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref(),
        &rng,
    )
    .unwrap();
    let ed = signature::Ed25519KeyPair::from_pkcs8(
        signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let signers = [
        Signer::Rsa(rsa_key(dir.path())),
        Signer::Ec(ec),
        Signer::Ed(ed),
    ];
    let jwks = json!({"keys": signers.iter().map(Signer::jwk).collect::<Vec<_>>()});
    let issuer = runtime.block_on(serve_issuer(jwks));
    let verifier = verifier(&issuer);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |n: usize| {
        json!({"iss": issuer, "aud": AUDIENCE, "sub": format!("user-{n}"), "exp": now + 3600,
               "iat": now, "nbf": now, "scope": "mcp tools:read", "client_id": "bench",
               "groups": ["payroll", "staff"], "email": "user@example.com", "jti": n})
    };
    // Enough distinct tokens per algorithm that each timed call of the
    // "first seen" cases verifies one the verifier has not seen.
    let count = iterations * (samples + 10);
    let fresh: Vec<Vec<String>> = signers
        .iter()
        .map(|signer| (0..count).map(|n| signer.token(&claims(n))).collect())
        .collect();
    let seen: Vec<String> = signers
        .iter()
        .map(|signer| signer.token(&claims(usize::MAX / 2)))
        .collect();
    // The keys are read once, before anything is timed.
    for token in &seen {
        runtime
            .block_on(verifier.verify(token))
            .expect("a good token");
    }
    // The static token's lookup, as the proxy does it: the SHA-256 of the
    // presented token, in hex, looked up among the clients' hashes.
    let static_token = "a-static-token-of-forty-characters-long!";
    let hashes: HashMap<String, &str> = (0..50)
        .map(|n| (hex::encode(Sha256::digest(format!("token-{n}"))), "client"))
        .chain([(hex::encode(Sha256::digest(static_token)), "tester")])
        .collect();

    let next = std::cell::RefCell::new([0usize; 3]);
    let mut cases: Vec<common::Case> = vec![(
        "static token (SHA-256 + lookup), the baseline",
        Box::new(|| {
            runtime.block_on(async {
                let hash = hex::encode(Sha256::digest(static_token.as_bytes()));
                assert!(hashes.contains_key(&hash));
            });
        }),
    )];
    let labels = [
        (
            "RS256 token seen before (remembered)",
            "RS256 token first seen (signature verified)",
        ),
        (
            "ES256 token seen before (remembered)",
            "ES256 token first seen (signature verified)",
        ),
        (
            "EdDSA token seen before (remembered)",
            "EdDSA token first seen (signature verified)",
        ),
    ];
    for (at, (remembered, first)) in labels.into_iter().enumerate() {
        let (verifier, runtime, seen, fresh, next) = (&verifier, &runtime, &seen, &fresh, &next);
        cases.push((
            remembered,
            Box::new(move || {
                runtime.block_on(verifier.verify(&seen[at])).unwrap();
            }),
        ));
        cases.push((
            first,
            Box::new(move || {
                let mut next = next.borrow_mut();
                let token = &fresh[at][next[at] % fresh[at].len()];
                next[at] += 1;
                runtime.block_on(verifier.verify(token)).unwrap();
            }),
        ));
    }
    let rounds = common::best_of_rounds(&mut cases, 1, samples, iterations);
    let rows: Vec<&common::Stats> = rounds.iter().collect();
    common::print_table("token check per call", "p50 vs static", &rows, rows[0]);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    for row in &rows[1..] {
        println!(
            "{}: adds {:.1} µs per call (p50) over the static token",
            row.label,
            us(row.p50) - us(rows[0].p50)
        );
    }
}
