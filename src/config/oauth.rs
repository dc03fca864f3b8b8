//! `[oauth]`: clients that prove who they are with an access token from
//! the organisation's OAuth 2.1 / OIDC provider, beside the static tokens
//! of `[[clients]]`. The proxy is then an OAuth protected resource for
//! `/mcp` (RFC 9728 metadata, `WWW-Authenticate` challenges); each
//! `[[oauth.providers]]` entry names an authorization server it trusts and
//! how its tokens' claims become a Cedar identity.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::names::is_identifier;
use super::secrets::SecretRef;
use super::values::{DurationText, SecretText};
use super::{ConfigError, Entry, Validator, parse_duration};

/// The signature algorithms a provider's JWTs may use. HMAC is never one:
/// a proxy that holds only public keys cannot check a shared-key signature,
/// and taking a public key as an HMAC key is the classic forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwtAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Es256,
    Es384,
    EdDsa,
}

impl JwtAlgorithm {
    pub const ALL: &'static [Self] = &[
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Es256,
        Self::Es384,
        Self::EdDsa,
    ];

    /// The name JOSE gives it (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn of_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|alg| alg.name() == name)
    }
}

/// `[oauth]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OauthConfig {
    /// The URL clients reach `/mcp` at: the metadata's `resource`, and the
    /// audience every token must name unless a provider says otherwise.
    pub resource: String,
    /// Scopes the metadata advertises, asked for on a 401.
    pub scopes: Vec<String>,
    /// Scopes every token must carry: one without them gets 403
    /// `insufficient_scope`.
    pub required_scopes: Vec<String>,
    pub providers: Vec<ProviderConfig>,
    /// `[egress]`, which the connections to the providers are guarded by.
    pub egress: super::EgressConfig,
}

/// One authorization server the proxy trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Names it in records and logs.
    pub name: String,
    /// Its issuer identifier: the `iss` of its tokens, and where its
    /// metadata is found (RFC 8414 / OIDC discovery).
    pub issuer: String,
    /// The `aud` a token must carry one of.
    pub audiences: Vec<String>,
    /// Its key set; found in its metadata when not set.
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    /// Tolerance for `exp` and `nbf`.
    pub leeway: Duration,
    /// RFC 7662 introspection for tokens that are not JWTs.
    pub introspection: Option<IntrospectionConfig>,
    /// The claim that names the client (`Client::"…"`).
    pub client_claim: String,
    /// Put before that name: keeps two providers' subjects (and the
    /// `[[clients]]`' names) apart.
    pub name_prefix: String,
    /// The claim listing the client's groups (`Group::"…"`), if any.
    pub groups_claim: Option<String>,
    /// Put before each group's name.
    pub group_prefix: String,
    /// Cedar attribute of the client → the claim it comes from.
    pub attributes: BTreeMap<String, String>,
    /// The claim holding the token's scopes (a space-separated string or an
    /// array).
    pub scopes_claim: String,
    /// The proxy's own client at the provider for a person's browser, if
    /// the operator registered one (else it registers itself, where the
    /// provider offers dynamic registration).
    pub web_client: Option<WebClientConfig>,
}

/// The client the proxy is at a provider for a person's browser: at a
/// sign-in link, the person signs in to the proxy with it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebClientConfig {
    pub client_id: String,
    /// None: a public client (PKCE only).
    pub client_secret: Option<SecretRef>,
    /// How it authenticates at the token endpoint, where the operator
    /// says (`client_secret_basic` or `client_secret_post`, as registered);
    /// else the first of those the authorization server lists.
    pub auth_method: Option<String>,
}

/// How the proxy asks a provider whether an opaque token is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// Its introspection endpoint; found in its metadata when not set.
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// How long an answer is kept (never past the token's `exp`).
    pub cache: Duration,
}

/// `[oauth]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOauth {
    /// The URL clients reach `/mcp` at (`https://mcp.example.com/mcp`): the
    /// `resource` of the proxy's protected resource metadata, and the
    /// audience tokens must name (RFC 8707) unless a provider lists others.
    #[schemars(with = "String")]
    resource: Spanned<String>,
    /// Scopes the metadata advertises and a 401 asks for.
    #[serde(default)]
    scopes: Vec<String>,
    /// Scopes every token must carry; one without them gets 403
    /// `insufficient_scope` naming them.
    #[serde(default)]
    required_scopes: Vec<String>,
    /// The authorization servers whose tokens the proxy takes, one entry
    /// each.
    #[schemars(with = "Vec<RawProvider>")]
    providers: Vec<Spanned<RawProvider>>,
}

/// One `[[oauth.providers]]` entry as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    /// Its name in records and logs: letters, digits, `-`, `_`.
    name: String,
    /// Its issuer identifier, exactly as its tokens' `iss` and its metadata
    /// say (`https://idp.example.com/realms/acme`); `https://` unless on
    /// loopback.
    issuer: String,
    /// The `aud` values a token may carry (one is enough).
    #[schemars(extend("x-default" = "`[oauth] resource`"))]
    audiences: Option<Vec<String>>,
    /// Its JSON Web Key Set; read from its metadata
    /// (`/.well-known/openid-configuration` or
    /// `/.well-known/oauth-authorization-server`) when not set.
    jwks_uri: Option<String>,
    /// The JWT signature algorithms taken (`RS256`, `RS384`, `RS512`,
    /// `PS256`, `ES256`, `ES384`, `EdDSA`); never `none` nor HMAC.
    #[schemars(
        with = "Option<Vec<String>>",
        extend("x-default" = "`[\"RS256\", \"ES256\", \"EdDSA\"]`")
    )]
    algorithms: Option<Vec<Spanned<String>>>,
    /// Clock skew tolerated on `exp` and `nbf`; at most `5m`.
    #[schemars(with = "Option<DurationText>", extend("default" = "60s"))]
    leeway: Option<Spanned<String>>,
    /// RFC 7662 token introspection, for tokens that are not JWTs.
    introspection: Option<RawIntrospection>,
    /// The claim whose value names the client: policies see
    /// `Client::"<name_prefix><value>"`.
    #[schemars(extend("default" = "sub"))]
    client_claim: Option<String>,
    /// Put before the client's name. Required (and different) when several
    /// providers are configured, so that their subjects never meet.
    #[serde(default)]
    name_prefix: String,
    /// The claim listing the client's groups (an array of strings, or one
    /// string): each is `Group::"<group_prefix><group>"`.
    groups_claim: Option<String>,
    /// Put before each group's name.
    #[serde(default)]
    group_prefix: String,
    /// Cedar attributes of the client taken from claims: `{ email =
    /// "email" }`. The schema must declare them; a token without the claim
    /// leaves the attribute out.
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// The claim holding the token's scopes (a space-separated string or an
    /// array): policies read them as `context.scopes`.
    #[schemars(extend("default" = "scope"))]
    scopes_claim: Option<String>,
    /// The proxy's client at this provider for a person's browser, with
    /// `PUBLIC_URL/oauth/callback` as its redirect URI: a person who opens
    /// a sign-in link given to one of this provider's users signs in to the
    /// proxy with it first, and goes on only as that user. Unset: the
    /// proxy registers itself (RFC 7591) where the provider offers it.
    web_client: Option<RawWebClient>,
}

/// `web_client = { … }` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebClient {
    /// The client's id at the provider.
    client_id: String,
    /// Its client secret; unset for a public client (PKCE alone).
    #[schemars(with = "Option<SecretText>")]
    client_secret: Option<String>,
}

/// `introspection = { … }` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntrospection {
    /// The introspection endpoint; read from the provider's metadata when
    /// not set.
    endpoint: Option<String>,
    /// The proxy's client id at the provider.
    client_id: String,
    /// Its client secret.
    #[schemars(with = "SecretText")]
    client_secret: String,
    /// How long an answer is kept (never past the token's expiry); at most
    /// `5m`, since a revoked token stays usable that long.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    cache: Option<Spanned<String>>,
}

/// Whether `url` is `https://`, or `http://` to a loopback host (tests,
/// a provider on the same machine); never with a user or password in it
/// (`http://localhost@elsewhere/` goes elsewhere).
pub fn secure_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return false;
    }
    match parsed.scheme() {
        "https" => parsed.host().is_some(),
        "http" => is_loopback(&parsed),
        _ => false,
    }
}

/// Whether the URL's host is this machine.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RawOauth {
    pub(super) fn validate(self, v: &Validator<'_>) -> Result<OauthConfig, ConfigError> {
        let resource = self.resource.get_ref().trim().to_owned();
        if !secure_url(&resource) || resource.contains('#') {
            return Err(v.error(
                Some(self.resource.span()),
                "oauth.resource",
                "must be the https:// URL clients reach /mcp at (http:// only on loopback), without a fragment".into(),
            ));
        }
        for (key, scopes) in [
            ("oauth.scopes", &self.scopes),
            ("oauth.required_scopes", &self.required_scopes),
        ] {
            if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
                return Err(v.error(
                    None,
                    key,
                    format!("`{bad}` is not a scope (printable ASCII, no space, `\"` or `\\`)"),
                ));
            }
        }
        if self.providers.is_empty() {
            return Err(v.error(
                None,
                "oauth.providers",
                "name at least one authorization server (`[[oauth.providers]]`)".into(),
            ));
        }
        let several = self.providers.len() > 1;
        let mut names = HashSet::new();
        let mut prefixes: Vec<(&str, String)> = Vec::new();
        let providers = v.each(self.providers, "oauth.providers", |at, raw| {
            let provider = raw.validate(at, &resource)?;
            if !names.insert(provider.name.clone()) {
                return Err(at.error(".name", "two providers have this name".into()));
            }
            if several {
                for (key, prefix) in [
                    ("name_prefix", &provider.name_prefix),
                    ("group_prefix", &provider.group_prefix),
                ] {
                    // No prefix may begin another (`corp:` and `corp:x:`
                    // would let `corp:`'s `x:bob` be `corp:x:`'s `bob`).
                    let clash = prefix.is_empty()
                        || prefixes.iter().any(|(k, other): &(&str, String)| {
                            *k == key && (other.starts_with(prefix.as_str()) || prefix.starts_with(other.as_str()))
                        });
                    if clash {
                        return Err(at.error(
                            &format!(".{key}"),
                            format!("with several providers, each needs its own `{key}` (`\"corp:\"`), none the beginning of another's, so that one provider's subjects and groups can never be another's"),
                        ));
                    }
                    prefixes.push((key, prefix.clone()));
                }
            }
            Ok(provider)
        })?;
        if providers
            .iter()
            .filter(|provider| provider.introspection.is_some())
            .count()
            > 1
        {
            return Err(v.error(
                None,
                "oauth.providers",
                "at most one provider may introspect tokens: an opaque token says nothing of its issuer, and would be shown to every provider in turn".into(),
            ));
        }
        Ok(OauthConfig {
            resource,
            scopes: self.scopes,
            required_scopes: self.required_scopes,
            providers,
            // Given by `[egress]` once the whole config is read.
            egress: super::EgressConfig::default(),
        })
    }
}

/// A scope token as RFC 6749 allows it (and one that needs no escaping in
/// a `WWW-Authenticate` quoted string).
pub(super) fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl RawProvider {
    fn validate(self, at: &Entry<'_>, resource: &str) -> Result<ProviderConfig, ConfigError> {
        let v = at.validator;
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at.error(
                ".name",
                "a provider's name uses letters, digits, `-` and `_`".into(),
            ));
        }
        if !secure_url(&self.issuer) {
            return Err(at.error(
                ".issuer",
                "the issuer must be an https:// URL (http:// only on loopback)".into(),
            ));
        }
        if let Some(uri) = &self.jwks_uri
            && !secure_url(uri)
        {
            return Err(at.error(
                ".jwks_uri",
                "must be an https:// URL (http:// only on loopback)".into(),
            ));
        }
        let audiences = self.audiences.unwrap_or_else(|| vec![resource.to_owned()]);
        if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(at.error(
                ".audiences",
                "name at least one audience, none empty: a token for any audience would be taken"
                    .into(),
            ));
        }
        let algorithms = match self.algorithms {
            None => vec![
                JwtAlgorithm::Rs256,
                JwtAlgorithm::Es256,
                JwtAlgorithm::EdDsa,
            ],
            Some(names) => {
                let mut algorithms = Vec::new();
                for name in names {
                    let Some(alg) = JwtAlgorithm::of_name(name.get_ref()) else {
                        return Err(at.error_in(
                            name.span(),
                            ".algorithms",
                            format!(
                                "`{}` is not taken: one of RS256, RS384, RS512, PS256, ES256, ES384, EdDSA (never `none` or HMAC)",
                                name.get_ref()
                            ),
                        ));
                    };
                    algorithms.push(alg);
                }
                if algorithms.is_empty() {
                    return Err(at.error(".algorithms", "name at least one".into()));
                }
                algorithms
            }
        };
        let leeway = v
            .parsed(
                self.leeway.as_ref(),
                &format!("{}.leeway", at.key),
                parse_duration,
            )?
            .unwrap_or(Duration::from_secs(60));
        if leeway > MAX_LEEWAY {
            return Err(at.error(".leeway", "at most 5m".into()));
        }
        let introspection = self.introspection.map(|raw| raw.validate(at)).transpose()?;
        let web_client = self.web_client.map(|raw| raw.validate(at)).transpose()?;
        for (name, claim) in &self.attributes {
            if !is_identifier(name) || name == "name" {
                return Err(at.error(
                    &format!(".attributes.{name}"),
                    "attribute names are identifiers (letters, digits, `_`), and `name` is the client's own".into(),
                ));
            }
            if claim.is_empty() {
                return Err(at.error(&format!(".attributes.{name}"), "name a claim".into()));
            }
        }
        if self.name_prefix.chars().any(char::is_control)
            || self.group_prefix.chars().any(char::is_control)
        {
            return Err(at.error(".name_prefix", "no control characters".into()));
        }
        Ok(ProviderConfig {
            name: self.name,
            issuer: self.issuer,
            audiences,
            jwks_uri: self.jwks_uri,
            algorithms,
            leeway,
            introspection,
            client_claim: self.client_claim.unwrap_or_else(|| "sub".into()),
            name_prefix: self.name_prefix,
            groups_claim: self.groups_claim,
            group_prefix: self.group_prefix,
            attributes: self.attributes,
            scopes_claim: self.scopes_claim.unwrap_or_else(|| "scope".into()),
            web_client,
        })
    }
}

/// Whether `id` can be an OAuth client's id the proxy sends: 1 to 2048
/// printable ASCII characters, no space.
pub(super) fn client_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 2048 && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl RawWebClient {
    fn validate(self, at: &Entry<'_>) -> Result<WebClientConfig, ConfigError> {
        if !client_id_ok(&self.client_id) {
            return Err(at.error(
                ".web_client.client_id",
                "1 to 2048 printable ASCII characters, no space".into(),
            ));
        }
        let client_secret = self
            .client_secret
            .map(|secret| at.validator.secret_ref(&secret))
            .transpose()
            .map_err(|message| at.error(".web_client.client_secret", message))?;
        Ok(WebClientConfig {
            client_id: self.client_id,
            client_secret,
            auth_method: None,
        })
    }
}

const MAX_INTROSPECTION_CACHE: Duration = Duration::from_secs(300);

impl RawIntrospection {
    fn validate(self, at: &Entry<'_>) -> Result<IntrospectionConfig, ConfigError> {
        let v = at.validator;
        if let Some(endpoint) = &self.endpoint
            && !secure_url(endpoint)
        {
            return Err(at.error(
                ".introspection.endpoint",
                "must be an https:// URL (http:// only on loopback)".into(),
            ));
        }
        let client_secret = v
            .secret_ref(&self.client_secret)
            .map_err(|message| at.error(".introspection.client_secret", message))?;
        let cache = v
            .parsed(
                self.cache.as_ref(),
                &format!("{}.introspection.cache", at.key),
                parse_duration,
            )?
            .unwrap_or(Duration::from_secs(30));
        if cache > MAX_INTROSPECTION_CACHE {
            return Err(at.error(
                ".introspection.cache",
                "at most 5m: a revoked token stays usable as long as its answer is kept".into(),
            ));
        }
        Ok(IntrospectionConfig {
            endpoint: self.endpoint,
            client_id: self.client_id,
            client_secret,
            cache,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const HEAD: &str = "[proxy]\nlisten = \"127.0.0.1:8811\"\n[oauth]\nresource = \"https://mcp.example.com/mcp\"\n";
    const PROVIDER: &str =
        "[[oauth.providers]]\nname = \"corp\"\nissuer = \"https://idp.example.com/realms/acme\"\n";

    fn load(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/portcullis/portcullis.toml")).map_err(|e| e.to_string())
    }

    fn refused(text: &str, wanted: &str) {
        match load(text) {
            Ok(_) => panic!("taken: {text}"),
            Err(error) => assert!(error.contains(wanted), "{error}"),
        }
    }

    #[test]
    fn a_provider_takes_its_defaults() {
        let config = load(&format!("{HEAD}{PROVIDER}")).unwrap();
        let oauth = config.oauth.unwrap();
        let provider = &oauth.providers[0];
        assert_eq!(provider.audiences, ["https://mcp.example.com/mcp"]);
        assert_eq!(
            provider.algorithms,
            [
                JwtAlgorithm::Rs256,
                JwtAlgorithm::Es256,
                JwtAlgorithm::EdDsa
            ]
        );
        assert_eq!(provider.leeway, Duration::from_secs(60));
        assert_eq!(provider.client_claim, "sub");
        assert_eq!(provider.scopes_claim, "scope");
        assert!(provider.introspection.is_none());
    }

    #[test]
    fn hmac_and_none_are_never_algorithms() {
        for alg in ["HS256", "none", "rs256"] {
            refused(
                &format!("{HEAD}{PROVIDER}algorithms = [\"{alg}\"]\n"),
                "never `none` or HMAC",
            );
        }
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        refused(
            "[proxy]\nlisten = \"127.0.0.1:8811\"\n[oauth]\nresource = \"http://mcp.example.com/mcp\"\n[[oauth.providers]]\nname = \"a\"\nissuer = \"https://idp.example.com\"\n",
            "oauth.resource",
        );
        refused(
            &format!(
                "{HEAD}[[oauth.providers]]\nname = \"a\"\nissuer = \"http://idp.example.com\"\n"
            ),
            "https://",
        );
        assert!(
            load(&format!(
                "{HEAD}[[oauth.providers]]\nname = \"a\"\nissuer = \"http://127.0.0.1:9000\"\n"
            ))
            .is_ok()
        );
        assert!(secure_url("http://[::1]:9000/x"));
        assert!(!secure_url("http://127.0.0.1.evil.example/"));
    }

    #[test]
    fn a_web_client_has_a_plain_id_and_a_secret_reference() {
        let loaded = load(&format!(
            "{HEAD}{PROVIDER}web_client = {{ client_id = \"pw\", client_secret = \"env:S\" }}\n"
        ))
        .unwrap();
        let web = loaded.oauth.unwrap().providers[0]
            .web_client
            .clone()
            .unwrap();
        assert_eq!(web.client_id, "pw");
        assert!(web.client_secret.is_some());
        refused(
            &format!("{HEAD}{PROVIDER}web_client = {{ client_id = \"a b\" }}\n"),
            "web_client.client_id",
        );
        refused(
            &format!(
                "{HEAD}{PROVIDER}web_client = {{ client_id = \"pw\", client_secret = \"plain\" }}\n"
            ),
            "web_client.client_secret",
        );
    }

    #[test]
    fn several_providers_need_their_own_name_prefixes() {
        let second =
            "[[oauth.providers]]\nname = \"partner\"\nissuer = \"https://partner.example.com\"\n";
        let groups = |prefix: &str| format!("group_prefix = \"{prefix}\"\n");
        refused(&format!("{HEAD}{PROVIDER}{second}"), "name_prefix");
        refused(
            &format!(
                "{HEAD}{PROVIDER}name_prefix = \"x:\"\n{}{second}name_prefix = \"x:\"\n{}",
                groups("a:"),
                groups("b:")
            ),
            "name_prefix",
        );
        // One prefix the beginning of another's: `corp:`'s `x:bob` would be
        // `corp:x:`'s `bob`.
        refused(
            &format!(
                "{HEAD}{PROVIDER}name_prefix = \"corp:\"\n{}{second}name_prefix = \"corp:x:\"\n{}",
                groups("a:"),
                groups("b:")
            ),
            "name_prefix",
        );
        // Groups too: a partner's `payroll` is not ours.
        refused(
            &format!(
                "{HEAD}{PROVIDER}name_prefix = \"corp:\"\n{second}name_prefix = \"partner:\"\n{}",
                groups("p:")
            ),
            "group_prefix",
        );
        assert!(
            load(&format!(
                "{HEAD}{PROVIDER}name_prefix = \"corp:\"\n{}{second}name_prefix = \"partner:\"\n{}",
                groups("c:"),
                groups("p:")
            ))
            .is_ok()
        );
    }

    #[test]
    fn one_provider_at_most_introspects() {
        let introspection =
            "introspection = { client_id = \"p\", client_secret = \"env:SECRET\" }\n";
        let second = "[[oauth.providers]]\nname = \"partner\"\nissuer = \"https://partner.example.com\"\nname_prefix = \"p:\"\ngroup_prefix = \"p:\"\n";
        refused(
            &format!(
                "{HEAD}{PROVIDER}name_prefix = \"c:\"\ngroup_prefix = \"c:\"\n{introspection}{second}{introspection}"
            ),
            "at most one provider may introspect",
        );
        refused(
            &format!(
                "{HEAD}{PROVIDER}introspection = {{ client_id = \"p\", client_secret = \"literal\" }}\n"
            ),
            "client_secret",
        );
        refused(
            &format!(
                "{HEAD}{PROVIDER}introspection = {{ client_id = \"p\", client_secret = \"env:S\", cache = \"10m\" }}\n"
            ),
            "at most 5m",
        );
    }

    #[test]
    fn a_remote_servers_own_token_is_checked_as_written() {
        let server = |oauth: &str, extra: &str| {
            format!(
                "[[servers]]\nname = \"crm\"\nremote = {{ url = \"https://crm.example.com/mcp\", oauth = {{ {oauth} }}{extra} }}\nsecrets = {{ crm = \"env:CRM\" }}\n"
            )
        };
        let good = "token_endpoint = \"https://idp.example.com/token\", client_id = \"p\", client_secret = \"secret:crm\"";
        let config = load(&server(good, "")).unwrap();
        let crate::config::UpstreamSpec::Remote(remote) = &config.servers[0].kind else {
            panic!("a remote server");
        };
        let oauth = remote.oauth.as_ref().unwrap();
        assert_eq!(
            oauth.resource.as_deref(),
            Some("https://crm.example.com/mcp")
        );
        assert_eq!(oauth.client_secret, "crm");
        refused(
            &server(&good.replace("secret:crm", "secret:other"), ""),
            "client_secret",
        );
        refused(
            &server(&good.replace("secret:crm", "env:CRM"), ""),
            "client_secret",
        );
        refused(
            &server(&good.replace("https://idp", "http://idp"), ""),
            "token_endpoint",
        );
        refused(
            &server(good, ", headers = { Authorization = \"Bearer x\" }"),
            "sends the server's token as Authorization itself",
        );
    }

    #[test]
    fn oauth_needs_a_listener_and_a_provider() {
        refused(
            &format!("[oauth]\nresource = \"https://mcp.example.com/mcp\"\n{PROVIDER}"),
            "[proxy] listen",
        );
        refused(HEAD, "providers");
    }
}
