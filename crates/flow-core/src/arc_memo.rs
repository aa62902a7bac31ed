//! What was worked out from a shared value, kept by the `Arc` it is
//! shared behind: the output path meets the same few processes and names
//! on event after event, and looks up the result rather than working it
//! out again.
//!
//! A direct-mapped table of 64 slots: a value takes the slot its address
//! picks, and the value there before it is forgotten. Each slot keeps a
//! clone of its `Arc`: while it does, no one can change the value (an
//! `Arc`'s value is changed only through its only owner) and no other
//! value can take its address, so what is kept never goes stale. Written
//! by hand: the caches on crates.io key by value (hashing it) or by a
//! pointer they do not keep alive.
//!
//! ```
//! use std::sync::Arc;
//! use flow_core::arc_memo::ArcMemo;
//!
//! let name: Arc<str> = Arc::from("pypi.org");
//! let mut lengths = ArcMemo::default();
//! assert_eq!(lengths.get(&name), None);
//! lengths.insert(&name, name.len());
//! assert_eq!(lengths.get(&name), Some(&8));
//! assert_eq!(lengths.get(&Arc::from("pypi.org")), None, "another Arc, another value");
//! ```

use std::fmt;
use std::sync::Arc;

/// Slots in the table.
const SLOTS: usize = 64;

/// Values worked out from shared values of type `T`, by their `Arc`.
pub struct ArcMemo<T: ?Sized, V> {
    /// Empty until the first value is kept.
    slots: Vec<Option<(Arc<T>, V)>>,
}

impl<T: ?Sized, V> Default for ArcMemo<T, V> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T: ?Sized, V: Clone> Clone for ArcMemo<T, V> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<T: ?Sized, V> fmt::Debug for ArcMemo<T, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = self.slots.iter().flatten().count();
        f.debug_struct("ArcMemo").field("kept", &kept).finish()
    }
}

impl<T: ?Sized, V> ArcMemo<T, V> {
    /// What was kept for `key` (this `Arc`, not an equal value behind
    /// another), unless it was forgotten since.
    #[must_use]
    pub fn get(&self, key: &Arc<T>) -> Option<&V> {
        match self.slots.get(slot_of(key))? {
            Some((kept, value)) if Arc::ptr_eq(kept, key) => Some(value),
            _ => None,
        }
    }

    /// Keeps `value` for `key`, forgetting what its slot held.
    pub fn insert(&mut self, key: &Arc<T>, value: V) {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        self.slots[slot_of(key)] = Some((Arc::clone(key), value));
    }
}

/// The slot of a value: bits of its address above an allocation's
/// alignment, folded.
fn slot_of<T: ?Sized>(key: &Arc<T>) -> usize {
    let address = Arc::as_ptr(key).addr();
    (address >> 4 ^ address >> 10) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_taken_by_another_value_forgets_the_first() {
        let mut memo = ArcMemo::default();
        let values: Vec<Arc<u64>> = (0..1_000).map(Arc::new).collect();
        for value in &values {
            memo.insert(value, **value);
        }
        let kept: Vec<_> = values.iter().filter_map(|value| memo.get(value)).collect();
        assert!(
            !kept.is_empty() && kept.len() <= SLOTS,
            "{} kept",
            kept.len()
        );
        for (value, kept) in values
            .iter()
            .filter_map(|value| Some((value, memo.get(value)?)))
        {
            assert_eq!(**value, *kept, "what is kept is the value's own");
        }
    }

    #[test]
    fn a_kept_value_outlives_its_other_owners() {
        let mut memo = ArcMemo::default();
        let value = Arc::new(7_u32);
        memo.insert(&value, "seven");
        let weak = Arc::downgrade(&value);
        drop(value);
        assert!(
            weak.upgrade().is_some(),
            "the memo keeps the value, and so its address"
        );
    }
}
