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

use flow_core::{FlowEvent, FlowEventKind, FlowKey};
use futures::Stream;
use tokio::time::{Instant, Interval};

use crate::merge::MergedItem;

/// How events are correlated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// The backends that run together: a flow all of them opened (or
    /// closed) is sent without waiting for the window.
    pub backends: Vec<Arc<str>>,
    /// Whose counters and time a `closed` carries when it reported one.
    pub preferred: Arc<str>,
    /// How long the first backend's event waits for the others'. Default
    /// 500 ms.
    pub window: Duration,
    /// How long a closed flow is remembered to absorb late duplicates.
    /// Default 120 s (conntrack keeps a closed TCP entry that long).
    pub linger: Duration,
    /// Flows remembered at most. Default 65,536 (about 200 bytes each).
    pub capacity: usize,
}

impl DedupConfig {
    /// Defaults for `backends`, the first one preferred for counters.
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
}

/// How long a closed flow is remembered while a backend that saw it still
/// owes its close.
const OWED_CLOSE_MAX: Duration = Duration::from_secs(600);

/// An event held back for the others' views.
#[derive(Debug)]
struct Held {
    backend: Arc<str>,
    event: FlowEvent,
    since: Instant,
}

/// What is known of one key's current flow.
#[derive(Debug)]
struct Flow {
    created: Instant,
    opened_by: Vec<Arc<str>>,
    closed_by: Vec<Arc<str>>,
    open: Option<Held>,
    close: Option<Held>,
    /// When the `closed` was sent; the flow lingers from then on.
    closed_at: Option<Instant>,
    /// Backends that still owe the close of an earlier flow on this key:
    /// a UDP socket that reuses a port conntrack still tracks is a new flow
    /// to eBPF but the same entry to conntrack, whose one DESTROY comes
    /// later and belongs to the earlier flow.
    owed_earlier: Vec<Arc<str>>,
}

impl Flow {
    fn new(now: Instant) -> Self {
        Self {
            created: now,
            opened_by: Vec::new(),
            closed_by: Vec::new(),
            open: None,
            close: None,
            closed_at: None,
            owed_earlier: Vec::new(),
        }
    }

    /// The backends of `active` that opened this flow (or an earlier one on
    /// its key) and have not closed it yet.
    fn owing(&self, active: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut owing: Vec<Arc<str>> = Vec::new();
        let open_here = self
            .opened_by
            .iter()
            .filter(|b| !self.closed_by.contains(b));
        for backend in open_here.chain(&self.owed_earlier) {
            if active.contains(backend) && !owing.contains(backend) {
                owing.push(Arc::clone(backend));
            }
        }
        owing
    }

    /// Whether a backend of `active` still owes a close (without
    /// allocating: every tick asks it of every flow).
    fn owes(&self, active: &[Arc<str>]) -> bool {
        let open_here = self
            .opened_by
            .iter()
            .filter(|b| !self.closed_by.contains(b));
        open_here
            .chain(&self.owed_earlier)
            .any(|b| active.contains(b))
    }

    /// Whether every view of the flow has come in.
    fn complete(&self) -> bool {
        self.owed_earlier.is_empty() && self.opened_by.iter().all(|b| self.closed_by.contains(b))
    }

    fn seen_by(&self) -> Vec<Arc<str>> {
        let mut all = self.opened_by.clone();
        for backend in &self.closed_by {
            if !all.contains(backend) {
                all.push(Arc::clone(backend));
            }
        }
        all
    }
}

/// The correlation state, fed one item at a time.
#[derive(Debug)]
struct Correlator {
    config: DedupConfig,
    flows: HashMap<FlowKey, Flow>,
    evictions: u64,
    /// Flows not yet reported closed, published for [`Correlated::unsettled`].
    unsettled: Arc<AtomicUsize>,
    /// Flows remembered, published for [`Correlated::remembered_gauge`].
    remembered: Arc<AtomicUsize>,
}

/// The item that sends `held` on behalf of every backend in `seen_by`.
fn emit(held: Held, seen_by: &[Arc<str>]) -> MergedItem {
    let also_seen_by = seen_by
        .iter()
        .filter(|backend| **backend != held.backend)
        .cloned()
        .collect();
    MergedItem::Event {
        backend: held.backend,
        event: held.event,
        also_seen_by,
    }
}

/// Whether `seen` includes every backend of `all`.
fn covers(all: &[Arc<str>], seen: &[Arc<str>]) -> bool {
    all.iter().all(|b| seen.contains(b))
}

impl Correlator {
    fn push(&mut self, item: MergedItem, now: Instant, out: &mut VecDeque<MergedItem>) {
        let MergedItem::Event { backend, event, .. } = item else {
            if let MergedItem::SourceFailed { backend, .. } | MergedItem::SourceEnded { backend } =
                &item
            {
                // Its view will not come: stop waiting for it.
                self.config.backends.retain(|b| b != backend);
            }
            out.push_back(item);
            return;
        };
        match event.kind {
            FlowEventKind::Opened => self.opened(backend, event, now, out),
            FlowEventKind::Closed { .. } => self.closed(backend, event, now, out),
            _ => out.push_back(MergedItem::Event {
                backend,
                event,
                also_seen_by: Vec::new(),
            }),
        }
    }

    fn opened(
        &mut self,
        backend: Arc<str>,
        event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let key = event.key;
        let mut owed_earlier = Vec::new();
        if let Some(flow) = self.flows.get(&key) {
            let reopened = flow.closed_by.contains(&backend);
            if reopened {
                // This backend closed its view of the flow: a new flow on a
                // reused key. Whatever is held of the old one goes first;
                // closes the old one is still owed pass to the new one.
                owed_earlier = flow.owing(&self.config.backends);
                self.finish(key, out);
            } else if !flow.opened_by.contains(&backend) {
                let flow = self.flows.get_mut(&key).expect("present");
                // Opening the key again, it lost the earlier flow's close.
                flow.owed_earlier.retain(|b| *b != backend);
                if backend == self.config.preferred
                    && let Some(held) = &mut flow.open
                {
                    held.backend = Arc::clone(&backend);
                    held.event = event;
                }
                flow.opened_by.push(backend);
                if covers(&self.config.backends, &flow.opened_by)
                    && let Some(held) = flow.open.take()
                {
                    let seen_by = flow.seen_by();
                    out.push_back(emit(held, &seen_by));
                }
                return;
            } else {
                return; // a repeated opened from the same backend
            }
        }
        self.make_room(now, out);
        let mut flow = Flow::new(now);
        flow.owed_earlier = owed_earlier;
        flow.opened_by.push(Arc::clone(&backend));
        let held = Held {
            backend,
            event,
            since: now,
        };
        if covers(&self.config.backends, &flow.opened_by) {
            out.push_back(emit(held, &flow.opened_by));
        } else {
            flow.open = Some(held);
        }
        self.flows.insert(key, flow);
        self.unsettled.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(
        &mut self,
        backend: Arc<str>,
        event: FlowEvent,
        now: Instant,
        out: &mut VecDeque<MergedItem>,
    ) {
        let key = event.key;
        let Some(flow) = self.flows.get_mut(&key) else {
            // Not remembered (evicted): send it as it is.
            out.push_back(emit(
                Held {
                    backend,
                    event,
                    since: now,
                },
                &[],
            ));
            return;
        };
        if flow.closed_by.contains(&backend) {
            return;
        }
        let earlier = flow.owed_earlier.iter().position(|b| *b == backend);
        let of_earlier_flow = match earlier {
            // The close of an earlier flow on this key, already reported.
            Some(index) if !flow.opened_by.contains(&backend) => {
                flow.owed_earlier.swap_remove(index);
                true
            }
            _ => {
                flow.closed_by.push(Arc::clone(&backend));
                false
            }
        };
        if of_earlier_flow || flow.closed_at.is_some() {
            // A late view of a flow already reported closed.
            if flow.closed_at.is_some() && flow.complete() {
                self.flows.remove(&key);
            }
            return;
        }
        let prefer = backend == self.config.preferred;
        match &mut flow.close {
            Some(held) if prefer => {
                held.backend = backend;
                held.event = event;
            }
            Some(_) => {}
            None => {
                flow.close = Some(Held {
                    backend,
                    event,
                    since: now,
                });
            }
        }
        let everyone = self
            .config
            .backends
            .iter()
            .all(|b| flow.closed_by.contains(b));
        if everyone {
            self.send_close(key, now, out);
        }
    }

    /// Sends the held `closed` of `key` (after its `opened`, if that is
    /// still held); the flow then lingers.
    fn send_close(&mut self, key: FlowKey, now: Instant, out: &mut VecDeque<MergedItem>) {
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        if let Some(held) = flow.open.take() {
            let seen_by = flow.seen_by();
            out.push_back(emit(held, &seen_by));
        }
        if let Some(held) = flow.close.take() {
            let seen_by = flow.seen_by();
            out.push_back(emit(held, &seen_by));
            flow.closed_at = Some(now);
            self.unsettled.fetch_sub(1, Ordering::Relaxed);
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
                out.push_back(emit(held, &seen_by));
            }
        }
    }

    /// Evicts the oldest flow when the table is full.
    fn make_room(&mut self, _now: Instant, out: &mut VecDeque<MergedItem>) {
        if self.flows.len() < self.config.capacity.max(1) {
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
        let mut overdue_close = Vec::new();
        let mut forget = Vec::new();
        for (key, flow) in &mut self.flows {
            if flow
                .open
                .as_ref()
                .is_some_and(|held| now - held.since >= window)
            {
                let held = flow.open.take().expect("checked");
                let seen_by = flow.seen_by();
                out.push_back(emit(held, &seen_by));
            }
            if flow
                .close
                .as_ref()
                .is_some_and(|held| now - held.since >= window)
            {
                overdue_close.push(*key);
            }
            // A backend that opened the flow still owes its close (conntrack
            // reports a UDP flow's end when the entry expires, up to 120 s
            // after eBPF): keep waiting for it, up to OWED_CLOSE_MAX.
            let waited = if flow.owes(&self.config.backends) {
                OWED_CLOSE_MAX.max(linger)
            } else {
                linger
            };
            if flow.closed_at.is_some_and(|at| now - at >= waited) {
                forget.push(*key);
            }
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
        let mut ticks = tokio::time::interval(config.window / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            inner,
            correlator: Correlator {
                config,
                flows: HashMap::new(),
                evictions: 0,
                unsettled: Arc::new(AtomicUsize::new(0)),
                remembered: Arc::new(AtomicUsize::new(0)),
            },
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
