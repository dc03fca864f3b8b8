#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::{Mutex, OnceLock};

use serde_json::{Value, json};

use super::*;

/// One engine for the tests (compiling it takes a second or two).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new().unwrap())
}

/// Answers at once: `echo` its arguments, `refused` with a refusal;
/// `later` its arguments from another thread, 20 ms on; `silent` never
/// answers. Keeps every call it was given.
#[derive(Default)]
struct Tools {
    calls: Mutex<Vec<Call>>,
}

impl Dispatch for Tools {
    fn start(&self, call: Call, reply: Reply) {
        let arguments = call.arguments.clone();
        let tool = call.tool.clone();
        self.calls.lock().unwrap().push(call);
        match tool.as_str() {
            "demo__echo" => reply.send(Ok(json!({ "echoed": arguments }))),
            "demo__refused" => reply.send(Err("denied by policy: demo__refused".to_owned())),
            "demo__big" => reply.send(Ok(json!("x".repeat(3 << 20)))),
            "demo__later" => {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    reply.send(Ok(json!({ "later": arguments })));
                });
            }
            _ => {}
        }
    }
}

const TOOLS: [&str; 5] = [
    "demo__echo",
    "demo__refused",
    "demo__later",
    "demo__silent",
    "demo__big",
];

/// The embedded module is the one whose digest the source names.
#[test]
fn the_module_is_the_one_named() {
    use sha2::Digest as _;
    assert_eq!(hex::encode(sha2::Sha256::digest(MODULE)), MODULE_SHA256);
}

/// Calls answered later, from another thread, in another order; a tool put
/// on `tools` by the script under another name is still the tool it was;
/// a string cut in half (a lone surrogate) goes and
/// comes back; nothing of one script is left for the next.
#[test]
fn answers_come_from_anywhere_and_scripts_share_nothing() {
    let script = r#"
        const [a, b] = await Promise.all([tools.demo__later({ n: 1 }), tools.demo__echo({ n: 2 })]);
        tools.other__tool = tools.demo__echo;
        let other = null;
        try { await tools.other__tool({}); } catch (e) { other = String(e.message); }
        globalThis.leftover = "secret";
        const half = "😀".slice(0, 1);
        const back = await tools.demo__echo({ half });
        return { a, b, other, half: back.echoed.half };
    "#;
    let (outcome, calls) = run(script, Limits::default());
    let result = outcome.unwrap().envelope["result"].clone();
    assert_eq!(result["a"], json!({ "later": { "n": 1 } }), "{result}");
    assert_eq!(result["b"], json!({ "echoed": { "n": 2 } }), "{result}");
    assert_eq!(result["half"], "\u{fffd}", "{result}");
    // The name it was put under changes nothing: it calls `demo__echo`
    // (the function it is), never a tool the script was not given (the
    // host refuses any other name too).
    assert!(result["other"].is_null(), "{result}");
    assert!(
        calls.iter().all(|call| TOOLS.contains(&call.tool.as_str())),
        "{calls:?}"
    );
    let next = envelope("return typeof globalThis.leftover;");
    assert_eq!(next["result"], "undefined");
    // Its calls are told it ended.
    assert!(calls.iter().all(|call| call.ended.is_cancelled()));
}

/// `script` run within `limits`: what it gave, and the calls it made.
fn run(script: &str, limits: Limits) -> (Result<Outcome, RunError>, Vec<Call>) {
    let tools = Arc::new(Tools::default());
    let dispatch: Arc<dyn Dispatch> = tools.clone();
    let names: Vec<String> = TOOLS.iter().map(|name| (*name).to_owned()).collect();
    let outcome = engine().run(script, &names, &limits, dispatch);
    let calls = std::mem::take(&mut *tools.calls.lock().unwrap());
    (outcome, calls)
}

fn envelope(script: &str) -> Value {
    run(script, Limits::default()).0.unwrap().envelope
}

/// A script chains calls, runs two at once, catches a refusal with its
/// words, logs, and returns JSON; the calls reach the dispatch in order
/// with their arguments as sent.
#[test]
fn a_script_calls_tools_and_catches_a_refusal() {
    let script = r#"
        const first = await tools.demo__echo({ n: 1 });
        const [a, b] = await Promise.all([
            tools.demo__echo({ n: first.echoed.n + 1 }),
            tools.demo__echo({ n: 3 }),
        ]);
        let refused = null;
        try { await tools.demo__refused({}); } catch (e) { refused = String(e.message); }
        console.log("sum", a.echoed.n + b.echoed.n);
        return { sum: first.echoed.n + a.echoed.n + b.echoed.n, refused };
    "#;
    let (outcome, calls) = run(script, Limits::default());
    let outcome = outcome.unwrap();
    assert_eq!(outcome.envelope["ok"], true, "{}", outcome.envelope);
    assert_eq!(
        outcome.envelope["result"],
        json!({ "sum": 6, "refused": "denied by policy: demo__refused" })
    );
    assert_eq!(outcome.envelope["logs"], json!(["sum 5"]));
    assert_eq!(outcome.calls, 4);
    assert!(calls.iter().all(|call| call.ended.is_cancelled()));
    let made: Vec<(&str, &Value)> = calls
        .iter()
        .map(|call| (call.tool.as_str(), &call.arguments))
        .collect();
    assert_eq!(
        made,
        [
            ("demo__echo", &json!({ "n": 1 })),
            ("demo__echo", &json!({ "n": 2 })),
            ("demo__echo", &json!({ "n": 3 })),
            ("demo__refused", &json!({})),
        ]
    );
}

/// An exception, a syntax error, a tool not given and a result that is
/// not JSON end the script with an envelope that says so.
#[test]
fn a_script_that_fails_says_why() {
    let thrown = envelope("throw new TypeError('bad thing');");
    assert_eq!(thrown["ok"], false);
    assert!(
        thrown["error"]
            .as_str()
            .unwrap()
            .contains("TypeError: bad thing"),
        "{thrown}"
    );
    let syntax = envelope("return (;");
    assert!(
        syntax["error"].as_str().unwrap().contains("SyntaxError"),
        "{syntax}"
    );
    let unknown = envelope("return await tools.other__tool({});");
    assert!(
        unknown["error"].as_str().unwrap().contains("TypeError"),
        "{unknown}"
    );
    let bigint = envelope("return 1n;");
    assert!(
        bigint["error"].as_str().unwrap().contains("BigInt"),
        "{bigint}"
    );
}

/// No ambient authority: no module loader, process, network, file,
/// timer or host object beside `tools` and `console`; `import` fails;
/// `eval` sees the same sandbox; the script's own `JSON.stringify` does
/// not change what a call sends, and the host takes only a JSON object.
#[test]
fn a_script_has_nothing_but_its_tools() {
    let names = envelope(
        "return ['require', 'process', 'fetch', 'std', 'os', 'setTimeout', 'XMLHttpRequest', 'WebAssembly', 'performance', 'Deno', 'Bun']
            .filter(name => typeof globalThis[name] !== 'undefined');",
    );
    assert_eq!(names["result"], json!([]), "{names}");
    let import = envelope("await import('fs'); return 1;");
    assert_eq!(import["ok"], false, "{import}");
    let evaluated = envelope("return eval('typeof require + typeof fetch');");
    assert_eq!(evaluated["result"], "undefinedundefined");
    // The script's own JSON.stringify changes nothing it sends (the
    // engine serialises in C); arguments that are not an object are
    // refused by the host, which the script is told, and the dispatch
    // never sees them.
    let script = r#"
        JSON.stringify = () => '"not an object"';
        const sent = await tools.demo__echo({ n: 1 });
        let refused = null;
        try { await tools.demo__echo(5); } catch (e) { refused = String(e.message); }
        return [sent.echoed, refused];
    "#;
    let (outcome, calls) = run(script, Limits::default());
    let result = outcome.unwrap().envelope["result"].clone();
    assert_eq!(result[0], json!({ "n": 1 }), "{result}");
    assert!(
        result[1].as_str().unwrap().contains("refused by the host"),
        "{result}"
    );
    assert_eq!(calls.len(), 1, "{calls:?}");
}

/// Each limit stops what goes past it, with its own error; the engine runs
/// the next script as before.
#[test]
fn every_limit_stops_what_goes_past_it() {
    let small = Limits {
        fuel: 200_000_000,
        ..Limits::default()
    };
    assert_eq!(run("for (;;) {}", small).0.unwrap_err(), RunError::Fuel);
    let timed = Limits {
        fuel: u64::MAX / 2,
        wall: Duration::from_millis(200),
        ..Limits::default()
    };
    // Stopped at its wall time, in wasm or waiting for a call never
    // answered.
    for script in ["for (;;) {}", "await tools.demo__silent({}); return 1;"] {
        assert_eq!(
            run(script, timed).0.unwrap_err(),
            RunError::Time(Duration::from_millis(200))
        );
    }
    // Calls in flight: 64 at most, each past it refused at once.
    let (outcome, calls) = run(
        "const refused = [];
         for (let i = 0; i < 70; i++) {
             try { tools.demo__silent({}).catch(e => refused.push(String(e.message))); }
             catch (e) { refused.push(String(e.message)); }
         }
         await null;
         return refused.length;",
        Limits::default(),
    );
    assert_eq!(outcome.unwrap().envelope["result"], 6);
    assert_eq!(calls.len(), 64);
    // Memory: QuickJS's heap limit, an error the script may catch.
    let bomb = envelope("const a = []; for (;;) a.push(new Array(1e5).fill(1.5));");
    assert!(
        bomb["error"].as_str().unwrap().contains("out of memory"),
        "{bomb}"
    );
    // Without it, the engine's memory cap: the same.
    let capped = Limits {
        js_heap: 0,
        memory: 32 << 20,
        ..Limits::default()
    };
    let bomb = run(
        "const a = []; for (;;) a.push(new Array(1e5).fill(1.5));",
        capped,
    )
    .0
    .unwrap()
    .envelope;
    assert!(
        bomb["error"].as_str().unwrap().contains("out of memory"),
        "{bomb}"
    );
    // Deep recursion: a RangeError; deeper in C, a stop.
    let deep = envelope("function f(n) { return f(n + 1) + 1; } return f(0);");
    assert!(
        deep["error"].as_str().unwrap().contains("RangeError"),
        "{deep}"
    );
    let nested = run(
        "return JSON.parse('['.repeat(1000000) + ']'.repeat(1000000));",
        Limits::default(),
    )
    .0;
    assert!(
        matches!(&nested, Err(RunError::Stack))
            || matches!(&nested, Ok(outcome) if outcome.envelope["ok"] == false),
        "{nested:?}"
    );
    // Limits that do not hold together are refused before anything runs.
    let odd = Limits {
        js_stack: 4 << 20,
        ..Limits::default()
    };
    assert!(matches!(run("return 1;", odd).0, Err(RunError::Limits(_))));
    // Output: the result's size named.
    let huge = envelope("return 'x'.repeat(5e6);");
    assert!(
        huge["error"].as_str().unwrap().contains("over the limit"),
        "{huge}"
    );
    // Calls: the budget, then each call refused.
    let budget = Limits {
        calls: 3,
        ..Limits::default()
    };
    let (outcome, calls) = run(
        "let n = 0; try { for (;;) { await tools.demo__echo({}); n++; } } catch (e) { return [n, String(e.message)]; }",
        budget,
    );
    let result = outcome.unwrap().envelope["result"].clone();
    assert_eq!(result[0], 3, "{result}");
    assert!(
        result[1].as_str().unwrap().contains("refused by the host"),
        "{result}"
    );
    assert_eq!(calls.len(), 3);
    // The engine is unharmed.
    assert_eq!(envelope("return 1 + 1;")["result"], 2);
}

/// A script its caller stops ends with `Cancelled`, spinning in wasm or
/// waiting for a call; its calls are told it ended; the engine runs the
/// next one.
#[test]
fn a_script_stopped_by_its_caller_ends_at_once() {
    static SHARED: OnceLock<Arc<Engine>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| Arc::new(Engine::new().unwrap()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for script in ["for (;;) {}", "await tools.demo__silent({}); return 1;"] {
        let tools = Arc::new(Tools::default());
        let stop = CancellationToken::new();
        let names: Vec<String> = TOOLS.iter().map(|name| (*name).to_owned()).collect();
        let limits = Limits {
            fuel: u64::MAX / 2,
            wall: Duration::from_secs(3600),
            ..Limits::default()
        };
        let ended = shared
            .start(
                (script.to_owned(), names),
                limits,
                tools.clone(),
                stop.clone(),
            )
            .unwrap();
        // It runs until stopped: after some fuel, or its call, is seen.
        while script.contains("silent") && tools.calls.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.cancel();
        let outcome = runtime.block_on(ended).unwrap();
        assert_eq!(outcome.unwrap_err(), RunError::Cancelled, "{script}");
        let calls = tools.calls.lock().unwrap();
        assert!(calls.iter().all(|call| call.ended.is_cancelled()));
    }
    let done = shared.start(
        ("return 2;".into(), Vec::new()),
        Limits::default(),
        Arc::new(Tools::default()),
        CancellationToken::new(),
    );
    let outcome = runtime.block_on(done.unwrap()).unwrap().unwrap();
    assert_eq!(outcome.envelope["result"], 2);
}

/// Answers waiting for a script are bounded in bytes: past 16 MiB, an
/// answer is a refusal that says so; read as they come, none is.
#[test]
fn answers_waiting_for_a_script_are_bounded_in_bytes() {
    let (outcome, calls) = run(
        "const all = []; for (let i = 0; i < 8; i++) all.push(tools.demo__big({}));
         const settled = await Promise.allSettled(all);
         return settled.map(s => s.status === 'fulfilled' ? s.value.length : String(s.reason.message));",
        Limits::default(),
    );
    let result = outcome.unwrap().envelope["result"].clone();
    let kept = result.as_array().unwrap();
    assert_eq!(calls.len(), 8);
    assert_eq!(
        kept.iter().filter(|got| **got == json!(3 << 20)).count(),
        5,
        "{kept:?}"
    );
    assert!(
        kept.iter()
            .filter_map(Value::as_str)
            .all(|said| said.contains("answers waiting for the script")),
        "{kept:?}"
    );
    let (outcome, _) = run(
        "let n = 0; for (let i = 0; i < 8; i++) n += (await tools.demo__big({})).length; return n;",
        Limits::default(),
    );
    assert_eq!(outcome.unwrap().envelope["result"], 8 * (3 << 20));
}
