//! `--export URL`: the collectors a run, watch or replay also sends its
//! closed flows and updates to ([`flow_supervisor::export`]). Exporting
//! never holds the output back: what a collector does not take is counted,
//! and said at the end.

use anyhow::{Context, Result};
use flow_supervisor::export::destination::{AnyExporter, Destination};
use flow_supervisor::merge::MergedItem;

use crate::diag::say;

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

    /// Hands an item of the output to every exporter (events only).
    pub(crate) fn offer(&self, item: &MergedItem) {
        if let MergedItem::Event { event, .. } = item {
            self.0.iter().for_each(|exporter| exporter.offer(event));
        }
    }

    /// Sends what is queued and stops each exporter; says how many records
    /// each dropped, if any.
    pub(crate) fn finish(self) {
        for exporter in self.0 {
            let url = exporter.url();
            let dropped = exporter.finish();
            if dropped > 0 {
                say!(
                    "flowtrack: export to {url}: {dropped} flow records dropped (export_dropped: the collector was unreachable or slower than the flows); the output has them all"
                );
            }
        }
    }
}
