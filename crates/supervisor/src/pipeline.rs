//! Drives a merged stream into a [`RecordWriter`] and tallies what passed.

use std::io::{self, Write};
use std::sync::Arc;

use flow_core::{FlowError, FlowEventKind, LossPoint};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use crate::merge::MergedItem;
use crate::output::RecordWriter;
use crate::summary::Destinations;

/// A source that failed during the run.
#[derive(Debug)]
pub struct SourceFailure {
    /// The source's name.
    pub backend: Arc<str>,
    /// Why it failed.
    pub error: FlowError,
}

/// What a pipeline run wrote.
#[derive(Debug, Default)]
pub struct PipelineReport {
    /// Flow events written.
    pub events: u64,
    /// `Opened` events among them.
    pub opened: u64,
    /// `Closed` events among them.
    pub closed: u64,
    /// `Denied` events among them.
    pub denied: u64,
    /// Loss items written.
    pub loss_items: u64,
    /// Observations those loss items counted (those with a known count).
    pub lost_observations: u64,
    /// Loss items whose count was unknown.
    pub losses_of_unknown_size: u64,
    /// Where the losses happened, each point once, in the order first seen.
    pub loss_points: Vec<LossPoint>,
    /// Sources that failed, in the order they failed.
    pub failures: Vec<SourceFailure>,
    /// Flows the correlation of `--backend both` forgot early because its
    /// table was full (set by the caller that correlated; duplicates of
    /// those flows may have passed).
    pub correlation_evictions: u64,
    /// Per-destination totals of the events written.
    pub destinations: Destinations,
}

/// Writes every event and loss of `stream` until it ends, flushing whenever
/// the stream has nothing ready (so a live reader sees events at once, and a
/// burst is written in large blocks). A failing source is logged and listed
/// in the report; the others go on.
///
/// # Errors
/// The writer's error; the stream is dropped, which stops every source.
pub async fn write_all<W: Write>(
    stream: impl Stream<Item = MergedItem> + Unpin,
    writer: &mut RecordWriter<W>,
) -> io::Result<PipelineReport> {
    write_all_tracking_open(stream, writer, watch::channel(0).0).await
}

/// [`write_all`], and publishes on `open_flows`, whenever the stream pauses,
/// how many flows are open (opened and not yet closed), so that a supervisor
/// can wait for a workload's flows to close before it stops the sources.
///
/// # Errors
/// The writer's error.
pub async fn write_all_tracking_open<W: Write>(
    mut stream: impl Stream<Item = MergedItem> + Unpin,
    writer: &mut RecordWriter<W>,
    open_flows: watch::Sender<usize>,
) -> io::Result<PipelineReport> {
    let mut report = PipelineReport::default();
    loop {
        let item = match stream.next().now_or_never() {
            Some(Some(item)) => item,
            Some(None) => break,
            None => {
                writer.flush()?;
                open_flows.send_replace(report.open_flows());
                match stream.next().await {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        if let Some(record) = item.to_record() {
            writer.write(&record)?;
        }
        tally(&mut report, item);
    }
    writer.flush()?;
    open_flows.send_replace(report.open_flows());
    Ok(report)
}

impl PipelineReport {
    /// Flows opened and not (yet) closed.
    #[must_use]
    pub fn open_flows(&self) -> usize {
        usize::try_from(self.opened.saturating_sub(self.closed)).unwrap_or(usize::MAX)
    }
}

fn tally(report: &mut PipelineReport, item: MergedItem) {
    match item {
        MergedItem::Event { event, .. } => {
            report.events += 1;
            report.destinations.record(&event);
            match event.kind {
                FlowEventKind::Opened => report.opened += 1,
                FlowEventKind::Closed { .. } => report.closed += 1,
                FlowEventKind::Denied => report.denied += 1,
                _ => {}
            }
        }
        MergedItem::Lost { point, count, .. } => {
            report.loss_items += 1;
            if !report.loss_points.contains(&point) {
                report.loss_points.push(point);
            }
            match count {
                Some(count) => report.lost_observations += count,
                None => report.losses_of_unknown_size += 1,
            }
        }
        MergedItem::SourceFailed { backend, error } => {
            tracing::error!(%backend, %error, "flow source failed");
            report.failures.push(SourceFailure { backend, error });
        }
        MergedItem::SourceEnded { backend } => tracing::debug!(%backend, "flow source ended"),
    }
}
