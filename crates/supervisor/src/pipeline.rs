//! Drives a merged stream into a [`RecordWriter`] and tallies what passed:
//! what was observed, and how much of it reached the output.

use std::io::{self, Write};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use flow_core::record::FlowRecord;
use flow_core::{FlowError, FlowEventKind, LossPoint};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::merge::MergedItem;
use crate::output::RecordWriter;
use crate::summary::{Denials, Destinations, Programs};

/// A source that failed during the run.
#[derive(Debug)]
pub struct SourceFailure {
    /// The source's name.
    pub backend: Arc<str>,
    /// Why it failed.
    pub error: FlowError,
}

/// What a pipeline run observed, and what of it it wrote ([`OutputReport`]).
#[derive(Debug, Default)]
pub struct PipelineReport {
    /// Flow events observed.
    pub events: u64,
    /// `Opened` events among them.
    pub opened: u64,
    /// `Closed` events among them.
    pub closed: u64,
    /// `Denied` events among them.
    pub denied: u64,
    /// `Update` events among them (flows still open, reported with their
    /// counters so far).
    pub updates: u64,
    /// Loss items observed.
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
    /// DNS lookups among them (`dns` events).
    pub lookups: u64,
    /// Names or processes reported lost (payload records, name cache
    /// evictions: [`LossPoint::loses_flows`] is false), apart from lost
    /// flow observations.
    pub names_lost: u64,
    /// Flow records an export dropped ([`LossPoint::ExportDropped`]): the
    /// collector misses them, the output has them.
    pub export_dropped: u64,
    /// Per-destination totals of the events observed.
    pub destinations: Destinations,
    /// Per-program totals of the events observed.
    pub programs: Programs,
    /// The destinations denied, with their rules.
    pub denials: Denials,
    /// What reached the output.
    pub output: OutputReport,
}

/// What reached the output: every line, unless writing failed. After the
/// first failure nothing more is written, and the rest is only counted.
#[derive(Debug, Default)]
pub struct OutputReport {
    /// Lines (events and loss items) the writer took whole.
    pub written: u64,
    /// Lines that were not written.
    pub unwritten: u64,
    /// Why, when writing failed (a closed pipe, a full disk).
    pub error: Option<io::Error>,
}

impl OutputReport {
    /// Whether every line was written.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.error.is_none()
    }

    /// Lines written or not.
    #[must_use]
    pub fn lines(&self) -> u64 {
        self.written + self.unwritten
    }
}

/// Writes every event and loss of `stream` until it ends, flushing whenever
/// the stream has nothing ready (so a live reader sees events at once, and a
/// burst is written in large blocks). A failing source is logged and listed
/// in the report; the others go on. When writing fails (the reader closed
/// the pipe, the disk is full), the stream is still drained and tallied, so
/// the report stays true, and [`PipelineReport::output`] says how many
/// lines were not written, and why.
pub async fn write_all<W: Write>(
    stream: impl Stream<Item = MergedItem> + Unpin,
    writer: &mut RecordWriter<W>,
) -> PipelineReport {
    write_all_tracking_open(stream, writer, watch::channel(0).0).await
}

/// [`write_all`], and publishes on `open_flows`, whenever the stream pauses,
/// how many flows are open (opened and not yet closed), so that a supervisor
/// can wait for a workload's flows to close before it stops the sources.
pub async fn write_all_tracking_open<W: Write>(
    mut stream: impl Stream<Item = MergedItem> + Unpin,
    writer: &mut RecordWriter<W>,
    open_flows: watch::Sender<usize>,
) -> PipelineReport {
    let mut report = PipelineReport::default();
    let mut output = Output::new(writer);
    loop {
        // What is ready is taken without waiting (polled with a waker that
        // does nothing); the output is flushed only when the stream pauses.
        // (The context is not kept across the await: it is not `Send`.)
        let ready = stream.poll_next_unpin(&mut Context::from_waker(Waker::noop()));
        let item = match ready {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => break,
            Poll::Pending => {
                output.flush();
                open_flows.send_replace(report.open_flows());
                match stream.next().await {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        // Borrowed where it lies: a record is large, and moving it costs.
        if let Some(record) = &item.to_record() {
            output.write(record);
        }
        // Counted where it lies (an event is large, and moving it costs);
        // a failure is kept.
        if let MergedItem::SourceFailed { backend, error } = item {
            tracing::error!(%backend, %error, "flow source failed");
            report.failures.push(SourceFailure { backend, error });
        } else {
            tally(&mut report, &item);
        }
    }
    output.flush();
    open_flows.send_replace(report.open_flows());
    report.output = output.into_report();
    report
}

/// A writer until its first error; then only a count.
struct Output<'w, W: Write> {
    writer: &'w mut RecordWriter<W>,
    /// What the writer had written before.
    written_before: u64,
    lines: u64,
    error: Option<io::Error>,
}

impl<'w, W: Write> Output<'w, W> {
    fn new(writer: &'w mut RecordWriter<W>) -> Self {
        Self {
            written_before: writer.records_written(),
            writer,
            lines: 0,
            error: None,
        }
    }

    fn write(&mut self, record: &FlowRecord<'_>) {
        self.lines += 1;
        if self.error.is_none() {
            let written = self.writer.write(record);
            self.failed(written);
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            let flushed = self.writer.flush();
            self.failed(flushed);
        }
    }

    /// Keeps the first error, and says once that writing stopped.
    fn failed(&mut self, result: io::Result<()>) {
        if let Err(error) = result {
            tracing::warn!(%error, "cannot write events; the rest are counted, not written");
            self.error = Some(error);
        }
    }

    fn into_report(self) -> OutputReport {
        let written = self.writer.records_written() - self.written_before;
        OutputReport {
            written,
            unwritten: self.lines.saturating_sub(written),
            error: self.error,
        }
    }
}

impl PipelineReport {
    /// Flows opened and not (yet) closed.
    #[must_use]
    pub fn open_flows(&self) -> usize {
        usize::try_from(self.opened.saturating_sub(self.closed)).unwrap_or(usize::MAX)
    }
}

/// Counts `item` in the report (a source's failure is kept by the caller,
/// which owns it).
fn tally(report: &mut PipelineReport, item: &MergedItem) {
    match item {
        MergedItem::Event { event, .. } => {
            report.events += 1;
            report.destinations.record(event);
            report.programs.record(event);
            report.denials.record(event);
            match event.kind {
                FlowEventKind::Opened => report.opened += 1,
                FlowEventKind::Closed { .. } => report.closed += 1,
                FlowEventKind::Denied { .. } => report.denied += 1,
                FlowEventKind::Dns(_) => report.lookups += 1,
                FlowEventKind::Update { .. } => report.updates += 1,
                _ => {}
            }
        }
        MergedItem::Lost { point, count, .. } => {
            report.loss_items += 1;
            let point = *point;
            if !report.loss_points.contains(&point) {
                report.loss_points.push(point);
            }
            match *count {
                Some(count) if point == LossPoint::ExportDropped => {
                    report.export_dropped = report.export_dropped.saturating_add(count);
                }
                None if point == LossPoint::ExportDropped => {
                    report.export_dropped = report.export_dropped.saturating_add(1);
                }
                // Counts read back from a file may be anything.
                Some(count) if !point.loses_flows() => {
                    report.names_lost = report.names_lost.saturating_add(count);
                }
                None if !point.loses_flows() => {
                    report.names_lost = report.names_lost.saturating_add(1);
                }
                Some(count) => {
                    report.lost_observations = report.lost_observations.saturating_add(count);
                }
                None => report.losses_of_unknown_size += 1,
            }
        }
        // Kept by the caller, which owns it.
        MergedItem::SourceFailed { .. } => {}
        MergedItem::SourceEnded { backend } => tracing::debug!(%backend, "flow source ended"),
    }
}
