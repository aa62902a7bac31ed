//! Reading a backend's stream in a test: what it reported, and checks
//! against the generator and conntrack.

use std::collections::HashMap;
use std::time::Duration;

use flow_core::{FlowError, FlowEventKind, FlowKey, FlowStream};
use futures::StreamExt;

use crate::{ConntrackEntry, GeneratedFlow, Netns};

/// What the backend reported.
#[derive(Default, Debug)]
pub struct Observed {
    /// `Opened` events per key.
    pub opened: HashMap<FlowKey, u32>,
    /// Counters of each `Closed` per key.
    pub closed: HashMap<FlowKey, Vec<(u64, u64)>>,
    /// `Denied` events per key.
    pub denied: HashMap<FlowKey, u32>,
    /// Observations reported lost (a loss of unknown size counts one).
    pub lost: u64,
    /// Loss items.
    pub lost_items: u64,
}

impl Observed {
    /// The counters of `key`'s one `Closed`, after its one `Opened`.
    ///
    /// # Panics
    /// When `key` was not opened and closed exactly once.
    pub fn closed_once(&self, key: &FlowKey) -> (u64, u64) {
        assert_eq!(
            self.opened.get(key),
            Some(&1),
            "one Opened for {key}: {self:#?}"
        );
        let closed = self
            .closed
            .get(key)
            .unwrap_or_else(|| panic!("no Closed for {key}: {self:#?}"));
        assert_eq!(closed.len(), 1, "one Closed for {key}");
        closed[0]
    }
}

/// Reads the stream until every key in `expected` is closed (then a little
/// longer, to catch duplicates), or until the deadline.
pub async fn observe(
    stream: &mut FlowStream,
    expected: &[FlowKey],
    deadline: Duration,
) -> Observed {
    observe_until(
        stream,
        |observed| expected.iter().all(|key| observed.closed.contains_key(key)),
        deadline,
    )
    .await
}

/// Reads the stream until `done` holds (then a little longer, to catch
/// duplicates), or until the deadline.
pub async fn observe_until(
    stream: &mut FlowStream,
    mut done: impl FnMut(&Observed) -> bool,
    deadline: Duration,
) -> Observed {
    let mut observed = Observed::default();
    let read = async {
        let mut settle: Option<tokio::time::Instant> = None;
        loop {
            // Wake at least every 100 ms, so that `done` is checked again
            // even when no event comes.
            let wake = tokio::time::Instant::now() + Duration::from_millis(100);
            let next = match tokio::time::timeout_at(
                settle.map_or(wake, |until| until.min(wake)),
                stream.next(),
            )
            .await
            {
                Ok(next) => next,
                Err(_) if settle.is_some_and(|until| tokio::time::Instant::now() >= until) => break,
                Err(_) => {
                    if settle.is_none() && done(&observed) {
                        settle = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(event)) => match event.kind {
                    FlowEventKind::Opened => *observed.opened.entry(event.key).or_default() += 1,
                    FlowEventKind::Closed {
                        pkt_count,
                        byte_count,
                    } => {
                        observed
                            .closed
                            .entry(event.key)
                            .or_default()
                            .push((pkt_count, byte_count));
                    }
                    FlowEventKind::Denied => *observed.denied.entry(event.key).or_default() += 1,
                    _ => {}
                },
                Some(Err(FlowError::Lost { count, .. })) => {
                    observed.lost += count.unwrap_or(1);
                    observed.lost_items += 1;
                }
                Some(Err(error)) => panic!("the backend failed: {error}"),
                None => break,
            }
            if settle.is_none() && done(&observed) {
                settle = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
        }
    };
    let _ = tokio::time::timeout(deadline, read).await;
    observed
}

/// IP + transport header bytes of one packet without options.
#[must_use]
pub fn headers(flow: &GeneratedFlow) -> u64 {
    let ip = if flow.src.is_ipv4() { 20 } else { 40 };
    ip + if flow.protocol == 6 { 20 } else { 8 }
}

/// The backend's counters equal conntrack's for the same flow.
///
/// # Panics
/// When they differ.
pub fn assert_matches_conntrack(netns: &Netns, key: &FlowKey, counters: (u64, u64)) {
    assert_in_conntrack(&netns.conntrack_entries(), key, counters);
}

/// `entries` hold `key` with `counters`.
///
/// # Panics
/// When they do not.
pub fn assert_in_conntrack(entries: &[ConntrackEntry], key: &FlowKey, counters: (u64, u64)) {
    let entry = entries
        .iter()
        .find(|entry| entry.key == *key)
        .unwrap_or_else(|| panic!("conntrack has no entry for {key}: {entries:#?}"));
    assert_eq!(
        counters,
        (entry.packets, entry.bytes),
        "packets and bytes of {key}: flowtrack vs conntrack"
    );
}
