//! Turns conntrack messages into one `Opened` and one `Closed` per flow.
//!
//! - NEW → `Opened`.
//! - An UPDATE whose TCP state is TIME_WAIT or CLOSE → the flow is over:
//!   the listener fetches the entry's counters and calls [`Tracker::close`].
//!   The entry's later DESTROY (up to 120 s later) is then ignored.
//! - DESTROY of a flow still open → `Closed` with the counters it carries.
//! - A message for a flow whose NEW was never seen (lost in an overrun)
//!   reports the `Opened` first, so no flow is left half-reported.
//!
//! Only entries with the backend's ct mark count: its rules set the mark on
//! the connections of its scope.

use std::collections::HashMap;

use flow_core::{FlowEvent, FlowKey};

use crate::conntrack::{CtEntry, CtEventKind, TCP_STATE_CLOSE, TCP_STATE_TIME_WAIT};

/// What the listener must do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Emit this event.
    Emit(FlowEvent),
    /// The TCP flow `key` closed: fetch its counters, then call
    /// [`Tracker::close`].
    FetchCounters(u32, FlowKey),
}

/// The monotonic time now, and how to convert the kernel's wall-clock
/// stamps (CLOCK_REALTIME ns) to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// CLOCK_MONOTONIC now.
    pub(crate) now_ns: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC now.
    pub(crate) wall_offset_ns: u64,
}

impl Clock {
    /// Reads both clocks.
    pub(crate) fn now() -> Self {
        let now_ns = flow_core::clock::monotonic_now_ns();
        let wall = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let wall_ns = u64::try_from(wall.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(wall.tv_nsec).unwrap_or(0);
        Self {
            now_ns,
            wall_offset_ns: wall_ns.saturating_sub(now_ns),
        }
    }

    /// A kernel wall-clock stamp as monotonic time; now when absent or
    /// implausible (in the future).
    pub(crate) fn from_wall(self, wall_ns: Option<u64>) -> u64 {
        wall_ns
            .and_then(|wall| wall.checked_sub(self.wall_offset_ns))
            .filter(|&mono| mono <= self.now_ns)
            .unwrap_or(self.now_ns)
    }
}

/// How long the ids of flows closed before their DESTROY are remembered
/// (conntrack keeps a closed TCP entry 120 s by default).
const CLOSED_MEMORY_NS: u64 = 300 * 1_000_000_000;

/// The flows of one scope, by conntrack id.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    mark: u32,
    open: HashMap<u32, FlowKey>,
    /// Flows already reported closed whose entry may still be listed or
    /// destroyed later, with when they closed.
    closed: HashMap<u32, u64>,
}

fn is_tcp_over(entry: &CtEntry) -> bool {
    entry.key.protocol == 6
        && matches!(entry.tcp_state, Some(TCP_STATE_TIME_WAIT | TCP_STATE_CLOSE))
}

impl Tracker {
    /// Tracks the entries marked `mark`.
    pub(crate) fn new(mark: u32) -> Self {
        Self {
            mark,
            ..Self::default()
        }
    }

    /// Flows opened and not yet closed.
    pub(crate) fn open_flows(&self) -> usize {
        self.open.len()
    }

    /// Handles one message that arrived at `clock`'s time.
    pub(crate) fn on_message(&mut self, entry: &CtEntry, clock: Clock, steps: &mut Vec<Step>) {
        if entry.mark != self.mark || self.closed.contains_key(&entry.id) {
            if entry.kind == CtEventKind::Destroy {
                self.closed.remove(&entry.id);
            }
            return;
        }
        if !self.open.contains_key(&entry.id) {
            self.open.insert(entry.id, entry.key);
            let opened_at = clock.from_wall(entry.start_ns);
            steps.push(Step::Emit(FlowEvent::opened(entry.key, opened_at)));
        }
        match entry.kind {
            CtEventKind::Destroy => {
                self.open.remove(&entry.id);
                let (packets, bytes) = entry.counters.unwrap_or_default();
                let closed_at = clock.from_wall(entry.stop_ns);
                steps.push(Step::Emit(FlowEvent::closed(
                    entry.key, packets, bytes, closed_at,
                )));
            }
            CtEventKind::Update if is_tcp_over(entry) => {
                steps.push(Step::FetchCounters(entry.id, entry.key));
            }
            CtEventKind::New | CtEventKind::Update => {}
        }
    }

    /// Reports the flow `id` closed with `counters` (from a fresh look at
    /// its entry); its later messages are ignored.
    pub(crate) fn close(
        &mut self,
        id: u32,
        counters: (u64, u64),
        now_ns: u64,
    ) -> Option<FlowEvent> {
        let key = self.open.remove(&id)?;
        self.closed.insert(id, now_ns);
        Some(FlowEvent::closed(key, counters.0, counters.1, now_ns))
    }

    /// Reconciles with a full listing of the table after messages were
    /// lost: entries never reported open are opened (and closed if TCP says
    /// they are over); flows no longer listed are closed with the counters
    /// last known (none: zero), because their DESTROY was lost.
    pub(crate) fn resync(&mut self, table: &[CtEntry], now_ns: u64, steps: &mut Vec<Step>) {
        let mut listed = std::collections::HashSet::new();
        for entry in table {
            if entry.mark != self.mark {
                continue;
            }
            listed.insert(entry.id);
            if self.closed.contains_key(&entry.id) {
                continue;
            }
            if !self.open.contains_key(&entry.id) {
                self.open.insert(entry.id, entry.key);
                steps.push(Step::Emit(FlowEvent::opened(entry.key, now_ns)));
            }
            if is_tcp_over(entry) {
                let counters = entry.counters.unwrap_or_default();
                if let Some(event) = self.close(entry.id, counters, now_ns) {
                    steps.push(Step::Emit(event));
                }
            }
        }
        let gone: Vec<u32> = self
            .open
            .keys()
            .filter(|id| !listed.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(event) = self.close(id, (0, 0), now_ns) {
                steps.push(Step::Emit(event));
            }
        }
        self.closed.retain(|id, _| listed.contains(id));
    }

    /// Closes every open flow (the scope has no process left), with the
    /// counters of `table` where the entry is still listed.
    pub(crate) fn close_all(&mut self, table: &[CtEntry], now_ns: u64, steps: &mut Vec<Step>) {
        let counters: HashMap<u32, (u64, u64)> = table
            .iter()
            .filter(|entry| entry.mark == self.mark)
            .map(|entry| (entry.id, entry.counters.unwrap_or_default()))
            .collect();
        let ids: Vec<u32> = self.open.keys().copied().collect();
        for id in ids {
            let counts = counters.get(&id).copied().unwrap_or_default();
            if let Some(event) = self.close(id, counts, now_ns) {
                steps.push(Step::Emit(event));
            }
        }
    }

    /// Forgets closed flows older than the closed-memory window.
    pub(crate) fn expire(&mut self, now_ns: u64) {
        self.closed
            .retain(|_, closed_at| now_ns.saturating_sub(*closed_at) < CLOSED_MEMORY_NS);
    }
}
