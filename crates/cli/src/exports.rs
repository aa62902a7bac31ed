//! `--export URL`: the collectors a run, watch or replay also sends its
//! closed flows and updates to ([`flow_supervisor::export`]). Exporting
//! never holds the output back: what a collector does not take is counted,
//! reported in the output as `lost` items at `export_dropped` (at most one
//! per exporter a second, counting the records dropped since the last,
//! and one at the end), and said at the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use flow_core::LossPoint;
use flow_core::clock::monotonic_now_ns;
use flow_supervisor::export::destination::{AnyExporter, Destination};
use flow_supervisor::merge::MergedItem;
use futures::Stream;

use crate::diag::say;

/// How often the records an exporter dropped are reported in-band at most.
const LOSS_INTERVAL: Duration = Duration::from_secs(1);

/// The running exporters, one per `--export`.
pub(crate) struct Exports(Vec<AnyExporter>);

impl Exports {
    /// Starts one exporter per URL.
    pub(crate) fn start(urls: &[Destination]) -> Result<Self> {
        urls.iter()
            .map(|url| {
                AnyExporter::start(url.clone()).with_context(|| format!("cannot export to {url}"))
            })
            .collect::<Result<_>>()
            .map(Self)
    }

    /// `items`, each handed to every exporter as it passes, with the
    /// exporters' drops as `lost` items (`backend` the export's URL, point
    /// `export_dropped`) among them. When `items` ends, the exporters send
    /// what is queued and stop; their last drops follow, then the end.
    pub(crate) fn feed<S>(self, items: S) -> Fed<S>
    where
        S: Stream<Item = MergedItem> + Unpin,
    {
        let mut tick = tokio::time::interval(LOSS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reported = vec![0; self.0.len()];
        Fed {
            items,
            names: self.0.iter().map(|e| Arc::from(e.url())).collect(),
            reported,
            exports: Some(self),
            tick,
            losses: Vec::new(),
            finishing: None,
        }
    }

    /// Sends what is queued and stops each exporter; says how many records
    /// each dropped, if any; the drops of each, in order.
    fn finish(self) -> Vec<u64> {
        self.0
            .into_iter()
            .map(|exporter| {
                let url = exporter.url();
                let dropped = exporter.finish();
                if dropped > 0 {
                    say!(
                        "flowtrack: export to {url}: {dropped} flow records dropped (export_dropped: the collector was unreachable or slower than the flows); the output has them all"
                    );
                }
                dropped
            })
            .collect()
    }
}

/// The stream [`Exports::feed`] makes.
pub(crate) struct Fed<S> {
    items: S,
    /// Each exporter's URL, the `backend` of its loss items.
    names: Vec<Arc<str>>,
    /// Each exporter's drops reported so far.
    reported: Vec<u64>,
    /// The exporters, until `items` ends.
    exports: Option<Exports>,
    tick: tokio::time::Interval,
    /// Loss items to yield before anything else.
    losses: Vec<MergedItem>,
    /// The exporters finishing (on a blocking thread: a TCP collector may
    /// take seconds).
    finishing: Option<tokio::task::JoinHandle<Vec<u64>>>,
}

impl<S> Fed<S> {
    /// Queues a loss item for each exporter that dropped records since the
    /// last, from its drops so far.
    fn report(&mut self, dropped: impl IntoIterator<Item = u64>) {
        let now = monotonic_now_ns();
        for ((reported, name), dropped) in self.reported.iter_mut().zip(&self.names).zip(dropped) {
            if dropped > *reported {
                self.losses.push(MergedItem::Lost {
                    backend: Arc::clone(name),
                    point: LossPoint::ExportDropped,
                    count: Some(dropped - *reported),
                    timestamp_ns: now,
                });
                *reported = dropped;
            }
        }
        // Yielded by pop(): oldest exporter first.
        self.losses.reverse();
    }
}

impl<S> Stream for Fed<S>
where
    S: Stream<Item = MergedItem> + Unpin,
{
    type Item = MergedItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<MergedItem>> {
        let this = self.get_mut();
        loop {
            if let Some(loss) = this.losses.pop() {
                return Poll::Ready(Some(loss));
            }
            if let Some(finishing) = &mut this.finishing {
                let dropped = match Pin::new(finishing).poll(cx) {
                    Poll::Ready(dropped) => dropped.unwrap_or_default(),
                    Poll::Pending => return Poll::Pending,
                };
                this.finishing = None;
                this.report(dropped);
                if this.losses.is_empty() {
                    return Poll::Ready(None);
                }
                continue;
            }
            let Some(exports) = &this.exports else {
                return Poll::Ready(None);
            };
            if exports.0.is_empty() {
                return Pin::new(&mut this.items).poll_next(cx);
            }
            if this.tick.poll_tick(cx).is_ready() {
                let dropped: Vec<u64> = exports.0.iter().map(AnyExporter::dropped).collect();
                this.report(dropped);
                continue;
            }
            return match Pin::new(&mut this.items).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if let MergedItem::Event { event, .. } = &item {
                        exports.0.iter().for_each(|exporter| exporter.offer(event));
                    }
                    Poll::Ready(Some(item))
                }
                Poll::Ready(None) => {
                    let exports = this.exports.take().map(|e| e.0).unwrap_or_default();
                    this.finishing = Some(tokio::task::spawn_blocking(move || {
                        Exports(exports).finish()
                    }));
                    continue;
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
