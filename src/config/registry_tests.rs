use serde_json::json;

use super::*;

#[test]
fn references_are_parsed_strictly() {
    let parsed = RegistryRef::parse("official/io.github.user/weather@1.0.2").unwrap();
    assert_eq!(parsed.server, "io.github.user/weather");
    assert_eq!(parsed.version, "1.0.2");
    assert_eq!(parsed.pin, None);
    assert_eq!(
        parsed.unpinned(),
        "registry://official/io.github.user/weather@1.0.2"
    );
    let pin = format!("sha256:{}", "a".repeat(64));
    let pinned = RegistryRef::parse(&format!("team/com.example/x@2.0.0+build.1#{pin}")).unwrap();
    assert_eq!(pinned.pin.as_deref(), Some(pin.as_str()));
    let registry = RegistryConfig {
        name: "team".into(),
        url: "http://127.0.0.1:9/v0.1".into(),
        dir: PathBuf::from("/cfg/registries/team"),
    };
    assert_eq!(
        pinned.api_url(&registry),
        "http://127.0.0.1:9/v0.1/servers/com.example%2Fx/versions/2.0.0%2Bbuild.1"
    );
    assert_eq!(
        pinned.file(&registry),
        PathBuf::from("/cfg/registries/team/com.example/x@2.0.0+build.1.json")
    );
    for bad in [
        "official/io.github.user/weather",
        "official/io.github.user/weather@latest",
        "official/io.github.user/weather@LATEST",
        "official/../weather@1",
        "official/io.github.user/..@1",
        "official/io.github.user/a/b@1",
        "official/io.github.user/weather@1/../../x",
        "official/io.github.user/weather@..",
        "Official/io.github.user/weather@1",
        "official/io.github.user/weather@1#sha256:ABC",
        "official/io.github.user/weather@1 2",
        "official/io.github.user/we\u{1b}ather@1",
        "official/io.github.user@1",
    ] {
        assert!(RegistryRef::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_canonical_form_does_not_depend_on_order_or_spacing() {
    let a: Value =
        serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"y": 2, "x": 1}], "c": 3}}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a":{"c":3,"d":[1,{"x":1,"y":2}]},"b":1}"#).unwrap();
    assert_eq!(canonical(&a), canonical(&b));
    assert_eq!(
        String::from_utf8(canonical(&a)).unwrap(),
        r#"{"a":{"c":3,"d":[1,{"x":1,"y":2}]},"b":1}"#
    );
}

#[test]
fn an_answer_must_be_the_version_asked_and_not_deleted() {
    let asked = RegistryRef::parse("official/io.github.user/weather@1.0.2").unwrap();
    let answer = |name: &str, version: &str, status: &str| {
        serde_json::to_vec(&json!({
            "server": {"name": name, "version": version, "description": "d"},
            "_meta": {"io.modelcontextprotocol.registry/official": {"status": status}}
        }))
        .unwrap()
    };
    let pulled = from_response(
        &answer("io.github.user/weather", "1.0.2", "deprecated"),
        &asked,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled.status.as_deref(), Some("deprecated"));
    assert!(pulled.json.starts_with(b"{\"description\""));
    for (body, why) in [
        (
            answer("io.github.user/other", "1.0.2", "active"),
            "not what was asked",
        ),
        (
            answer("io.github.user/weather", "1.0.3", "active"),
            "not what was asked",
        ),
        (
            answer("io.github.user/weather", "1.0.2", "deleted"),
            "deleted",
        ),
        (
            b"{\"name\":\"io.github.user/weather\"}".to_vec(),
            "no `server`",
        ),
        (b"<html>".to_vec(), "not JSON"),
    ] {
        let refused = from_response(&body, &asked).err().unwrap_or_default();
        assert!(refused.contains(why), "{why}: {refused}");
    }
}
