//! Correlation for `--backend both`: a flow that several backends observed
//! comes out once — one `opened`, one `closed` — listing every backend that
//! saw it.
//!
//! Events are matched by flow key. The first backend's `opened` is held
//! for at most [`DedupConfig::window`] while the others' arrive (at once
//! when all have); `closed` likewise. Both carry the time (and `closed` the
//! counters) of [`DedupConfig::preferred`] when it reported them (the eBPF backend: it
//! counts exactly the scope's own packets, each once, wherever its sockets
//! are), else from the first backend that did. A flow only one backend saw
//! — the other lost it, or cannot see it — is reported from that one after
//! the window: a flow is reported if either saw it.
//!
//! After its `closed`, a flow is remembered for [`DedupConfig::linger`] so
//! that a slower backend's late `opened` and `closed` of the same flow are
//! absorbed — and, while a backend that opened it still owes its close, up
//! to 600 s (conntrack reports a UDP flow's end only when its entry
//! expires); a backend that opens the key again after closing it starts a
//! new flow (ports are reused), and a close the old flow still owes is
//! absorbed when it comes (a UDP socket that reuses a port conntrack still
//! tracks is one entry to conntrack, two flows to eBPF). At most [`DedupConfig::capacity`] flows are
//! remembered: beyond that the oldest is evicted (its held events are sent
//! at once, so nothing is lost, though a late duplicate may then pass) and
//! counted in [`Correlated::evictions`].
//!
//! Losses, failures and ends of sources pass through unchanged.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_supervisor::dedup::{Correlated, DedupConfig};
//! use flow_supervisor::merge::MergedItem;
//! use futures::{StreamExt, stream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let key = FlowKey::udp("10.0.0.1:5000".parse().unwrap(), "10.0.0.2:53".parse().unwrap());
//! let seen = |backend: &str, event| MergedItem::from_source(&backend.into(), Ok(event));
//! let items = stream::iter([
//!     seen("nflog", FlowEvent::opened(key, 1)),
//!     seen("ebpf", FlowEvent::opened(key, 2)),
//!     seen("ebpf", FlowEvent::closed(key, 2, 80, 3)),
//!     seen("nflog", FlowEvent::closed(key, 2, 80, 4)),
//! ]);
//! let out: Vec<MergedItem> = Correlated::new(items, DedupConfig::for_backends(["ebpf", "nflog"])).collect().await;
//! assert_eq!(out.len(), 2, "one opened, one closed");
//! let record = out[1].to_record().unwrap();
//! assert_eq!((&*record.backend, record.also_seen_by.len()), ("ebpf", 1));
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use flow_core::{ConfigError, FlowEvent, FlowEventKind, FlowKey};
use futures::Stream;
use tokio::time::{Instant, Interval};

use crate::merge::MergedItem;

/// How events are correlated: built with [`DedupConfig::for_backends`],
/// then adjusted; a value a setting cannot take is refused there, with a
/// [`ConfigError`].
///
/// ```
/// use std::time::Duration;
/// use flow_supervisor::dedup::DedupConfig;
/// let config = DedupConfig::for_backends(["ebpf", "nflog"])
///     .window(Duration::from_millis(200))?
///     .capacity(1_000)?;
/// assert!(DedupConfig::for_backends(["ebpf"]).window(Duration::ZERO).is_err());
/// # drop(config);
/// # Ok::<(), flow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DedupConfig {
    /// The backends that run together: a flow all of them opened (or
    /// closed) is sent without waiting for the window.
    pub(crate) backends: Vec<Arc<str>>,
    /// Whose counters and time a `closed` carries when it reported one.
    pub(crate) preferred: Arc<str>,
    pub(crate) window: Duration,
    pub(crate) linger: Duration,
    pub(crate) capacity: usize,
}

impl DedupConfig {
    /// Defaults for `backends`, the first one preferred for counters: a
    /// window of 500 ms, a linger of 120 s, 65,536 flows.
    ///
    /// # Panics
    /// When `backends` is empty.
    #[must_use]
    pub fn for_backends<const N: usize>(backends: [&str; N]) -> Self {
        let backends: Vec<Arc<str>> = backends.into_iter().map(Arc::from).collect();
        Self {
            preferred: Arc::clone(backends.first().expect("at least one backend")),
            backends,
            window: Duration::from_millis(500),
            linger: Duration::from_secs(120),
            capacity: 65_536,
        }
    }

    /// Whose counters and time a `closed` carries when it reported one.
    #[must_use]
    pub fn preferred(mut self, backend: &str) -> Self {
        self.preferred = Arc::from(backend);
        self
    }

    /// How long the first backend's event waits for the others'.
    ///
    /// # Errors
    /// When `window` is zero.
    pub fn window(mut self, window: Duration) -> Result<Self, ConfigError> {
        self.window = ConfigError::nonzero("correlation window", window)?;
        Ok(self)
    }

    /// How long a closed flow is remembered to absorb late duplicates
    /// (conntrack keeps a closed TCP entry 120 s).
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Flows remembered at most (under 500 bytes of RSS each, measured with
    /// 100,000 lingering flows: about 30 MiB at the default).
    ///
    /// # Errors
    /// When `flows` is zero.
    pub fn capacity(mut self, flows: usize) -> Result<Self, ConfigError> {
        if flows == 0 {
            return Err(ConfigError::new(
                "correlation capacity",
                "must hold at least one flow",
            ));
        }
        self.capacity = flows;
        Ok(self)
    }
}

/// How long a closed flow is remembered while a backend that saw it still
/// owes its close.
const OWED_CLOSE_MAX: Duration = Duration::from_secs(600);

/// A set of backends: bit `i` is the backend at index `i` of
/// [`Correlator::known`]. A remembered flow keeps a few of these instead of
/// lists of names: tens of thousands of flows linger at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Backends(u32);

impl Backends {
    /// The most backends correlated; events of others pass through.
    const CAPACITY: usize = 32;

    fn one(index: u8) -> Self {
        Self(1 << index)
    }

    fn contains(self, index: u8) -> bool {
        self.0 & (1 << index) != 0
    }

    fn covers(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn indices(self) -> impl Iterator<Item = u8> {
        (0..32).filter(move |&index| self.contains(index))
    }
}

impl std::ops::BitOr for Backends {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitAnd for Backends {
    type Output = Self;

    fn bitand(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

impl std::ops::Sub for Backends {
    type Output = Self;

    fn sub(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

/// An event held back for the others' views.
#[derive(Debug)]
struct Held {
    backend: u8,
    event: FlowEvent,
    since: Instant,
}

/// What is known of one key's current flow.
#[derive(Debug)]
struct Flow {
    created: Instant,
    opened_by: Backends,
    closed_by: Backends,
    /// Boxed: only during the window is anything held, and most flows
    /// remembered are lingering after it.
    open: Option<Box<Held>>,
    close: Option<Box<Held>>,
    /// When the `closed` was sent; the flow lingers from then on.
    closed_at: Option<Instant>,
    /// Backends that still owe the close of an earlier flow on this key:
    /// a UDP socket that reuses a port conntrack still tracks is a new flow
    /// to eBPF but the same entry to conntrack, whose one DESTROY comes
    /// later and belongs to the earlier flow.
    owed_earlier: Backends,
}

impl Flow {
    fn new(now: Instant, owed_earlier: Backends) -> Self {
        Self {
            created: now,
            opened_by: Backends::default(),
            closed_by: Backends::default(),
            open: None,
            close: None,
            closed_at: None,
            owed_earlier,
        }
    }

    fn seen_by(&self) -> Backends {
        self.opened_by | self.closed_by
    }

    /// The backends of `active` that opened this flow (or an earlier one on
    /// its key) and have not closed it yet.
    fn owing(&self, active: Backends) -> Backends {
        ((self.opened_by - self.closed_by) | self.owed_earlier) & active
    }

    /// Whether every view of the flow has come in.
    fn complete(&self) -> bool {
        self.owed_earlier.is_empty() && self.closed_by.covers(self.opened_by)
    }
}

/// The correlation state, fed one item at a time.
#[derive(Debug)]
struct Correlator {
    config: DedupConfig,
    /// Every backend seen or configured; [`Backends`] index this.
    known: Vec<Arc<str>>,
    /// The backends still running: a flow all of them saw is not waited on.
    active: Backends,
    /// The index of [`DedupConfig::preferred`].
    preferred: Option<u8>,
    flows: HashMap<FlowKey, Flow>,
    evictions: u64,
    /// Flows not yet reported closed, published for [`Correlated::unsettled`].
    unsettled: Arc<AtomicUsize>,
    /// Flows remembered, published for [`Correlated::remembered_gauge`].
    remembered: Arc<AtomicUsize>,
}

impl Correlator {
    fn new(config: DedupConfig) -> Self {
        let mut correlator = Self {
            config,
            known: Vec::new(),
            active: Backends::default(),
            preferred: None,
            flows: HashMap::new(),
            evictions: 0,
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

    fn push(&mut self, item: MergedItem, now: Instant, out: &mut VecDeque<MergedItem>) {
        let MergedItem::Event { backend, event, .. } = item else {
            if let MergedItem::SourceFailed { backend, .. } | MergedItem::SourceEnded { backend } =
                &item
                && let Some(index) = self.index(backend)
            {
                // Its view will not come: stop waiting for it.
                self.active = self.active - Backends::one(index);
            }
            out.push_back(item);
            return;
        };
        let index = self.index(&backend);
        match (&event.kind, index) {
            (FlowEventKind::Opened, Some(index)) => self.opened(index, event, now, out),
            (FlowEventKind::Closed { .. }, Some(index)) => self.closed(index, event, now, out),
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

    fn opened(
        &mut self,
        backend: u8,
        event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let key = event.key;
        let mut owed_earlier = Backends::default();
        if let Some(flow) = self.flows.get(&key) {
            if flow.closed_by.contains(backend) {
                // This backend closed its view of the flow: a new flow on a
                // reused key. Whatever is held of the old one goes first;
                // closes the old one is still owed pass to the new one.
                owed_earlier = flow.owing(self.active);
                self.finish(key, out);
            } else if flow.opened_by.contains(backend) {
                return; // a repeated opened from the same backend
            } else {
                let prefer = self.is_preferred(backend);
                let active = self.active;
                let flow = self.flows.get_mut(&key).expect("present");
                // Opening the key again, it lost the earlier flow's close.
                flow.owed_earlier = flow.owed_earlier - Backends::one(backend);
                if prefer && let Some(held) = &mut flow.open {
                    held.backend = backend;
                    held.event = event;
                }
                flow.opened_by = flow.opened_by | Backends::one(backend);
                if flow.opened_by.covers(active)
                    && let Some(held) = flow.open.take()
                {
                    let seen_by = flow.seen_by();
                    out.push_back(self.emit(*held, seen_by));
                }
                return;
            }
        }
        self.make_room(out);
        let mut flow = Flow::new(now, owed_earlier);
        flow.opened_by = Backends::one(backend);
        let held = Box::new(Held {
            backend,
            event,
            since: now,
        });
        if flow.opened_by.covers(self.active) {
            out.push_back(self.emit(*held, flow.opened_by));
        } else {
            flow.open = Some(held);
        }
        self.flows.insert(key, flow);
        self.unsettled.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(
        &mut self,
        backend: u8,
        event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let key = event.key;
        let prefer = self.is_preferred(backend);
        let active = self.active;
        let Some(flow) = self.flows.get_mut(&key) else {
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
        let of_earlier_flow =
            flow.owed_earlier.contains(backend) && !flow.opened_by.contains(backend);
        if of_earlier_flow {
            // The close of an earlier flow on this key, already reported.
            flow.owed_earlier = flow.owed_earlier - Backends::one(backend);
        } else {
            flow.closed_by = flow.closed_by | Backends::one(backend);
        }
        if of_earlier_flow || flow.closed_at.is_some() {
            // A late view of a flow already reported closed.
            if flow.closed_at.is_some() && flow.complete() {
                self.flows.remove(&key);
            }
            return;
        }
        // The line carries the preferred backend's counters, and a close
        // reason from whichever backend knows one.
        match &mut flow.close {
            Some(held) if prefer => {
                let reason = event.close_reason.or(held.event.close_reason);
                held.backend = backend;
                held.event = event;
                held.event.close_reason = reason;
            }
            Some(held) => {
                held.event.close_reason = held.event.close_reason.or(event.close_reason);
            }
            None => {
                flow.close = Some(Box::new(Held {
                    backend,
                    event,
                    since: now,
                }));
            }
        }
        if flow.closed_by.covers(active) {
            self.send_close(key, now, out);
        }
    }

    /// Sends the held `closed` of `key` (after its `opened`, if that is
    /// still held); the flow then lingers.
    fn send_close(&mut self, key: FlowKey, now: Instant, out: &mut VecDeque<MergedItem>) {
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let seen_by = flow.seen_by();
        let (open, close) = (flow.open.take(), flow.close.take());
        if close.is_some() {
            flow.closed_at = Some(now);
            self.unsettled.fetch_sub(1, Ordering::Relaxed);
        }
        for held in [open, close].into_iter().flatten() {
            out.push_back(self.emit(*held, seen_by));
        }
    }

    /// Sends whatever is held of `key` and forgets it.
    fn finish(&mut self, key: FlowKey, out: &mut VecDeque<MergedItem>) {
        if let Some(mut flow) = self.flows.remove(&key) {
            if flow.closed_at.is_none() {
                self.unsettled.fetch_sub(1, Ordering::Relaxed);
            }
            let seen_by = flow.seen_by();
            for held in [flow.open.take(), flow.close.take()].into_iter().flatten() {
                out.push_back(self.emit(*held, seen_by));
            }
        }
    }

    /// Evicts the oldest flow when the table is full.
    fn make_room(&mut self, out: &mut VecDeque<MergedItem>) {
        if self.flows.len() < self.config.capacity {
            return;
        }
        if let Some(oldest) = self
            .flows
            .iter()
            .min_by_key(|(_, flow)| flow.created)
            .map(|(key, _)| *key)
        {
            self.finish(oldest, out);
            self.evictions += 1;
        }
    }

    /// Sends what waited longer than the window; forgets flows that
    /// lingered long enough.
    fn tick(&mut self, now: Instant, out: &mut VecDeque<MergedItem>) {
        let window = self.config.window;
        let linger = self.config.linger;
        let mut overdue_open = Vec::new();
        let mut overdue_close = Vec::new();
        let mut forget = Vec::new();
        for (key, flow) in &self.flows {
            let overdue =
                |held: &Option<Box<Held>>| held.as_ref().is_some_and(|h| now - h.since >= window);
            if overdue(&flow.open) {
                overdue_open.push(*key);
            }
            if overdue(&flow.close) {
                overdue_close.push(*key);
            }
            // A backend that opened the flow still owes its close (conntrack
            // reports a UDP flow's end when the entry expires, up to 120 s
            // after eBPF): keep waiting for it, up to OWED_CLOSE_MAX.
            let waited = if flow.owing(self.active).is_empty() {
                linger
            } else {
                OWED_CLOSE_MAX.max(linger)
            };
            if flow.closed_at.is_some_and(|at| now - at >= waited) {
                forget.push(*key);
            }
        }
        for key in overdue_open {
            let flow = self.flows.get_mut(&key).expect("present");
            let seen_by = flow.seen_by();
            let held = flow.open.take().expect("checked");
            out.push_back(self.emit(*held, seen_by));
        }
        for key in overdue_close {
            self.send_close(key, now, out);
        }
        for key in forget {
            self.flows.remove(&key);
        }
    }

    /// At the end: sends everything still held.
    fn flush(&mut self, out: &mut VecDeque<MergedItem>) {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        for key in keys {
            self.finish(key, out);
        }
    }
}

/// A merged stream with each flow's events correlated across backends.
pub struct Correlated<S> {
    inner: S,
    correlator: Correlator,
    ticks: Interval,
    out: VecDeque<MergedItem>,
    ended: bool,
}

impl<S> Correlated<S> {
    /// Correlates `inner` (a tokio runtime must be running: the window is
    /// timed with tokio's clock).
    pub fn new(inner: S, config: DedupConfig) -> Self {
        // At least a millisecond: the window is never zero (see
        // `DedupConfig::window`), but half of a nanosecond is.
        let mut ticks = tokio::time::interval((config.window / 2).max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            inner,
            correlator: Correlator::new(config),
            ticks,
            out: VecDeque::new(),
            ended: false,
        }
    }

    /// Flows evicted so far because the table was full.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.correlator.evictions
    }

    /// Flows remembered now.
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.correlator.flows.len()
    }

    /// A live count of the flows remembered (the correlation table's
    /// size, updated as items pass).
    #[must_use]
    pub fn remembered_gauge(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.correlator.remembered)
    }

    /// A live count of the flows opened and not yet reported closed,
    /// including those whose events are still held: a supervisor waiting
    /// for a workload's flows to close watches it.
    #[must_use]
    pub fn unsettled(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.correlator.unsettled)
    }
}

impl<S: Stream<Item = MergedItem> + Unpin> Stream for Correlated<S> {
    type Item = MergedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MergedItem>> {
        let this = &mut *self;
        loop {
            this.correlator
                .remembered
                .store(this.correlator.flows.len(), Ordering::Relaxed);
            if let Some(item) = this.out.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    this.correlator.push(item, Instant::now(), &mut this.out);
                    continue;
                }
                Poll::Ready(None) => {
                    this.correlator.flush(&mut this.out);
                    this.ended = true;
                    continue;
                }
                Poll::Pending => {}
            }
            match this.ticks.poll_tick(cx) {
                Poll::Ready(now) => {
                    this.correlator.tick(now, &mut this.out);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
