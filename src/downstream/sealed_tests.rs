use std::sync::Arc;

use super::*;

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "f0e0d0c0b0a090807060504030201000f0e0d0c0b0a090807060504030201000";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn sealer(keys: &[&str]) -> Sealer {
    let texts: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    match Sealer::from_hex(&texts, DAY) {
        Ok(sealer) => sealer,
        Err(e) => panic!("the keys load: {e}"),
    }
}

fn tester() -> ClientIdentity {
    ClientIdentity::new("tester", &["dev".to_owned()])
}

fn initialize(capabilities: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": capabilities,
        "clientInfo": {"name": "agent-x", "version": "1"},
    }})
}

fn sealed_id(sealer: &Sealer, capabilities: Value) -> String {
    match sealer.seal(&tester(), &initialize(capabilities)) {
        Ok(id) => id,
        Err(e) => panic!("sealed: {e}"),
    }
}

#[test]
fn a_sealed_id_opens_for_its_client_with_what_its_initialize_settled() {
    let sealer = sealer(&[KEY_A]);
    let id = sealed_id(
        &sealer,
        json!({"elicitation": {"form": {}}, "experimental": {"x": 1}, "sampling": null}),
    );
    assert!(id.starts_with(PREFIX), "{id}");
    assert!(
        id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "visible ASCII only"
    );
    let Some(opened) = sealer.open(&id, &tester()) else {
        panic!("the id opens");
    };
    assert_eq!(opened.client, "tester");
    assert_eq!(opened.version, "2025-06-18");
    assert_eq!(opened.agent, "agent-x");
    // Only what the proxy reads is kept; a null is no declaration.
    assert_eq!(opened.capabilities, json!({"elicitation": {"form": {}}}));
    // A revision the proxy does not speak is settled as at `initialize`.
    let mut message = initialize(json!({}));
    message["params"]["protocolVersion"] = json!("1999-01-01");
    let Ok(id) = sealer.seal(&tester(), &message) else {
        panic!("sealed");
    };
    let opened = sealer.open(&id, &tester()).map(|s| s.version);
    assert_eq!(opened.as_deref(), Some(crate::protocol::LATEST_VERSION));
    // Two sessions of one client at once have two ids.
    assert_ne!(sealed_id(&sealer, json!({})), sealed_id(&sealer, json!({})));
}

#[test]
fn another_identity_cannot_resume_the_session() {
    let sealer = sealer(&[KEY_A]);
    let id = sealed_id(&sealer, json!({}));
    let others = [
        ClientIdentity::new("other", &["dev".to_owned()]),
        // The same name with other groups (a token that now says other
        // groups starts another session, as on one replica).
        ClientIdentity::new("tester", &[]),
        ClientIdentity::new("tester", &["dev".to_owned(), "admin".to_owned()]),
        tester().with_attributes(
            [("team".to_owned(), json!("red"))]
                .into_iter()
                .collect::<Map<_, _>>(),
        ),
    ];
    for other in others {
        assert!(sealer.open(&id, &other).is_none(), "{other:?}");
    }
    let mut with_token = tester();
    with_token.token = Some(Arc::new(crate::chain::TokenFacts {
        provider: Arc::from("idp"),
        subject: Some("alice".into()),
        client_id: None,
        scopes: Arc::from(Vec::<Arc<str>>::new()),
    }));
    assert!(sealer.open(&id, &with_token).is_none());
    assert!(sealer.open(&id, &tester()).is_some());
}

#[test]
fn a_changed_truncated_foreign_or_old_id_is_not_opened() {
    let sealer = sealer(&[KEY_A]);
    let id = sealed_id(&sealer, json!({}));
    // Each character changed in turn (a base64 digit to another).
    for at in PREFIX.len()..id.len() {
        let mut bytes = id.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).unwrap_or_default();
        if changed != id {
            assert!(sealer.open(&changed, &tester()).is_none(), "at {at}");
        }
    }
    for bad in [
        &id[..id.len() - 1],
        &id[..PREFIX.len() + 20],
        PREFIX,
        "",
        "8b5e5f7e-6a0b-4c1e-9b0e-1a2b3c4d5e6f",
        &id.replacen(PREFIX, "pcs2_", 1),
    ] {
        assert!(sealer.open(bad, &tester()).is_none(), "{bad}");
    }
    let long = format!("{id}{}", "A".repeat(MAX_ID_LEN));
    assert!(sealer.open(&long, &tester()).is_none());
    // Sealed under a key this replica does not hold.
    let foreign = sealed_id(&self::sealer(&[KEY_B]), json!({}));
    assert!(sealer.open(&foreign, &tester()).is_none());
    // Older than `session_max_age`.
    let old = Sealed {
        client: "tester".into(),
        digest: identity_digest(&tester()),
        version: "2025-11-25".into(),
        capabilities: json!({}),
        agent: "a".into(),
        issued: now_secs() - DAY.as_secs() - 60,
    };
    let Ok(old_id) = sealer.seal_state(&old) else {
        panic!("sealed");
    };
    assert!(sealer.open(&old_id, &tester()).is_none());
    let recent = Sealed {
        issued: now_secs() - DAY.as_secs() + 60,
        ..old
    };
    let Ok(recent_id) = sealer.seal_state(&recent) else {
        panic!("sealed");
    };
    assert!(sealer.open(&recent_id, &tester()).is_some());
}

#[test]
fn a_rotated_key_still_opens_the_ids_it_sealed_and_seals_no_more() {
    let old = sealer(&[KEY_A]);
    let rotated = sealer(&[KEY_B, KEY_A]);
    let before = sealed_id(&old, json!({}));
    assert!(rotated.open(&before, &tester()).is_some());
    let after = sealed_id(&rotated, json!({}));
    assert!(
        old.open(&after, &tester()).is_none(),
        "sealed with the new key"
    );
    assert!(sealer(&[KEY_B]).open(&before, &tester()).is_none());
}

#[test]
fn an_ended_session_is_not_resumed_here() {
    let sealer = sealer(&[KEY_A]);
    let id = sealed_id(&sealer, json!({}));
    sealer.ended(&id);
    assert!(sealer.open(&id, &tester()).is_none());
    // The newest ended are kept: past the bound the oldest go.
    for n in 0..ENDED_KEPT {
        sealer.ended(&format!("x{n}"));
    }
    assert!(sealer.open(&id, &tester()).is_some());
}

#[test]
fn large_capabilities_keep_only_which_were_declared() {
    let sealer = sealer(&[KEY_A]);
    let big = json!({"roots": {"listChanged": true, "pad": "x".repeat(5000)}, "sampling": {}});
    let id = sealed_id(&sealer, big);
    assert!(id.len() < 600, "{}", id.len());
    let opened = sealer.open(&id, &tester()).map(|s| s.capabilities);
    assert_eq!(opened, Some(json!({"roots": {}, "sampling": {}})));
}

#[test]
fn keys_that_are_not_32_bytes_of_hex_or_repeat_are_refused() {
    for (texts, expected) in [
        (vec!["00ff".to_owned()], "64 hex digits"),
        (vec!["zz".repeat(32)], "64 hex digits"),
        (vec![format!("{KEY_A}00")], "64 hex digits"),
        (vec![KEY_A.to_owned(), KEY_A.to_owned()], "listed twice"),
    ] {
        match Sealer::from_hex(&texts, DAY) {
            Ok(_) => panic!("{texts:?} refused"),
            Err(e) => assert!(e.to_string().contains(expected), "{e}"),
        }
    }
    // Trailing white space (a file's newline) is no part of the key.
    assert!(Sealer::from_hex(&[format!("{KEY_A}\n")], DAY).is_ok());
}

#[test]
fn the_record_id_is_a_uuid_the_same_on_every_replica() {
    let id = sealed_id(&sealer(&[KEY_A]), json!({}));
    assert_eq!(record_id(&id), record_id(&id));
    assert!(uuid::Uuid::parse_str(&record_id(&id)).is_ok());
    assert_ne!(record_id(&id), record_id(&format!("{id}x")));
}
