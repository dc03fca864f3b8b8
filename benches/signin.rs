//! What a user's own token costs a call to a `sign_in` server, against a
//! static `Authorization` header in the same run.
//!
//! A connection of a `sign_in` server gets its user's token from the
//! vault when it opens, when the token is due for renewal and every 30 s
//! (to notice a revoke) (`SignIns::current`: the entry's file read, its seal opened with
//! AES-256-GCM, its expiry checked), then sends the header it keeps, as a
//! connection with a static header sends that one. So the cases are: the
//! static header taken for a request (the baseline), the kept header taken
//! for a request (a lock read and a clone), and `SignIns::current` itself
//! (what a connection's start or renewal adds), on a real vault.
//!
//! `cargo bench --bench signin` (options after `--`: `--iterations N` per
//! sample, default 200; `--samples N`, default 50).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::{Arc, RwLock};

use portcullis::config::Config;
use portcullis::signin::SignIns;
use portcullis::signin::vault::{Tokens, Vault};
use reqwest::header::HeaderValue;

fn main() {
    let (iterations, samples) = common::sampling_args(200, 50);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vault.key");
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    let text = format!(
        "[proxy]\ndata_dir = {:?}\n\n[vault]\nkeys = [\"file:{}\"]\n\n[[servers]]\nname = \"a\"\nprocess = {{ command = \"x\" }}\n",
        dir.path().join("data").display().to_string(),
        key.display()
    );
    let config = Arc::new(Config::parse(&text, &dir.path().join("portcullis.toml")).unwrap());
    // A provider's JWT-sized token, valid for an hour: no refresh is due.
    let token = format!("eyJ{}", "x".repeat(900));
    let vault = Vault::of(&config).unwrap();
    vault
        .put(
            "github",
            "alice",
            &Tokens {
                access_token: token.clone(),
                refresh_token: Some("r".repeat(64)),
                expires_at: Some(portcullis::protocol::unix_now() + 3600),
                scopes: vec!["repo".into()],
                issuer: "https://github.com/login/oauth".into(),
                client_id: "portcullis".into(),
                resource: "https://api.githubcopilot.com/mcp/".into(),
                issuer_alias: None,
            },
        )
        .unwrap();
    let sign_ins = SignIns::new(config.clone());
    let remote = portcullis::config::RemoteSpec {
        url: "https://api.githubcopilot.com/mcp/".into(),
        transport: portcullis::config::RemoteTransport::default(),
        headers: Vec::new(),
        oauth: None,
        sign_in: Some(Box::new(portcullis::config::SignInSpec::listed_as("ops"))),
        learned: false,
        egress: config.egress.clone(),
    };

    let static_header = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    let kept = RwLock::new(static_header.clone());
    let mut cases: Vec<common::Case> = vec![
        (
            "static header, per request (the baseline)",
            Box::new(|| {
                std::hint::black_box(static_header.clone());
            }),
        ),
        (
            "user's token kept by its connection, per request",
            Box::new(|| {
                std::hint::black_box(kept.read().unwrap().clone());
            }),
        ),
        (
            "user's token from the vault (at a connection's start or renewal)",
            Box::new(|| {
                let current = runtime
                    .block_on(sign_ins.current("github", &remote, "alice"))
                    .unwrap();
                assert_eq!(current.access_token.len(), token.len());
            }),
        ),
    ];
    let rows = common::best_of_rounds(&mut cases, 3, samples, iterations);
    let refs: Vec<&common::Stats> = rows.iter().collect();
    common::print_table(
        "A user's token against a static header",
        "p50 vs static header",
        &refs,
        &rows[0],
    );
}
