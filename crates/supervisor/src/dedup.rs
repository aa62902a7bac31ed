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
//! tracks is one entry to conntrack, two flows to eBPF). A backend that
//! lags behind the others may report a key's earlier flow after another
//! opened the next one there: an `opened` stamped well before the flow
//! remembered on its key opened (both backends stamp the same first
//! packet) is that earlier flow's, already reported, and is absorbed with
//! its close.
//!
//! A view a backend rebuilt after losing messages
//! ([`flow_core::FlowEvent::resynced`]: nflog after an overrun, from a
//! listing of its table or from the backlog behind the loss) carries the
//! listing's or the read's time, so it cannot be matched to one of several
//! flows on a reused key: on a key remembered while another backend runs
//! (which reports each flow itself), or after that backend ended with the
//! scope, it is absorbed into the flow remembered; it never starts a
//! second one. In a line, a view as it
//! happened wins over a rebuilt one.
//!
//! At most [`DedupConfig::capacity`] flows are
//! remembered: beyond that the oldest is evicted (its held events are sent
//! at once, so nothing is lost, though a late duplicate may then pass) and
//! counted in [`Correlated::evictions`]. Each item and each tick costs the
//! same whatever the number of flows remembered: eviction takes the front
//! of a table kept in creation order, and a tick looks only at what is due
//! (see `table.rs`).
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

mod annotations;
mod backends;
mod correlator;
mod lookups;
mod table;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use flow_core::ConfigError;
use futures::Stream;
use tokio::time::{Instant, Interval};

use crate::merge::MergedItem;
use correlator::Correlator;

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
        self.correlator.table.len()
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
                .store(this.correlator.table.len(), Ordering::Relaxed);
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
