//! The chain runner: order, phases, refusals, timings.

use super::*;
use serde_json::json;
use std::sync::Mutex;

struct Recorder {
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
    deny_method: Option<&'static str>,
}

impl Interceptor for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        self.seen
            .lock()
            .map(|mut s| s.push(format!("{}:req", self.name)))
            .ok();
        if Some(exchange.context.method.as_str()) == self.deny_method {
            return Verdict::Deny(Denial::new(protocol::code::DENIED, "not today"));
        }
        let mut message = exchange.message.clone();
        message["params"][self.name] = json!(true);
        Verdict::Modify(message)
    }
    fn on_server_response(&self, _exchange: &mut Exchange) -> Verdict {
        self.seen
            .lock()
            .map(|mut s| s.push(format!("{}:resp", self.name)))
            .ok();
        Verdict::Continue
    }
    fn on_outcome(&self, _exchange: &Exchange, outcome: &Outcome) {
        self.seen
            .lock()
            .map(|mut s| {
                s.push(format!(
                    "{}:outcome:{}",
                    self.name,
                    matches!(outcome, Outcome::Delivered)
                ))
            })
            .ok();
    }
}

fn exchange(method: &str) -> Exchange {
    Exchange::new(
        json!({"jsonrpc":"2.0","id":1,"method":method,"params":{}}),
        Direction::ClientToServer,
        Phase::Request,
        Context {
            request_id: Some(json!(1)),
            ..Context::new(
                "s".into(),
                ClientIdentity::new("c", &[]),
                Transport::Stdio,
                method,
            )
        },
    )
}

fn chain(seen: &Arc<Mutex<Vec<String>>>, deny: Option<&'static str>) -> Chain {
    Chain::new(vec![
        Arc::new(Recorder {
            name: "a",
            seen: seen.clone(),
            deny_method: None,
        }),
        Arc::new(Recorder {
            name: "b",
            seen: seen.clone(),
            deny_method: deny,
        }),
        Arc::new(Recorder {
            name: "c",
            seen: seen.clone(),
            deny_method: None,
        }),
    ])
}

#[test]
fn requests_in_order_responses_in_reverse_and_modifications_stick() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let chain = chain(&seen, None);
    let mut ex = exchange("tools/call");
    assert_eq!(chain.run(&mut ex), Ok(()));
    assert_eq!(
        ex.message["params"],
        json!({"a": true, "b": true, "c": true})
    );
    ex.phase = Phase::Response;
    assert_eq!(chain.run(&mut ex), Ok(()));
    chain.finish(&ex, &Outcome::Delivered);
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        [
            "a:req",
            "b:req",
            "c:req",
            "c:resp",
            "b:resp",
            "a:resp",
            "a:outcome:true",
            "b:outcome:true",
            "c:outcome:true"
        ]
    );
}

#[test]
fn deny_stops_the_chain_and_names_the_interceptor() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let chain = chain(&seen, Some("tools/call"));
    let mut ex = exchange("tools/call");
    let refusal = chain.run(&mut ex).err();
    let Some(refusal) = refusal else {
        panic!("expected a refusal");
    };
    assert_eq!(&*refusal.interceptor, "b");
    let response = refusal.to_response(json!(1));
    assert_eq!(response["error"]["code"], json!(protocol::code::DENIED));
    assert_eq!(
        response["error"]["message"],
        json!("denied by b: not today")
    );
    assert_eq!(response["error"]["data"]["interceptor"], json!("b"));
    assert_eq!(
        seen.lock().map(|s| s.clone()).unwrap_or_default(),
        ["a:req", "b:req"]
    );
}

#[tokio::test]
async fn a_request_decided_again_runs_from_the_interceptor_that_refused() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let chain = chain(&seen, None);
    let mut ex = exchange("tools/call");
    chain.decide_again(&mut ex, "b").await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["b:req", "c:req"]);
    assert_eq!(ex.message["params"], json!({"b": true, "c": true}));
}
