#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;

fn found() -> Discovered {
    Discovered {
        url: "https://mcp.example/mcp".into(),
        resource: "https://mcp.example/mcp".into(),
        resource_metadata: "https://mcp.example/.well-known/oauth-protected-resource/mcp".into(),
        scopes: vec!["mcp".into()],
        issuer: "https://as.example".into(),
        issuer_metadata: "https://as.example/.well-known/oauth-authorization-server".into(),
        authorization_endpoint: "https://as.example/authorize".into(),
        token_endpoint: "https://as.example/token".into(),
        registration_endpoint: None,
        revocation_endpoint: None,
        client_id_metadata_documents: false,
        token_endpoint_auth_methods: vec!["none".into()],
        iss_parameter: true,
        alias: None,
    }
}

fn remote() -> RemoteSpec {
    RemoteSpec {
        url: "https://mcp.example/mcp".into(),
        transport: crate::config::RemoteTransport::default(),
        headers: Vec::new(),
        oauth: None,
        sign_in: None,
        learned: false,
        egress: crate::config::EgressConfig::default(),
    }
}

fn client() -> Registration {
    Registration {
        issuer: "https://as.example".into(),
        client_id: "proxy".into(),
        client_secret: None,
        auth_method: "none".into(),
        redirect_uri: "https://proxy.example/oauth/callback".into(),
        secret_expires_at: None,
    }
}

/// The `state` in the authorization server's link.
fn state_of(link: &str) -> String {
    reqwest::Url::parse(link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned()
}

fn answer(state: &str, code: &str, iss: &str) -> Vec<(String, String)> {
    vec![
        ("code".into(), code.into()),
        ("state".into(), state.into()),
        ("iss".into(), iss.into()),
    ]
}

/// The sign-in an answer was for (panics on a proof or an error).
fn signed_in(answer: Result<Answer, PendingError>) -> Answered {
    match answer {
        Ok(Answer::SignIn(answered)) => answered,
        Ok(Answer::Proof(_)) => panic!("a proof, not a sign-in"),
        Err(err) => panic!("{err}"),
    }
}

/// The proof an answer was (panics on a sign-in or an error).
fn proved(answer: Result<Answer, PendingError>) -> Proved {
    match answer {
        Ok(Answer::Proof(proved)) => proved,
        Ok(Answer::SignIn(_)) => panic!("a sign-in, not a proof"),
        Err(err) => panic!("{err}"),
    }
}

/// A link for `user` to `github` begun on `pendings`: its id.
fn begun(pendings: &Pendings, user: &str, proof: Option<Proof>) -> String {
    pendings
        .begin(&remote(), ("github", user), found(), client(), proof)
        .unwrap()
}

/// `test` run on a proxy's own sign-ins waiting, then on those of a
/// vault replicas share.
fn each(life: Duration, test: impl Fn(&Pendings)) {
    test(&Pendings::new(life));
    let root = tempfile::tempdir().unwrap();
    test(&Pendings::shared(
        life,
        Arc::new(Opened::given(replica(root.path()))),
    ));
}

/// A replica's vault: the folder and key under `root` every replica
/// shares.
fn replica(root: &std::path::Path) -> super::super::vault::Vault {
    let key = root.join("key");
    if !key.exists() {
        std::fs::write(
            &key,
            "0001020304050607080900010203040506070809000102030405060708090001",
        )
        .unwrap();
    }
    let config = crate::config::VaultConfig {
        keys: vec![crate::config::SecretRef::File(key)],
        dir: Some(root.join("vault")),
        ..crate::config::VaultConfig::default()
    };
    super::super::vault::Vault::open(&config, &root.join("data")).unwrap()
}

/// A proof at the organisation's provider `https://idp.example`.
fn proof() -> Proof {
    let mut found = found();
    found.issuer = "https://idp.example".into();
    found.authorization_endpoint = "https://idp.example/authorize".into();
    found.token_endpoint = "https://idp.example/token".into();
    found.resource = "https://proxy.example/mcp".into();
    let mut client = client();
    client.issuer = "https://idp.example".into();
    Proof {
        provider: "corp".into(),
        found,
        client,
    }
}

/// A link whose user is an `[oauth]` provider's: the browser that takes it
/// on goes first to the provider; only a proof naming the user sends it on
/// to the server's authorization server. Another person is refused and
/// the link ended (the user's next call gives a new one); a proof's state
/// is taken once; a proof that could not be checked ends the link too.
#[test]
fn the_person_at_a_link_shows_they_are_its_user_first() {
    each(Duration::from_secs(600), |pendings| {
        let begin = || begun(pendings, "alice", Some(proof()));
        let id = begin();
        assert_eq!(
            pendings.shown(&id).unwrap().proof_issuer.as_deref(),
            Some("https://idp.example")
        );
        // Taken on by someone: sent to the provider, not the server's.
        let (mallorys, to) = pendings.take(&id).unwrap();
        assert!(to.starts_with("https://idp.example/authorize?"), "{to}");
        assert!(
            to.contains("resource=https%3A%2F%2Fproxy.example%2Fmcp"),
            "{to}"
        );
        let proof_state = state_of(&to);
        let answer_of = |state: &str| answer(state, "c0de", "https://idp.example");
        let proved_once = proved(pendings.answer(&answer_of(&proof_state), Some(&mallorys)));
        assert_eq!(proved_once.user, "alice");
        assert_eq!(proved_once.proof.provider, "corp");
        // The proof's state is taken once.
        assert_eq!(
            pendings
                .answer(&answer_of(&proof_state), Some(&mallorys))
                .err(),
            Some(PendingError::UnknownState)
        );
        // Mallory's token names Mallory: refused, the link ended.
        assert_eq!(
            pendings.proven(proved_once.ticket, Some("mallory")).err(),
            Some(PendingError::NotTheUser {
                person: "mallory".into(),
                user: "alice".into()
            })
        );
        assert_eq!(pendings.shown(&id).unwrap_err(), PendingError::Unknown);

        // A proof that could not be checked ends its link too.
        let id = begin();
        let (alices, to) = pendings.take(&id).unwrap();
        let unchecked = proved(pendings.answer(&answer_of(&state_of(&to)), Some(&alices)));
        assert_eq!(
            pendings.proven(unchecked.ticket, None).err(),
            Some(PendingError::NotShown)
        );
        assert_eq!(pendings.take(&id).unwrap_err(), PendingError::Unknown);

        // Alice's own: proven, on to the server's authorization server.
        let id = begin();
        let (alices, to) = pendings.take(&id).unwrap();
        let alice = proved(pendings.answer(&answer_of(&state_of(&to)), Some(&alices)));
        // Another browser's cookie cannot use Alice's proof.
        let stale = Ticket {
            browser: digest(&mallorys),
            ..alice.ticket
        };
        assert_eq!(
            pendings.proven(stale, Some("alice")).err(),
            Some(PendingError::UnknownState)
        );
        let on = pendings.proven(alice.ticket, Some("alice")).unwrap();
        assert!(on.starts_with("https://as.example/authorize?"), "{on}");
        let answered = signed_in(pendings.answer(
            &answer(&state_of(&on), "c0de", "https://as.example"),
            Some(&alices),
        ));
        assert_eq!(answered.user, "alice");
    });
}

/// A proof answered in another browser than the one that took the link on
/// (the user lured to the provider with another's link, say) ends the
/// link: the code it carried is useless to the browser that began it. So
/// does a proof the provider refused.
#[test]
fn a_proof_answered_elsewhere_or_refused_ends_the_link() {
    each(Duration::from_secs(600), |pendings| {
        let begin = || begun(pendings, "alice", Some(proof()));
        let id = begin();
        let (mallorys, to) = pendings.take(&id).unwrap();
        let alices_answer = answer(&state_of(&to), "alices-code", "https://idp.example");
        for elsewhere in [None, Some("alices-browser")] {
            let id = begin();
            let (_, to) = pendings.take(&id).unwrap();
            let answered = answer(&state_of(&to), "c", "https://idp.example");
            assert_eq!(
                pendings.answer(&answered, elsewhere).err(),
                Some(PendingError::ProofElsewhere)
            );
            assert_eq!(pendings.shown(&id).unwrap_err(), PendingError::Unknown);
        }
        assert_eq!(
            pendings.answer(&alices_answer, None).err(),
            Some(PendingError::ProofElsewhere)
        );
        // Mallory then brings the code she got hold of: nothing is waiting.
        assert_eq!(
            pendings.answer(&alices_answer, Some(&mallorys)).err(),
            Some(PendingError::UnknownState)
        );

        let id = begin();
        let (cookie, to) = pendings.take(&id).unwrap();
        let denied = vec![
            ("error".to_owned(), "access_denied".to_owned()),
            ("state".to_owned(), state_of(&to)),
            ("iss".to_owned(), "https://idp.example".to_owned()),
        ];
        assert!(matches!(
            pendings.answer(&denied, Some(&cookie)),
            Err(PendingError::Flow(_))
        ));
        assert_eq!(pendings.take(&id).unwrap_err(), PendingError::Unknown);
    });
}

/// A link never given out (Cedar refused `sign_in`) is forgotten; one a
/// browser took on is not.
#[test]
fn a_link_never_given_is_forgotten() {
    each(Duration::from_secs(600), |pendings| {
        let id = begun(pendings, "alice", None);
        pendings.forget(&format!("https://proxy.example/oauth/start?id={id}"));
        assert_eq!(pendings.shown(&id).unwrap_err(), PendingError::Unknown);
        let id = begun(pendings, "bob", None);
        let (cookie, link) = pendings.take(&id).unwrap();
        pendings.forget(&id);
        let good = answer(&state_of(&link), "c0de", "https://as.example");
        assert_eq!(signed_in(pendings.answer(&good, Some(&cookie))).user, "bob");
    });
}

/// Before the proof, the server's own answer is not taken, even with its
/// state and in the browser that took the link on.
#[test]
fn no_sign_in_is_finished_before_its_proof() {
    each(Duration::from_secs(600), |pendings| {
        let id = begun(pendings, "alice", Some(proof()));
        let key = digest(&id);
        let server_state = pendings
            .with(At::Link(&key), |waiting| {
                Ok(waiting.by_id[&key].state.clone())
            })
            .unwrap();
        let (cookie, _) = pendings.take(&id).unwrap();
        assert_eq!(
            pendings
                .answer(
                    &answer(&server_state, "c0de", "https://as.example"),
                    Some(&cookie)
                )
                .err(),
            Some(PendingError::UnknownState)
        );
    });
}

#[test]
fn a_link_is_taken_on_once_and_answered_once_in_its_own_browser() {
    each(Duration::from_secs(600), |pendings| {
        let id = begun(pendings, "alice", None);
        let shown = pendings.shown(&id).unwrap();
        assert_eq!(
            shown,
            Shown {
                server: "github".into(),
                user: "alice".into(),
                issuer: "https://as.example".into(),
                proof_issuer: None,
            }
        );
        // Shown again (a preview): still usable.
        assert!(pendings.shown(&id).is_ok());
        assert_eq!(
            pendings.shown("guessed").unwrap_err(),
            PendingError::Unknown
        );

        let (cookie, link) = pendings.take(&id).unwrap();
        assert!(link.starts_with("https://as.example/authorize?"), "{link}");
        assert!(link.contains("code_challenge_method=S256"), "{link}");
        // Taken on: not again, in this browser or another.
        assert_eq!(pendings.take(&id).unwrap_err(), PendingError::Taken);
        assert_eq!(pendings.shown(&id).unwrap_err(), PendingError::Taken);

        let state = state_of(&link);
        let good = answer(&state, "c0de", "https://as.example");
        // Another's state, no state: none of this proxy's.
        for query in [answer("forged", "c0de", "https://as.example"), Vec::new()] {
            assert_eq!(
                pendings.answer(&query, Some(&cookie)).err(),
                Some(PendingError::UnknownState)
            );
        }
        // The right state from another browser (no cookie, another's): refused,
        // and the sign-in still waits for its own.
        for other in [None, Some("another-browsers-cookie")] {
            assert_eq!(
                pendings.answer(&good, other).err(),
                Some(PendingError::OtherBrowser)
            );
        }
        let answered = signed_in(pendings.answer(&good, Some(&cookie)));
        assert_eq!(
            (answered.server.as_str(), answered.user.as_str()),
            ("github", "alice")
        );
        assert_eq!(answered.code, "c0de");
        assert_eq!(answered.client.client_id, "proxy");
        // Replayed: gone.
        assert_eq!(
            pendings.answer(&good, Some(&cookie)).err(),
            Some(PendingError::UnknownState)
        );
    });
}

#[test]
fn an_answer_from_another_issuer_ends_the_sign_in() {
    each(Duration::from_secs(600), |pendings| {
        let id = begun(pendings, "alice", None);
        let (cookie, link) = pendings.take(&id).unwrap();
        let state = state_of(&link);
        let mixed = answer(&state, "c0de", "https://evil.example");
        assert!(matches!(
            pendings.answer(&mixed, Some(&cookie)),
            Err(PendingError::Flow(_))
        ));
        let good = answer(&state, "c0de", "https://as.example");
        assert_eq!(
            pendings.answer(&good, Some(&cookie)).err(),
            Some(PendingError::UnknownState)
        );
    });
}

#[test]
fn a_new_link_replaces_the_users_last() {
    each(Duration::from_secs(600), |pendings| {
        let first = begun(pendings, "alice", None);
        let other = begun(pendings, "bob", None);
        let second = begun(pendings, "alice", None);
        assert_ne!(first, second);
        assert_eq!(pendings.shown(&first).unwrap_err(), PendingError::Unknown);
        assert!(pendings.shown(&second).is_ok());
        assert!(pendings.shown(&other).is_ok(), "another user's stays");
    });
}

#[test]
fn a_link_taken_on_survives_a_new_call_of_its_user() {
    each(Duration::from_secs(600), |pendings| {
        let first = begun(pendings, "alice", None);
        let (cookie, link) = pendings.take(&first).unwrap();
        // The agent calls again while the person is at the authorization
        // server: a new link, and the one under way still answers.
        let second = begun(pendings, "alice", None);
        assert!(pendings.shown(&second).is_ok());
        let good = answer(&state_of(&link), "c0de", "https://as.example");
        let answered = signed_in(pendings.answer(&good, Some(&cookie)));
        assert_eq!(answered.user, "alice");
        assert_eq!(
            answered.remote.map(|remote| remote.url),
            matches!(pendings.store, Store::Memory(_))
                .then(|| "https://mcp.example/mcp".to_owned())
        );
    });
}

/// Links that expire: on either store, a link whose life is over is
/// neither shown nor taken on.
#[test]
fn links_expire() {
    each(Duration::ZERO, |short| {
        let id = begun(short, "alice", None);
        assert_eq!(short.shown(&id).unwrap_err(), PendingError::Unknown);
        assert_eq!(short.take(&id).unwrap_err(), PendingError::Unknown);
    });
}

/// Every file in the shared vault's folder of sign-ins waiting, as text.
fn kept_under(root: &std::path::Path) -> String {
    std::fs::read_dir(root.join("vault/pending"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default())
        .collect()
}

/// Where replicas share the vault, a link one gave is shown, taken on and
/// answered on another, each step once across them; what is kept is
/// sealed (no link id, state, verifier, cookie or client secret readable);
/// a new link given by either replaces the user's last; an entry that
/// does not open refuses (fails closed).
#[test]
fn replicas_sharing_the_vault_take_a_link_once_between_them() {
    let root = tempfile::tempdir().unwrap();
    let life = Duration::from_secs(600);
    let a = Pendings::shared(life, Arc::new(Opened::given(replica(root.path()))));
    let b = Pendings::shared(life, Arc::new(Opened::given(replica(root.path()))));
    let mut secret_client = client();
    secret_client.client_secret = Some("the-proxys-client-secret".into());
    let id = a
        .begin(&remote(), ("github", "alice"), found(), secret_client, None)
        .unwrap();
    let link_to_proxy = format!("https://proxy.example/oauth/start?id={id}");
    a.named(&id, &link_to_proxy);
    assert_eq!(b.shown(&id).unwrap().user, "alice");
    let (cookie, link) = b.take(&id).unwrap();
    assert_eq!(a.take(&id).unwrap_err(), PendingError::Taken);
    assert_eq!(a.shown(&id).unwrap_err(), PendingError::Taken);

    let state = state_of(&link);
    let kept = kept_under(root.path());
    assert!(kept.contains("\"sealed\""), "{kept}");
    for secret in [&id, &state, &cookie, "the-proxys-client-secret"] {
        assert!(!kept.contains(secret), "{secret} in {kept}");
    }
    let good = answer(&state, "c0de", "https://as.example");
    assert_eq!(
        a.answer(&good, Some("another-browsers-cookie")).err(),
        Some(PendingError::OtherBrowser)
    );
    let answered = signed_in(a.answer(&good, Some(&cookie)));
    assert_eq!(
        (answered.user.as_str(), answered.code.as_str()),
        ("alice", "c0de")
    );
    assert!(
        answered.remote.is_none(),
        "the answering replica's settings"
    );
    assert_eq!(answered.elicitation, Some(elicitation_id(&link_to_proxy)));
    assert_eq!(
        answered.client.client_secret.as_deref(),
        Some("the-proxys-client-secret")
    );
    assert!(!kept.contains(&answered.verifier));
    // Replayed on either: gone.
    for replica in [&a, &b] {
        assert_eq!(
            replica.answer(&good, Some(&cookie)).err(),
            Some(PendingError::UnknownState)
        );
    }

    let first = begun(&a, "bob", None);
    let second = begun(&b, "bob", None);
    assert_eq!(a.shown(&first).unwrap_err(), PendingError::Unknown);
    assert_eq!(a.shown(&second).unwrap().user, "bob");

    // Every entry sealed again under another key (or moved, or changed):
    // its link refuses (fails closed), and the user's next link is given.
    let other_key = tempfile::tempdir().unwrap();
    let stranger = Pendings::shared(life, Arc::new(Opened::given(replica(other_key.path()))));
    begun(&stranger, "bob", None);
    let theirs = std::fs::read_dir(other_key.path().join("vault/pending"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "json"))
        .unwrap();
    for entry in std::fs::read_dir(root.path().join("vault/pending")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            std::fs::copy(&theirs, &path).unwrap();
        }
    }
    assert_eq!(b.shown(&second).unwrap_err(), PendingError::Vault);
    assert_eq!(b.take(&second).unwrap_err(), PendingError::Vault);
    let third = begun(&a, "bob", None);
    assert_eq!(b.shown(&third).unwrap().user, "bob");
}

/// Many replicas' threads at once: a link is taken on by one, its answer
/// taken by one; every other is told it was.
#[test]
fn a_link_is_taken_once_however_many_replicas_try_at_once() {
    let root = tempfile::tempdir().unwrap();
    let life = Duration::from_secs(600);
    let replicas: Vec<Pendings> = (0..4)
        .map(|_| Pendings::shared(life, Arc::new(Opened::given(replica(root.path())))))
        .collect();
    let id = begun(&replicas[0], "alice", None);
    let at_once = |step: &(dyn Fn(&Pendings) -> bool + Sync)| {
        std::thread::scope(|scope| {
            let tries: Vec<_> = (0..16)
                .map(|n| {
                    let pendings = &replicas[n % replicas.len()];
                    scope.spawn(move || step(pendings))
                })
                .collect();
            tries
                .into_iter()
                .filter_map(|tried| tried.join().unwrap().then_some(()))
                .count()
        })
    };
    let taken = Mutex::new(Vec::new());
    let took = at_once(&|pendings| match pendings.take(&id) {
        Ok(taken_on) => {
            taken.lock().unwrap().push(taken_on);
            true
        }
        Err(err) => {
            assert_eq!(err, PendingError::Taken);
            false
        }
    });
    assert_eq!(took, 1);
    let (cookie, link) = taken.into_inner().unwrap().remove(0);
    let good = answer(&state_of(&link), "c0de", "https://as.example");
    let answered = at_once(&|pendings| match pendings.answer(&good, Some(&cookie)) {
        Ok(Answer::SignIn(answered)) => answered.user == "alice",
        Ok(Answer::Proof(_)) => panic!("no proof here"),
        Err(err) => {
            assert_eq!(err, PendingError::UnknownState);
            false
        }
    });
    assert_eq!(answered, 1);
}

/// What is older than a link's life is swept at a new link; a folder
/// holding as many entries as it may refuses new links (and only files
/// named as entries are ever removed).
#[test]
fn old_links_are_swept_and_a_full_folder_refuses_new_ones() {
    let root = tempfile::tempdir().unwrap();
    let long = Pendings::shared(
        Duration::from_secs(600),
        Arc::new(Opened::given(replica(root.path()))),
    );
    let old = begun(&long, "alice", None);
    let folder = root.path().join("vault/pending");
    std::fs::write(folder.join("keep-me"), "not an entry").unwrap();
    let short = Pendings::shared(
        Duration::ZERO,
        Arc::new(Opened::given(replica(root.path()))),
    );
    begun(&short, "bob", None);
    assert_eq!(long.shown(&old).unwrap_err(), PendingError::Unknown);
    assert!(folder.join("keep-me").exists());

    for n in 0..shared::MAX_ENTRIES {
        std::fs::write(folder.join(format!("{n:064x}.json")), "").unwrap();
    }
    let full = Pendings::shared(
        Duration::from_secs(600),
        Arc::new(Opened::given(replica(root.path()))),
    );
    assert_eq!(
        full.begin(&remote(), ("github", "carol"), found(), client(), None)
            .unwrap_err(),
        PendingError::Full
    );
}

/// The issuer a person is shown names where they sign in when that is
/// another origin than the issuer's (an alias's), and only then.
#[test]
fn the_issuer_shown_names_another_sign_in_origin() {
    assert_eq!(issuer_shown(&found()), "https://as.example");
    let mut aliased = found();
    aliased.authorization_endpoint = "https://mcp.example/authorize".into();
    assert_eq!(
        issuer_shown(&aliased),
        "https://as.example (its sign-in page is at https://mcp.example)"
    );
}
