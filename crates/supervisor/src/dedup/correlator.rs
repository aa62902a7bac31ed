//! The correlation rules, fed one item at a time: which views of a key
//! are one flow, when a held event goes out, when a flow is forgotten.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flow_core::{FlowEvent, FlowEventKind, FlowKey};
use tokio::time::Instant;

use super::DedupConfig;
use super::annotations;
use super::backends::Backends;
use super::lookups::Lookups;
use super::table::{Flow, Held, Table};
use crate::merge::MergedItem;

/// How long a closed flow is remembered while a backend that saw it still
/// owes its close.
const OWED_CLOSE_MAX: Duration = Duration::from_secs(600);

/// How much earlier than the flow remembered on its key a backend's
/// `opened` may be stamped and still be a view of that flow. Both backends
/// stamp the same first packet (eBPF as its socket sends it, conntrack as
/// it confirms the entry), microseconds apart; a view stamped earlier than
/// this opened an earlier flow on the key, one another backend reported.
const OPEN_STAMP_SKEW_NS: u64 = 100_000_000;

/// Whether `event`, a view from `backend`, takes the place of the `held`
/// view of the same flow in the line sent: a view as it happened wins over
/// one rebuilt from a table listing (whose time is the listing's);
/// otherwise the preferred backend's wins.
fn replaces(held: &Held, event: &FlowEvent, preferred: bool) -> bool {
    match (held.event.resynced, event.resynced) {
        (false, true) => false,
        (true, false) => true,
        _ => preferred,
    }
}

/// The correlation state.
#[derive(Debug)]
pub(super) struct Correlator {
    config: DedupConfig,
    /// Every backend seen or configured; [`Backends`] index this.
    known: Vec<Arc<str>>,
    /// The backends still running: a flow all of them saw is not waited on.
    active: Backends,
    /// The backends whose source ended (not failed): each reported every
    /// flow it saw until then. Sources end with the scope, or when
    /// flowtrack stops: only a flow begun between two backends' ends, on a
    /// key remembered, and seen by the last only in a rebuilt view (after
    /// an overrun, reported as a loss) could be taken for one reported.
    ended: Backends,
    /// The index of [`DedupConfig::preferred`].
    preferred: Option<u8>,
    pub(super) table: Table,
    /// The latest time seen: tokio's interval reports when a tick was due,
    /// which may be before the last item came, and every deadline queue
    /// needs times that never go back.
    now: Instant,
    /// A backend stopped: flows past their linger that only it still owed
    /// a close are forgotten at the next tick.
    recheck_owed: bool,
    /// Flows past their linger whose last owed close came: forgotten at
    /// the next tick if nothing owed is left.
    recheck: Vec<FlowKey>,
    pub(super) evictions: u64,
    /// Lookups sent lately, so that another backend's view of one is not
    /// sent again.
    lookups: Lookups,
    /// Flows not yet reported closed, published for
    /// [`super::Correlated::unsettled`].
    pub(super) unsettled: Arc<AtomicUsize>,
    /// Flows remembered, published for
    /// [`super::Correlated::remembered_gauge`].
    pub(super) remembered: Arc<AtomicUsize>,
}

impl Correlator {
    pub(super) fn new(config: DedupConfig) -> Self {
        let mut correlator = Self {
            config,
            known: Vec::new(),
            active: Backends::default(),
            ended: Backends::default(),
            preferred: None,
            table: Table::default(),
            now: Instant::now(),
            recheck_owed: false,
            recheck: Vec::new(),
            evictions: 0,
            lookups: Lookups::default(),
            unsettled: Arc::new(AtomicUsize::new(0)),
            remembered: Arc::new(AtomicUsize::new(0)),
        };
        for backend in correlator.config.backends.clone() {
            if let Some(index) = correlator.index(&backend) {
                correlator.active = correlator.active | Backends::one(index);
            }
        }
        let preferred = Arc::clone(&correlator.config.preferred);
        correlator.preferred = correlator.index(&preferred);
        correlator
    }

    /// `backend`'s index, numbering it if new; `None` beyond
    /// [`Backends::CAPACITY`].
    fn index(&mut self, backend: &Arc<str>) -> Option<u8> {
        let index = match self.known.iter().position(|b| b == backend) {
            Some(index) => index,
            None if self.known.len() < Backends::CAPACITY => {
                self.known.push(Arc::clone(backend));
                self.known.len() - 1
            }
            None => return None,
        };
        u8::try_from(index).ok()
    }

    /// `now`, or the latest time already seen if that is later.
    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    /// The item that sends `held` on behalf of every backend in `seen_by`.
    fn emit(&self, held: Held, seen_by: Backends) -> MergedItem {
        let also_seen_by = (seen_by - Backends::one(held.backend))
            .indices()
            .map(|index| Arc::clone(&self.known[usize::from(index)]))
            .collect();
        MergedItem::Event {
            backend: Arc::clone(&self.known[usize::from(held.backend)]),
            event: held.event,
            also_seen_by,
        }
    }

    pub(super) fn push(&mut self, item: MergedItem, now: Instant, out: &mut VecDeque<MergedItem>) {
        let now = self.advance(now);
        let MergedItem::Event { backend, event, .. } = item else {
            if let MergedItem::SourceFailed { backend, .. } | MergedItem::SourceEnded { backend } =
                &item
                && let Some(index) = self.index(backend)
            {
                // Its view will not come: stop waiting for it.
                self.active = self.active - Backends::one(index);
                self.recheck_owed = true;
                if matches!(item, MergedItem::SourceEnded { .. }) {
                    self.ended = self.ended | Backends::one(index);
                }
            }
            out.push_back(item);
            return;
        };
        let index = self.index(&backend);
        match (&event.kind, index) {
            (FlowEventKind::Opened, Some(index)) => self.opened(index, event, now, out),
            (FlowEventKind::Closed { .. }, Some(index)) => self.closed(index, event, now, out),
            (FlowEventKind::Update { .. }, Some(index)) => self.update(index, event, now, out),
            (FlowEventKind::Dns(_), Some(index)) if self.lookups.seen(index, &event, now) => {}
            _ => out.push_back(MergedItem::Event {
                backend,
                event,
                also_seen_by: Vec::new(),
            }),
        }
    }

    fn is_preferred(&self, backend: u8) -> bool {
        self.preferred == Some(backend)
    }

    /// Whether a backend other than `backend` reports (or, its source
    /// ended with the scope, reported) every flow on its own, with its real
    /// times.
    fn others_report_every_flow(&self, backend: u8) -> bool {
        !((self.active | self.ended) - Backends::one(backend)).is_empty()
    }

    /// Whether `event` from `backend` is a view rebuilt from a listing of
    /// its table (times lost with the messages: the listing's) on a key
    /// whose remembered flow another backend reports, running or ended with
    /// the scope: it is absorbed. Such a view cannot be told apart from the
    /// flow reported by its time, and the other backend reports each flow
    /// of the key itself, so one flow stays one flow; at worst a flow the
    /// other backend lost too (and reported lost) is missed. nflog's last
    /// listing, at the scope's end, may well be read after eBPF's source
    /// ended (unabsorbed, hundreds of flows of `run_both
    /// after_a_stall_each_flow_still_comes_out_once` came out twice, one
    /// run in ten under load).
    fn absorbs_resynced(&self, backend: u8, event: &FlowEvent) -> bool {
        event.resynced
            && self.others_report_every_flow(backend)
            && self.table.get(&event.key).is_some()
    }

    /// A flow whose every view came in after it was reported closed is
    /// kept only for a resynced view: for any other, it is forgotten now,
    /// as if it never lingered.
    fn forget_if_all_in(&mut self, key: &FlowKey) {
        if self.table.get(key).is_some_and(|flow| flow.all_in) {
            self.table.remove(key);
        }
    }

    fn opened(
        &mut self,
        backend: u8,
        event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let key = event.key;
        let resynced_of_reported = self.absorbs_resynced(backend, &event);
        if !resynced_of_reported {
            self.forget_if_all_in(&key);
        }
        let mut owed_earlier = Backends::default();
        if let Some(flow) = self.table.get(&key) {
            if flow.all_in {
                return; // (resynced) every view of it is in
            }
            if flow.closed_by.contains(backend) {
                if resynced_of_reported {
                    return;
                }
                // This backend closed its view of the flow: a new flow on a
                // reused key. Whatever is held of the old one goes first;
                // closes the old one is still owed pass to the new one.
                owed_earlier = flow.owing(self.active);
                self.finish(key, out);
            } else if flow.opened_by.contains(backend) {
                return; // a repeated opened from the same backend
            } else if Self::opened_earlier(flow, &event) {
                // The view of an earlier flow on this key, which the other
                // backends reported and this one reports late (a port
                // reused while it lagged): absorbed, and so is its close.
                if let Some(flow) = self.table.get_mut(&key) {
                    flow.owed_earlier = flow.owed_earlier | Backends::one(backend);
                }
                return;
            } else {
                let (opened_by, seen_by) = self.join_open(backend, event);
                if opened_by.covers(self.active)
                    && let Some(held) = self.table.take_open(&key)
                {
                    out.push_back(self.emit(held, seen_by));
                }
                return;
            }
        }
        self.make_room(out);
        let opened_by = Backends::one(backend);
        let flow = Flow::new(opened_by, &event, owed_earlier);
        let held = Held {
            backend,
            event,
            since: now,
        };
        if opened_by.covers(self.active) {
            out.push_back(self.emit(held, opened_by));
            self.table.insert(key, flow, None);
        } else {
            self.table.insert(key, flow, Some(held));
        }
        self.unsettled.fetch_add(1, Ordering::Relaxed);
    }

    /// An interim update of an open flow: sent at once (nothing is held for
    /// it), from the backend whose counters the flow's lines carry: of a
    /// flow the preferred backend opened and still observes, only its
    /// updates pass, so that one flow's updates are one backend's.
    fn update(
        &mut self,
        backend: u8,
        event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let seen_by = match self.table.get(&event.key) {
            Some(flow) if flow.closed_at().is_none() && flow.opened_by.contains(backend) => {
                let preferred_reports = self.preferred.is_some_and(|preferred| {
                    flow.opened_by.contains(preferred) && self.active.contains(preferred)
                });
                if preferred_reports && !self.is_preferred(backend) {
                    return;
                }
                flow.seen_by()
            }
            // Not remembered, or a flow this backend did not open: as it is.
            _ => Backends::one(backend),
        };
        let held = Held {
            backend,
            event,
            since: now,
        };
        out.push_back(self.emit(held, seen_by));
    }

    /// Whether `event`, an `opened` as it happened, was stamped well before
    /// `flow` opened: a view of an earlier flow on the key.
    fn opened_earlier(flow: &Flow, event: &FlowEvent) -> bool {
        !event.resynced
            && flow.opened_ns.is_some_and(|opened| {
                event.timestamp_ns.saturating_add(OPEN_STAMP_SKEW_NS) < opened
            })
    }

    /// Adds `backend`'s `opened` to the flow remembered on its key, which
    /// this backend had not opened; returns who opened it now, and who saw
    /// it.
    fn join_open(&mut self, backend: u8, event: FlowEvent) -> (Backends, Backends) {
        let prefer = self.is_preferred(backend);
        let Some(flow) = self.table.get_mut(&event.key) else {
            return (Backends::default(), Backends::default());
        };
        // Opening the key again, it lost the earlier flow's close.
        flow.owed_earlier = flow.owed_earlier - Backends::one(backend);
        annotations::prefer_process(&mut flow.process, event.process.as_ref());
        flow.opened_by = flow.opened_by | Backends::one(backend);
        if !event.resynced {
            let stamp = event.timestamp_ns;
            flow.opened_ns = Some(flow.opened_ns.map_or(stamp, |opened| opened.min(stamp)));
        }
        if let Some(held) = flow.held_open_mut() {
            if replaces(held, &event, prefer) {
                held.backend = backend;
                annotations::replace(&mut held.event, event);
            } else {
                annotations::fill(&mut held.event, &event);
            }
        }
        (flow.opened_by, flow.seen_by())
    }

    fn closed(
        &mut self,
        backend: u8,
        mut event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let key = event.key;
        if self.absorbs_resynced(backend, &event) && self.table.get(&key).is_some_and(|f| f.all_in)
        {
            return;
        }
        self.forget_if_all_in(&key);
        let prefer = self.is_preferred(backend);
        let (active, linger) = (self.active, self.config.linger);
        let Some(flow) = self.table.get_mut(&key) else {
            // Not remembered (evicted): send it as it is.
            let held = Held {
                backend,
                event,
                since: now,
            };
            out.push_back(self.emit(held, Backends::default()));
            return;
        };
        if flow.closed_by.contains(backend) {
            return;
        }
        // The process the flow's `opened` line carried, when this view has
        // none as good (nflog's guess, where eBPF's close comes late).
        annotations::prefer_process(&mut event.process, flow.process.as_ref());
        let of_earlier_flow =
            flow.owed_earlier.contains(backend) && !flow.opened_by.contains(backend);
        if of_earlier_flow {
            // The close of an earlier flow on this key, already reported.
            flow.owed_earlier = flow.owed_earlier - Backends::one(backend);
        } else {
            flow.closed_by = flow.closed_by | Backends::one(backend);
        }
        if of_earlier_flow || flow.closed_at().is_some() {
            // A late view of a flow already reported closed.
            if let Some(closed_at) = flow.closed_at() {
                let lingered = now.saturating_duration_since(closed_at) >= linger;
                // The close of an earlier flow says its backend lags: its
                // view of this flow is still to come, so this flow is not
                // all in (its `opened` would start a second flow).
                if flow.complete() && !of_earlier_flow {
                    if lingered {
                        self.table.remove(&key);
                    } else {
                        flow.all_in = true;
                    }
                } else if lingered && flow.owing(active).is_empty() {
                    self.recheck.push(key);
                }
            }
            return;
        }
        // The line carries the preferred backend's counters, and a close
        // reason from whichever backend knows one.
        let covered = flow.closed_by.covers(active);
        match flow.held_close_mut() {
            Some(held) if replaces(held, &event, prefer) => {
                held.backend = backend;
                annotations::replace(&mut held.event, event);
            }
            Some(held) => annotations::fill(&mut held.event, &event),
            None => self.table.hold_close(
                key,
                Held {
                    backend,
                    event,
                    since: now,
                },
            ),
        }
        if covered {
            self.send_close(key, now, out);
        }
    }

    /// Sends the held `closed` of `key` (after its `opened`, if that is
    /// still held); the flow then lingers.
    fn send_close(&mut self, key: FlowKey, now: Instant, out: &mut VecDeque<MergedItem>) {
        let Some(flow) = self.table.get(&key) else {
            return;
        };
        let seen_by = flow.seen_by();
        if flow.holds_close() {
            self.unsettled.fetch_sub(1, Ordering::Relaxed);
        }
        for held in self.table.take_for_close(&key, now) {
            out.push_back(self.emit(held, seen_by));
        }
        // Lingering, the flow needs its process no more.
        if let Some(flow) = self.table.get_mut(&key) {
            flow.process = None;
        }
    }

    /// Sends whatever is held of `key` and forgets it.
    fn finish(&mut self, key: FlowKey, out: &mut VecDeque<MergedItem>) {
        if let Some(flow) = self.table.remove(&key) {
            if flow.closed_at().is_none() {
                self.unsettled.fetch_sub(1, Ordering::Relaxed);
            }
            let seen_by = flow.seen_by();
            for held in flow.into_held() {
                out.push_back(self.emit(held, seen_by));
            }
        }
    }

    /// Evicts the oldest flow when the table is full. Evicting a flow kept
    /// only for resynced views loses no correlation and is not counted.
    fn make_room(&mut self, out: &mut VecDeque<MergedItem>) {
        if self.table.len() < self.config.capacity {
            return;
        }
        if let Some(oldest) = self.table.oldest() {
            let all_in = self.table.get(&oldest).is_some_and(|flow| flow.all_in);
            self.finish(oldest, out);
            if !all_in {
                self.evictions += 1;
            }
        }
    }

    /// Forgets flows that lingered long enough; sends what waited longer
    /// than the window. Only what is due is looked at.
    pub(super) fn tick(&mut self, now: Instant, out: &mut VecDeque<MergedItem>) {
        let now = self.advance(now);
        let (window, linger, active) = (self.config.window, self.config.linger, self.active);
        let owed_max = OWED_CLOSE_MAX.max(linger);
        // A backend that opened the flow still owes its close (conntrack
        // reports a UDP flow's end when the entry expires, up to 120 s
        // after eBPF): keep waiting for it, up to OWED_CLOSE_MAX.
        let mut recheck = std::mem::take(&mut self.recheck);
        if std::mem::take(&mut self.recheck_owed) {
            recheck.extend(self.table.owed().map(|(key, _)| *key));
        }
        for key in recheck {
            let lingered = self.table.get(&key).is_some_and(|flow| {
                flow.owing(active).is_empty()
                    && flow
                        .closed_at()
                        .is_some_and(|at| now.saturating_duration_since(at) >= linger)
            });
            if lingered {
                self.table.remove(&key);
            }
        }
        while let Some(key) = self.table.pop_lingered(now, linger) {
            if self
                .table
                .get(&key)
                .is_some_and(|flow| flow.owing(active).is_empty())
            {
                self.table.remove(&key);
            } else {
                self.table.wait_owed(key);
            }
        }
        while let Some(key) = self.table.pop_owed(now, owed_max) {
            self.table.remove(&key);
        }
        while let Some(key) = self.table.due_open(now, window) {
            let seen_by = self.table.get(&key).map(Flow::seen_by).unwrap_or_default();
            let Some(held) = self.table.take_open(&key) else {
                break;
            };
            out.push_back(self.emit(held, seen_by));
        }
        while let Some(key) = self.table.due_close(now, window) {
            self.send_close(key, now, out);
        }
    }

    /// At the end: sends everything still held.
    pub(super) fn flush(&mut self, out: &mut VecDeque<MergedItem>) {
        while let Some(key) = self.table.oldest() {
            self.finish(key, out);
        }
    }
}
