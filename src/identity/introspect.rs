//! Opaque tokens: asked of the provider (RFC 7662 introspection, the
//! proxy authenticating as its own client), the answer kept for a short
//! while (never past the token's expiry) under the token's hash.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::TokenError;
use super::fetch;
use super::keys::KeySet;
use crate::config::IntrospectionConfig;
use crate::egress::HttpClient;

/// Answers kept at most (a full cache is emptied of what has expired, then
/// of everything).
const MAX_KEPT: usize = 10_000;

/// An answer kept: the token's claims (`None`: not active), and until when.
struct Kept {
    claims: Option<Map<String, Value>>,
    until: Instant,
}

pub(super) struct Introspection {
    config: IntrospectionConfig,
    kept: Mutex<HashMap<[u8; 32], Kept>>,
}

impl Introspection {
    pub fn new(config: IntrospectionConfig) -> Self {
        Self {
            config,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// The claims of an active token; an inactive one is refused.
    pub async fn claims(
        &self,
        keys: &KeySet,
        http: &HttpClient,
        token: &str,
        hash: [u8; 32],
        now: u64,
    ) -> Result<Map<String, Value>, TokenError> {
        if let Some(kept) = self.kept(&hash) {
            return kept.ok_or(TokenError::Inactive);
        }
        let endpoint = match &self.config.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => keys
                .endpoints()
                .await
                .map_err(TokenError::Unreachable)?
                .introspection
                .ok_or_else(|| {
                    TokenError::Unreachable(format!(
                        "the metadata of `{}` names no introspection_endpoint",
                        keys.provider.issuer
                    ))
                })?,
        };
        let secret = self.config.client_secret.resolve().map_err(|reason| {
            TokenError::Unreachable(format!("the introspection secret: {reason}"))
        })?;
        let request = fetch::request(http, reqwest::Method::POST, &endpoint)
            .map_err(TokenError::Unreachable)?
            .basic_auth(
                crate::config::form_encoded(&self.config.client_id),
                Some(crate::config::form_encoded(&secret)),
            )
            .form(&[("token", token), ("token_type_hint", "access_token")]);
        let answer = fetch::json(request, &endpoint)
            .await
            .map_err(TokenError::Unreachable)?;
        let claims = (answer.get("active") == Some(&Value::Bool(true))).then_some(answer);
        // Kept no longer than the token lives.
        let lives = claims
            .as_ref()
            .and_then(|claims| claims.get("exp"))
            .and_then(Value::as_u64)
            .map(|exp| Duration::from_secs(exp.saturating_sub(now)));
        let keep = lives.map_or(self.config.cache, |lives| lives.min(self.config.cache));
        self.keep(hash, claims.clone(), keep);
        claims.ok_or(TokenError::Inactive)
    }

    /// The `exp` (Unix seconds) of an active token whose answer is kept.
    pub(super) fn expiry(&self, hash: &[u8; 32]) -> Option<u64> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(hash)?.claims.as_ref()?.get("exp")?.as_u64()
    }

    /// How much longer the active answer kept for a token stands.
    pub(super) fn answer_lives(&self, hash: &[u8; 32]) -> Option<Duration> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let found = kept.get(hash).filter(|kept| kept.claims.is_some())?;
        Some(found.until.saturating_duration_since(Instant::now()))
    }

    fn kept(&self, hash: &[u8; 32]) -> Option<Option<Map<String, Value>>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(hash)
            .filter(|kept| kept.until > Instant::now())
            .map(|kept| kept.claims.clone())
    }

    fn keep(&self, hash: [u8; 32], claims: Option<Map<String, Value>>, keep: Duration) {
        if keep.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.retain(|_, kept| kept.until > now);
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
        }
        kept.insert(
            hash,
            Kept {
                claims,
                until: now + keep,
            },
        );
    }
}
