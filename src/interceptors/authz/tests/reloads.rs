//! Reloads of a policy folder: a valid change applies, a broken one keeps
//! the last good set, and concurrent decisions each come from one set.

use super::*;

fn allowed(engine: &PolicyEngine, name: &str) -> bool {
    let target = tool(name, false);
    engine
        .current()
        .decide(&query("c", &[], Action::CallTool, &target, None))
        .allowed
}

#[test]
fn a_valid_change_applies_and_a_broken_one_keeps_the_last_good_set() {
    let dir = folder(ALLOW_ECHO);
    let engine = engine(dir.path());
    assert!(allowed(&engine, "example__echo") && !allowed(&engine, "example__add"));
    assert_eq!(engine.reload().ok(), Some(Reload::Unchanged));

    write(dir.path(), "main.cedar", ALLOW_ADD);
    let first = engine.current().id.clone();
    let Ok(Reload::Applied(id)) = engine.reload() else {
        panic!("a valid change must apply");
    };
    assert_ne!(id, first);
    assert!(!allowed(&engine, "example__echo") && allowed(&engine, "example__add"));

    // A syntax error, then a schema error, then a missing schema: each is
    // rejected and the last good set stays in force.
    for (file, text) in [
        ("main.cedar", "permit(principal, action, resource"),
        (
            "main.cedar",
            "permit(principal, action, resource) when { resource.nope };",
        ),
        (
            "extra.cedar",
            "permit(principal == Nobody::\"x\", action, resource);",
        ),
    ] {
        write(dir.path(), file, text);
        assert!(
            matches!(engine.reload(), Err(PolicyError::Invalid(_))),
            "{text}"
        );
        assert_eq!(engine.current().id, id);
        assert!(allowed(&engine, "example__add") && !allowed(&engine, "example__echo"));
        let _ = std::fs::remove_file(dir.path().join("extra.cedar"));
        write(dir.path(), "main.cedar", ALLOW_ADD);
    }
    // Emptying the folder is refused too: a reload never drops to deny-all.
    let _ = std::fs::remove_file(dir.path().join("main.cedar"));
    assert!(matches!(engine.reload(), Err(PolicyError::Invalid(_))));
    assert!(allowed(&engine, "example__add"));
    let _ = std::fs::remove_file(dir.path().join("schema.cedarschema"));
    write(dir.path(), "main.cedar", ALLOW_ECHO);
    assert!(engine.reload().is_err());
    assert!(
        allowed(&engine, "example__add"),
        "never deny-all by accident"
    );
}

#[test]
fn concurrent_decisions_during_reloads_each_come_from_one_set() {
    // Set A allows echo by `a-echo` and forbids add by `a-add`; set B the
    // reverse with its own ids. A decision mixing the two would name a
    // policy of one set under the other's id, or allow both or neither.
    let set_a = r#"@id("a-echo") permit(principal, action, resource == Tool::"example__echo");
                   @id("a-add") forbid(principal, action, resource == Tool::"example__add");
                   @id("a-all") permit(principal, action, resource == Tool::"example__add");"#;
    let set_b = r#"@id("b-add") permit(principal, action, resource == Tool::"example__add");
                   @id("b-echo") forbid(principal, action, resource == Tool::"example__echo");
                   @id("b-all") permit(principal, action, resource == Tool::"example__echo");"#;
    let dir = folder(set_a);
    let engine = Arc::new(engine(dir.path()));
    let id_a = engine.current().id.clone();
    write(dir.path(), "main.cedar", set_b);
    let _ = engine.reload();
    let id_b = engine.current().id.clone();
    assert_ne!(id_a, id_b);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deciders: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            let stop = stop.clone();
            let (id_a, id_b) = (id_a.clone(), id_b.clone());
            std::thread::spawn(move || {
                let echo = tool("example__echo", false);
                let add = tool("example__add", false);
                let mut decisions = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let store = engine.current();
                    let e = store.decide(&query("c", &[], Action::CallTool, &echo, None));
                    let a = store.decide(&query("c", &[], Action::CallTool, &add, None));
                    let consistent = if e.policy_set == id_a {
                        e.allowed
                            && e.policies == ["a-echo"]
                            && !a.allowed
                            && a.policies == ["a-add"]
                    } else {
                        e.policy_set == id_b
                            && !e.allowed
                            && e.policies == ["b-echo"]
                            && a.allowed
                            && (a.policies == ["b-add"])
                    };
                    assert!(consistent, "mixed decision: {e:?} {a:?}");
                    assert_eq!(e.policy_set, a.policy_set);
                    decisions += 1;
                }
                decisions
            })
        })
        .collect();
    for round in 0..40 {
        write(
            dir.path(),
            "main.cedar",
            if round % 2 == 0 { set_a } else { set_b },
        );
        assert!(engine.reload().is_ok());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: usize = deciders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    assert!(total > 0, "the deciders ran");
}

#[test]
fn a_refused_reload_is_shown_until_the_folder_loads_again() {
    let dir = folder(ALLOW_ECHO);
    let engine = engine(dir.path());
    let in_force = engine.current().id.clone();
    let poll = |engine: &PolicyEngine| engine.report(engine.reload(), engine.current().id.clone());
    poll(&engine);
    assert_eq!(engine.rejection(), None);

    write(
        dir.path(),
        "broken.cedar",
        "permit(principal,\n  action, resource",
    );
    poll(&engine);
    let Some(first) = engine.rejection() else {
        panic!("a broken file is a rejection");
    };
    assert!(
        first.message.contains("broken.cedar:2:"),
        "{}",
        first.message
    );
    assert_eq!(engine.current().id, in_force, "the last good set stays");
    // Polled again, the same rejection keeps the time it was first met.
    poll(&engine);
    assert_eq!(engine.rejection(), Some(first));

    // Taken out: the folder is the set in force again.
    let _ = std::fs::remove_file(dir.path().join("broken.cedar"));
    poll(&engine);
    assert_eq!(engine.rejection(), None);
    // Broken, then fixed by a valid change.
    write(dir.path(), "main.cedar", "permit(");
    poll(&engine);
    assert!(engine.rejection().is_some());
    write(dir.path(), "main.cedar", ALLOW_ADD);
    poll(&engine);
    assert_eq!(engine.rejection(), None);
    assert_ne!(engine.current().id, in_force);
}

#[test]
fn a_set_lists_its_policies_as_written_in_file_order() {
    let store = store(&[
        "// the echo tool\n@id(\"echo\")\npermit(principal, action, resource == Tool::\"example__echo\");",
        "@id(\"no-add\") forbid(principal, action, resource == Tool::\"example__add\");\n\npermit(principal, action == Action::\"list_tools\", resource);",
    ]);
    let listed: Vec<(&str, &str, String, usize)> = store
        .policies()
        .iter()
        .map(|p| {
            (
                p.id,
                p.origin.effect,
                p.origin.file.display().to_string(),
                p.origin.line,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("echo", "permit", "p0.cedar".into(), 2),
            ("no-add", "forbid", "p1.cedar".into(), 1),
            ("p1.cedar:3", "permit", "p1.cedar".into(), 3),
        ]
    );
    let texts: Vec<String> = store.policies().into_iter().map(|p| p.text).collect();
    assert_eq!(
        texts[0],
        "@id(\"echo\")\npermit(principal, action, resource == Tool::\"example__echo\");"
    );
    assert!(
        texts[1].starts_with("@id(\"no-add\") forbid("),
        "{}",
        texts[1]
    );
    assert!(store.loaded_at <= SystemTime::now());
}
