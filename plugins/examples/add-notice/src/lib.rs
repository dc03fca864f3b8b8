//! Adds a notice to every tool result: one more text item at the end of
//! `result.content` (and nothing else changes).
//!
//! ```toml
//! [[chain]]
//! kind = "wasm"
//! path = "plugins/examples/add-notice/add_notice.wasm"
//! methods = ["tools/call"]
//! phases = ["response"]
//! config = { notice = "Generated through Portcullis: check before you act on it." }
//! ```

wit_bindgen::generate!({ path: "../../wit", world: "interceptor" });

use std::sync::OnceLock;

use exports::portcullis::interceptor::handler::{Context, Guest, Outcome, Phase, Verdict};
use serde_json::{Value, json};

static NOTICE: OnceLock<String> = OnceLock::new();

fn pass() -> Outcome {
    Outcome {
        verdict: Verdict::Continue,
        annotations: Vec::new(),
    }
}

struct AddNotice;

impl Guest for AddNotice {
    fn configure(config_json: String) -> Result<(), String> {
        let config: Value = serde_json::from_str(&config_json)
            .map_err(|err| format!("config is not JSON: {err}"))?;
        let notice = match config.get("notice") {
            None => "This result passed through Portcullis.".to_owned(),
            Some(Value::String(notice)) if !notice.is_empty() => notice.clone(),
            Some(_) => return Err("`notice` must be a non-empty string".into()),
        };
        NOTICE
            .set(notice)
            .map_err(|_| "configure was called twice".to_owned())
    }

    fn on_message(phase: Phase, context: Context, payload_json: String) -> Outcome {
        let Some(notice) = NOTICE.get() else {
            return pass();
        };
        if phase != Phase::Response || context.method != "tools/call" {
            return pass();
        }
        let Ok(mut message) = serde_json::from_str::<Value>(&payload_json) else {
            return pass();
        };
        let Some(Value::Array(content)) = message.pointer_mut("/result/content") else {
            return pass();
        };
        content.push(json!({ "type": "text", "text": notice }));
        Outcome {
            verdict: Verdict::Modify(message.to_string()),
            annotations: vec![("notice".into(), "added".into())],
        }
    }
}

export!(AddNotice);
