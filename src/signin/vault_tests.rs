#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::config::SecretRef;

const KEY_A: &str = "0001020304050607080900010203040506070809000102030405060708090001";
const KEY_B: &str = "f0f1f2f3f4f5f6f7f8f9f0f1f2f3f4f5f6f7f8f9f0f1f2f3f4f5f6f7f8f9f0f1";

/// A key file outside `data_dir`.
fn key_file(dir: &Path, name: &str, hex: &str) -> SecretRef {
    let path = dir.join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    SecretRef::File(path)
}

fn vault(root: &Path, keys: &[(&str, &str)]) -> Vault {
    let keys = keys
        .iter()
        .map(|(name, hex)| key_file(root, name, hex))
        .collect();
    Vault::open(
        &VaultConfig {
            keys,
            ..VaultConfig::default()
        },
        &root.join("data"),
    )
    .unwrap()
}

fn tokens(access: &str) -> Tokens {
    Tokens {
        access_token: access.into(),
        refresh_token: Some(format!("refresh-of-{access}")),
        expires_at: Some(2_000_000_000),
        scopes: vec!["mcp".into()],
        issuer: "https://auth.example".into(),
        client_id: "portcullis".into(),
        resource: "https://mcp.example/mcp".into(),
        issuer_alias: None,
    }
}

#[test]
fn tokens_come_back_to_their_user_and_server_only() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    assert_eq!(vault.get("github", "alice").unwrap(), None);
    vault
        .put("github", "alice", &tokens("alice-secret-token"))
        .unwrap();
    vault
        .put("github", "bob", &tokens("bob-secret-token"))
        .unwrap();
    vault
        .put("notion", "alice", &tokens("alice-notion-token"))
        .unwrap();
    assert_eq!(
        vault.get("github", "alice").unwrap(),
        Some(tokens("alice-secret-token"))
    );
    assert_eq!(
        vault.get("github", "bob").unwrap().unwrap().access_token,
        "bob-secret-token"
    );
    // A second sign-in replaces the first.
    vault
        .put("github", "alice", &tokens("alice-again"))
        .unwrap();
    assert_eq!(
        vault.get("github", "alice").unwrap().unwrap().access_token,
        "alice-again"
    );
    let listed: Vec<_> = vault
        .list()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let pairs: Vec<_> = listed
        .iter()
        .map(|l| (l.server.as_str(), l.user.as_str(), l.refreshable))
        .collect();
    assert_eq!(
        pairs,
        [
            ("github", "alice", true),
            ("github", "bob", true),
            ("notion", "alice", true)
        ]
    );
    assert!(vault.remove("github", "bob").unwrap());
    assert!(!vault.remove("github", "bob").unwrap());
    assert_eq!(vault.get("github", "bob").unwrap(), None);
}

#[test]
fn no_token_is_readable_at_rest_or_in_a_debug_form() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    let kept = tokens("planted-access-token-4f1c");
    vault.put("github", "alice", &kept).unwrap();
    for entry in std::fs::read_dir(root.path().join("data/vault")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("planted-access-token"), "{text}");
        assert!(!text.contains("refresh-of"), "{text}");
    }
    let shown = format!("{kept:?} {vault:?}");
    assert!(!shown.contains("planted"), "{shown}");
}

#[test]
fn an_entry_moved_changed_or_under_an_unknown_key_does_not_open() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    vault
        .put("github", "alice", &tokens("alice-token"))
        .unwrap();
    vault
        .put("github", "mallory", &tokens("mallory-token"))
        .unwrap();
    let alice = vault.path_of(Kind::Tokens, "github", "alice");
    let mallory = vault.path_of(Kind::Tokens, "github", "mallory");

    // Alice's entry copied into Mallory's place, its names rewritten to
    // match: the seal is bound to Alice, and does not open for Mallory.
    let text = std::fs::read_to_string(&alice)
        .unwrap()
        .replace("\"alice\"", "\"mallory\"");
    std::fs::write(&mallory, text).unwrap();
    let err = vault.get("github", "mallory").unwrap_err();
    assert!(err.to_string().contains("sealed for another"), "{err}");
    assert!(!err.to_string().contains("alice-token"), "{err}");

    // Copied as it is: its names are Alice's, not Mallory's.
    std::fs::copy(&alice, &mallory).unwrap();
    let err = vault.get("github", "mallory").unwrap_err();
    assert!(err.to_string().contains("another's entry"), "{err}");

    // A byte of the seal changed.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let mut blob = STANDARD.decode(file["sealed"].as_str().unwrap()).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    file["sealed"] = STANDARD.encode(&blob).into();
    std::fs::write(&alice, file.to_string()).unwrap();
    assert!(matches!(
        vault.get("github", "alice").unwrap_err(),
        VaultError::Unsealable { .. }
    ));

    // Sealed under a key no longer configured.
    let other = self::vault(root.path(), &[("b.key", KEY_B)]);
    vault
        .put("github", "alice", &tokens("alice-token"))
        .unwrap();
    let err = other.get("github", "alice").unwrap_err();
    assert!(
        err.to_string().contains("no longer in `[vault] keys`"),
        "{err}"
    );
    // A listing says which entries do not open, and lists the rest.
    let listed = other.list().unwrap();
    assert!(listed.iter().all(Result::is_err), "{listed:?}");

    // Cut short, or not JSON at all, or huge: an error, never a panic.
    std::fs::write(
        &alice,
        r#"{"format":"pcv1","server":"github","user":"alice","key":"x","sealed":"AA=="}"#,
    )
    .unwrap();
    assert!(vault.get("github", "alice").is_err());
    std::fs::write(&alice, "not json").unwrap();
    assert!(vault.get("github", "alice").is_err());
    std::fs::write(&alice, vec![b' '; 200_000]).unwrap();
    assert!(vault.get("github", "alice").is_err());
}

#[test]
fn a_rotated_key_still_opens_what_it_sealed_and_the_new_one_seals() {
    let root = tempfile::tempdir().unwrap();
    let old = vault(root.path(), &[("a.key", KEY_A)]);
    old.put("github", "alice", &tokens("sealed-by-a")).unwrap();
    let rotated = vault(root.path(), &[("b.key", KEY_B), ("a.key", KEY_A)]);
    assert_eq!(
        rotated
            .get("github", "alice")
            .unwrap()
            .unwrap()
            .access_token,
        "sealed-by-a"
    );
    rotated
        .put("github", "alice", &tokens("sealed-by-b"))
        .unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rotated.path_of(Kind::Tokens, "github", "alice")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        file["key"],
        hex::encode(&Sha256::digest(hex::decode(KEY_B).unwrap())[..4])
    );
    assert!(old.get("github", "alice").is_err());
}

#[test]
fn bad_keys_and_long_tokens_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let none = Vault::open(&VaultConfig::default(), root.path());
    assert!(matches!(none, Err(VaultError::NoKeys)));
    let short = key_file(root.path(), "short.key", "0102");
    let err = Vault::open(
        &VaultConfig {
            keys: vec![short],
            ..VaultConfig::default()
        },
        root.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("vault.keys[0]"), "{err}");
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    let long = tokens(&"x".repeat(MAX_TOKEN + 1));
    assert!(matches!(
        vault.put("github", "alice", &long),
        Err(VaultError::TooLong)
    ));
    // Names that would read alike without their lengths stay apart.
    vault.put("a\0b", "c", &tokens("one")).unwrap();
    assert_eq!(vault.get("a", "b\0c").unwrap(), None);
}

#[test]
fn a_file_whose_names_are_not_its_places_is_listed_as_an_error() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    vault
        .put("github", "alice", &tokens("alice-token"))
        .unwrap();
    let text = std::fs::read_to_string(vault.path_of(Kind::Tokens, "github", "alice"))
        .unwrap()
        .replace("\"alice\"", "\"\\u001b[2Jbob\"");
    std::fs::write(vault.dir.join("forged.json"), text).unwrap();
    let listed = vault.list().unwrap();
    assert_eq!(listed.len(), 2);
    let err = listed[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("another's entry"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn a_listing_goes_on_past_files_that_are_not_entries() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    vault
        .put("github", "alice", &tokens("alice-token"))
        .unwrap();
    let dir = vault.dir.clone();
    std::fs::write(dir.join("garbage.json"), "not json").unwrap();
    std::fs::write(dir.join("huge.json"), vec![b' '; 200_000]).unwrap();
    std::fs::create_dir(dir.join("folder.json")).unwrap();
    std::os::unix::fs::symlink(
        vault.path_of(Kind::Tokens, "github", "alice"),
        dir.join("link.json"),
    )
    .unwrap();
    nix::unistd::mkfifo(&dir.join("pipe.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(dir.join("\u{1b}[2J.json"), "{}").unwrap();
    let listed = vault.list().unwrap();
    let good: Vec<_> = listed.iter().filter_map(|l| l.as_ref().ok()).collect();
    assert_eq!(good.len(), 1, "{listed:?}");
    assert_eq!(
        (good[0].server.as_str(), good[0].user.as_str()),
        ("github", "alice")
    );
    let errors: Vec<String> = listed
        .iter()
        .filter_map(|l| l.as_ref().err())
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    for error in &errors {
        assert!(!error.contains('\u{1b}'), "{error:?}");
    }
    assert!(
        errors.iter().any(|e| e.contains("not a regular file")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("over 65536 bytes")),
        "{errors:?}"
    );
}

#[test]
fn an_entry_is_written_owner_only_and_leaves_no_temporary_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    vault.put("github", "alice", &tokens("one")).unwrap();
    vault.put("github", "alice", &tokens("two")).unwrap();
    let names: Vec<_> = std::fs::read_dir(&vault.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, [vault.path_of(Kind::Tokens, "github", "alice")]);
    let mode = std::fs::metadata(&names[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn names_too_long_for_an_entry_are_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    let long = "x".repeat(MAX_NAME + 1);
    let mut many_scopes = tokens("t");
    many_scopes.scopes = vec!["scope".into(); MAX_NAME];
    let mut long_issuer = tokens("t");
    long_issuer.issuer = long.clone();
    for (server, user, tokens) in [
        (long.as_str(), "alice", tokens("t")),
        ("github", long.as_str(), tokens("t")),
        ("github", "alice", many_scopes),
        ("github", "alice", long_issuer),
    ] {
        assert!(matches!(
            vault.put(server, user, &tokens),
            Err(VaultError::TooLong)
        ));
    }
    assert!(!vault.dir.exists());
    // The longest of everything still fits a file that is read back.
    let mut largest = tokens(&"a".repeat(MAX_TOKEN));
    largest.refresh_token = Some("r".repeat(MAX_TOKEN));
    largest.issuer = "i".repeat(MAX_NAME);
    largest.client_id = "c".repeat(MAX_NAME);
    largest.scopes = vec!["s".repeat(MAX_NAME - 1)];
    let name = "n".repeat(MAX_NAME);
    vault.put(&name, &name, &largest).unwrap();
    assert_eq!(vault.get(&name, &name).unwrap(), Some(largest));
}

#[test]
fn a_vault_key_that_is_also_a_session_key_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let key = key_file(root.path(), "shared.key", KEY_A);
    let mut config = Config::parse(
        "[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\n",
        Path::new("portcullis.toml"),
    )
    .unwrap();
    config.proxy.data_dir = root.path().join("data");
    config.vault.keys = vec![key_file(root.path(), "own.key", KEY_B)];
    config.proxy.session_keys = vec![key.clone()];
    assert!(Vault::of(&config).is_ok());
    config.vault.keys.push(key);
    let err = Vault::of(&config).unwrap_err();
    assert!(matches!(err, VaultError::SharedKey { index: 1 }), "{err}");
}

#[test]
fn a_servers_registrations_are_listed_by_name_and_no_others() {
    let root = tempfile::tempdir().unwrap();
    let vault = vault(root.path(), &[("a.key", KEY_A)]);
    vault
        .put_client("s", "https://as.example c1", &"one")
        .unwrap();
    vault
        .put_client("s", "http://127.0.0.1/callback", &"two")
        .unwrap();
    vault
        .put_client("t", "https://as.example c9", &"three")
        .unwrap();
    vault.put("s", "alice", &tokens("a1")).unwrap();
    assert_eq!(
        vault.clients_of("s").unwrap(),
        vec!["http://127.0.0.1/callback", "https://as.example c1"]
    );
    assert_eq!(
        vault.clients_of("t").unwrap(),
        vec!["https://as.example c9"]
    );
    assert!(vault.clients_of("u").unwrap().is_empty());
    // The list of the servers a config named is no entry.
    let named = std::collections::BTreeSet::from(["s".to_owned()]);
    let config = root.path().join("portcullis.toml");
    vault.name_servers(&config, &named).unwrap();
    assert_eq!(vault.servers_named_by(&config).unwrap(), Some(named));
    assert_eq!(
        vault
            .servers_named_by(&root.path().join("other.toml"))
            .unwrap(),
        None
    );
    assert_eq!(vault.list().unwrap().len(), 1);
}

#[test]
fn a_vault_folder_the_operator_names_is_held_to_this_users_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let keys = vec![key_file(root.path(), "a.key", KEY_A)];
    let open = |dir: &Path| {
        Vault::open(
            &VaultConfig {
                keys: keys.clone(),
                dir: Some(dir.to_owned()),
                ..VaultConfig::default()
            },
            &root.path().join("data"),
        )
    };
    // Made private where missing, and used in place of `data_dir`'s.
    let shared = root.path().join("shared/vault");
    let vault = open(&shared).unwrap();
    vault.put("github", "alice", &tokens("at-1")).unwrap();
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(!root.path().join("data/vault").exists());
    // Another replica with the same folder reads it.
    let other = open(&shared).unwrap();
    assert_eq!(
        other.get("github", "alice").unwrap().unwrap().access_token,
        "at-1"
    );
    // One others may write to (a volume's group-writable root): refused,
    // naming the setting.
    let open_to_all = root.path().join("open");
    std::fs::create_dir(&open_to_all).unwrap();
    std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = open(&open_to_all).unwrap_err().to_string();
    assert!(err.contains("`[vault] dir`"), "{err}");
}
