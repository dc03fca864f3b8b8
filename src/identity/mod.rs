//! Clients identified by an access token from the organisation's identity
//! provider (`[oauth]`): the token checked (a JWT against its issuer's
//! keys, an opaque token by introspection), and its claims made the
//! client's Cedar identity.
//!
//! A JWT is taken only when every one of these holds: its issuer is a
//! configured provider (the `iss` it claims picks the provider, and is
//! checked again with the signature); its `alg` is one the provider allows
//! (never `none`, never HMAC) and fits the key; its key is one the issuer
//! publishes now; its signature verifies; `exp` is in the future and `nbf`
//! in the past (within the leeway); `aud` names one of the provider's
//! audiences (the proxy's resource, RFC 8707); the claims that name the
//! client are there and well formed; it carries the required scopes. A
//! token that passed is remembered under its hash until it expires, as
//! long as its key is still published: the next call costs a hash.

mod crypto;
mod fetch;
mod introspect;
mod keys;

use crate::protocol::unix_now;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::chain::{ClientIdentity, TokenFacts};
use crate::config::{JwtAlgorithm, OauthConfig, ProviderConfig};
use crate::egress::HttpClient;
use introspect::Introspection;
use keys::{KeyError, KeySet};

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is neither a JWT nor a token a provider here introspects")]
    Malformed,
    #[error("the token's issuer is not trusted here")]
    UnknownIssuer,
    #[error("the token's signature algorithm is not accepted")]
    Algorithm,
    #[error("the token's key is not one its issuer publishes")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token is not active")]
    Inactive,
    #[error("the token's `{0}` claim is missing or malformed")]
    Claim(String),
    #[error("the token names a client configured with its own credential")]
    Reserved,
    #[error("the token lacks a scope this resource requires")]
    InsufficientScope,
    #[error("the identity provider cannot be reached: {0}")]
    Unreachable(String),
}

impl TokenError {
    /// Whether the refusal may be a guess: the token is not one the
    /// provider vouches for. A token whose signature (or introspection)
    /// held but which has expired, is for another audience or names a
    /// client it may not is a real token, presented as OAuth clients do
    /// before they refresh: counting it would lock out the address of
    /// everyone behind one NAT.
    pub fn is_guess(&self) -> bool {
        matches!(
            self,
            Self::Malformed
                | Self::UnknownIssuer
                | Self::Algorithm
                | Self::UnknownKey
                | Self::Signature
                | Self::Inactive
        )
    }

    /// The reason in failure records: a fixed text per kind.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "token: malformed",
            Self::UnknownIssuer => "token: unknown issuer",
            Self::Algorithm => "token: algorithm refused",
            Self::UnknownKey => "token: unknown key",
            Self::Signature => "token: bad signature",
            Self::Expired => "token: expired",
            Self::NotYetValid => "token: not yet valid",
            Self::Audience => "token: wrong audience",
            Self::Inactive => "token: inactive",
            Self::Claim(_) => "token: bad claims",
            Self::Reserved => "token: names a configured client",
            Self::InsufficientScope => "token: insufficient scope",
            Self::Unreachable(_) => "identity provider unreachable",
        }
    }
}

/// Tokens remembered at most (a full memory is emptied of what has
/// expired, then of everything).
const MAX_REMEMBERED: usize = 10_000;
/// The longest client name or group a token may give.
const MAX_NAME: usize = 256;
/// The most groups or scopes a token may carry: more is refused, never cut
/// (a group cut off could be one a `forbid` names).
const MAX_ITEMS: usize = 256;

/// A token that passed, remembered.
struct Passed {
    identity: ClientIdentity,
    /// Unix seconds past which it is expired (its `exp` plus the leeway).
    until: u64,
    provider: usize,
    kid: Option<String>,
}

pub struct OauthVerifier {
    config: OauthConfig,
    providers: Vec<KeySet>,
    introspection: Option<(usize, Introspection)>,
    /// The names of `[[clients]]`: no token may name one of them.
    reserved: HashSet<String>,
    http: HttpClient,
    passed: Mutex<HashMap<[u8; 32], Passed>>,
}

impl OauthVerifier {
    /// A verifier for `config`'s providers; `reserved` are the names of the
    /// clients with their own credentials.
    pub fn new(config: OauthConfig, reserved: HashSet<String>) -> Result<Self, String> {
        crypto::install();
        let http = fetch::client(&config)?;
        let providers: Vec<KeySet> = config
            .providers
            .iter()
            .map(|provider| KeySet::new(provider.clone(), http.clone()))
            .collect();
        let introspection = config.providers.iter().enumerate().find_map(|(at, p)| {
            p.introspection
                .clone()
                .map(|config| (at, Introspection::new(config)))
        });
        Ok(Self {
            config,
            providers,
            introspection,
            reserved,
            http,
            passed: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &OauthConfig {
        &self.config
    }

    /// Whether `token` reads as a JWT of a provider here (not checked).
    pub fn names_a_provider(&self, token: &str) -> bool {
        Jwt::parse(token).is_some_and(|jwt| {
            self.config
                .providers
                .iter()
                .any(|p| Some(&p.issuer) == jwt.issuer.as_ref())
        })
    }

    /// The identity a bearer token proves.
    pub async fn verify(&self, token: &str) -> Result<ClientIdentity, TokenError> {
        self.verify_hashed(token, Sha256::digest(token.as_bytes()).into())
            .await
    }

    /// [`OauthVerifier::verify`] of a token whose SHA-256 the caller has
    /// already taken.
    pub async fn verify_hashed(
        &self,
        token: &str,
        hash: [u8; 32],
    ) -> Result<ClientIdentity, TokenError> {
        let now = unix_now();
        if let Some(identity) = self.remembered(&hash, now) {
            return Ok(identity);
        }
        match Jwt::parse(token) {
            Some(jwt) => self.verify_jwt(token, jwt, hash, now).await,
            None => self.verify_opaque(token, hash, now).await,
        }
    }

    async fn verify_jwt(
        &self,
        token: &str,
        jwt: Jwt,
        hash: [u8; 32],
        now: u64,
    ) -> Result<ClientIdentity, TokenError> {
        let at = self
            .config
            .providers
            .iter()
            .position(|p| Some(&p.issuer) == jwt.issuer.as_ref())
            .ok_or(TokenError::UnknownIssuer)?;
        let (Some(provider), Some(keys)) = (self.config.providers.get(at), self.providers.get(at))
        else {
            return Err(TokenError::UnknownIssuer);
        };
        let alg = JwtAlgorithm::of_name(&jwt.alg)
            .filter(|alg| provider.algorithms.contains(alg))
            .map(algorithm)
            .ok_or(TokenError::Algorithm)?;
        let key = keys
            .key(jwt.kid.as_deref(), alg)
            .await
            .map_err(|error| match error {
                KeyError::Unknown => TokenError::UnknownKey,
                KeyError::Unreachable(reason) => TokenError::Unreachable(reason),
            })?;
        let mut validation = Validation::new(alg);
        validation.leeway = provider.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_audience(&provider.audiences);
        validation.set_issuer(&[&provider.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                    TokenError::Claim(claim.clone())
                }
                _ => TokenError::Malformed,
            })?
            .claims;
        let identity = self.identity(provider, &claims)?;
        let until = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or(now)
            .saturating_add(provider.leeway.as_secs());
        self.remember(
            hash,
            Passed {
                identity: identity.clone(),
                until,
                provider: at,
                kid: key.kid.clone(),
            },
            now,
        );
        Ok(identity)
    }

    async fn verify_opaque(
        &self,
        token: &str,
        hash: [u8; 32],
        now: u64,
    ) -> Result<ClientIdentity, TokenError> {
        let Some((at, introspection)) = &self.introspection else {
            return Err(TokenError::Malformed);
        };
        let (Some(provider), Some(keys)) =
            (self.config.providers.get(*at), self.providers.get(*at))
        else {
            return Err(TokenError::Malformed);
        };
        let claims = introspection
            .claims(keys, &self.http, token, hash, now)
            .await?;
        let leeway = provider.leeway.as_secs();
        if claims
            .get("exp")
            .and_then(Value::as_u64)
            .is_some_and(|exp| exp.saturating_add(leeway) < now)
        {
            return Err(TokenError::Expired);
        }
        if claims
            .get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(issuer) = claims.get("iss")
            && issuer.as_str() != Some(provider.issuer.as_str())
        {
            return Err(TokenError::UnknownIssuer);
        }
        // The audience is required: a token the provider issued for another
        // resource must not open this one.
        let audiences = strings(claims.get("aud")).ok_or(TokenError::Audience)?;
        if !audiences.iter().any(|aud| provider.audiences.contains(aud)) {
            return Err(TokenError::Audience);
        }
        self.identity(provider, &claims)
    }

    /// The client the claims name, in its groups, with its attributes and
    /// scopes; refused if a required scope is missing.
    fn identity(
        &self,
        provider: &ProviderConfig,
        claims: &Map<String, Value>,
    ) -> Result<ClientIdentity, TokenError> {
        let claim = |name: &str| TokenError::Claim(name.to_owned());
        let named = claims
            .get(&provider.client_claim)
            .and_then(Value::as_str)
            .filter(|name| well_formed(name))
            .ok_or_else(|| claim(&provider.client_claim))?;
        let name = format!("{}{named}", provider.name_prefix);
        if self.reserved.contains(&name) {
            return Err(TokenError::Reserved);
        }
        let groups = match &provider.groups_claim {
            None => Vec::new(),
            Some(key) => match claims.get(key) {
                // Too many groups for the token (Entra ID's "overage": the
                // claim is left out and named in `_claim_names`): what the
                // client is in cannot be told, so it is refused rather than
                // taken as in no group.
                None if overage(claims, key) => return Err(claim(key)),
                None => Vec::new(),
                Some(value) => strings(Some(value))
                    .filter(|groups| {
                        groups.len() <= MAX_ITEMS && groups.iter().all(|g| well_formed(g))
                    })
                    .ok_or_else(|| claim(key))?
                    .into_iter()
                    .map(|group| format!("{}{group}", provider.group_prefix))
                    // In a stable order: a refreshed token listing the same
                    // groups otherwise is the same client.
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            },
        };
        let mut attributes = Map::new();
        for (attribute, key) in &provider.attributes {
            if let Some(value) = claims.get(key) {
                if !attribute_value(value, 0) {
                    return Err(claim(key));
                }
                attributes.insert(attribute.clone(), value.clone());
            }
        }
        let scopes: Vec<Arc<str>> = match claims.get(&provider.scopes_claim) {
            None => Vec::new(),
            Some(Value::String(text)) => text.split_whitespace().map(Arc::from).collect(),
            Some(value) => strings(Some(value))
                .ok_or_else(|| claim(&provider.scopes_claim))?
                .into_iter()
                .map(Arc::from)
                .collect(),
        };
        if scopes.len() > MAX_ITEMS || !scopes.iter().all(|scope| well_formed(scope)) {
            return Err(claim(&provider.scopes_claim));
        }
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        let has = |wanted: &String| scopes.iter().any(|scope| **scope == **wanted);
        if !self.config.required_scopes.iter().all(has) {
            return Err(TokenError::InsufficientScope);
        }
        // Recorded as they are, so bounded as names are.
        let text = |key: &str| -> Result<Option<String>, TokenError> {
            match claims.get(key) {
                None => Ok(None),
                Some(Value::String(text)) if well_formed(text) => Ok(Some(text.clone())),
                Some(_) => Err(claim(key)),
            }
        };
        let (subject, client_id) = (text("sub")?, text("client_id")?);
        let client_id = match client_id {
            Some(id) => Some(id),
            None => text("azp")?,
        };
        let mut identity = ClientIdentity::new(&name, &groups).with_attributes(attributes);
        identity.token = Some(Arc::new(TokenFacts {
            provider: Arc::from(provider.name.as_str()),
            subject,
            client_id,
            scopes: scopes.into(),
        }));
        Ok(identity)
    }

    /// Until when (Unix seconds) a token just verified, by its SHA-256,
    /// is taken without asking again: a JWT's `exp` (with the leeway), an
    /// introspected token's cached answer.
    pub fn good_until(&self, hash: &[u8; 32]) -> Option<u64> {
        self.passed_until(hash).or_else(|| {
            let (_, introspection) = self.introspection.as_ref()?;
            let left = introspection.answer_lives(hash)?;
            Some(unix_now().saturating_add(left.as_secs()))
        })
    }

    /// When (Unix seconds) a token just verified expires, with the leeway:
    /// what a stream opened with it lasts. `None` for an opaque token whose
    /// answer said no `exp`.
    pub fn expires(&self, hash: &[u8; 32]) -> Option<u64> {
        self.passed_until(hash).or_else(|| {
            let (at, introspection) = self.introspection.as_ref()?;
            let leeway = self.config.providers.get(*at)?.leeway.as_secs();
            Some(introspection.expiry(hash)?.saturating_add(leeway))
        })
    }

    /// The `exp` (with the leeway) of a JWT that passed, while remembered.
    fn passed_until(&self, hash: &[u8; 32]) -> Option<u64> {
        let passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        passed.get(hash).map(|found| found.until)
    }

    /// A token that passed before and still would: not expired, its key
    /// still published.
    fn remembered(&self, hash: &[u8; 32], now: u64) -> Option<ClientIdentity> {
        let passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        let found = passed.get(hash)?;
        (now <= found.until
            && (self.providers.get(found.provider))
                .is_some_and(|keys| keys.holds(found.kid.as_deref())))
        .then(|| found.identity.clone())
    }

    fn remember(&self, hash: [u8; 32], passed: Passed, now: u64) {
        let mut remembered = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, passed| passed.until >= now);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(hash, passed);
    }
}

/// The issuer a token names, read as a JWT is read before anything checks
/// it (`None` for an opaque token): for the fuzz targets.
#[doc(hidden)]
pub fn jwt_issuer(token: &str) -> Option<String> {
    Jwt::parse(token).and_then(|jwt| jwt.issuer)
}

/// What the proxy reads of a JWT before it checks it: which provider and
/// key to check it with. Nothing here is trusted until the signature is.
struct Jwt {
    alg: String,
    kid: Option<String>,
    issuer: Option<String>,
}

impl Jwt {
    /// `None` when the token is not three base64url parts whose first two
    /// are JSON objects (it is then an opaque token).
    fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let decode = |part: &str| -> Option<Map<String, Value>> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        let (header, payload) = (decode(header)?, decode(payload)?);
        let text = |map: &Map<String, Value>, key: &str| {
            map.get(key).and_then(Value::as_str).map(str::to_owned)
        };
        Some(Self {
            alg: text(&header, "alg").unwrap_or_default(),
            kid: text(&header, "kid"),
            issuer: text(&payload, "iss"),
        })
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Rs384 => Algorithm::RS384,
        JwtAlgorithm::Rs512 => Algorithm::RS512,
        JwtAlgorithm::Ps256 => Algorithm::PS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Es384 => Algorithm::ES384,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// A name or group a token may give: not empty, not too long, no control
/// characters.
fn well_formed(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_NAME && !text.chars().any(char::is_control)
}

/// A string, or an array of strings, as a list; `None` for anything else.
fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::String(text) => Some(vec![text.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// A claim that can be a Cedar attribute: a string (a name's bounds), an
/// integer, a boolean, or an array (of at most [`MAX_ITEMS`]) of those.
fn attribute_value(value: &Value, depth: usize) -> bool {
    match value {
        Value::String(text) => text.len() <= MAX_NAME && !text.chars().any(char::is_control),
        Value::Bool(_) => true,
        Value::Number(number) => number.is_i64(),
        Value::Array(items) => {
            depth == 0
                && items.len() <= MAX_ITEMS
                && items.iter().all(|item| attribute_value(item, depth + 1))
        }
        _ => false,
    }
}

/// Whether the token says its `key` claim was left out for being too
/// large (OIDC distributed claims, Entra ID's group overage).
fn overage(claims: &Map<String, Value>, key: &str) -> bool {
    claims
        .get("_claim_names")
        .and_then(Value::as_object)
        .is_some_and(|names| names.contains_key(key))
        || (key == "groups" && claims.get("hasgroups") == Some(&Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::config::{OauthConfig, ProviderConfig};

    fn provider() -> ProviderConfig {
        ProviderConfig {
            name: "corp".into(),
            issuer: "https://idp.example.com".into(),
            audiences: vec!["https://mcp.example.com/mcp".into()],
            jwks_uri: None,
            algorithms: vec![JwtAlgorithm::Rs256],
            leeway: Duration::from_secs(60),
            introspection: None,
            client_claim: "sub".into(),
            name_prefix: "corp:".into(),
            groups_claim: Some("groups".into()),
            group_prefix: "idp:".into(),
            attributes: BTreeMap::from([("email".into(), "email".into())]),
            scopes_claim: "scope".into(),
            web_client: None,
        }
    }

    fn verifier(required: &[&str], reserved: &[&str]) -> OauthVerifier {
        let config = OauthConfig {
            resource: "https://mcp.example.com/mcp".into(),
            scopes: vec![],
            required_scopes: required.iter().map(|s| (*s).to_owned()).collect(),
            providers: vec![provider()],
            egress: Default::default(),
        };
        let reserved: HashSet<String> = reserved.iter().map(|s| (*s).to_owned()).collect();
        OauthVerifier::new(config, reserved).expect("a verifier")
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn claims_name_the_client_its_groups_attributes_and_scopes() {
        let identity = verifier(&["mcp"], &[])
            .identity(
                &provider(),
                &claims(json!({
                    "sub": "alice", "groups": ["payroll", "staff"], "email": "a@example.com",
                    "scope": "mcp tools:write", "client_id": "vscode"
                })),
            )
            .expect("an identity");
        assert_eq!(&*identity.name, "corp:alice");
        let groups: Vec<&str> = identity.groups.iter().map(|g| &**g).collect();
        assert_eq!(groups, ["idp:payroll", "idp:staff"]);
        assert_eq!(identity.attributes["email"], "a@example.com");
        let token = identity.token.as_ref().expect("the token's facts");
        assert_eq!(&*token.provider, "corp");
        assert_eq!(token.client_id.as_deref(), Some("vscode"));
        let scopes: Vec<&str> = identity.scopes().iter().map(|s| &**s).collect();
        assert_eq!(scopes, ["mcp", "tools:write"]);
    }

    #[test]
    fn claims_that_cannot_be_held_whole_are_refused_never_cut() {
        let verifier = verifier(&[], &["corp:tester"]);
        let refused = |value: Value| verifier.identity(&provider(), &claims(value)).unwrap_err();
        let many: Vec<String> = (0..=MAX_ITEMS).map(|i| format!("g{i}")).collect();
        assert_eq!(
            refused(json!({"sub": "a", "groups": many})),
            TokenError::Claim("groups".into())
        );
        assert_eq!(
            refused(json!({"sub": "a", "groups": ["ok", 7]})),
            TokenError::Claim("groups".into())
        );
        assert_eq!(
            refused(json!({"sub": "a\nb"})),
            TokenError::Claim("sub".into())
        );
        assert_eq!(refused(json!({"sub": 42})), TokenError::Claim("sub".into()));
        assert_eq!(refused(json!({})), TokenError::Claim("sub".into()));
        assert_eq!(
            refused(json!({"sub": "a", "email": {"nested": true}})),
            TokenError::Claim("email".into())
        );
        // Too many groups to put in the token: refused, not taken as none.
        assert_eq!(
            refused(json!({"sub": "a", "_claim_names": {"groups": "src1"}})),
            TokenError::Claim("groups".into())
        );
        assert_eq!(
            refused(json!({"sub": "a", "hasgroups": true})),
            TokenError::Claim("groups".into())
        );
        assert_eq!(
            refused(json!({"sub": "a", "client_id": "x\u{7}"})),
            TokenError::Claim("client_id".into())
        );
        // A configured client's name cannot come from a token.
        assert_eq!(refused(json!({"sub": "tester"})), TokenError::Reserved);
    }

    #[test]
    fn a_token_without_a_required_scope_is_refused_as_such() {
        let verifier = verifier(&["mcp"], &[]);
        let result = verifier.identity(&provider(), &claims(json!({"sub": "a", "scope": "other"})));
        assert_eq!(result.unwrap_err(), TokenError::InsufficientScope);
        let listed = verifier.identity(&provider(), &claims(json!({"sub": "a", "scope": ["mcp"]})));
        assert!(listed.is_ok(), "{listed:?}");
    }

    #[test]
    fn only_three_json_parts_are_read_as_a_jwt() {
        use base64::Engine as _;
        let part = |value: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let header = part(json!({"alg": "RS256", "kid": "k1"}));
        let payload = part(json!({"iss": "https://idp.example.com"}));
        let jwt = Jwt::parse(&format!("{header}.{payload}.c2ln")).expect("a JWT");
        assert_eq!(
            (jwt.alg.as_str(), jwt.kid.as_deref()),
            ("RS256", Some("k1"))
        );
        assert_eq!(jwt.issuer.as_deref(), Some("https://idp.example.com"));
        assert!(Jwt::parse("an-opaque-token").is_none());
        assert!(Jwt::parse(&format!("{header}.{payload}.sig.extra")).is_none());
        assert!(Jwt::parse("not.json.parts").is_none());
    }
}
