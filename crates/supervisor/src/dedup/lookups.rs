//! DNS lookups under several backends: each sees the same answer and
//! reports it; the first report goes out, and the others' reports of the
//! same lookup, on the same flow, within [`SAME_LOOKUP`], are dropped.

use std::sync::Arc;
use std::time::Duration;

use flow_core::dns::DnsLookup;
use flow_core::{FlowEvent, FlowEventKind, FlowKey};
use hashlink::LinkedHashMap;
use tokio::time::Instant;

/// How far apart two backends' reports of one answer may come.
const SAME_LOOKUP: Duration = Duration::from_secs(2);

/// Lookups remembered at most (the oldest go first).
const REMEMBERED: usize = 4096;

/// The lookups sent lately, oldest first: by flow and answer, when and by
/// which backend.
#[derive(Debug, Default)]
pub(super) struct Lookups {
    sent: LinkedHashMap<(FlowKey, Arc<DnsLookup>), (Instant, u8)>,
}

impl Lookups {
    /// Whether `event`, a `dns` event from `backend`, reports a lookup
    /// another backend reported within [`SAME_LOOKUP`] (drop it); else it
    /// is remembered as sent.
    pub(super) fn seen(&mut self, backend: u8, event: &FlowEvent, now: Instant) -> bool {
        let FlowEventKind::Dns(lookup) = &event.kind else {
            return false;
        };
        while let Some((_, (at, _))) = self.sent.front()
            && (now.saturating_duration_since(*at) > SAME_LOOKUP || self.sent.len() >= REMEMBERED)
        {
            self.sent.pop_front();
        }
        let key = (event.key, Arc::clone(lookup));
        match self.sent.get(&key) {
            Some((_, sender)) if *sender != backend => true,
            _ => {
                // At the back: the queue stays in time order.
                self.sent.insert(key, (now, backend));
                false
            }
        }
    }
}
