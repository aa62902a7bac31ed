//! Turns conntrack messages into one `Opened` and one `Closed` per flow.
//!
//! - NEW → `Opened`.
//! - An UPDATE whose TCP state is TIME_WAIT or CLOSE → the flow is over
//!   (closed by a FIN exchange or a reset): the listener fetches the
//!   entry's counters and calls [`Tracker::close`]. The entry's later
//!   DESTROY (up to 120 s later) is then ignored. (Fetched, because an
//!   UPDATE carries no counters, only a DESTROY does. nfnetlink_log could
//!   attach the entry with its counters to a logged closing packet
//!   (`NFULNL_CFG_F_CONNTRACK`), saving the round trip, but only on a
//!   kernel built with `CONFIG_NETFILTER_NETLINK_GLUE_CT`; the machines
//!   flowtrack is tested on refuse it with `EOPNOTSUPP`.)
//! - DESTROY of a flow still open → `Closed` with the counters it carries
//!   (a timeout, unless its TCP state says otherwise).
//! - A message for a flow whose NEW was never seen (lost in an overrun)
//!   reports the `Opened` first, so no flow is left half-reported.
//! - With an active timeout, a listing of the scope's entries gives each
//!   flow open that long an `Update` with conntrack's counters so far
//!   ([`Tracker::update`]).
//!
//! Counters are conntrack's, each direction apart: the original tuple's
//! (what the initiator sent) and the reply tuple's.
//!
//! Only entries with the backend's ct mark count: its rules set the mark on
//! the connections of its scope.

use std::collections::{HashMap, HashSet};

use flow_core::counters::DirectionCounters;
use flow_core::{CloseReason, FlowEvent, FlowKey, protocol};

use crate::conntrack::{CtEntry, CtEventKind, TCP_STATE_CLOSE, TCP_STATE_TIME_WAIT};

/// What the listener must do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Emit this event.
    Emit(FlowEvent),
    /// The TCP flow closed for this reason: fetch its counters, then call
    /// [`Tracker::close`]. `None`: its close was asked for but its state
    /// change not reported (an update without a TCP state, see
    /// `rules::closing_rules`): the fetched entry says whether it is over
    /// ([`tcp_over`]), and why.
    FetchCounters(FlowId, Option<CloseReason>),
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
    pub(crate) fn to_monotonic(self, wall_ns: Option<u64>) -> u64 {
        wall_ns
            .and_then(|wall| wall.checked_sub(self.wall_offset_ns))
            .filter(|&mono| mono <= self.now_ns)
            .unwrap_or(self.now_ns)
    }
}

/// How long the ids of flows closed before their DESTROY are remembered
/// (conntrack keeps a closed TCP entry 120 s by default).
const CLOSED_MEMORY_NS: u64 = 300 * 1_000_000_000;

/// A conntrack entry: its id and original tuple together (ids are 32-bit
/// hashes and collide in large tables; a key alone repeats as ports are
/// reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowId {
    pub(crate) id: u32,
    pub(crate) key: FlowKey,
}

impl From<&CtEntry> for FlowId {
    fn from(entry: &CtEntry) -> Self {
        Self {
            id: entry.id,
            key: entry.key,
        }
    }
}

/// The flows of one scope.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    mark: u32,
    /// Open flows, with when each opened (CLOCK_MONOTONIC ns).
    open: HashMap<FlowId, u64>,
    /// Flows already reported closed whose entry may still be listed or
    /// destroyed later, with when they closed.
    closed: HashMap<FlowId, u64>,
}

/// Why a TCP entry is over, if conntrack's state says it is: TIME_WAIT
/// follows a FIN exchange, CLOSE a reset.
fn tcp_over(entry: &CtEntry) -> Option<CloseReason> {
    if entry.key.protocol != 6 {
        return None;
    }
    match entry.tcp_state {
        Some(TCP_STATE_TIME_WAIT) => Some(CloseReason::Fin),
        Some(TCP_STATE_CLOSE) => Some(CloseReason::Reset),
        _ => None,
    }
}

/// A close with `counters` (zero, without counters by direction, when the
/// entry had none: accounting off, or the entry was gone).
fn closed_event(key: FlowKey, counters: Option<DirectionCounters>, at_ns: u64) -> FlowEvent {
    match counters {
        Some(counters) => FlowEvent::closed_by_direction(key, counters, at_ns),
        None => FlowEvent::closed(key, 0, 0, at_ns),
    }
}

/// Why conntrack destroyed an entry: its TCP state's end, else its
/// timeout (a TCP entry whose state the event lacks: not known).
fn destroyed_because(entry: &CtEntry) -> Option<CloseReason> {
    match (entry.key.protocol, entry.tcp_state) {
        (protocol::TCP, None) => None,
        (protocol::TCP, Some(_)) => Some(tcp_over(entry).unwrap_or(CloseReason::Idle)),
        _ => Some(CloseReason::Idle),
    }
}

impl Tracker {
    /// Tracks the entries marked `mark`.
    pub(crate) fn new(mark: u32) -> Self {
        Self {
            mark,
            ..Self::default()
        }
    }

    /// The ct mark of the scope's entries.
    pub(crate) fn mark(&self) -> u32 {
        self.mark
    }

    /// Flows opened and not yet closed.
    pub(crate) fn open_flows(&self) -> usize {
        self.open.len()
    }

    /// Whether `entry` is an update of a flow already open (whose handling
    /// needs no logged packet: it opens nothing).
    pub(crate) fn is_open_update(&self, entry: &CtEntry) -> bool {
        entry.kind == CtEventKind::Update && self.open.contains_key(&FlowId::from(entry))
    }

    /// Handles one message that arrived at `clock`'s time.
    pub(crate) fn on_message(&mut self, entry: &CtEntry, clock: Clock, steps: &mut Vec<Step>) {
        let flow = FlowId::from(entry);
        if entry.mark != self.mark || self.closed.contains_key(&flow) {
            if entry.kind == CtEventKind::Destroy {
                self.closed.remove(&flow);
            }
            return;
        }
        let opened_at = *self.open.entry(flow).or_insert_with(|| {
            // A NEW carries no start, but its event's time: read late (a
            // stall's backlog), the flow is still stamped when it opened.
            let opened_at = clock.to_monotonic(entry.start_ns.or(entry.event_ns));
            steps.push(Step::Emit(FlowEvent::opened(entry.key, opened_at)));
            opened_at
        });
        match entry.kind {
            CtEventKind::Destroy => {
                self.open.remove(&flow);
                let closed_at = clock.to_monotonic(entry.stop_ns);
                steps.push(Step::Emit(
                    closed_event(entry.key, entry.counters, closed_at)
                        .started(opened_at)
                        .because(destroyed_because(entry)),
                ));
            }
            CtEventKind::Update => {
                if let Some(reason) = tcp_over(entry) {
                    steps.push(Step::FetchCounters(flow, Some(reason)));
                } else if entry.key.protocol == protocol::TCP && entry.tcp_state.is_none() {
                    steps.push(Step::FetchCounters(flow, None));
                }
            }
            CtEventKind::New => {}
        }
    }

    /// Reports `flow` closed with `counters` (from a fresh look at its
    /// entry), for `reason` when known; its later messages are ignored.
    fn close(
        &mut self,
        flow: FlowId,
        counters: Option<DirectionCounters>,
        reason: Option<CloseReason>,
        now_ns: u64,
    ) -> Option<FlowEvent> {
        let opened_at = self.open.remove(&flow)?;
        self.closed.insert(flow, now_ns);
        Some(
            closed_event(flow.key, counters, now_ns)
                .started(opened_at)
                .because(reason),
        )
    }

    /// Reports `flow` closed after a fresh look at its entry (`fetched`),
    /// for `reason`, or where that is not known ([`Step::FetchCounters`]
    /// with `None`) for the one TCP's state gives; `None` when the entry
    /// says the flow is not over yet, or is gone: replaced by a new
    /// connection on the same tuple (another id), or destroyed. The
    /// entry's DESTROY, queued when it went, then closes the flow with its
    /// last counters (closed here, it had none: zeros).
    pub(crate) fn close_fetched(
        &mut self,
        flow: FlowId,
        reason: Option<CloseReason>,
        fetched: Option<&CtEntry>,
        now_ns: u64,
    ) -> Option<FlowEvent> {
        let fetched = fetched.filter(|entry| entry.id == flow.id)?;
        let reason = reason.or_else(|| tcp_over(fetched))?;
        self.close(flow, fetched.counters, Some(reason), now_ns)
    }

    /// An interim report of the flow a listing shows as `entry`, at
    /// `now_ns`, if the flow is open and opened at or before `opened_by`
    /// (its counters so far, conntrack's).
    pub(crate) fn update(&self, entry: &CtEntry, now_ns: u64, opened_by: u64) -> Option<FlowEvent> {
        if entry.mark != self.mark {
            return None;
        }
        let opened_at = *self.open.get(&FlowId::from(entry))?;
        if opened_at > opened_by {
            return None;
        }
        let counters = entry.counters?;
        Some(FlowEvent::update_by_direction(entry.key, counters, now_ns).started(opened_at))
    }

    /// Reconciles with a full listing of the table, taken at `now_ns`,
    /// after messages were lost: entries never reported open are opened
    /// (and closed if TCP says they are over); flows no longer listed are
    /// closed with the counters last known (none: zero), because their
    /// DESTROY was lost. Every event made here is marked
    /// [`resynced`](FlowEvent::resynced): its time is the listing's, and a
    /// backend correlated with this one may have reported the same flow
    /// with its real times.
    pub(crate) fn resync(&mut self, table: &[CtEntry], now_ns: u64, steps: &mut Vec<Step>) {
        let mut listed = HashSet::new();
        let mut emit = |event: FlowEvent| steps.push(Step::Emit(event.resynced(true)));
        for entry in table {
            if entry.mark != self.mark {
                continue;
            }
            let flow = FlowId::from(entry);
            listed.insert(flow);
            if self.closed.contains_key(&flow) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(vacant) = self.open.entry(flow) {
                vacant.insert(now_ns);
                emit(FlowEvent::opened(entry.key, now_ns));
            }
            if let Some(reason) = tcp_over(entry)
                && let Some(event) = self.close(flow, entry.counters, Some(reason), now_ns)
            {
                emit(event);
            }
        }
        let gone: Vec<FlowId> = self
            .open
            .keys()
            .filter(|flow| !listed.contains(flow))
            .copied()
            .collect();
        for flow in gone {
            // Its DESTROY was lost, and with it why.
            if let Some(event) = self.close(flow, None, None, now_ns) {
                emit(event);
            }
        }
        self.closed.retain(|flow, _| listed.contains(flow));
    }

    /// Closes every open flow (the scope has no process left), with the
    /// counters of `table` where the entry is still listed, and with why
    /// TCP says it is over where it does (the FIN exchange of a process
    /// that has just exited may be listed before its event is read), else
    /// because the scope ended.
    pub(crate) fn close_all(&mut self, table: &[CtEntry], now_ns: u64, steps: &mut Vec<Step>) {
        let listed: HashMap<FlowId, &CtEntry> = table
            .iter()
            .filter(|entry| entry.mark == self.mark)
            .map(|entry| (FlowId::from(entry), entry))
            .collect();
        let flows: Vec<FlowId> = self.open.keys().copied().collect();
        for flow in flows {
            let entry = listed.get(&flow);
            let counts = entry.and_then(|entry| entry.counters);
            let reason = entry
                .and_then(|entry| tcp_over(entry))
                .unwrap_or(CloseReason::ScopeEnded);
            if let Some(event) = self.close(flow, counts, Some(reason), now_ns) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::FlowEventKind;
    use flow_core::counters::Counters;

    const MARK: u32 = 0x8000_0001;

    fn entry(kind: CtEventKind, id: u32, port: u16, tcp_state: Option<u8>) -> CtEntry {
        CtEntry {
            kind,
            key: FlowKey::tcp(
                format!("10.0.0.1:{port}").parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            ),
            id,
            mark: MARK,
            tcp_state,
            // The initiator sent one packet more than the responder.
            counters: Some(DirectionCounters::new(
                Counters::new(u64::from(id), 60 * u64::from(id)),
                Counters::new(0, 40 * u64::from(id)),
            )),
            start_ns: None,
            stop_ns: None,
            event_ns: None,
        }
    }

    fn clock(now_ns: u64) -> Clock {
        Clock {
            now_ns,
            wall_offset_ns: 1_000_000,
        }
    }

    fn kinds(steps: &[Step]) -> Vec<(&'static str, u32)> {
        steps
            .iter()
            .map(|step| match step {
                Step::Emit(event) => (event.kind.name(), u32::from(event.key.src_port)),
                Step::FetchCounters(flow, _) => ("fetch", flow.id),
            })
            .collect()
    }

    #[test]
    fn a_new_read_late_is_stamped_with_its_event_time() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        // Wall = monotonic + 1 ms (`clock`); read at 5 s, recorded at 2 s.
        let new = CtEntry {
            event_ns: Some(2_000_000_000 + 1_000_000),
            ..entry(CtEventKind::New, 1, 40000, None)
        };
        tracker.on_message(&new, clock(5_000_000_000), &mut steps);
        let [Step::Emit(opened)] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(opened.timestamp_ns, 2_000_000_000);
        // Without the kernel's event time (before Linux 6.14): when read.
        let mut steps = Vec::new();
        tracker.on_message(
            &entry(CtEventKind::New, 2, 40001, None),
            clock(5_000_000_000),
            &mut steps,
        );
        let [Step::Emit(opened)] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(opened.timestamp_ns, 5_000_000_000);
    }

    #[test]
    fn only_an_update_of_an_open_flow_needs_nothing_logged() {
        let mut tracker = Tracker::new(MARK);
        let update = entry(CtEventKind::Update, 1, 1000, Some(TCP_STATE_TIME_WAIT));
        assert!(
            !tracker.is_open_update(&update),
            "not open yet: it would open"
        );
        let new = entry(CtEventKind::New, 1, 1000, None);
        tracker.on_message(&new, clock(10), &mut Vec::new());
        assert!(tracker.is_open_update(&update));
        assert!(!tracker.is_open_update(&new));
        assert!(!tracker.is_open_update(&entry(CtEventKind::Destroy, 1, 1000, None)));
        assert!(!tracker.is_open_update(&entry(CtEventKind::Update, 2, 1001, None)));
    }

    /// The steps `tracker` takes on `message`, read at `at`.
    fn steps_on(tracker: &mut Tracker, message: &CtEntry, at: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        tracker.on_message(message, clock(at), &mut steps);
        steps
    }

    #[test]
    fn an_update_without_a_tcp_state_asks_for_a_look_at_the_entry() {
        let mut tracker = Tracker::new(MARK);
        let new = entry(CtEventKind::New, 1, 40000, Some(1));
        assert_eq!(
            kinds(&steps_on(&mut tracker, &new, 10)),
            [("opened", 40000)]
        );
        // Its close was asked for; its change to TIME_WAIT went unreported.
        let asked = entry(CtEventKind::Update, 1, 40000, None);
        let steps = steps_on(&mut tracker, &asked, 11);
        assert!(
            matches!(steps[..], [Step::FetchCounters(flow, None)] if flow.id == 1),
            "{steps:?}"
        );
        // A state that is not an end says nothing.
        let closing = entry(CtEventKind::Update, 1, 40000, Some(5));
        assert_eq!(steps_on(&mut tracker, &closing, 12), []);
        // Only TCP has states.
        let mut udp = entry(CtEventKind::New, 2, 40001, None);
        udp.key = FlowKey::udp(udp.key.src(), udp.key.dst());
        steps_on(&mut tracker, &udp, 13);
        udp.kind = CtEventKind::Update;
        assert_eq!(steps_on(&mut tracker, &udp, 14), []);
    }

    /// A tracker with one TCP flow open (its NEW read at 10), the NEW, and
    /// the flow.
    fn tracker_with_an_open_flow() -> (Tracker, CtEntry, FlowId) {
        let mut tracker = Tracker::new(MARK);
        let new = entry(CtEventKind::New, 1, 40000, Some(1));
        steps_on(&mut tracker, &new, 10);
        let flow = FlowId::from(&new);
        (tracker, new, flow)
    }

    #[test]
    fn a_look_at_the_entry_closes_the_flow_only_when_tcp_says_it_is_over() {
        let (mut tracker, _, flow) = tracker_with_an_open_flow();
        let established = entry(CtEventKind::Update, 1, 40000, Some(3));
        assert_eq!(
            tracker.close_fetched(flow, None, Some(&established), 11),
            None
        );
        assert_eq!(tracker.open_flows(), 1, "not over yet");
        let time_wait = entry(CtEventKind::Update, 1, 40000, Some(TCP_STATE_TIME_WAIT));
        let closed = tracker
            .close_fetched(flow, None, Some(&time_wait), 12)
            .unwrap();
        assert_eq!(closed.close_reason, Some(CloseReason::Fin));
        assert_eq!(closed.directions, time_wait.counters);
        assert_eq!(tracker.open_flows(), 0);
    }

    #[test]
    fn a_flow_whose_entry_went_before_the_look_closes_on_its_destroy() {
        let (mut tracker, new, flow) = tracker_with_an_open_flow();
        // Gone, or replaced by a connection reusing the tuple (in CLOSE:
        // refused), between the state change and the look.
        assert_eq!(
            tracker.close_fetched(flow, Some(CloseReason::Fin), None, 11),
            None
        );
        let mut reused = entry(CtEventKind::Update, 2, 40000, Some(TCP_STATE_CLOSE));
        reused.key = new.key;
        assert_eq!(tracker.close_fetched(flow, None, Some(&reused), 12), None);
        assert_eq!(
            tracker.close_fetched(flow, Some(CloseReason::Fin), Some(&reused), 12),
            None,
            "not the counters of another connection"
        );
        assert_eq!(tracker.open_flows(), 1);
        let destroy = entry(CtEventKind::Destroy, 1, 40000, Some(TCP_STATE_TIME_WAIT));
        let steps = steps_on(&mut tracker, &destroy, 13);
        assert!(
            matches!(&steps[..], [Step::Emit(closed)] if closed.directions == destroy.counters
                && closed.close_reason == Some(CloseReason::Fin)),
            "{steps:?}"
        );
        assert_eq!(tracker.open_flows(), 0);
    }

    #[test]
    fn a_tcp_flow_closes_on_its_state_and_its_destroy_is_ignored() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        tracker.on_message(
            &entry(CtEventKind::New, 1, 40000, Some(1)),
            clock(10),
            &mut steps,
        );
        tracker.on_message(
            &entry(CtEventKind::Update, 1, 40000, Some(3)),
            clock(11),
            &mut steps,
        );
        tracker.on_message(
            &entry(CtEventKind::Update, 1, 40000, Some(7)),
            clock(12),
            &mut steps,
        );
        assert_eq!(kinds(&steps), [("opened", 40000), ("fetch", 1)]);
        assert!(matches!(
            steps[1],
            Step::FetchCounters(_, Some(CloseReason::Fin))
        ));
        let flow = FlowId::from(&entry(CtEventKind::Update, 1, 40000, None));
        let counted = DirectionCounters::new(Counters::new(5, 500), Counters::new(4, 400));
        let closed = tracker
            .close(flow, Some(counted), Some(CloseReason::Fin), 13)
            .unwrap();
        assert_eq!(closed.directions, Some(counted));
        assert_eq!(closed.start_ns, Some(10), "opened at the NEW");
        assert_eq!(closed.close_reason, Some(CloseReason::Fin));
        assert_eq!(
            closed.kind,
            FlowEventKind::Closed {
                pkt_count: 9,
                byte_count: 900
            }
        );
        steps.clear();
        tracker.on_message(
            &entry(CtEventKind::Destroy, 1, 40000, Some(7)),
            clock(14),
            &mut steps,
        );
        assert!(steps.is_empty(), "closed once: {steps:?}");
        assert_eq!(tracker.open_flows(), 0);
    }

    #[test]
    fn a_destroy_says_why_when_conntrack_does() {
        let reason_of = |entry: CtEntry| {
            let mut steps = Vec::new();
            Tracker::new(MARK).on_message(&entry, clock(10), &mut steps);
            match steps.last() {
                Some(Step::Emit(closed)) => closed.close_reason,
                other => panic!("{other:?}"),
            }
        };
        let mut udp = entry(CtEventKind::Destroy, 1, 40001, None);
        udp.key.protocol = 17;
        assert_eq!(reason_of(udp), Some(CloseReason::Idle));
        // TCP: TIME_WAIT, CLOSE, ESTABLISHED (timed out), no state given.
        for (state, reason) in [
            (Some(7), Some(CloseReason::Fin)),
            (Some(8), Some(CloseReason::Reset)),
            (Some(3), Some(CloseReason::Idle)),
            (None, None),
        ] {
            let destroyed = entry(CtEventKind::Destroy, 2, 40002, state);
            assert_eq!(reason_of(destroyed), reason, "state {state:?}");
        }
    }

    #[test]
    fn a_destroy_closes_with_its_counters_and_a_lost_new_is_made_up_for() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        tracker.on_message(
            &entry(CtEventKind::Destroy, 5, 40005, None),
            clock(10),
            &mut steps,
        );
        assert_eq!(kinds(&steps), [("opened", 40005), ("closed", 40005)]);
        let Step::Emit(closed) = &steps[1] else {
            panic!()
        };
        assert_eq!(
            closed.kind,
            FlowEventKind::Closed {
                pkt_count: 5,
                byte_count: 500
            }
        );
    }

    #[test]
    fn entries_whose_ids_collide_are_two_flows() {
        // Conntrack ids are 32-bit hashes: a large table has collisions.
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        tracker.on_message(
            &entry(CtEventKind::New, 7, 40001, None),
            clock(1),
            &mut steps,
        );
        tracker.on_message(
            &entry(CtEventKind::New, 7, 40002, None),
            clock(1),
            &mut steps,
        );
        assert_eq!(kinds(&steps), [("opened", 40001), ("opened", 40002)]);
        assert_eq!(tracker.open_flows(), 2);
    }

    #[test]
    fn other_marks_are_not_this_scope() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        let mut other = entry(CtEventKind::New, 1, 40000, None);
        other.mark = 0;
        tracker.on_message(&other, clock(1), &mut steps);
        assert!(steps.is_empty());
    }

    #[test]
    fn kernel_stamps_become_monotonic_time() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        let mut new = entry(CtEventKind::New, 1, 40000, None);
        new.start_ns = Some(1_000_500);
        tracker.on_message(&new, clock(900), &mut steps);
        let Step::Emit(opened) = &steps[0] else {
            panic!()
        };
        assert_eq!(opened.timestamp_ns, 500);
        // A stamp from the future is not believed.
        assert_eq!(clock(900).to_monotonic(Some(5_000_000)), 900);
    }

    #[test]
    fn a_resync_opens_the_unseen_and_closes_the_vanished() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        tracker.on_message(
            &entry(CtEventKind::New, 1, 40001, None),
            clock(1),
            &mut steps,
        );
        tracker.on_message(
            &entry(CtEventKind::New, 2, 40002, None),
            clock(1),
            &mut steps,
        );
        steps.clear();
        // Table after an overrun: 1 is gone, 3 is new, 4 opened and closed.
        let table = [
            entry(CtEventKind::Update, 2, 40002, Some(3)),
            entry(CtEventKind::Update, 3, 40003, Some(3)),
            entry(CtEventKind::Update, 4, 40004, Some(7)),
        ];
        tracker.resync(&table, 5, &mut steps);
        assert!(
            steps
                .iter()
                .all(|step| matches!(step, Step::Emit(event) if event.resynced && event.timestamp_ns == 5)),
            "rebuilt from the listing, stamped with its time: {steps:?}"
        );
        let mut seen = kinds(&steps);
        seen.sort_unstable();
        assert_eq!(
            seen,
            [
                ("closed", 40001),
                ("closed", 40004),
                ("opened", 40003),
                ("opened", 40004)
            ]
        );
        assert_eq!(tracker.open_flows(), 2);
        steps.clear();
        tracker.on_message(
            &entry(CtEventKind::Destroy, 4, 40004, Some(7)),
            clock(6),
            &mut steps,
        );
        assert!(steps.is_empty(), "4 was closed by the resync");
        tracker.close_all(&table, 7, &mut steps);
        assert_eq!(kinds(&steps).len(), 2);
        assert_eq!(tracker.open_flows(), 0);
    }

    #[test]
    fn flows_closed_when_the_scope_ends_say_how_tcp_ended_them_where_it_did() {
        let mut tracker = Tracker::new(MARK);
        for (id, port) in [(1, 40001), (2, 40002), (3, 40003), (4, 40004)] {
            steps_on(&mut tracker, &entry(CtEventKind::New, id, port, None), 1);
        }
        let mut steps = Vec::new();
        // Listed in TIME_WAIT, CLOSE and ESTABLISHED; 4 is not listed.
        let table = [
            entry(CtEventKind::Update, 1, 40001, Some(TCP_STATE_TIME_WAIT)),
            entry(CtEventKind::Update, 2, 40002, Some(TCP_STATE_CLOSE)),
            entry(CtEventKind::Update, 3, 40003, Some(3)),
        ];
        tracker.close_all(&table, 7, &mut steps);
        let mut reasons: Vec<(u16, Option<CloseReason>, u64)> = steps
            .iter()
            .map(|step| match step {
                Step::Emit(event) => (
                    event.key.src_port,
                    event.close_reason,
                    event.kind.counters().map_or(0, |counters| counters.bytes),
                ),
                Step::FetchCounters(..) => panic!("the listing's counters are used: {step:?}"),
            })
            .collect();
        reasons.sort_unstable_by_key(|(port, ..)| *port);
        assert_eq!(
            reasons,
            [
                (40001, Some(CloseReason::Fin), 60 + 40),
                (40002, Some(CloseReason::Reset), 120 + 80),
                (40003, Some(CloseReason::ScopeEnded), 180 + 120),
                (40004, Some(CloseReason::ScopeEnded), 0),
            ]
        );
        assert_eq!(tracker.open_flows(), 0);
    }

    #[test]
    fn flows_open_long_enough_are_updated_with_their_counters_so_far() {
        let mut tracker = Tracker::new(MARK);
        let mut steps = Vec::new();
        tracker.on_message(
            &entry(CtEventKind::New, 1, 40001, Some(3)),
            clock(100),
            &mut steps,
        );
        tracker.on_message(
            &entry(CtEventKind::New, 2, 40002, Some(3)),
            clock(200),
            &mut steps,
        );
        let listed = entry(CtEventKind::Update, 1, 40001, Some(3));
        let update = tracker.update(&listed, 300, 150).expect("open since 100");
        assert_eq!(update.kind.name(), "update");
        assert_eq!(update.directions, listed.counters);
        assert_eq!((update.timestamp_ns, update.start_ns), (300, Some(100)));
        // Too young, of another scope, or not open: no update.
        let young = entry(CtEventKind::Update, 2, 40002, Some(3));
        assert_eq!(tracker.update(&young, 300, 150), None);
        let mut other = listed.clone();
        other.mark = 7;
        assert_eq!(tracker.update(&other, 300, 150), None);
        let unknown = entry(CtEventKind::Update, 3, 40003, Some(3));
        assert_eq!(tracker.update(&unknown, 300, 150), None);
    }
}
