use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/portcullis/test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let config =
        parse("[[servers]]\nname = \"time\"\nprocess = { command = \"mcp-server-time\" }\n")
            .map_err(|e| e.to_string());
    let Ok(config) = config else {
        panic!("{config:?}");
    };
    assert_eq!(config.proxy.namespace_separator, "__");
    assert_eq!(config.proxy.call_timeout, Duration::from_secs(60));
    assert_eq!(config.limits.max_message_bytes, 4 * 1024 * 1024);
    assert_eq!(config.limits.max_depth, 64);
    assert_eq!(
        config.chain,
        vec![
            ChainEntry::Limits,
            ChainEntry::Pinning,
            ChainEntry::Schema,
            ChainEntry::Redact
        ]
    );
    assert!(config.redact.enabled);
    assert_eq!(config.pinning.file, config.proxy.data_dir.join("pins.json"));
    assert_eq!(
        config.proxy.data_dir,
        PathBuf::from("/etc/portcullis/.portcullis")
    );
}

#[test]
fn unknown_key_names_file_line_and_path() {
    let err = parse("[proxy]\nlisten = \"127.0.0.1:1\"\n\n[[servers]]\nname = \"a\"\nprocess = { command = \"x\", comand = \"y\" }\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("/etc/portcullis/test.toml:6:"), "{err}");
    assert!(err.contains("servers[0].process"), "{err}");
    assert!(err.contains("comand"), "{err}");
}

#[test]
fn bad_server_name_points_at_the_entry() {
    let err = parse("\n[[servers]]\nname = \"Bad__Name\"\nprocess = { command = \"x\" }\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(":2:"), "{err}");
    assert!(err.contains("servers[0].name"), "{err}");
}

#[test]
fn literal_secrets_and_bad_token_hashes_are_refused() {
    let err = parse(
        "[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\nsecrets = { K = \"hunter2\" }\n",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("file:PATH"), "{err}");
    let err = parse("[[clients]]\nname = \"c\"\ntoken_sha256 = \"my-token\"\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("hex SHA-256"), "{err}");
    assert!(
        !err.contains("my-token"),
        "the error must not echo the value: {err}"
    );
}

#[test]
fn container_servers_get_the_hardened_default() {
    let config = parse(
        "[[servers]]\nname = \"boxed\"\ncontainer = { image = \"img:1\", args = [\"-v\"] }\n",
    )
    .map_err(|e| e.to_string());
    let Ok(config) = config else {
        panic!("{config:?}");
    };
    let UpstreamSpec::Container(spec) = &config.servers[0].kind else {
        panic!("not a container server");
    };
    assert_eq!(spec.image, "img:1");
    assert_eq!(spec.start, StartPolicy::Lazy);
    assert_eq!(spec.pull, PullPolicy::Never);
    assert_eq!(spec.sandbox, Sandbox::default());
}

#[test]
fn container_mistakes_are_named() {
    for (text, expected) in [
        (
            "[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\n[servers.sandbox]\nmemory = \"1g\"\n",
            "applies to `container` servers only",
        ),
        (
            "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", isolation = \"tenant\" }\n",
            "unknown variant `tenant`, expected `shared` or `per-client`",
        ),
        (
            "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", digest = \"latest\" }\n",
            "not an image digest",
        ),
        (
            "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", stdio = \"fifo\" }\n",
            "needs `[proxy] bridge`",
        ),
        (
            "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\" }\n[servers.sandbox]\nmemory = \"1k\"\n",
            "at least 6m",
        ),
        (
            "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\" }\nprocess = { command = \"x\" }\n",
            "may have only one of",
        ),
    ] {
        let err = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn client_attributes_are_plain_values() {
    let config = parse(
        "[[clients]]\nname = \"c\"\nattributes = { team = \"data\", level = 3, admin = false, regions = [\"eu\"] }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        serde_json::Value::Object(config.clients[0].attributes.clone()),
        serde_json::json!({"admin": false, "level": 3, "regions": ["eu"], "team": "data"})
    );
    for bad in [
        "ratio = 0.5",
        "nested = { a = 1 }",
        "name = \"x\"",
        "\"bad-name\" = 1",
    ] {
        let text = format!("[[clients]]\nname = \"c\"\nattributes = {{ {bad} }}\n");
        let err = parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("clients[0].attributes"), "{bad}: {err}");
    }
}

#[test]
fn line_col_counts_characters_and_never_splits_one() {
    let text = "a = 1\nnamé = \"ü\" x\n";
    let x = text.find('x').unwrap_or(0);
    // "namé = \"ü\" " is 11 characters (13 bytes) before the `x`.
    assert_eq!(line_col(text, x), (2, 12));
    assert_eq!(line_col(text, 0), (1, 1));
    // An offset inside `é` is taken back to its start; past the end, to the end.
    let inside = text.find('é').unwrap_or(0) + 1;
    assert_eq!(line_col(text, inside), (2, 4));
    assert_eq!(line_col(text, text.len() + 10), (3, 1));
}

#[test]
fn fixed_words_are_refused_with_their_place_and_the_words_allowed() {
    for (text, expected) in [
        (
            "[[servers]]\nname = \"a\"\ncontainer = { image = \"i\", pull = \"always\" }\n",
            "/etc/portcullis/test.toml:3:35: `servers[0].container.pull`: unknown variant `always`, expected `never` or `missing`",
        ),
        (
            "[[servers]]\nname = \"a\"\n[servers.container]\nimage = \"i\"\nstart = \"soon\"\n",
            "/etc/portcullis/test.toml:5:9: `servers[0].container.start`: unknown variant `soon`, expected `lazy` or `eager`",
        ),
        (
            "[[servers]]\nname = \"a\"\n[servers.container]\nimage = \"i\"\nstdio = \"pipe\"\n",
            "/etc/portcullis/test.toml:5:9: `servers[0].container.stdio`: unknown variant `pipe`, expected `attach` or `fifo`",
        ),
        (
            "[[chain]]\nkind = \"wasm\"\npath = \"p.wasm\"\nphases = [\"request\", \"reply\"]\n",
            "/etc/portcullis/test.toml:4:22: `chain[0].phases[1]`: unknown variant `reply`, expected one of `request`, `response`, `notification`",
        ),
        (
            "[redact.rules.jwt]\naction = \"mask\"\n",
            "/etc/portcullis/test.toml:2:10: `redact.rules.jwt.action`: unknown variant `mask`, expected one of `redact`, `deny`, `log`, `off`",
        ),
    ] {
        let err = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, expected, "{text}");
    }
}

#[test]
fn a_reload_names_the_sections_that_wait_for_a_restart_and_only_those() {
    let server = "[[servers]]\nname = \"time\"\nprocess = { command = \"mcp-server-time\" }\n";
    let load = |text: &str| {
        parse(text)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let running = load(&format!("[proxy]\ncall_timeout = \"60s\"\n{server}"));
    // The same text read again: stable, nothing to restart.
    let again = load(&format!("[proxy]\ncall_timeout = \"60s\"\n{server}"));
    assert!(running.changes_needing_restart(&again).is_empty());
    // Servers are the reload's own: added, changed, removed.
    let servers = load(&format!(
        "[proxy]\ncall_timeout = \"60s\"\n{server}timeout = \"5s\"\n[[servers]]\nname = \"more\"\nprocess = {{ command = \"x\" }}\n"
    ));
    assert!(running.changes_needing_restart(&servers).is_empty());
    let none = load("[proxy]\ncall_timeout = \"60s\"\n");
    assert!(running.changes_needing_restart(&none).is_empty());
    // What is wired at start is named.
    let wired = load(&format!(
        "[proxy]\ncall_timeout = \"61s\"\n[limits]\nmax_depth = 10\n[[clients]]\nname = \"new\"\n{server}"
    ));
    assert_eq!(
        running.changes_needing_restart(&wired),
        ["proxy", "limits", "clients"]
    );
    // Where a value is written is no setting: a line added above moves it.
    let redact = "[redact]\ndisable = [\"generic-password\"]\n";
    let before = load(&format!("{redact}{server}"));
    let moved = load(&format!("# a comment\n\n{redact}{server}"));
    assert!(before.changes_needing_restart(&moved).is_empty());
    let other = load(&format!(
        "[redact]\ndisable = [\"generic-password\", \"jwt\"]\n{server}"
    ));
    assert_eq!(before.changes_needing_restart(&other), ["redact"]);
}

#[test]
fn audit_ship_needs_tls_beyond_this_machine_and_no_password_in_its_url() {
    let ship = |section: &str| {
        parse(&format!(
            "[[servers]]\nname = \"a\"\nprocess = {{ command = \"x\" }}\n[audit.ship]\n{section}"
        ))
        .map(|config| config.audit.ship)
        .map_err(|err| err.to_string())
    };
    let Ok(Some(local)) = ship(
        "to = \"postgres://log@127.0.0.1:5432/audit\"\npassword = \"env:PG\"\nreplica = \"r-1\"",
    ) else {
        panic!("a local database without TLS is taken");
    };
    assert_eq!(local.replica, "r-1");
    assert_eq!(local.batch, SHIP_BATCH);
    assert!(local.password.is_some());
    for (section, expected) in [
        (
            "to = \"postgres://log@db.example.com/audit\"",
            "ship over TLS",
        ),
        // A name is what the resolver says: only an address is local.
        ("to = \"postgres://log@localhost/audit\"", "ship over TLS"),
        // Query parameters count as the driver reads them.
        (
            "to = \"postgres://log@127.0.0.1/audit?host=db.example.com\"",
            "ship over TLS",
        ),
        (
            "to = \"postgres://log@127.0.0.1/audit?hostaddr=192.0.2.7\"",
            "ship over TLS",
        ),
        (
            "to = \"postgres://log@db.example.com/audit?sslmode=require&sslmode=prefer\"",
            "ship over TLS",
        ),
        (
            "to = \"postgres://log:hunter2@127.0.0.1/audit\"",
            "carries a password",
        ),
        (
            "to = \"mysql://log@127.0.0.1/audit\"",
            "not a `postgres://` URL",
        ),
        ("to = \"postgres://[::1/audit\"", "audit.ship.to"),
        (
            "to = \"postgres://log@127.0.0.1/a\"\nreplica = \"a b\"",
            "replica's name",
        ),
        (
            "to = \"postgres://log@127.0.0.1/a\"\nbatch = 0",
            "between 1 and 10000",
        ),
        (
            "to = \"postgres://log@127.0.0.1/a\"\npassword = \"hunter2\"",
            "audit.ship.password",
        ),
    ] {
        let err = ship(section).err().unwrap_or_default();
        assert!(err.contains(expected), "{section}: {err}");
        assert!(
            !err.contains("hunter2") || expected == "audit.ship.password",
            "{err}"
        );
    }
    let Ok(Some(remote)) = ship("to = \"postgres://log@db.example.com/audit?sslmode=require\"")
    else {
        panic!("a remote database over TLS is taken");
    };
    assert!(!remote.replica.is_empty(), "the host name by default");
}

#[test]
fn shared_quotas_need_tls_beyond_this_machine_and_no_password_in_the_url() {
    let shared = |section: &str| {
        parse(&format!(
            "[[servers]]\nname = \"a\"\nprocess = {{ command = \"x\" }}\n[ratelimit]\ndefault = \"5/min\"\n[ratelimit.shared]\n{section}"
        ))
        .map(|config| config.ratelimit.shared)
        .map_err(|err| err.to_string())
    };
    let Ok(Some(local)) = shared("redis = \"redis://127.0.0.1:6379/2\"\npassword = \"env:R\"")
    else {
        panic!("a local Redis is taken");
    };
    assert_eq!(local.on_unavailable, Unavailable::Refuse, "fails closed");
    assert_eq!(local.timeout, SHARED_TIMEOUT);
    assert_eq!(local.prefix, "portcullis");
    assert_eq!(local.lease, super::ratelimit::SHARED_LEASE);
    for (section, expected) in [
        (
            "redis = \"redis://127.0.0.1\"\nlease = \"500ms\"",
            "from 1s to 10min",
        ),
        (
            "redis = \"redis://127.0.0.1\"\nlease = \"1h\"",
            "from 1s to 10min",
        ),
        (
            "redis = \"redis://127.0.0.1\"\nlease = \"2s\"\ntimeout = \"1s\"",
            "four times `timeout`",
        ),
        ("redis = \"redis://cache.example.com:6379\"", "over TLS"),
        ("redis = \"redis://localhost:6379\"", "over TLS"),
        (
            "redis = \"redis://:hunter2@127.0.0.1:6379\"",
            "carries a password",
        ),
        (
            "redis = \"rediss://cache.example.com/#insecure\"",
            "insecure",
        ),
        ("redis = \"http://127.0.0.1\"", "not a Redis URL"),
        (
            "redis = \"redis://127.0.0.1\"\non_unavailable = \"open\"",
            "on_unavailable",
        ),
    ] {
        let err = shared(section).err().unwrap_or_default();
        assert!(err.contains(expected), "{section}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    for section in [
        "redis = \"rediss://cache.example.com:6380\"\non_unavailable = \"local\"",
        "redis = \"unix:///run/redis/redis.sock\"",
    ] {
        assert!(matches!(shared(section), Ok(Some(_))), "{section}");
    }
}

#[test]
fn a_servers_breaker_has_defaults_and_its_bad_values_are_refused_by_name() {
    let server = "[[servers]]\nname = \"s\"\nprocess = { command = \"x\" }\n";
    let Ok(config) = parse(server) else {
        panic!("the default breaker");
    };
    let breaker = config.servers.first().map(|s| s.breaker);
    assert_eq!(breaker, Some(BreakerConfig::default()));
    assert_eq!(
        BreakerConfig::default(),
        BreakerConfig {
            failures: 5,
            cool_down: Duration::from_secs(30)
        }
    );
    let set = parse(&format!(
        "{server}breaker = {{ failures = 0, cool_down = \"2m\" }}\n"
    ))
    .map_err(|e| e.to_string());
    let Ok(set) = set else {
        panic!("{set:?}");
    };
    assert_eq!(
        set.servers.first().map(|s| s.breaker),
        Some(BreakerConfig {
            failures: 0,
            cool_down: Duration::from_secs(120)
        })
    );
    for (written, key, says) in [
        (
            "failures = 10001",
            "servers[0].breaker.failures",
            "at most 10000",
        ),
        (
            "cool_down = \"0s\"",
            "servers[0].breaker.cool_down",
            "longer than zero",
        ),
        (
            "cool_down = \"2h\"",
            "servers[0].breaker.cool_down",
            "at most 1h",
        ),
        (
            "cool_down = \"soon\"",
            "servers[0].breaker.cool_down",
            "soon",
        ),
        ("failures = -1", "breaker", "failures"),
        ("trips = 3", "breaker", "trips"),
    ] {
        let err = parse(&format!("{server}breaker = {{ {written} }}\n"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{written}: {err}");
        assert!(err.contains(says), "{written}: {err}");
    }
}

#[test]
fn vault_keys_are_secret_references_kept_outside_data_dir() {
    let server = "[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\n";
    let config = parse(&format!(
        "[vault]\nkeys = [\"file:/etc/portcullis/vault.key\", \"env:OLD_VAULT_KEY\"]\n{server}"
    ))
    .unwrap();
    assert_eq!(
        config.vault.keys,
        [
            SecretRef::File(PathBuf::from("/etc/portcullis/vault.key")),
            SecretRef::Env("OLD_VAULT_KEY".into())
        ]
    );
    // Beside the tokens it seals: refused, with where it was written.
    let err = parse(&format!(
        "[proxy]\ndata_dir = \"/var/lib/portcullis\"\n\n[vault]\nkeys = [\"file:/var/lib/portcullis/vault.key\"]\n{server}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("vault.keys[0]") && err.contains("inside `[proxy] data_dir`"),
        "{err}"
    );
    let err = parse(&format!("[vault]\nkeys = [\"plain-text-key\"]\n{server}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vault.keys[0]"), "{err}");
    assert!(parse(server).unwrap().vault.keys.is_empty());
    // A vault every replica mounts: relative to the config's folder, and
    // the key kept out of it too.
    let config = parse(&format!(
        "[vault]\nkeys = [\"file:/etc/portcullis/vault.key\"]\ndir = \"shared/vault\"\n{server}"
    ))
    .unwrap();
    assert_eq!(
        config.vault.dir,
        Some(PathBuf::from("/etc/portcullis/shared/vault"))
    );
    let err = parse(&format!(
        "[vault]\nkeys = [\"file:/mnt/shared/vault/vault.key\"]\ndir = \"/mnt/shared/vault\"\n{server}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("vault.keys[0]") && err.contains("inside `[vault] dir`"),
        "{err}"
    );
    let err = parse(&format!(
        "[vault]\nkeys = [\"env:K\"]\ndir = \"\"\n{server}"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("vault.dir"), "{err}");
}

#[test]
fn a_vault_key_linked_from_outside_into_data_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let outside = root.path().join("etc");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(data.join("vault.key"), "00".repeat(32)).unwrap();
    let link = outside.join("vault.key");
    std::os::unix::fs::symlink(data.join("vault.key"), &link).unwrap();
    let err = parse(&format!(
        "[proxy]\ndata_dir = {:?}\n\n[vault]\nkeys = [\"file:{}\"]\n[[servers]]\nname = \"a\"\nprocess = {{ command = \"x\" }}\n",
        data.display().to_string(),
        link.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("inside `[proxy] data_dir`"), "{err}");
}

#[test]
fn a_sign_in_server_needs_the_vault_and_takes_no_other_credentials() {
    let vault = "[vault]\nkeys = [\"env:VAULT_KEY\"]\n";
    let server = |remote: &str| {
        format!("[[clients]]\nname = \"ops\"\n\n[[servers]]\nname = \"gh\"\nremote = {remote}\n")
    };
    let config = parse(&format!(
        "{vault}{}",
        server("{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\" } }")
    ))
    .unwrap();
    let UpstreamSpec::Remote(remote) = &config.servers[0].kind else {
        panic!("remote");
    };
    assert_eq!(remote.sign_in, Some(Box::new(SignInSpec::listed_as("ops"))));
    // A client registered by hand: its secret one of the server's.
    let config = parse(&format!(
        "{vault}{}[servers.secrets]\ns = \"env:S\"\n",
        server("{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", client = { client_id = \"Iv1.abc\", client_secret = \"secret:s\" } } }")
    ))
    .unwrap();
    let UpstreamSpec::Remote(remote) = &config.servers[0].kind else {
        panic!("remote");
    };
    assert_eq!(
        remote.sign_in.as_ref().and_then(|s| s.client.clone()),
        Some(crate::config::WebClientConfig {
            client_id: "Iv1.abc".into(),
            client_secret: Some(SecretRef::Env("S".into())),
            auth_method: None,
        })
    );
    let config = parse(&format!(
        "{vault}{}",
        server(
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", issuer_alias = \"https://api.example.com\", client_document = false } }"
        )
    ))
    .unwrap();
    let spec = config.servers[0]
        .kind
        .sign_in()
        .unwrap()
        .sign_in
        .clone()
        .unwrap();
    assert_eq!(
        spec.issuer_alias.as_deref(),
        Some("https://api.example.com")
    );
    assert!(!spec.client_document);
}

#[test]
fn a_sign_in_that_cannot_hold_is_refused() {
    let vault = VAULT_KEYS;
    let server = |remote: &str| {
        format!("[[clients]]\nname = \"ops\"\n\n[[servers]]\nname = \"gh\"\nremote = {remote}\n")
    };
    for (remote, with_vault, expected) in [
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\" } }",
            false,
            "set `[vault] keys`",
        ),
        (
            "{ url = \"http://api.example.com/mcp\", sign_in = { list_as = \"ops\" } }",
            true,
            "cross the network in clear",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"\" } }",
            true,
            "`list_as`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", headers = { Authorization = \"Bearer x\" }, sign_in = { list_as = \"ops\" } }",
            true,
            "take the header out",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\" }, oauth = { token_endpoint = \"https://id.example.com/token\", client_id = \"p\", client_secret = \"secret:s\" } }",
            true,
            "not both",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"alice\" } }",
            true,
            "`alice` is not a name of `[[clients]]`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"http://idp.example\" } }",
            true,
            "`issuer` must be an https:// URL",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", endpoint_origins = [\"https://tokens.example/token\"] } }",
            true,
            "is not an origin",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", endpoint_origins = [\"http://tokens.example\"] } }",
            true,
            "is not an origin",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", client = { client_id = \"Iv1\" } } }",
            true,
            "`client` needs `issuer`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer_alias = \"https://mcp.example.com\" } }",
            true,
            "`issuer_alias` needs `issuer`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", issuer_alias = \"http://mcp.example.com\" } }",
            true,
            "`issuer_alias` must be an https:// URL",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", client = { client_id = \"Iv1\", auth_method = \"client_secret_post\" } } }",
            true,
            "with `client_secret`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", issuer_alias = \"https://id.example.com/\" } }",
            true,
            "other than `issuer`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", client = { client_id = \"Iv1\", client_secret = \"secret:s\", auth_method = \"private_key_jwt\" } } }",
            true,
            "`client_secret_basic` or `client_secret_post`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", client = { client_id = \"Iv1\", client_secret = \"env:S\" } } }",
            true,
            "`secret:NAME`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", client = { client_id = \"Iv1\", client_secret = \"secret:missing\" } } }",
            true,
            "`secret:NAME`",
        ),
        (
            "{ url = \"https://api.example.com/mcp\", sign_in = { list_as = \"ops\", issuer = \"https://id.example.com\", client = { client_id = \"has space\" } } }",
            true,
            "printable ASCII",
        ),
    ] {
        let text = format!(
            "{}{}[servers.secrets]\ns = \"env:S\"\n",
            if with_vault { vault } else { "" },
            server(remote)
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(expected), "{remote}: {err}");
    }
}

/// A config's `[[clients]]` `ops` and a server `gh` with `container`.
fn container_server(container: &str) -> String {
    format!(
        "[[clients]]\nname = \"ops\"\n\n[[servers]]\nname = \"gh\"\ncontainer = {container}\n[servers.secrets]\ns = \"env:S\"\n"
    )
}

const VAULT_KEYS: &str = "[vault]\nkeys = [\"env:VAULT_KEY\"]\n";

#[test]
fn a_containers_sign_in_names_its_issuer_resource_and_variable() {
    let (vault, server) = (VAULT_KEYS, container_server);
    let good = "isolation = \"per-client\", sign_in = { env = \"GH_TOKEN\", issuer = \"https://github.com/login/oauth\", resource = \"https://api.github.com\", scopes = [\"repo\", \"read:org\"], list_as = \"ops\" }";
    let config = parse(&format!(
        "{vault}{}",
        server(&format!("{{ image = \"i\", {good} }}"))
    ))
    .unwrap();
    let kind = &config.servers[0].kind;
    let UpstreamSpec::Container(container) = kind else {
        panic!("container");
    };
    let sign_in = container.sign_in.as_deref().unwrap();
    assert_eq!(sign_in.env, "GH_TOKEN");
    // What the sign-ins work on: the resource, the issuer asked directly
    // for the scopes written.
    let remote = kind.sign_in().unwrap();
    assert_eq!(remote.url, "https://api.github.com");
    let spec = remote.sign_in.as_deref().unwrap();
    assert_eq!(
        spec.issuer.as_deref(),
        Some("https://github.com/login/oauth")
    );
    assert_eq!(
        spec.scopes.as_deref(),
        Some(&["repo".to_owned(), "read:org".to_owned()][..])
    );
    assert_eq!(spec.list_as, "ops");
    assert_eq!(sign_in.withheld, None);
    // A client registered by hand: the secret holding its secret is the
    // proxy's, withheld from the container's environment.
    let config = parse(&format!(
        "{vault}{}",
        server("{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\", client = { client_id = \"c\", client_secret = \"secret:s\" } } }")
    ))
    .unwrap();
    let UpstreamSpec::Container(container) = &config.servers[0].kind else {
        panic!("container");
    };
    assert_eq!(
        container
            .sign_in
            .as_deref()
            .and_then(|s| s.withheld.as_deref()),
        Some("s")
    );
    let err = parse(&server(&format!("{{ image = \"i\", {good} }}")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("set `[vault] keys`"), "{err}");
}

#[test]
fn a_containers_sign_in_that_could_leak_its_token_is_refused() {
    let (vault, server) = (VAULT_KEYS, container_server);
    let cases: Vec<(String, &str)> = vec![
        (
            "{ image = \"i\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "needs `isolation = \"per-client\"`",
        ),
        (
            "{ image = \"i\", isolation = \"shared\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "needs `isolation = \"per-client\"`",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"1T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "not an environment variable's name",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T=x\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "not an environment variable's name",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"LD_PRELOAD\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "would change how the container's programs run",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"HTTPS_PROXY\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "would change how the container's programs run",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", env = { T = \"x\" }, sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "must be its alone",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"s\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "must be its alone",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"http://api.example\", list_as = \"ops\" } }".into(),
            "`resource` must be an https:// URL",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example/?k=v\", list_as = \"ops\" } }".into(),
            "`resource` must be an https:// URL",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"http://id.example\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "`issuer` must be an https:// URL",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", scopes = [\"a b\"], list_as = \"ops\" } }".into(),
            "is not a scope",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"alice\" } }".into(),
            "`alice` is not a name of `[[clients]]`",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", resource = \"https://api.example\", list_as = \"ops\" } }".into(),
            "missing field `issuer`",
        ),
        (
            "{ image = \"i\", isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"ops\", client = { client_id = \"c\", client_secret = \"env:S\" } } }".into(),
            "`secret:NAME`",
        ),
    ];
    for (container, expected) in cases {
        let text = format!("{vault}{}", server(&container));
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(expected), "{container}: {err}");
    }
}
