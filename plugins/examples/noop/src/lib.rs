//! The smallest plugin: it lets every message through. A template to start
//! from, and the baseline of the plugin benchmark.

wit_bindgen::generate!({ path: "../../wit", world: "interceptor" });

use exports::portcullis::interceptor::handler::{Context, Guest, Outcome, Phase, Verdict};

struct Noop;

impl Guest for Noop {
    fn configure(_config_json: String) -> Result<(), String> {
        Ok(())
    }

    fn on_message(_phase: Phase, _context: Context, _payload_json: String) -> Outcome {
        Outcome {
            verdict: Verdict::Continue,
            annotations: Vec::new(),
        }
    }
}

export!(Noop);
