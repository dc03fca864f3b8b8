//! Places under two caps at once, a total and one per key (connections per
//! source, sessions per client), taken and given back under one lock so
//! that concurrent takers cannot pass a cap together.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Which cap refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Total,
    PerKey,
}

pub struct Slots<K> {
    max_total: usize,
    max_per_key: usize,
    open: Mutex<(usize, HashMap<K, usize>)>,
}

/// One place under the caps, given back when dropped.
pub struct Slot<K: Hash + Eq> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(max_total: usize, max_per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_key,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn take(self: &Arc<Self>, key: &K) -> Result<Slot<K>, Cap> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_key) = &mut *open;
        if per_key.get(key).is_some_and(|&n| n >= self.max_per_key) {
            return Err(Cap::PerKey);
        }
        if *total >= self.max_total {
            return Err(Cap::Total);
        }
        *per_key.entry(key.clone()).or_insert(0) += 1;
        *total += 1;
        Ok(Slot {
            slots: self.clone(),
            key: key.clone(),
        })
    }

    /// Places taken: in total, and by keys (for tests).
    #[cfg(test)]
    pub fn taken(&self) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        (open.0, open.1.len())
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_key) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_key_and_in_total_and_free_on_drop() {
        let slots = Slots::new(3, 2);
        let first = slots.take(&"a");
        let second = slots.take(&"a");
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(slots.take(&"a").err(), Some(Cap::PerKey));
        let third = slots.take(&"b");
        assert!(third.is_ok());
        assert_eq!(slots.take(&"b").err(), Some(Cap::Total));
        drop(first);
        assert!(slots.take(&"a").is_ok());
        drop((second, third));
        assert_eq!(slots.taken(), (0, 0));
    }

    #[test]
    fn concurrent_takers_never_pass_a_cap() {
        let slots = Slots::new(1000, 5);
        let held = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let (slots, held) = (slots.clone(), held.clone());
                scope.spawn(move || {
                    for _ in 0..50 {
                        if let Ok(slot) = slots.take(&"client") {
                            held.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(held.lock().map(|h| h.len()).unwrap_or(0), 5);
    }
}
