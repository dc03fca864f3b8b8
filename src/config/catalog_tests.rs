use super::*;
use crate::config::sandbox::BindMount;
use crate::config::{Config, UpstreamSpec};

const CATALOG: &str = r#"
version: 2
name: team
displayName: Team catalog
registry:
  time:
    title: Time
    type: server
    image: mcp/time@sha256:0123
    description: Tells the time
    command: ["--local-timezone", "{{time.zone|or:UTC}}"]
    env:
      - name: MODE
        value: "{{time.mode}}"
      - name: EMPTY
        value: ""
    secrets:
      - name: time.api_key
        env: TIME_API_KEY
    config:
      - name: time
        type: object
        properties:
          mode: { type: string }
    tools:
      - name: get_current_time
        description: The time now
    prompts: 3
  web:
    type: remote
    remote: { url: "https://mcp.example.com/mcp" }
"#;

fn operator(config: &[(&str, &str)], secrets: &[&str]) -> Operator {
    Operator {
        meta_name: "time".into(),
        server: "clock".into(),
        config: config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn time() -> ServerMeta {
    let catalog = parse_catalog(CATALOG).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(catalog.name.as_deref(), Some("team"));
    assert_eq!(catalog.registry.len(), 2);
    catalog.registry["time"].clone()
}

#[test]
fn a_catalog_entry_runs_with_its_command_env_and_the_operators_values() {
    let meta = time();
    assert_eq!(meta.tools[0].name, "get_current_time");
    let launched = launch(
        &meta,
        &operator(&[("mode", "fast")], &["TIME_API_KEY"]),
        &Sandbox::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(launched.args, ["--local-timezone", "UTC"]);
    // An empty value leaves the variable out, as Docker does.
    assert_eq!(
        launched.env.into_iter().collect::<Vec<_>>(),
        [("MODE".to_owned(), "fast".to_owned())]
    );
    // The proxy's name for the server reads the same values.
    let mut by_server = time();
    by_server.command = vec!["{{clock.zone}}".into()];
    let zoned = operator(&[("zone", "CET")], &["TIME_API_KEY"]);
    let launched =
        launch(&by_server, &zoned, &Sandbox::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(launched.args, ["CET"]);
}

#[test]
fn a_missing_secret_or_value_is_named() {
    let meta = time();
    let refused = launch(&meta, &operator(&[], &[]), &Sandbox::default()).err();
    let refused = refused.unwrap_or_default();
    assert!(
        refused.contains("time.api_key") && refused.contains("TIME_API_KEY"),
        "{refused}"
    );
    let mut meta = time();
    meta.command = vec!["--key={{time.key}}".into()];
    let refused = launch(
        &meta,
        &operator(&[], &["TIME_API_KEY"]),
        &Sandbox::default(),
    )
    .err();
    assert!(refused.unwrap_or_default().contains("time.key"));
    // Another server's config, and functions Portcullis does not know.
    for command in ["{{other.key}}", "{{time.key|volume}}", "{{time.key"] {
        let mut meta = time();
        meta.command = vec![command.into()];
        let refused = launch(
            &meta,
            &operator(&[("key", "x")], &["TIME_API_KEY"]),
            &Sandbox::default(),
        );
        assert!(refused.is_err(), "{command}");
    }
}

#[test]
fn what_metadata_asks_beyond_the_hardened_profile_is_refused_unless_granted() {
    let ok = operator(&[], &["TIME_API_KEY"]);
    let refused = |meta: &ServerMeta, sandbox: &Sandbox| launch(meta, &ok, sandbox).err();
    let mut root = time();
    root.user = Some("root".into());
    let message = refused(&root, &Sandbox::default()).unwrap_or_default();
    assert!(
        message.contains("root") && message.contains("[servers.sandbox] user"),
        "{message}"
    );
    // Granted by number, as the config writes users: `root` is 0 (and
    // group 0), whichever way either side says it.
    assert!(message.contains("user = \"0:0\""), "{message}");
    for granted in ["0", "0:0"] {
        let granted = Sandbox {
            user: granted.into(),
            ..Sandbox::default()
        };
        assert!(refused(&root, &granted).is_none(), "{}", granted.user);
    }
    for (asked, granted, ok) in [
        ("0", "0", true),
        ("root:root", "0:0", true),
        ("0:0", "0", true),
        ("1000", "1000:1000", true),
        ("1000:1000", "1000:1000", true),
        ("1000:1000", "1000:50", false),
        ("root", "1000", false),
        ("root", "0:1000", false),
        ("nobody", "65534", false),
    ] {
        let mut meta = time();
        meta.user = Some(asked.into());
        let sandbox = Sandbox {
            user: granted.into(),
            ..Sandbox::default()
        };
        assert_eq!(
            refused(&meta, &sandbox).is_none(),
            ok,
            "{asked} granted {granted}"
        );
    }
    let mut named = time();
    named.user = Some("nobody".into());
    let message = refused(&named, &Sandbox::default()).unwrap_or_default();
    assert!(message.contains("by number (`UID[:GID]`)"), "{message}");

    let mut hosts = time();
    hosts.allow_hosts = vec!["api.example.com:443".into()];
    assert!(refused(&hosts, &Sandbox::default()).is_some());
    let bridged = Sandbox {
        network: "bridge".into(),
        ..Sandbox::default()
    };
    assert!(refused(&hosts, &bridged).is_none());

    let mut volume = time();
    volume.volumes = vec!["/var/run/docker.sock:/var/run/docker.sock".into()];
    assert!(refused(&volume, &Sandbox::default()).is_some());
    let mounted = Sandbox {
        mounts: vec![BindMount {
            source: "/srv/data".into(),
            target: "/var/run/docker.sock".into(),
            writable: false,
        }],
        ..Sandbox::default()
    };
    assert!(refused(&volume, &mounted).is_none());

    let mut extra = time();
    extra.extra_hosts = vec!["host.docker.internal:host-gateway".into()];
    assert!(refused(&extra, &bridged).is_some());

    // Engine options no metadata may ask for, whatever is granted.
    for key in ["network", "privileged", "capAdd", "devices", "pid"] {
        let text = format!("image: x\n{key}: host\n");
        let meta = parse_server(&text, MAX_LABEL_BYTES).unwrap_or_else(|e| panic!("{e}"));
        let dangerous = Sandbox {
            allow_dangerous: true,
            ..bridged.clone()
        };
        assert!(refused(&meta, &dangerous).is_some(), "{key}");
    }
    // Nor environment that would redirect the server or load code into it.
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "LD_PRELOAD",
        "NODE_OPTIONS",
        "SSL_CERT_FILE",
        "PYTHONPATH",
        "REQUESTS_CA_BUNDLE",
        "NODE_TLS_REJECT_UNAUTHORIZED",
    ] {
        let mut redirect = time();
        redirect.env.push(MetaEnv {
            name: name.into(),
            value: "x".into(),
        });
        let message = refused(&redirect, &Sandbox::default()).unwrap_or_default();
        assert!(message.contains("elsewhere"), "{name}: {message}");
    }
    // Secrets cannot be set as plain environment.
    let mut shadow = time();
    shadow.env.push(MetaEnv {
        name: "TIME_API_KEY".into(),
        value: "x".into(),
    });
    assert!(refused(&shadow, &Sandbox::default()).is_some());
}

#[test]
fn only_server_entries_run_as_containers() {
    let catalog = parse_catalog(CATALOG).unwrap_or_else(|e| panic!("{e}"));
    let ok = operator(&[], &[]);
    assert!(launch(&catalog.registry["web"], &ok, &Sandbox::default()).is_err());
    let poci = parse_server("type: poci\nimage: x\n", MAX_LABEL_BYTES).unwrap_or_default();
    let refused = launch(&poci, &ok, &Sandbox::default())
        .err()
        .unwrap_or_default();
    assert!(refused.contains("poci"), "{refused}");
}

#[test]
fn hostile_documents_are_refused_not_expanded() {
    // An alias bomb: each level doubles the one before.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x]\n");
    for level in 1..40 {
        let previous = level - 1;
        bomb.push_str(&format!(
            "a{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}]\n"
        ));
    }
    bomb.push_str("image: x\n");
    assert!(parse_server(&bomb, MAX_LABEL_BYTES).is_err());
    let long = "x".repeat(MAX_LABEL_BYTES + 1);
    assert!(parse_server(&long, MAX_LABEL_BYTES).is_err());
    // Docker's parser is not strict about keys; neither is this one, but
    // a key given twice is an error, not a guess.
    assert!(parse_server("image: a\nimage: b\n", MAX_LABEL_BYTES).is_err());
    assert!(parse_catalog("registry: [1, 2]").is_err());
    // An error quotes nothing of the file (a symlink to a key file, say).
    // Made here, not written whole: the redaction corpus scans this file.
    let secret = format!("ghp_{}", "abcdefghijklmnopqrstuvwxyz0123456789");
    let error = parse_catalog(&format!("registry:\n  x: {secret}\n  - [\n"))
        .err()
        .unwrap_or_default();
    assert!(!error.contains(&secret) && !error.contains('\n'), "{error}");
}

#[test]
fn a_profile_gives_its_servers_values_and_secrets_over_the_configs() {
    let dir = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        dir.path().join("team.yaml"),
        CATALOG.replace("sha256:0123", &digest),
    )
    .unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[[catalogs]]\nname = \"team\"\npath = \"team.yaml\"\n\
         [[servers]]\nname = \"time\"\nfrom = \"catalog://team/time\"\n\
         config = { mode = \"plain\", zone = \"UTC\" }\nsecrets = { TIME_API_KEY = \"env:CONFIG_KEY\" }\n\
         [[servers]]\nname = \"other\"\nprocess = { command = \"x\" }\n",
    )
    .unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let profile = |text: &str| std::fs::write(profiles.join("night.toml"), text).unwrap();
    profile(
        "servers = [\"time\"]\n[config.time]\nzone = \"Europe/Paris\"\n[secrets.time]\nTIME_API_KEY = \"env:PROFILE_KEY\"\n",
    );
    let spec = |config: &Config| {
        let server = config.server("time").unwrap();
        let UpstreamSpec::Container(spec) = &server.kind else {
            panic!("{server:?}");
        };
        (
            spec.args.clone(),
            spec.env.clone(),
            format!("{:?}", server.secrets),
        )
    };
    let plain = Config::load(&config).unwrap();
    let (args, env, secrets) = spec(&plain);
    assert_eq!(args, ["--local-timezone", "UTC"]);
    assert_eq!(env.get("MODE").map(String::as_str), Some("plain"));
    assert!(secrets.contains("CONFIG_KEY"), "{secrets}");

    let night = Config::load_with_profile(&config, Some("night")).unwrap();
    let names: Vec<&str> = night.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["time"]);
    let (args, env, secrets) = spec(&night);
    // Its value and its secret; the config's others stay.
    assert_eq!(args, ["--local-timezone", "Europe/Paris"]);
    assert_eq!(env.get("MODE").map(String::as_str), Some("plain"));
    assert!(
        secrets.contains("PROFILE_KEY") && !secrets.contains("CONFIG_KEY"),
        "{secrets}"
    );

    // Values for a server it does not run, values for a server that has no
    // templates, a secret name that cannot be a variable: refused.
    for (text, expected) in [
        (
            "servers = [\"time\"]\n[config.other]\nk = \"v\"\n",
            "which it does not run",
        ),
        (
            "servers = [\"other\"]\n[config.other]\nk = \"v\"\n",
            "fills the templates of a server described by `from`",
        ),
        (
            "servers = [\"time\"]\n[secrets.time]\n\"A-B\" = \"env:X\"\n",
            "must be letters, digits and `_`",
        ),
    ] {
        profile(text);
        let err = Config::load_with_profile(&config, Some("night"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

/// A catalog whose servers label their items under `flow`.
const LABELLED: &str = r#"
registry:
  web:
    image: mcp/web@DIGEST
    flow:
      labels: [untrusted]
      tools:
        post: [sink]
        summarise: []
      prompts:
        brief: [private]
  mail:
    image: mcp/mail@DIGEST
    flow:
      labels: [sink]
  broken:
    image: mcp/broken@DIGEST
    flow:
      labels: [untrusted, "harmless\u001b[2J"]
"#;

#[test]
fn a_catalogs_labels_add_to_the_defaults_and_the_operators_rules_outrank_them() {
    use crate::config::{Label, Labelled, Labels};
    let dir = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        dir.path().join("team.yaml"),
        LABELLED.replace("DIGEST", &digest),
    )
    .unwrap();
    let config = dir.path().join("portcullis.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[[catalogs]]\nname = \"team\"\npath = \"team.yaml\"\n\
                 [[servers]]\nname = \"web\"\nfrom = \"catalog://team/web\"\n\
                 [discovery]\ncatalogs = [\"team\"]\n{extra}"
            ),
        )
        .unwrap();
    };
    write("[[flow.rule]]\ntools = [\"web__fetch\"]\nlabels = []\n");
    let loaded = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let flow = &loaded.flow;
    let closed = Labels::of(&[Label::Private]);
    let open = Labels::of(&[Label::Untrusted, Label::Sink]);
    let of = |server, item| flow.labels(server, item, closed);
    // The server's labels, added to what its annotations give.
    assert_eq!(
        of("web", Labelled::Tool("web__read")),
        Labels::of(&[Label::Untrusted, Label::Private])
    );
    // A tool it names has its own instead of the server's; none is taken
    // away from the defaults.
    assert_eq!(
        of("web", Labelled::Tool("web__post")),
        Labels::of(&[Label::Private, Label::Sink])
    );
    assert_eq!(of("web", Labelled::Tool("web__summarise")), closed);
    assert_eq!(
        flow.labels("web", Labelled::Tool("web__summarise"), open),
        open
    );
    assert_eq!(of("web", Labelled::Prompt("web__brief")), closed);
    assert_eq!(
        flow.labels("web", Labelled::Resource("file:///a"), Labels::NONE),
        Labels::of(&[Label::Untrusted])
    );
    // The operator's rule outranks the catalog.
    assert_eq!(of("web", Labelled::Tool("web__fetch")), Labels::NONE);
    // A server an agent may add from the catalog: its labels too.
    assert_eq!(
        of("mail", Labelled::Sampling),
        Labels::of(&[Label::Private, Label::Sink])
    );
    // A server whose labels are wrong cannot be added; the reason says
    // where, escaped, and its catalog's other servers are unharmed.
    let discovery = loaded.discovery.as_ref().unwrap();
    let broken = discovery
        .servers
        .iter()
        .find(|s| s.name == "broken")
        .unwrap();
    let reason = broken.server.as_ref().err().unwrap();
    assert!(
        reason.contains("flow.labels") && reason.contains("is not a label"),
        "{reason}"
    );
    assert!(!reason.contains('\u{1b}'), "{reason}");
    assert!(!flow.described.contains_key("broken"));
    // Off: only the operator's rules label.
    write("[flow]\ndefaults = false\n");
    let off = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        off.flow.labels("web", Labelled::Tool("web__read"), closed),
        Labels::NONE
    );
    // A configured server whose description's labels are wrong: the config
    // is refused, naming it.
    std::fs::write(
        dir.path().join("team.yaml"),
        LABELLED.replace("DIGEST", &digest).replace(
            "labels: [untrusted]\n",
            "labels: [untrusted]\n      tool: {}\n",
        ),
    )
    .unwrap();
    write("");
    let err = Config::load(&config).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("server `web`") && err.contains("`flow.tool` is not known"),
        "{err}"
    );
}
