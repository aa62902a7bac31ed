//! The correlation's memory: the flows remembered, in the order they were
//! created, and which of them wait for a deadline — each kind of deadline
//! in a queue of its own, in the order its deadlines come. Every operation
//! costs the same whatever the number of flows: evicting the oldest,
//! finding what is due (the front of a queue), taking one flow out.
//!
//! hashlink's linked hash map and set, not indexmap: indexmap keeps its
//! order in a vector, so taking a flow out of the middle (a flow forgotten,
//! a held event sent early) either shifts every later entry
//! (`shift_remove`, linear) or breaks the order (`swap_remove`); a linked
//! hash map unlinks any entry in constant time and keeps the order of the
//! rest.

use std::sync::Arc;

use flow_core::process::Process;
use flow_core::{FlowEvent, FlowKey};
use hashlink::{LinkedHashMap, LinkedHashSet};
use tokio::time::Instant;

use super::backends::Backends;

/// An event held back for the others' views.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) backend: u8,
    pub(super) event: FlowEvent,
    pub(super) since: Instant,
}

/// What is known of one key's current flow. Its held events and the time
/// it was reported closed change only through [`Table`], which keeps its
/// queues in step with them.
#[derive(Debug)]
pub(super) struct Flow {
    pub(super) opened_by: Backends,
    pub(super) closed_by: Backends,
    /// When it opened, by the earliest stamp of a view as it happened
    /// (CLOCK_MONOTONIC ns); `None` while only rebuilt views came in.
    pub(super) opened_ns: Option<u64>,
    /// Backends that still owe the close of an earlier flow on this key:
    /// a UDP socket that reuses a port conntrack still tracks is a new flow
    /// to eBPF but the same entry to conntrack, whose one DESTROY comes
    /// later and belongs to the earlier flow.
    pub(super) owed_earlier: Backends,
    /// Every view of the flow came in after it was reported closed: it is
    /// kept until its linger ends only to absorb a view rebuilt from a
    /// backend's table listing ([`FlowEvent::resynced`]); to any other
    /// event it is as if forgotten.
    pub(super) all_in: bool,
    /// Boxed: only during the window is anything held, and most flows
    /// remembered are lingering after it.
    open: Option<Box<Held>>,
    close: Option<Box<Held>>,
    /// When the `closed` was sent; the flow lingers from then on.
    closed_at: Option<Instant>,
    /// Past its linger, it waits for an owed close ([`Table::wait_owed`]).
    waits_owed: bool,
    /// The best process its `opened` views carried, until its `closed`
    /// is sent: a close view without it (one backend's, alone in the
    /// window) gets it.
    pub(super) process: Option<Arc<Process>>,
}

impl Flow {
    /// A flow `opened_by` these backends with `opened`, while
    /// `owed_earlier` still owe an earlier flow's close.
    pub(super) fn new(opened_by: Backends, opened: &FlowEvent, owed_earlier: Backends) -> Self {
        Self {
            opened_by,
            closed_by: Backends::default(),
            opened_ns: (!opened.resynced).then_some(opened.timestamp_ns),
            owed_earlier,
            all_in: false,
            open: None,
            close: None,
            closed_at: None,
            waits_owed: false,
            process: opened.process.clone(),
        }
    }

    pub(super) fn seen_by(&self) -> Backends {
        self.opened_by | self.closed_by
    }

    /// The backends of `active` that opened this flow (or an earlier one on
    /// its key) and have not closed it yet.
    pub(super) fn owing(&self, active: Backends) -> Backends {
        ((self.opened_by - self.closed_by) | self.owed_earlier) & active
    }

    /// Whether every view of the flow has come in.
    pub(super) fn complete(&self) -> bool {
        self.owed_earlier.is_empty() && self.closed_by.covers(self.opened_by)
    }

    /// When its `closed` was sent, if it was.
    pub(super) fn closed_at(&self) -> Option<Instant> {
        self.closed_at
    }

    /// Whether its `closed` is held.
    pub(super) fn holds_close(&self) -> bool {
        self.close.is_some()
    }

    /// Its held `opened`, to merge another view into.
    pub(super) fn held_open_mut(&mut self) -> Option<&mut Held> {
        self.open.as_deref_mut()
    }

    /// Its held `closed`, to merge another view into.
    pub(super) fn held_close_mut(&mut self) -> Option<&mut Held> {
        self.close.as_deref_mut()
    }

    /// What it still holds, `opened` first.
    pub(super) fn into_held(self) -> impl Iterator<Item = Held> + use<> {
        [self.open, self.close]
            .into_iter()
            .flatten()
            .map(|held| *held)
    }
}

/// The remembered flows and their deadlines. Each queue's deadlines are a
/// fixed time after a key joins it, so the order keys join in is the order
/// their deadlines come, and the next due is at the front.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// In the order they were created: the front is the oldest.
    flows: LinkedHashMap<FlowKey, Flow>,
    /// Flows whose `opened` is held, in the order it came.
    held_opens: LinkedHashSet<FlowKey>,
    /// Flows whose `closed` is held, in the order it came.
    held_closes: LinkedHashSet<FlowKey>,
    /// Flows reported closed, in the order they were.
    lingering: LinkedHashSet<FlowKey>,
    /// Flows past their linger that a backend still owes a close, in the
    /// order they were reported closed.
    owed: LinkedHashSet<FlowKey>,
}

impl Table {
    /// Flows remembered.
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    pub(super) fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        self.flows.get_mut(key)
    }

    /// The oldest flow's key.
    pub(super) fn oldest(&self) -> Option<FlowKey> {
        self.flows.front().map(|(key, _)| *key)
    }

    /// Remembers a new flow (the newest), holding its `opened` if given.
    /// A flow already remembered on `key` must have been taken out first.
    pub(super) fn insert(&mut self, key: FlowKey, mut flow: Flow, open: Option<Held>) {
        if let Some(open) = open {
            flow.open = Some(Box::new(open));
            self.held_opens.insert(key);
        }
        self.flows.insert(key, flow);
    }

    /// Forgets `key`'s flow, and returns it with what it holds. Only the
    /// queues it is in are touched: with a million flows, each look-up in
    /// another is a cache miss.
    pub(super) fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let flow = self.flows.remove(key)?;
        if flow.open.is_some() {
            self.held_opens.remove(key);
        }
        if flow.close.is_some() {
            self.held_closes.remove(key);
        }
        if flow.waits_owed {
            self.owed.remove(key);
        } else if flow.closed_at.is_some() {
            self.lingering.remove(key);
        }
        Some(flow)
    }

    /// Takes `key`'s held `opened`, if any.
    pub(super) fn take_open(&mut self, key: &FlowKey) -> Option<Held> {
        let held = self.flows.get_mut(key)?.open.take()?;
        self.held_opens.remove(key);
        Some(*held)
    }

    /// Holds `close` as `key`'s `closed`, which must hold none yet.
    pub(super) fn hold_close(&mut self, key: FlowKey, close: Held) {
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.close = Some(Box::new(close));
            self.held_closes.insert(key);
        }
    }

    /// Takes what `key` holds, `opened` first; when that includes its
    /// `closed`, the flow is reported closed at `now` and lingers.
    pub(super) fn take_for_close(
        &mut self,
        key: &FlowKey,
        now: Instant,
    ) -> impl Iterator<Item = Held> + use<> {
        let (open, close) = match self.flows.get_mut(key) {
            Some(flow) => (flow.open.take(), flow.close.take()),
            None => (None, None),
        };
        if open.is_some() {
            self.held_opens.remove(key);
        }
        if close.is_some()
            && let Some(flow) = self.flows.get_mut(key)
        {
            flow.closed_at = Some(now);
            self.held_closes.remove(key);
            self.lingering.insert(*key);
        }
        [open, close].into_iter().flatten().map(|held| *held)
    }

    /// The flow whose `opened` has been held longest, if it has been held
    /// `window` by `now`.
    pub(super) fn due_open(&self, now: Instant, window: std::time::Duration) -> Option<FlowKey> {
        let key = self.held_opens.front()?;
        let since = self.flows.get(key)?.open.as_ref()?.since;
        (now.saturating_duration_since(since) >= window).then_some(*key)
    }

    /// The flow whose `closed` has been held longest, if it has been held
    /// `window` by `now`.
    pub(super) fn due_close(&self, now: Instant, window: std::time::Duration) -> Option<FlowKey> {
        let key = self.held_closes.front()?;
        let since = self.flows.get(key)?.close.as_ref()?.since;
        (now.saturating_duration_since(since) >= window).then_some(*key)
    }

    /// Takes from the lingering the flow reported closed longest ago, if
    /// that was `linger` before `now`; it stays remembered until forgotten
    /// or moved to the owed.
    pub(super) fn pop_lingered(
        &mut self,
        now: Instant,
        linger: std::time::Duration,
    ) -> Option<FlowKey> {
        Self::pop_closed_before(&mut self.lingering, &self.flows, now, linger)
    }

    /// Keeps `key` (just taken from the lingering) until a backend's owed
    /// close comes.
    pub(super) fn wait_owed(&mut self, key: FlowKey) {
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.waits_owed = true;
            self.owed.insert(key);
        }
    }

    /// Takes from the owed the flow reported closed longest ago, if that
    /// was `wait` before `now`.
    pub(super) fn pop_owed(&mut self, now: Instant, wait: std::time::Duration) -> Option<FlowKey> {
        Self::pop_closed_before(&mut self.owed, &self.flows, now, wait)
    }

    /// The flows past their linger still waiting for an owed close.
    pub(super) fn owed(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        self.owed
            .iter()
            .filter_map(|key| self.flows.get(key).map(|flow| (key, flow)))
    }

    /// Pops the front of `queue` if its flow was reported closed `wait`
    /// before `now`.
    fn pop_closed_before(
        queue: &mut LinkedHashSet<FlowKey>,
        flows: &LinkedHashMap<FlowKey, Flow>,
        now: Instant,
        wait: std::time::Duration,
    ) -> Option<FlowKey> {
        let key = queue.front()?;
        let closed_at = flows.get(key)?.closed_at?;
        if now.saturating_duration_since(closed_at) < wait {
            return None;
        }
        queue.pop_front()
    }
}
