//! `remote.oauth.grant = "token_exchange"` against the rest of the config:
//! it exchanges the calling client's access token, so the clients must
//! come with one, and one client name must be one person.

use super::{ConfigError, OauthConfig, RemoteGrant, ServerConfig, UpstreamSpec, Validator};

/// Claims that name an application, not a person: clients named by them
/// would share one user's identity at a server that acts as the user.
const APPLICATION_CLAIMS: &[&str] = &["client_id", "azp", "cid", "appid"];

pub(super) fn check(
    validator: &Validator<'_>,
    servers: &[ServerConfig],
    oauth: Option<&OauthConfig>,
) -> Result<(), ConfigError> {
    let Some(server) = servers.iter().find(|server| {
        matches!(&server.kind, UpstreamSpec::Remote(spec)
            if spec.oauth.as_ref().is_some_and(|o| o.grant == RemoteGrant::TokenExchange))
    }) else {
        return Ok(());
    };
    let key = format!("servers.{}.remote.oauth.grant", server.name);
    let Some(oauth) = oauth else {
        return Err(validator.error(
            None,
            &key,
            "\"token_exchange\" exchanges the calling client's access token from the identity provider: set up `[oauth]`".into(),
        ));
    };
    if let Some(provider) = oauth
        .providers
        .iter()
        .find(|provider| APPLICATION_CLAIMS.contains(&provider.client_claim.as_str()))
    {
        return Err(validator.error(
            None,
            &key,
            format!(
                "\"token_exchange\" acts as each client's user, but provider `{}` names clients by `{}`, an application shared by many users: name them by a person's claim (`sub`, `email`)",
                provider.name, provider.client_claim
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn load(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/portcullis/portcullis.toml")).map_err(|e| e.to_string())
    }

    const SERVER: &str = "[[servers]]\nname = \"crm\"\n[servers.remote]\nurl = \"https://crm.example.com/mcp\"\noauth = { token_endpoint = \"https://id.example.com/token\", client_id = \"proxy\", client_secret = \"secret:crm\", grant = \"token_exchange\" }\n[servers.secrets]\ncrm = \"env:CRM_SECRET\"\n";
    const OAUTH: &str = "[proxy]\nlisten = \"127.0.0.1:0\"\n[oauth]\nresource = \"https://proxy.example.com/mcp\"\n[[oauth.providers]]\nname = \"corp\"\nissuer = \"https://id.example.com\"\n";

    #[test]
    fn token_exchange_needs_clients_from_an_identity_provider() {
        let error = load(SERVER).unwrap_err();
        assert!(error.contains("servers.crm.remote.oauth.grant"), "{error}");
        assert!(error.contains("[oauth]"), "{error}");
        let config = load(&format!("{OAUTH}{SERVER}")).unwrap();
        let crate::config::UpstreamSpec::Remote(spec) = &config.servers[0].kind else {
            panic!("a remote server");
        };
        let oauth = spec.oauth.as_ref().unwrap();
        assert_eq!(oauth.grant, crate::config::RemoteGrant::TokenExchange);
    }

    #[test]
    fn token_exchange_refuses_clients_named_by_their_application() {
        let error = load(&format!("{OAUTH}client_claim = \"azp\"\n{SERVER}")).unwrap_err();
        assert!(error.contains("`azp`"), "{error}");
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
