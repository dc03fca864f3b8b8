//! `remote.oauth.grant = "token_exchange"` against the rest of the config:
//! it exchanges the calling client's access token, so the clients must
//! come with one from the provider named, and one client name must be one
//! person.

use super::{ConfigError, OauthConfig, RemoteGrant, ServerConfig, UpstreamSpec, Validator};

/// Claims that name one person: a client named by another (an
/// application's `client_id` or `azp`, a tenant, a role) would share one
/// user's connection and identity at a server that acts as the user.
const PERSON_CLAIMS: &[&str] = &["sub", "oid", "upn", "email"];

/// Checks every `token_exchange` server and sets its provider when the
/// config has only one.
pub(super) fn check(
    validator: &Validator<'_>,
    servers: &mut [ServerConfig],
    oauth: Option<&OauthConfig>,
) -> Result<(), ConfigError> {
    for server in servers {
        let UpstreamSpec::Remote(spec) = &mut server.kind else {
            continue;
        };
        let Some(exchange) = spec
            .oauth
            .as_mut()
            .filter(|o| o.grant == RemoteGrant::TokenExchange)
        else {
            continue;
        };
        let key = format!("servers.{}.remote.oauth", server.name);
        let Some(oauth) = oauth else {
            return Err(validator.error(
                None,
                &format!("{key}.grant"),
                "\"token_exchange\" exchanges the calling client's access token from the identity provider: set up `[oauth]`".into(),
            ));
        };
        let provider = match &exchange.provider {
            Some(name) => oauth
                .providers
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| {
                    validator.error(
                        None,
                        &format!("{key}.provider"),
                        format!("no `[[oauth.providers]]` is named `{name}`"),
                    )
                })?,
            None => match oauth.providers.as_slice() {
                [only] => only,
                _ => {
                    return Err(validator.error(
                        None,
                        &format!("{key}.provider"),
                        "several providers are configured: name the one whose users' tokens this token endpoint exchanges (no other provider's token is sent there)".into(),
                    ));
                }
            },
        };
        if !PERSON_CLAIMS.contains(&provider.client_claim.as_str()) {
            return Err(validator.error(
                None,
                &format!("{key}.grant"),
                format!(
                    "\"token_exchange\" acts as each client's user, but provider `{}` names clients by `{}`, which may be shared by several people: name them by `sub` (or `oid`, `upn`, `email`)",
                    provider.name, provider.client_claim
                ),
            ));
        }
        exchange.provider = Some(provider.name.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, RemoteGrant, UpstreamSpec};

    fn load(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/portcullis/portcullis.toml")).map_err(|e| e.to_string())
    }

    const SERVER: &str = "[[servers]]\nname = \"crm\"\n[servers.remote]\nurl = \"https://crm.example.com/mcp\"\noauth = { token_endpoint = \"https://id.example.com/token\", client_id = \"proxy\", client_secret = \"secret:crm\", grant = \"token_exchange\" }\n[servers.secrets]\ncrm = \"env:CRM_SECRET\"\n";
    const OAUTH: &str = "[proxy]\nlisten = \"127.0.0.1:0\"\n[oauth]\nresource = \"https://proxy.example.com/mcp\"\n[[oauth.providers]]\nname = \"corp\"\nissuer = \"https://id.example.com\"\n";
    const PARTNER: &str = "[[oauth.providers]]\nname = \"partner\"\nissuer = \"https://partner.example.com\"\nname_prefix = \"p:\"\ngroup_prefix = \"p:\"\n";

    fn provider_of(config: &Config) -> Option<String> {
        let UpstreamSpec::Remote(spec) = &config.servers[0].kind else {
            panic!("a remote server");
        };
        let oauth = spec.oauth.as_ref().unwrap();
        assert_eq!(oauth.grant, RemoteGrant::TokenExchange);
        oauth.provider.clone()
    }

    #[test]
    fn token_exchange_needs_clients_from_an_identity_provider() {
        let error = load(SERVER).unwrap_err();
        assert!(error.contains("servers.crm.remote.oauth.grant"), "{error}");
        assert!(error.contains("[oauth]"), "{error}");
        let config = load(&format!("{OAUTH}{SERVER}")).unwrap();
        assert_eq!(provider_of(&config).as_deref(), Some("corp"));
    }

    #[test]
    fn with_several_providers_the_exchanging_one_is_named() {
        let corp = format!("{OAUTH}name_prefix = \"c:\"\ngroup_prefix = \"c:\"\n{PARTNER}");
        let error = load(&format!("{corp}{SERVER}")).unwrap_err();
        assert!(
            error.contains("servers.crm.remote.oauth.provider"),
            "{error}"
        );
        let named = SERVER.replace("grant = ", "provider = \"partner\", grant = ");
        let config = load(&format!("{corp}{named}")).unwrap();
        assert_eq!(provider_of(&config).as_deref(), Some("partner"));
        let unknown = SERVER.replace("grant = ", "provider = \"nobody\", grant = ");
        let error = load(&format!("{corp}{unknown}")).unwrap_err();
        assert!(error.contains("`nobody`"), "{error}");
    }

    #[test]
    fn token_exchange_refuses_clients_named_by_a_shared_claim() {
        for claim in ["azp", "client_id", "clientId", "tid", "roles"] {
            let error = load(&format!("{OAUTH}client_claim = \"{claim}\"\n{SERVER}")).unwrap_err();
            assert!(error.contains(&format!("`{claim}`")), "{error}");
        }
        load(&format!("{OAUTH}client_claim = \"email\"\n{SERVER}")).unwrap();
    }

    #[test]
    fn an_unknown_grant_is_refused() {
        let error = load(&format!(
            "{OAUTH}{}",
            SERVER.replace("token_exchange", "password")
        ))
        .unwrap_err();
        assert!(error.contains("grant"), "{error}");
    }
}
