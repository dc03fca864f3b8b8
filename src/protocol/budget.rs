//! Bytes a queue may hold: what a peer sends faster than it is passed on
//! waits, or is dropped, within a budget in bytes (not only in messages:
//! 1024 messages of 4 MiB are 4 GiB). Each message queued holds its share
//! ([`Held`]) until whoever takes it from the queue drops it.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is kept in units of this many bytes.
const UNIT: usize = 1024;

/// A queue's budget in bytes, shared by everything that fills it.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    units: Arc<Semaphore>,
    /// The whole budget, in units: no one message takes more (one larger
    /// than the budget takes all of it, and so waits for an empty queue).
    most: u32,
}

/// A message's share of a budget, given back when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        let most = u32::try_from(bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX);
        Self {
            units: Arc::new(Semaphore::new(most as usize)),
            most,
        }
    }

    fn units_of(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.most)
    }

    /// A share of `bytes`, if the budget has it now.
    pub fn try_take(&self, bytes: usize) -> Option<Held> {
        self.units
            .clone()
            .try_acquire_many_owned(self.units_of(bytes))
            .ok()
            .map(Held)
    }

    /// A share of `bytes`, once the budget has it (what is queued is taken
    /// out meanwhile).
    pub async fn take(&self, bytes: usize) -> Held {
        match self
            .units
            .clone()
            .acquire_many_owned(self.units_of(bytes))
            .await
        {
            Ok(permit) => Held(permit),
            // Never closed: the semaphore is this budget's alone.
            Err(_) => std::future::pending().await,
        }
    }

    /// Bytes not held, about (in whole units).
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

/// About how many bytes the proxy holds for `value` once parsed: what
/// budgets count, since that is what a peer makes the proxy hold (a list of
/// empty objects is a few bytes as JSON and many times that parsed). Each
/// allocation is counted with its bookkeeping; an object's entries with
/// their hash, and its index.
pub fn held_bytes(value: &Value) -> usize {
    /// An allocator's bookkeeping per allocation, about.
    const PER_ALLOCATION: usize = 16;
    let own = std::mem::size_of::<Value>();
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => own,
        Value::String(text) => own + text.capacity() + PER_ALLOCATION,
        Value::Array(items) => {
            let items: usize = items.iter().map(held_bytes).sum();
            own + items + PER_ALLOCATION
        }
        Value::Object(map) => {
            // An entry is its hash, its key (a String) and its value; the
            // index is a word and a control byte per entry, and a group.
            let entries: usize = map
                .iter()
                .map(|(key, value)| {
                    8 + std::mem::size_of::<String>()
                        + key.capacity()
                        + PER_ALLOCATION
                        + held_bytes(value)
                        + 9
                })
                .sum();
            own + entries + 16 + 2 * PER_ALLOCATION
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_budget_holds_what_it_gives_until_each_share_is_dropped() {
        let budget = ByteBudget::new(8 * 1024);
        let first = budget.try_take(3 * 1024);
        let second = budget.try_take(5 * 1024);
        assert!(first.is_some() && second.is_some());
        assert!(budget.try_take(1).is_none(), "spent");
        drop(first);
        assert!(budget.try_take(3 * 1024).is_some());
        // One message past the whole budget takes all of it.
        drop(second);
        let all = budget.try_take(1 << 30);
        assert!(all.is_some());
        assert_eq!(budget.available(), 0);
    }

    #[test]
    fn what_a_value_holds_is_counted_parsed_not_as_json() {
        let tool = json!({
            "name": "t1",
            "description": "Lists and reads the things it is named for.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}
        });
        let json = tool.to_string().len();
        let held = held_bytes(&tool);
        // Parsed, a small tool holds many times its JSON.
        assert!(held > 5 * json, "{held} for {json} bytes of JSON");
        // Empty objects: a few bytes each as JSON, far more parsed.
        let empties = json!([{}, {}, {}, {}, {}, {}, {}, {}]);
        assert!(held_bytes(&empties) > 20 * empties.to_string().len());
        // A long string is about its length.
        let long = json!("x".repeat(100_000));
        assert!((100_000..101_000).contains(&held_bytes(&long)));
    }
}
