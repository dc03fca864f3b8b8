//! Shadow policies (`[proxy] shadow_policies`): a candidate set decided
//! beside the enforced one on every request authz decides, never
//! enforcing. Each decision's record holds both; metrics count the
//! decisions and where the two differ.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::PolicyEngine;
use super::request::Query;

pub struct Shadow {
    engine: Arc<PolicyEngine>,
    decisions: AtomicU64,
    /// (enforced, shadow) verdict → how many times they differed.
    differences: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Stops the folder's watch when the shadow set is let go.
    watching: CancellationToken,
}

impl Shadow {
    /// Decided by `engine`'s set, the folder read again every `poll` (and
    /// on SIGHUP) as the enforced one is, when a runtime runs.
    pub fn new(engine: Arc<PolicyEngine>, poll: Duration) -> Self {
        let watching = CancellationToken::new();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(engine.clone().watch(poll, watching.clone()));
        }
        Self {
            engine,
            decisions: AtomicU64::new(0),
            differences: Mutex::new(BTreeMap::new()),
            watching,
        }
    }

    /// The candidate set's decision of `query`, beside the enforced verdict
    /// (`allow`, `deny`, `ask`): what the record keeps.
    pub fn decide(&self, query: &Query<'_>, enforced: &'static str) -> Value {
        let store = self.engine.current();
        let decision = store.decide(query);
        let verdict = decision.verdict();
        self.decisions.fetch_add(1, Ordering::Relaxed);
        let differs = verdict != enforced;
        if differs {
            let mut differences = self.differences.lock().unwrap_or_else(|p| p.into_inner());
            *differences.entry((enforced, verdict)).or_default() += 1;
        }
        json!({
            "decision": verdict,
            "policies": decision.policies,
            "policy_set": &*decision.policy_set,
            "differs": differs,
            // Whether a policy failed to evaluate (Cedar's words can quote
            // argument values: not kept).
            "failed": !decision.errors.is_empty(),
        })
    }

    /// The candidate set's id, its decisions, and where they differed.
    pub fn render_metrics(&self, out: &mut crate::metrics::Exposition) {
        let store = self.engine.current();
        out.declare(
            "portcullis_shadow_policy_set_info",
            "The shadow policy set decided beside the enforced one (1), by its id.",
            "gauge",
        );
        out.sample(
            "portcullis_shadow_policy_set_info",
            &[("policy_set", &store.id)],
            1.0,
        );
        out.declare(
            "portcullis_shadow_decisions_total",
            "Requests the shadow policy set decided beside the enforced one.",
            "counter",
        );
        out.sample(
            "portcullis_shadow_decisions_total",
            &[],
            self.decisions.load(Ordering::Relaxed) as f64,
        );
        out.declare(
            "portcullis_shadow_differences_total",
            "Requests the shadow policy set decided otherwise than the enforced one, by each one's verdict (allow, deny, ask).",
            "counter",
        );
        let differences = self.differences.lock().unwrap_or_else(|p| p.into_inner());
        for ((enforced, shadow), count) in differences.iter() {
            out.sample(
                "portcullis_shadow_differences_total",
                &[("enforced", enforced), ("shadow", shadow)],
                *count as f64,
            );
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.watching.cancel();
    }
}
