use std::path::Path;

use serde_json::json;

use super::*;
use crate::chain::{ClientIdentity, Context, Direction, Phase, Transport};
use crate::config::RuleActions;

const RULES: &str = r#"
stopwords = ["example"]
[[rule]]
id = "tok"
description = "a vendor token"
keywords = ["tok_"]
regex = '''\btok_[A-Za-z0-9]{20}\b'''
severity = "high"
[[rule]]
id = "generic-secret"
description = "secret assignment"
keywords = ["secret", "api_key"]
regex = '''(?i)(?:secret|api_key)["']?\s*[:=]\s*["']?(?P<secret>[^\s"'\[\](){}<>$]{8,128})'''
entropy = 3.0
stopwords = true
priority = -10
severity = "medium"
"#;

const TOKEN: &str = "tok_Q8zR2mKx7LpW4nVb9TcY";
const OTHER_TOKEN: &str = "tok_Hj3Nw8QpZ2rTx5VmKc7L";

fn redact(config: &RedactConfig) -> Redact {
    let set = match RuleSet::parse(RULES, Path::new("test.toml")) {
        Ok(set) => set,
        Err(err) => panic!("{err}"),
    };
    match Scanner::new(set, Allowlist::default()) {
        Ok(scanner) => Redact::with_scanner(scanner, config),
        Err(err) => panic!("{err}"),
    }
}

fn exchange(message: Value, direction: Direction, phase: Phase) -> Exchange {
    let method = message["method"]
        .as_str()
        .unwrap_or("tools/call")
        .to_owned();
    Exchange::new(
        message,
        direction,
        phase,
        Context::new(
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Stdio,
            &method,
        ),
    )
}

fn call(arguments: Value) -> Exchange {
    exchange(
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":arguments}}),
        Direction::ClientToServer,
        Phase::Request,
    )
}

fn result(result: Value) -> Exchange {
    exchange(
        json!({"jsonrpc":"2.0","id":1,"result":result}),
        Direction::ClientToServer,
        Phase::Response,
    )
}

fn counted(exchange: &Exchange) -> Vec<(String, String, u64)> {
    counts(&exchange.annotations)
}

/// A lazily compiled rule whose regex cannot be built when a scan first
/// needs it (a built-in pattern is never so: a test compiles each): what
/// reaches the server has the text its keyword starts, up to the rule's
/// longest match, redacted; nothing is passed on unscanned.
#[test]
fn a_rule_that_cannot_compile_at_its_first_scan_redacts_around_its_keyword() {
    let rules = "[[rule]]\nid = \"big\"\ndescription = \"x\"\nkeywords = [\"tok_\"]\n\
                 regex = '''tok_(?:[a-z]{1000}){1000}'''\nseverity = \"high\"\nmax_len = 16\n";
    let set = match RuleSet::parse_with(rules, Path::new("t.toml"), rules::Compile::Lazily) {
        Ok(set) => set,
        Err(err) => panic!("{err}"),
    };
    let interceptor = match Scanner::new(set, Allowlist::default()) {
        Ok(scanner) => Redact::with_scanner(scanner, &RedactConfig::default()),
        Err(err) => panic!("{err}"),
    };
    let mut request = call(json!({"text": "key tok_abcdefghijklmnopqrstuvwxyz end", "n": 3}));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    assert_eq!(
        request.message["params"]["arguments"],
        json!({"text": "key [REDACTED:big]mnopqrstuvwxyz end", "n": 3}),
        "from the keyword, `max_len` bytes"
    );
    assert_eq!(counted(&request), [("big".into(), "request".into(), 1)]);
}

#[test]
fn arguments_and_results_are_redacted_and_counted_per_direction() {
    let interceptor = redact(&RedactConfig::default());
    let mut request = call(json!({"text": format!("use {TOKEN} twice: {TOKEN}"), "n": 3}));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    assert_eq!(
        request.message["params"]["arguments"],
        json!({"text": "use [REDACTED:tok] twice: [REDACTED:tok]", "n": 3})
    );
    assert_eq!(counted(&request), [("tok".into(), "request".into(), 2)]);

    let image = b64(format!("PNG\x00 text chunk: {TOKEN} end").as_bytes());
    let mut response = result(json!({
        "content": [
            {"type": "text", "text": format!("here: {TOKEN}")},
            {"type": "image", "data": image, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "blob": b64(TOKEN.as_bytes())}},
            {"type": "resource", "resource": {"uri": "file:///b", "text": TOKEN}}
        ],
        "structuredContent": {"deep": [{"k": TOKEN}], "blob": TOKEN, "data": TOKEN}
    }));
    assert_eq!(interceptor.see(&mut response), Verdict::Continue);
    let content = &response.message["result"]["content"];
    assert_eq!(content[0]["text"], json!("here: [REDACTED:tok]"));
    assert_eq!(
        unb64(&content[1]["data"]),
        b"PNG\x00 text chunk: [REDACTED:tok] end",
        "image data is decoded, scanned and encoded again"
    );
    assert_eq!(unb64(&content[2]["resource"]["blob"]), b"[REDACTED:tok]");
    assert_eq!(content[3]["resource"]["text"], json!("[REDACTED:tok]"));
    let structured = &response.message["result"]["structuredContent"];
    assert_eq!(structured["deep"][0]["k"], json!("[REDACTED:tok]"));
    assert_eq!(
        structured["blob"],
        json!("[REDACTED:tok]"),
        "`blob` outside the schema's positions is text"
    );
    assert_eq!(structured["data"], json!("[REDACTED:tok]"));
    assert_eq!(counted(&response), [("tok".into(), "response".into(), 7)]);
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap_or_default())
        .unwrap_or_default()
}

fn denied_reason(verdict: Verdict) -> String {
    match verdict {
        Verdict::Deny(denial) => denial.reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn base64_fields_that_do_not_decode_are_refused_and_shapes_elsewhere_are_text() {
    let interceptor = redact(&RedactConfig::default());
    let mut response = result(json!({
        "content": [{"type": "image", "data": "not base64 at all!", "mimeType": "image/png"}]
    }));
    let reason = denied_reason(interceptor.see(&mut response));
    assert!(reason.contains("does not decode"), "{reason}");
    let mut blob = exchange(
        json!({"jsonrpc":"2.0","id":1,"result":{"contents":[{"uri":"file:///x","blob":"%%%"}]}}),
        Direction::ClientToServer,
        Phase::Response,
    );
    blob.context.method = "resources/read".into();
    assert!(denied_reason(interceptor.see(&mut blob)).contains("does not decode"));

    // A secret written into a base64 field as text decodes to noise: it is
    // read as text too, and refuses the message.
    let mut raw = result(json!({
        "content": [{"type": "image", "data": TOKEN, "mimeType": "image/png"}]
    }));
    assert!(denied_reason(interceptor.see(&mut raw)).contains("as text"));
    // A method name with a secret cannot be redacted: refused.
    let mut named = exchange(
        json!({"jsonrpc":"2.0","method": format!("notifications/{TOKEN}"),"params":{}}),
        Direction::ServerToClient,
        Phase::Notification,
    );
    assert!(denied_reason(interceptor.on_notification(&mut named)).contains("method name"));

    // An image-shaped argument is not a schema position: its data is text.
    let mut request = call(json!({"picture": {"type": "image", "data": TOKEN}}));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    assert_eq!(
        request.message["params"]["arguments"]["picture"]["data"],
        json!("[REDACTED:tok]")
    );
    // Nor is an image in a tool's result outside `content`.
    let mut odd = result(json!({"structuredContent": {"type": "image", "data": "not base64!"}}));
    assert_eq!(interceptor.see(&mut odd), Verdict::Continue);
}

#[test]
fn keys_envelope_members_and_meta_are_scanned() {
    let interceptor = redact(&RedactConfig::default());
    let mut request = exchange(
        json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {
                "name": "echo",
                "arguments": {TOKEN: 1, "x": {TOKEN: "v"}},
                "_meta": {"progressToken": 1, "note": TOKEN}
            },
            "x-extra": format!("side {TOKEN}"),
            TOKEN: true
        }),
        Direction::ClientToServer,
        Phase::Request,
    );
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    let text = request.message.to_string();
    assert!(!text.contains(TOKEN), "{text}");
    assert_eq!(
        request.message["params"]["arguments"],
        json!({"[REDACTED:tok]": 1, "x": {"[REDACTED:tok]": "v"}})
    );
    assert_eq!(
        request.message["params"]["_meta"]["note"],
        json!("[REDACTED:tok]")
    );
    assert_eq!(request.message["x-extra"], json!("side [REDACTED:tok]"));
    assert_eq!(request.message["[REDACTED:tok]"], json!(true));
    assert_eq!(request.message["id"], json!(7));
    assert_eq!(request.message["method"], json!("tools/call"));

    // A key that holds a secret encoded is read decoded, like a value.
    let encoded_key = b64(format!("token={TOKEN}").as_bytes());
    let mut encoded = call(json!({ encoded_key: 1 }));
    assert_eq!(interceptor.see(&mut encoded), Verdict::Continue);
    assert_eq!(
        encoded.message["params"]["arguments"],
        json!({"[REDACTED:tok]": 1})
    );

    // Nothing checks a server's `jsonrpc`: it is walked like the rest.
    let mut odd = exchange(
        json!({"jsonrpc": TOKEN, "id": 1, "result": {}}),
        Direction::ClientToServer,
        Phase::Response,
    );
    assert_eq!(interceptor.see(&mut odd), Verdict::Continue);
    assert_eq!(odd.message["jsonrpc"], json!("[REDACTED:tok]"));

    // Two keys that redact to one name: refused, not merged.
    let other = TOKEN.replace('Q', "R");
    let mut clash = call(json!({TOKEN: 1, other: 2}));
    let reason = denied_reason(interceptor.see(&mut clash));
    assert!(reason.contains("merge two members"), "{reason}");
}

#[test]
fn secrets_split_across_adjacent_text_blocks_are_found() {
    let interceptor = redact(&RedactConfig::default());
    let (head, tail) = TOKEN.split_at(10);
    let (left, middle) = tail.split_at(3);
    let mut response = result(json!({
        "content": [
            {"type": "text", "text": format!("the key is {head}")},
            {"type": "text", "text": left},
            {"type": "text", "text": format!("{middle} and that is all")},
            {"type": "text", "text": "unrelated"}
        ]
    }));
    assert_eq!(interceptor.see(&mut response), Verdict::Continue);
    let texts: Vec<&str> = response.message["result"]["content"]
        .as_array()
        .map(|blocks| blocks.iter().filter_map(|b| b["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        texts,
        [
            "the key is [REDACTED:tok]",
            "[REDACTED:tok]",
            "[REDACTED:tok] and that is all",
            "unrelated"
        ]
    );
    assert_eq!(counted(&response), [("tok".into(), "response".into(), 1)]);

    // Around an image between the two halves, likewise.
    let mut around = result(json!({
        "content": [
            {"type": "text", "text": format!("key {head}")},
            {"type": "image", "data": b64(b"\x89PNG"), "mimeType": "image/png"},
            {"type": "text", "text": format!("{tail} end")}
        ]
    }));
    assert_eq!(interceptor.see(&mut around), Verdict::Continue);
    let text = around.message.to_string();
    assert!(!text.contains(head) && !text.contains(tail), "{text}");

    // Prompt messages whose content is a text block, likewise.
    let mut prompt = result(json!({
        "messages": [
            {"role": "user", "content": {"type": "text", "text": head}},
            {"role": "user", "content": {"type": "text", "text": tail}}
        ]
    }));
    prompt.context.method = "prompts/get".into();
    interceptor.see(&mut prompt);
    assert!(
        !prompt.message.to_string().contains(tail),
        "{}",
        prompt.message
    );

    // Messages whose content is a list of blocks: split from the last
    // text of one message to the first of the next, past an image, and
    // within one message's list as well; each secret counted once.
    let (second_head, second_tail) = OTHER_TOKEN.split_at(12);
    let mut sampling = exchange(
        json!({"jsonrpc": "2.0", "id": 4, "method": "sampling/createMessage", "params": {
            "maxTokens": 10,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "first"},
                    {"type": "text", "text": format!("key {head}")},
                    {"type": "image", "data": b64(b"\x89PNG"), "mimeType": "image/png"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": format!("{tail} then {second_head}")},
                    {"type": "text", "text": format!("{second_tail} end")}
                ]}
            ]
        }}),
        Direction::ServerToClient,
        Phase::Request,
    );
    assert_eq!(interceptor.see(&mut sampling), Verdict::Continue);
    let text = sampling.message.to_string();
    for piece in [head, tail, second_head, second_tail] {
        assert!(!text.contains(piece), "{piece} in {text}");
    }
    assert_eq!(
        sampling.message["params"]["messages"][1]["content"][0]["text"],
        "[REDACTED:tok] then [REDACTED:tok]"
    );
    assert_eq!(counted(&sampling), [("tok".into(), "response".into(), 2)]);

    // Spans found at two levels that overlap: a long assignment cut at its
    // cap across one message's blocks, a token from there into the next
    // message. Every byte of both is covered.
    let long: String = "Zq7Xw2Kp9Lm4Rt8Vb3Nc6Hj1Fg5Ds0A".repeat(4)[..106].to_owned();
    let mut overlapping = exchange(
        json!({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "params": {
            "maxTokens": 10,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": format!("secret={long}")},
                    {"type": "text", "text": format!("abcdefghij0123456789-{}", &TOKEN[..15])}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": format!("{} and more", &TOKEN[15..])}
                ]}
            ]
        }}),
        Direction::ServerToClient,
        Phase::Request,
    );
    assert_eq!(interceptor.see(&mut overlapping), Verdict::Continue);
    let text = overlapping.message.to_string();
    for piece in [&TOKEN[4..15], &TOKEN[15..], &long[..20]] {
        assert!(!text.contains(piece), "{piece} in {text}");
    }
}

#[test]
fn encoded_secrets_in_text_are_decoded_once() {
    let interceptor = redact(&RedactConfig::default());
    let encoded = b64(format!("token={TOKEN}").as_bytes());
    let escaped: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    let mut request = call(json!({
        "config": format!("blob: {encoded} (base64)"),
        "url": format!("https://x.test/cb?t={escaped}&ok=1"),
    }));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    assert_eq!(
        request.message["params"]["arguments"],
        json!({
            "config": "blob: [REDACTED:tok] (base64)",
            "url": "https://x.test/cb?t=[REDACTED:tok]&ok=1",
        })
    );
    // Hashes, SHAs, UUIDs and base64 of binary are left as they are.
    let benign = json!({
        "sha": "9fceb02d0ae598e95dc970b74767f19372d61af8",
        "uuid": "550e8400-e29b-41d4-a716-446655440000",
        "integrity": "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
        "png": b64(&[0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 1, 0, 0, 0, 1, 0, 8, 6]),
    });
    let mut clean = call(benign.clone());
    assert_eq!(interceptor.see(&mut clean), Verdict::Continue);
    assert_eq!(clean.message["params"]["arguments"], benign);
    assert!(clean.annotations.is_empty());
}

#[test]
fn what_is_stored_is_redacted_whatever_its_keys() {
    let interceptor = redact(&RedactConfig::default());
    // Kept arguments and record details are not envelopes: `id` and
    // `method` in them are scanned like any member.
    let mut kept = json!({"method": TOKEN, "id": TOKEN, "jsonrpc": TOKEN, TOKEN: 1});
    interceptor.redact_all(&mut kept);
    assert!(!kept.to_string().contains(TOKEN), "{kept}");
    let mut text = json!(format!("uri file:///x?k={TOKEN}"));
    interceptor.redact_all(&mut text);
    assert_eq!(text, json!("uri file:///x?k=[REDACTED:tok]"));
}

#[test]
fn many_findings_in_one_string_are_all_redacted() {
    // The key as context, a percent-escape and base64 runs make the same
    // findings again: they are merged, not compared pairwise.
    let interceptor = redact(&RedactConfig::default());
    let encoded = b64(format!("token={TOKEN}").as_bytes());
    let text = format!("%41 {TOKEN} {encoded} ").repeat(3000);
    let mut request = call(json!({ "api_key": text }));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    let out = request.message["params"]["arguments"]["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!out.contains(TOKEN) && !out.contains(&encoded));
    assert_eq!(out.matches("[REDACTED:tok]").count(), 6000);
}

#[test]
fn too_deep_to_scan_is_refused() {
    let interceptor = redact(&RedactConfig::default());
    let mut deep = json!(TOKEN);
    for _ in 0..300 {
        deep = json!([deep]);
    }
    let mut request = call(json!({ "deep": deep }));
    assert!(denied_reason(interceptor.see(&mut request)).contains("nested too deeply"));
}

#[test]
fn an_object_key_is_context_for_its_value() {
    let interceptor = redact(&RedactConfig::default());
    let mut request = call(json!({"api_key": "Zq8-Lm3!Wx7pR2", "note": "Zq8-Lm3!Wx7pR2"}));
    interceptor.see(&mut request);
    assert_eq!(
        request.message["params"]["arguments"],
        json!({"api_key": "[REDACTED:generic-secret]", "note": "Zq8-Lm3!Wx7pR2"}),
        "the value under `api_key` is a secret; the same text elsewhere has no context"
    );
    let mut quiet = call(json!({"api_key": "an example value 123"}));
    interceptor.see(&mut quiet);
    assert!(quiet.annotations.is_empty(), "stopwords still apply");
}

#[test]
fn deny_names_the_rule_never_the_secret() {
    let config = RedactConfig {
        responses: RedactAction::Deny,
        ..RedactConfig::default()
    };
    let interceptor = redact(&config);
    let mut response = result(json!({"content": [{"type": "text", "text": TOKEN}]}));
    let Verdict::Deny(denial) = interceptor.see(&mut response) else {
        panic!("a secret toward the client is denied");
    };
    assert_eq!(denial.data.get("rule"), Some(&json!("tok")));
    assert!(!denial.reason.contains(TOKEN));
    assert!(denial.reason.contains("tok"));
    assert_eq!(counted(&response), [("tok".into(), "response".into(), 1)]);
    assert_eq!(
        response.message["result"]["content"][0]["text"],
        json!("[REDACTED:tok]"),
        "nothing derived from the refused message (the audit's hash) sees the secret"
    );

    // Requests keep the default (redact).
    let mut request = call(json!({"t": TOKEN}));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    assert_eq!(
        request.message["params"]["arguments"]["t"],
        json!("[REDACTED:tok]")
    );
}

#[test]
fn per_rule_actions_override_the_direction_default() {
    let located = |id: &str| crate::config::Located {
        value: id.to_owned(),
        file: "p.toml".into(),
        location: None,
        key: format!("redact.rules.{id}"),
    };
    let config = RedactConfig {
        rules: vec![
            RuleActions {
                id: located("tok"),
                requests: Some(RedactAction::Log),
                responses: Some(RedactAction::Off),
            },
            RuleActions {
                id: located("generic-secret"),
                requests: Some(RedactAction::Deny),
                responses: None,
            },
        ],
        ..RedactConfig::default()
    };
    let interceptor = redact(&config);
    let mut request = call(json!({"t": TOKEN}));
    assert_eq!(interceptor.see(&mut request), Verdict::Continue);
    assert_eq!(
        request.message["params"]["arguments"]["t"],
        json!(TOKEN),
        "log leaves it"
    );
    assert_eq!(counted(&request), [("tok".into(), "request".into(), 1)]);

    let mut response = result(json!({"content": [{"type": "text", "text": TOKEN}]}));
    interceptor.see(&mut response);
    assert!(response.annotations.is_empty(), "off: not even counted");

    let mut generic = call(json!({"q": "secret = Zq8-Lm3!Wx7pR2"}));
    assert!(matches!(interceptor.see(&mut generic), Verdict::Deny(_)));
}

#[test]
fn every_kind_of_message_is_scanned_in_the_right_direction() {
    let interceptor = redact(&RedactConfig::default());
    // A server's sampling request goes to the client: `response` side.
    let mut sampling = exchange(
        json!({"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{"messages":[{"role":"user","content":{"type":"text","text":TOKEN}}]}}),
        Direction::ServerToClient,
        Phase::Request,
    );
    interceptor.see(&mut sampling);
    assert_eq!(
        sampling.message["params"]["messages"][0]["content"]["text"],
        json!("[REDACTED:tok]")
    );
    assert_eq!(counted(&sampling), [("tok".into(), "response".into(), 1)]);
    // The client's answer to it goes to the server: `request` side.
    let mut answer = exchange(
        json!({"jsonrpc":"2.0","id":7,"result":{"role":"assistant","content":{"type":"text","text":TOKEN}}}),
        Direction::ServerToClient,
        Phase::Response,
    );
    interceptor.see(&mut answer);
    assert_eq!(counted(&answer), [("tok".into(), "request".into(), 1)]);
    // Log notifications and error messages.
    let mut log = exchange(
        json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":{"msg":TOKEN}}}),
        Direction::ServerToClient,
        Phase::Notification,
    );
    interceptor.on_notification(&mut log);
    assert_eq!(
        log.message["params"]["data"]["msg"],
        json!("[REDACTED:tok]")
    );
    let mut error = exchange(
        json!({"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":format!("bad key {TOKEN}")}}),
        Direction::ClientToServer,
        Phase::Response,
    );
    interceptor.see(&mut error);
    assert_eq!(
        error.message["error"]["message"],
        json!("bad key [REDACTED:tok]")
    );
    assert_eq!(error.message["error"]["code"], json!(-32000));
}

#[test]
fn unknown_rule_ids_in_the_config_are_refused_with_their_place() {
    let config = match crate::config::Config::parse(
        "[redact]\ndisable = [\"no-such-rule\"]\n",
        Path::new("p.toml"),
    ) {
        Ok(config) => config,
        Err(err) => panic!("{err}"),
    };
    match Redact::new(&config.redact) {
        Ok(_) => panic!("an unknown rule id is refused"),
        Err(err) => assert_eq!(
            err.to_string(),
            "p.toml:2:12: `redact.disable[0]`: no rule is called `no-such-rule` (`portcullis redact rules` lists them)"
        ),
    }
}

#[test]
fn counts_parse_back_from_annotations() {
    let annotations = vec![
        Annotation {
            interceptor: "redact".into(),
            key: ANNOTATION.into(),
            value: "request aws-key 2".into(),
        },
        Annotation {
            interceptor: "authz".into(),
            key: ANNOTATION.into(),
            value: "request fake 1".into(),
        },
    ];
    assert_eq!(
        counts(&annotations),
        [("aws-key".into(), "request".into(), 2)]
    );
}

/// Found by the `redact` fuzz target: a match that takes the line feed
/// after its secret must leave it to the next match, which begins with it
/// (the second flag's token survived the first pass).
#[test]
fn secrets_on_consecutive_lines_are_each_found_in_one_pass() {
    let Ok(scanner) = scanner(&RedactConfig::default()) else {
        panic!("the built-in rules load");
    };
    // Tokens of no known shape: only the flag's rule finds them.
    let tokens = [
        "Zk8qP2xR7mN4vB9tL3sW6yH1",
        "Qw7eR4tY1uI8oP5aS2dF9gH3",
        "Mn6bV3cX0zL7kJ4hG1fD8sA5",
    ];
    let text = tokens.map(|token| format!("--token {token}")).join("\n");
    let mut findings = Vec::new();
    scanner.scan(text.as_bytes(), &mut findings);
    assert_eq!(findings.len(), 3, "{findings:?}");
    let redacted = scanner.redact(&text, &findings);
    for token in tokens {
        assert!(!redacted.contains(token), "{redacted}");
    }
    let mut again = Vec::new();
    scanner.scan(redacted.as_bytes(), &mut again);
    assert!(again.is_empty(), "{redacted}");
}

/// A user's token the proxy read from its vault is redacted wherever a
/// message carries it (the text, a key, a base64 run), whatever the rules'
/// actions (here: every rule off toward the client), and counted as
/// `user-token`; what is stored is scrubbed of it too.
#[test]
fn a_users_token_from_the_vault_is_redacted_wherever_it_stands() {
    let token = "vault-held-user-token-Zq8Lm3Wx7pR2Hj3Nw8QpZ2rT";
    crate::signin::known::known().remember(token);
    let config = RedactConfig {
        responses: RedactAction::Off,
        ..RedactConfig::default()
    };
    let interceptor = redact(&config);
    let mut response = result(json!({
        "content": [{"type": "text", "text": format!("your token: {token}.")}],
        "structuredContent": { token: "as a key", "b": b64(format!("Authorization: Bearer {token}").as_bytes()) }
    }));
    assert_eq!(interceptor.see(&mut response), Verdict::Continue);
    let text = response.message.to_string();
    assert!(!text.contains(token), "{text}");
    assert_eq!(
        response.message["result"]["content"][0]["text"],
        "your token: [REDACTED:user-token]."
    );
    assert!(
        response.message["result"]["structuredContent"]["b"]
            .as_str()
            .is_some_and(|b| b.starts_with("[REDACTED:user-token]")),
        "{text}"
    );
    assert_eq!(
        counted(&response),
        [("user-token".into(), "response".into(), 3)],
        "the text, the key, the base64 run"
    );
    assert_eq!(
        interceptor.scrubbed(&format!("refused: {token}")),
        "refused: [REDACTED:user-token]"
    );
}
