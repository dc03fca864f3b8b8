//! One provider's metadata and signing keys: discovered from its issuer
//! (OIDC discovery, then RFC 8414), the key set cached, read again when a
//! token names a key it does not hold (at most once per
//! [`MIN_REFRESH`]: a stream of made-up key ids cannot make the proxy
//! hammer the provider) and when it is older than [`MAX_AGE`] (so a key the
//! provider withdrew stops being taken).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;

use super::fetch;
use crate::config::{ProviderConfig, is_loopback, secure_url};
use crate::egress::HttpClient;

/// The least time between two reads of a key set for a key id already
/// looked for (and between reads after a failure).
pub(super) const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The least time between two reads for key ids never looked for before:
/// a key the provider just rotated in is found at once, and a stream of
/// made-up ids reads the set at most once a second.
pub(super) const MIN_REFRESH_NEW_KID: Duration = Duration::from_secs(1);
/// A key set older than this is read again before it is used.
pub(super) const MAX_AGE: Duration = Duration::from_secs(300);
/// A key set this old is not used at all, even while its provider cannot
/// be reached: a key withdrawn during an outage stops being taken.
pub(super) const MAX_STALE: Duration = Duration::from_secs(3600);
/// Key ids looked for and not found, remembered at most.
const MAX_MISSED: usize = 1024;

/// A signing key of the provider's.
pub(super) struct Key {
    pub kid: Option<String>,
    /// The algorithm the key set says the key is for, if it says.
    alg: Option<String>,
    pub key: DecodingKey,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Key {
    /// Whether this key can check a signature by `alg`.
    fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let kind = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Kind::Rsa,
            ES256 => Kind::P256,
            ES384 => Kind::P384,
            EdDSA => Kind::Ed25519,
            _ => return false,
        };
        self.kind == kind
            && self
                .alg
                .as_deref()
                .is_none_or(|named| named == alg_name(alg))
    }

    /// A signing key of a key set, if it is one the proxy can use.
    fn of(jwk: &Jwk) -> Option<Self> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Kind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Kind::P256,
                EllipticCurve::P384 => Kind::P384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => Kind::Ed25519,
                _ => return None,
            },
            // Shared keys (`oct`) are never taken.
            _ => return None,
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|alg| serde_json::to_value(alg).ok())
            .and_then(|alg| alg.as_str().map(str::to_owned));
        Some(Self {
            kid: jwk.common.key_id.clone(),
            alg,
            key: DecodingKey::from_jwk(jwk).ok()?,
            kind,
        })
    }
}

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|alg| alg.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The endpoints as far as they are known, and when to read them next.
enum Found {
    Never,
    Read(Endpoints, Instant),
    Failed(String, Instant),
}

/// Where the provider's key set and introspection endpoint are.
#[derive(Clone, Default)]
pub(super) struct Endpoints {
    pub jwks_uri: Option<String>,
    pub introspection: Option<String>,
}

struct Held {
    keys: Arc<Vec<Arc<Key>>>,
    fetched: Option<Instant>,
    /// The last read that failed, for [`MIN_REFRESH`].
    tried: Option<Instant>,
    /// Key ids a read was made for and did not find.
    missed: std::collections::HashSet<String>,
}

/// A provider's endpoints and keys, read when needed.
pub(super) struct KeySet {
    pub provider: ProviderConfig,
    http: HttpClient,
    endpoints: Mutex<Found>,
    held: RwLock<Held>,
    /// One read at a time.
    reading: Mutex<()>,
}

/// Why no key checks a token.
pub(super) enum KeyError {
    /// The provider publishes no key of that id (and algorithm).
    Unknown,
    /// The provider could not be read.
    Unreachable(String),
}

impl KeySet {
    pub fn new(provider: ProviderConfig, http: HttpClient) -> Self {
        Self {
            provider,
            http,
            endpoints: Mutex::new(Found::Never),
            held: RwLock::new(Held {
                keys: Arc::default(),
                fetched: None,
                tried: None,
                missed: Default::default(),
            }),
            reading: Mutex::new(()),
        }
    }

    /// The key that checks a token signed with `alg` under `kid`.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, KeyError> {
        let (found, fresh) = self.lookup(kid, alg);
        if let Some(key) = found {
            if fresh {
                return Ok(key);
            }
            // A stale set is read again by one request; the others go on
            // with the key held rather than wait for the provider.
            let Ok(_reading) = self.reading.try_lock() else {
                return Ok(key);
            };
            if !self.may_read(kid) {
                return Ok(key);
            }
            return match self.read(kid).await {
                // Withdrawn since: no longer taken.
                Ok(()) => self.lookup(kid, alg).0.ok_or(KeyError::Unknown),
                Err(reason) if self.too_stale() => Err(KeyError::Unreachable(reason)),
                Err(_) => Ok(key),
            };
        }
        let _reading = self.reading.lock().await;
        // Another request may have read the set meanwhile.
        let (found, fresh) = self.lookup(kid, alg);
        if let Some(key) = &found
            && fresh
        {
            return Ok(key.clone());
        }
        if !self.may_read(kid) {
            return found.ok_or_else(|| self.missing());
        }
        match self.read(kid).await {
            Ok(()) => self.lookup(kid, alg).0.ok_or(KeyError::Unknown),
            // Keys already held still serve while the provider is away,
            // for a while.
            Err(reason) => found.ok_or(KeyError::Unreachable(reason)),
        }
    }

    /// Why no key is found when none may be read now: the provider's keys
    /// were never read or are too old (it is away), or it has no such key.
    fn missing(&self) -> KeyError {
        if self.too_stale() {
            KeyError::Unreachable(format!(
                "the keys of `{}` could not be read (again) in time",
                self.provider.issuer
            ))
        } else {
            KeyError::Unknown
        }
    }

    /// Whether the keys held are too old to be used, whatever happens.
    fn too_stale(&self) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.fetched.is_none_or(|at| at.elapsed() >= MAX_STALE)
    }

    /// Whether the key of `kid` is still published (a token checked
    /// earlier with it is still good).
    pub fn holds(&self, kid: Option<&str>) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let fresh = held.fetched.is_some_and(|at| at.elapsed() < MAX_AGE);
        fresh && held.keys.iter().any(|key| key.kid.as_deref() == kid)
    }

    /// The key for `kid` and `alg` among those held, and whether the set is
    /// fresh. Without a `kid`, the one key that fits, if only one does.
    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> (Option<Arc<Key>>, bool) {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let fresh = held.fetched.is_some_and(|at| at.elapsed() < MAX_AGE);
        // Keys this old are not used at all, whatever else happens.
        if held.fetched.is_none_or(|at| at.elapsed() >= MAX_STALE) {
            return (None, false);
        }
        let mut fitting = held
            .keys
            .iter()
            .filter(|key| key.fits(alg) && (kid.is_none() || key.kid.as_deref() == kid));
        let found = match (fitting.next(), fitting.next()) {
            (Some(key), None) => Some(key.clone()),
            _ => None,
        };
        (found, fresh)
    }

    /// Whether a read is allowed now: never read; or the last read (or
    /// failure) is [`MIN_REFRESH`] old; or, for a key id not looked for
    /// before (after a successful read), [`MIN_REFRESH_NEW_KID`] old.
    fn may_read(&self, kid: Option<&str>) -> bool {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        if let Some(tried) = held.tried
            && tried.elapsed() < MIN_REFRESH
        {
            return false;
        }
        let Some(fetched) = held.fetched else {
            return true;
        };
        let new = kid.is_some_and(|kid| !held.missed.contains(kid));
        let wait = if new {
            MIN_REFRESH_NEW_KID
        } else {
            MIN_REFRESH
        };
        fetched.elapsed() >= wait
    }

    /// Reads the key set (its URL from the config or the metadata), for a
    /// token that named `kid`.
    async fn read(&self, kid: Option<&str>) -> Result<(), String> {
        let result = async {
            let uri = match &self.provider.jwks_uri {
                Some(uri) => uri.clone(),
                None => self
                    .endpoints()
                    .await?
                    .jwks_uri
                    .ok_or_else(|| format!("the metadata of `{}` names no jwks_uri", self.provider.issuer))?,
            };
            let set = fetch::json(fetch::request(&self.http, reqwest::Method::GET, &uri)?, &uri).await?;
            let Some(Value::Array(entries)) = set.get("keys") else {
                return Err(format!("{uri} is not a JSON Web Key Set"));
            };
            let keys: Vec<Arc<Key>> = entries
                .iter()
                .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
                .filter_map(|jwk| Key::of(&jwk).map(Arc::new))
                .collect();
            tracing::info!(provider = %self.provider.name, keys = keys.len(), "read the identity provider's keys");
            Ok(keys)
        }
        .await;
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(keys) => {
                // A key id looked for before and now published is new no
                // more; one still missing is remembered as looked for.
                held.missed
                    .retain(|missed| !keys.iter().any(|key| key.kid.as_deref() == Some(missed)));
                if let Some(kid) = kid
                    && !keys.iter().any(|key| key.kid.as_deref() == Some(kid))
                {
                    if held.missed.len() >= MAX_MISSED {
                        held.missed.clear();
                    }
                    held.missed.insert(kid.to_owned());
                }
                held.keys = Arc::new(keys);
                held.fetched = Some(Instant::now());
                held.tried = None;
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(provider = %self.provider.name, %reason, "cannot read the identity provider's keys");
                held.tried = Some(Instant::now());
                Err(reason)
            }
        }
    }

    /// The provider's endpoints from its metadata: read once it answers,
    /// again after [`MAX_AGE`]; a failure is the answer for
    /// [`MIN_REFRESH`] (requests do not queue behind a provider that is
    /// away).
    pub async fn endpoints(&self) -> Result<Endpoints, String> {
        let mut endpoints = self.endpoints.lock().await;
        let now = Instant::now();
        match &*endpoints {
            Found::Read(known, next) if now < *next => return Ok(known.clone()),
            Found::Failed(reason, next) if now < *next => return Err(reason.clone()),
            _ => {}
        }
        match self.metadata().await {
            Ok(read) => {
                *endpoints = Found::Read(read.clone(), Instant::now() + MAX_AGE);
                Ok(read)
            }
            Err(reason) => {
                let next = Instant::now() + MIN_REFRESH;
                // Endpoints read before still serve; asked again later.
                if let Found::Read(known, _) = &*endpoints {
                    let known = known.clone();
                    *endpoints = Found::Read(known.clone(), next);
                    return Ok(known);
                }
                *endpoints = Found::Failed(reason.clone(), next);
                Err(reason)
            }
        }
    }

    /// OIDC discovery, then RFC 8414; the metadata must name the issuer
    /// exactly as configured (else it is another provider's).
    async fn metadata(&self) -> Result<Endpoints, String> {
        let issuer = self.provider.issuer.trim_end_matches('/');
        let parsed = reqwest::Url::parse(issuer)
            .map_err(|_| format!("the issuer `{}` is not a URL", fetch::named(issuer)))?;
        let (origin, path) = fetch::origin_and_path(&parsed);
        let candidates = [
            format!("{issuer}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
        ];
        let mut reasons = Vec::new();
        for url in candidates {
            match fetch::json(
                fetch::request(&self.http, reqwest::Method::GET, &url)?,
                &url,
            )
            .await
            {
                Ok(metadata) => {
                    if metadata.get("issuer").and_then(Value::as_str) != Some(&self.provider.issuer)
                    {
                        return Err(format!(
                            "{url} names another issuer than `{}`",
                            self.provider.issuer
                        ));
                    }
                    // An https issuer's endpoints are https too: its
                    // metadata cannot send the proxy to a plain-HTTP
                    // service on this machine.
                    let remote = !reqwest::Url::parse(issuer).is_ok_and(|url| is_loopback(&url));
                    let text = |key: &str| {
                        metadata
                            .get(key)
                            .and_then(Value::as_str)
                            .filter(|url| {
                                secure_url(url) && (!remote || url.starts_with("https://"))
                            })
                            .map(str::to_owned)
                    };
                    return Ok(Endpoints {
                        jwks_uri: text("jwks_uri"),
                        introspection: text("introspection_endpoint"),
                    });
                }
                Err(reason) => reasons.push(reason),
            }
        }
        Err(reasons.join("; "))
    }
}
