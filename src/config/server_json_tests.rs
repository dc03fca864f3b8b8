use serde_json::json;

use super::*;

fn values<'a>(config: &'a BTreeMap<String, String>, secrets: &'a [String]) -> Values<'a> {
    Values { config, secrets }
}

/// The shape GitHub publishes: an OCI package whose runtime argument sets
/// the token by `-e`, and a remote taking it as `Authorization`.
fn github() -> ServerJson {
    ServerJson::parse(&json!({
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": "io.github.github/github-mcp-server",
        "description": "Connect AI assistants to GitHub",
        "version": "0.30.1",
        "packages": [{
            "registryType": "oci",
            "identifier": "ghcr.io/github/github-mcp-server:0.30.1",
            "transport": {"type": "stdio"},
            "runtimeArguments": [
                {"type": "named", "name": "-i"},
                {"type": "named", "name": "--rm"},
                {"type": "named", "name": "-e", "value": "GITHUB_PERSONAL_ACCESS_TOKEN={token}",
                 "isRequired": true,
                 "variables": {"token": {"isRequired": true, "isSecret": true}}}
            ],
            "packageArguments": [
                {"type": "positional", "value": "stdio"},
                {"type": "named", "name": "--toolsets", "valueHint": "toolsets"}
            ],
            "environmentVariables": [
                {"name": "GITHUB_PERSONAL_ACCESS_TOKEN", "isRequired": true, "isSecret": true},
                {"name": "GITHUB_HOST", "default": "github.com"}
            ]
        }],
        "remotes": [{
            "type": "streamable-http",
            "url": "https://api.githubcopilot.com/mcp/",
            "headers": [{"name": "Authorization", "value": "Bearer {token}", "isRequired": true,
                         "variables": {"token": {"isSecret": true}}}]
        }]
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_oci_package_becomes_a_container_description() {
    let config = BTreeMap::from([("toolsets".to_owned(), "repos,issues".to_owned())]);
    let secrets = vec!["GITHUB_PERSONAL_ACCESS_TOKEN".to_owned()];
    let Resolved::Package(meta) = resolve(
        &github(),
        Some(RegistryUse::Package),
        &values(&config, &secrets),
    )
    .unwrap_or_else(|e| panic!("{e}")) else {
        panic!("not a package");
    };
    assert_eq!(
        meta.image.as_deref(),
        Some("ghcr.io/github/github-mcp-server:0.30.1")
    );
    assert_eq!(meta.command, ["stdio", "--toolsets", "repos,issues"]);
    assert_eq!(meta.secrets.len(), 1);
    assert_eq!(meta.secrets[0].env, "GITHUB_PERSONAL_ACCESS_TOKEN");
    assert_eq!(meta.env.len(), 1);
    assert_eq!(
        (meta.env[0].name.as_str(), meta.env[0].value.as_str()),
        ("GITHUB_HOST", "github.com")
    );
    // Both forms offered: the operator says which.
    let none = BTreeMap::new();
    let refused = resolve(&github(), None, &values(&none, &secrets)).unwrap_err();
    assert!(refused.contains("use = \"package\""), "{refused}");
    // A required secret the operator does not give is asked for by name,
    // when the container is described (`needs_secrets`).
    let Resolved::Package(meta) =
        resolve(&github(), Some(RegistryUse::Package), &values(&none, &[])).unwrap()
    else {
        panic!("not a package");
    };
    assert_eq!(meta.secrets[0].env, "GITHUB_PERSONAL_ACCESS_TOKEN");
}

#[test]
fn a_remote_gets_the_operators_secret_as_its_header() {
    let none = BTreeMap::new();
    let secrets = vec!["token".to_owned()];
    let resolved = resolve(
        &github(),
        Some(RegistryUse::Remote),
        &values(&none, &secrets),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Resolved::Remote {
        url,
        transport,
        headers,
    } = resolved
    else {
        panic!("not a remote");
    };
    assert_eq!(url, "https://api.githubcopilot.com/mcp/");
    assert_eq!(transport, RemoteKind::StreamableHttp);
    assert_eq!(headers["Authorization"], "Bearer secret:token");
    let refused = resolve(&github(), Some(RegistryUse::Remote), &values(&none, &[])).unwrap_err();
    assert!(refused.contains("needs the secret `token`"), "{refused}");
}

fn remote(value: Value) -> ServerJson {
    ServerJson::parse(&json!({
        "name": "com.example/remote", "version": "1.0.0", "description": "d",
        "remotes": [value]
    }))
    .unwrap()
}

#[test]
fn a_remotes_hostile_asks_are_refused() {
    let none = BTreeMap::new();
    let secrets = vec!["X_Api_Key".to_owned(), "key".to_owned()];
    let values = values(&none, &secrets);
    for (transport, why) in [
        // The operator's secret in clear to another machine.
        (
            json!({"type": "streamable-http", "url": "http://203.0.113.9/mcp",
                   "headers": [{"name": "X-Api-Key", "isSecret": true, "isRequired": true}]}),
            "in clear",
        ),
        // Headers that would change where or how requests go.
        (
            json!({"type": "streamable-http", "url": "https://x.example/mcp",
                   "headers": [{"name": "Host", "value": "internal"}]}),
            "may not set",
        ),
        (
            json!({"type": "streamable-http", "url": "https://x.example/mcp",
                   "headers": [{"name": "Mcp-Session-Id", "value": "s"}]}),
            "may not set",
        ),
        (
            json!({"type": "streamable-http", "url": "https://x.example/mcp",
                   "headers": [{"name": "Bad\nName", "value": "s"}]}),
            "may not set",
        ),
        // A secret inside a value, or in the URL.
        (
            json!({"type": "streamable-http", "url": "https://x.example/mcp",
                   "headers": [{"name": "X-Auth", "value": "k={key};v=1",
                                "variables": {"key": {"isSecret": true}}}]}),
            "inside",
        ),
        (
            json!({"type": "streamable-http", "url": "https://x.example/mcp?key={key}",
                   "variables": {"key": {"isSecret": true}}}),
            "where a secret cannot go",
        ),
        // A header naming one of the operator's secrets by itself.
        (
            json!({"type": "streamable-http", "url": "https://x.example/mcp",
                   "headers": [{"name": "X-Auth", "value": "secret:key"}]}),
            "names a secret",
        ),
        // A URL variable the operator has not set.
        (
            json!({"type": "streamable-http", "url": "https://{tenant}.example/mcp",
                   "variables": {"tenant": {"isRequired": true}}}),
            "no value",
        ),
        (
            json!({"type": "websocket", "url": "wss://x.example"}),
            "offers",
        ),
    ] {
        let refused = resolve(&remote(transport.clone()), None, &values)
            .err()
            .unwrap_or_default();
        assert!(refused.contains(why), "{transport}: {refused}");
    }
    // A loopback remote may take a secret over http://, and a header's own
    // name says which secret when it has no value.
    let Resolved::Remote { headers, .. } = resolve(
        &remote(json!({"type": "sse", "url": "http://127.0.0.1:9/sse",
                       "headers": [{"name": "X-Api-Key", "isSecret": true}]})),
        None,
        &values,
    )
    .unwrap_or_else(|e| panic!("{e}")) else {
        panic!("not a remote");
    };
    assert_eq!(headers["X-Api-Key"], "secret:X_Api_Key");
}

fn package(package: Value) -> ServerJson {
    ServerJson::parse(&json!({
        "name": "com.example/local", "version": "1.0.0", "description": "d",
        "packages": [package]
    }))
    .unwrap()
}

/// An OCI package over stdio, with `extra` keys.
fn oci(extra: Value) -> ServerJson {
    let mut value = json!({"registryType": "oci", "identifier": "example/local:1",
                           "transport": {"type": "stdio"}});
    if let (Some(value), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        value.extend(extra.clone());
    }
    package(value)
}

#[test]
fn a_packages_hostile_asks_are_refused() {
    let config = BTreeMap::from([("path".to_owned(), "/data".to_owned())]);
    let secrets = vec!["API_KEY".to_owned()];
    let values = values(&config, &secrets);
    for (server, why) in [
        (
            oci(
                json!({"runtimeArguments": [{"type": "named", "name": "--network", "value": "host"}]}),
            ),
            "`--network host`",
        ),
        (
            oci(json!({"runtimeArguments": [{"type": "positional", "value": "--privileged"}]})),
            "`--privileged`",
        ),
        (
            oci(json!({"runtimeArguments": [{"type": "named", "name": "-v", "value": "/:/host"}]})),
            "`-v /:/host`",
        ),
        (
            oci(
                json!({"packageArguments": [{"type": "named", "name": "--key", "isSecret": true}]}),
            ),
            "command line",
        ),
        (
            oci(
                json!({"environmentVariables": [{"name": "API_KEY", "isSecret": true, "value": "literal"}]}),
            ),
            "value of its own",
        ),
        (
            oci(json!({"environmentVariables": [{"name": "MODE", "isRequired": true}]})),
            "config",
        ),
        (
            oci(
                json!({"environmentVariables": [{"name": "MODE", "value": "x", "choices": ["a", "b"]}]}),
            ),
            "one of",
        ),
        (
            oci(json!({"environmentVariables": [{"name": "BAD-NAME", "value": "x"}]})),
            "not a valid name",
        ),
        (
            oci(json!({"packageArguments": [{"type": "positional", "value": "{{x.y}}"}]})),
            "{{",
        ),
        (
            oci(
                json!({"transport": {"type": "streamable-http", "url": "http://localhost:8080/mcp"}}),
            ),
            "stdio only",
        ),
        (
            package(
                json!({"registryType": "npm", "identifier": "@x/y", "version": "1.0.0",
                           "transport": {"type": "stdio"}}),
            ),
            "a npm package",
        ),
    ] {
        let refused = resolve(&server, None, &values).err().unwrap_or_default();
        assert!(refused.contains(why), "{why}: {refused}");
    }
    // The older schema: the version apart, the registry by its URL.
    let Resolved::Package(meta) = resolve(
        &package(json!({"registryType": "oci", "registryBaseUrl": "https://ghcr.io",
                        "identifier": "example/local", "version": "1.2.3",
                        "transport": {"type": "stdio"},
                        "packageArguments": [{"type": "positional", "valueHint": "path"},
                                             {"type": "named", "name": "--verbose", "isRequired": true}]})),
        None,
        &values,
    )
    .unwrap_or_else(|e| panic!("{e}")) else {
        panic!("not a package");
    };
    assert_eq!(meta.image.as_deref(), Some("ghcr.io/example/local:1.2.3"));
    assert_eq!(meta.command, ["/data", "--verbose"]);
}

#[test]
fn values_are_filled_once_and_bounded() {
    let none = BTreeMap::new();
    let values = values(&none, &[]);
    // A variable's own value is taken as written: `{v1}` in it stays.
    let mut variables = BTreeMap::new();
    variables.insert(
        "v0".to_owned(),
        Input {
            value: Some("{v1}{v1}".into()),
            ..Input::default()
        },
    );
    variables.insert(
        "v1".to_owned(),
        Input {
            value: Some("x".repeat(1000)),
            ..Input::default()
        },
    );
    assert_eq!(
        fill("a{v0}b{missing}", &variables, &values)
            .unwrap()
            .as_deref(),
        Some("a{v1}{v1}b{missing}")
    );
    // Many uses of one large value: refused past the bound, never built.
    let text = "{v1}".repeat(100);
    let refused = fill(&text, &variables, &values).unwrap_err();
    assert!(refused.contains("fills to over 16 KiB"), "{refused}");
}

#[test]
fn flags_headers_choices_and_urls_are_held_to_their_forms() {
    let config = BTreeMap::from([("x".to_owned(), "v".to_owned())]);
    let secrets = vec!["token".to_owned()];
    let values = values(&config, &secrets);
    for (server, why) in [
        (
            oci(
                json!({"packageArguments": [{"type": "named", "name": "--x={{srv.k|or:D}}", "isRequired": true}]}),
            ),
            "is not a flag",
        ),
        (
            oci(json!({"packageArguments": [{"type": "named", "name": "x", "value": "1"}]})),
            "is not a flag",
        ),
        (
            oci(
                json!({"runtimeArguments": [{"type": "named", "name": "-e", "value": "MODE=evil", "choices": ["a"]}]}),
            ),
            "one of",
        ),
        (
            remote(
                json!({"type": "streamable-http", "url": "https://x.example/mcp",
                          "headers": [{"name": "Mcp-Method", "value": "tools/call"}]}),
            ),
            "may not set",
        ),
        (
            remote(
                json!({"type": "streamable-http", "url": "https://x.example/mcp",
                          "headers": [{"name": "X-Forwarded-Host", "value": "internal"}]}),
            ),
            "may not set",
        ),
        (
            remote(
                json!({"type": "streamable-http", "url": "https://api.example.com@evil.example/mcp"}),
            ),
            "without a user name",
        ),
    ] {
        let refused = resolve(&server, None, &values).err().unwrap_or_default();
        assert!(refused.contains(why), "{why}: {refused}");
    }
}

#[test]
fn environment_that_would_redirect_the_server_is_refused_at_launch() {
    let none = BTreeMap::new();
    for name in [
        "LD_PRELOAD",
        "GOPROXY",
        "GIT_CONFIG_COUNT",
        "NPM_CONFIG_REGISTRY",
        "PIP_INDEX_URL",
        "HTTPS_PROXY",
    ] {
        let server = package(
            json!({"registryType": "oci", "identifier": "example/local:1",
            "transport": {"type": "stdio"},
            "runtimeArguments": [{"type": "named", "name": "-e", "value": format!("{name}=x")}]}),
        );
        let Resolved::Package(meta) = resolve(&server, None, &values(&none, &[])).unwrap() else {
            panic!("not a package");
        };
        let refused = crate::config::catalog::launch(
            &meta,
            &crate::config::catalog::Operator::default(),
            &crate::config::sandbox::Sandbox::default(),
        )
        .unwrap_err();
        assert!(refused.contains("elsewhere"), "{name}: {refused}");
    }
}
