//! The pipeline writes every observation once and tallies it.

use flow_backend_mock::ScriptedSource;
use flow_core::record::FlowRecord;
use flow_core::{FlowError, FlowKey, LossPoint};
use flow_supervisor::merge::{MergeConfig, Merger};
use flow_supervisor::output::{OutputFormat, RecordWriter};
use flow_supervisor::pipeline;

fn key(port: u16) -> FlowKey {
    FlowKey::tcp(([10, 0, 0, 1], port).into(), ([10, 0, 0, 2], 443).into())
}

#[tokio::test]
async fn writes_every_event_and_loss_and_reports_failures() {
    let mut merger = Merger::new(MergeConfig::default().batch_size(3).queue_capacity(6));
    let ebpf = ScriptedSource::builder("ebpf")
        .opened(key(1), 1)
        .lost(LossPoint::RingBufferFull, Some(5))
        .closed(key(1), 4, 300, 2)
        .lost(LossPoint::FlowTableEviction, None)
        .build();
    let nflog = ScriptedSource::builder("nflog")
        .opened(key(2), 3)
        .error(FlowError::io(
            "reading netlink",
            std::io::ErrorKind::ConnectionReset.into(),
        ))
        .build();
    merger.add(Box::new(ebpf)).await.unwrap();
    merger.add(Box::new(nflog)).await.unwrap();

    let mut writer = RecordWriter::new(OutputFormat::Json, Vec::new());
    let report = pipeline::write_all(merger.into_stream(), &mut writer).await;
    let output = String::from_utf8(writer.into_inner().unwrap()).unwrap();

    let records: Vec<FlowRecord<'static>> = output
        .lines()
        .map(|line| FlowRecord::from_json_line(line).unwrap())
        .collect();
    assert_eq!(records.len(), 5);
    assert_eq!(
        records.iter().filter(|r| r.kind_name() == "lost").count(),
        2
    );
    assert_eq!((report.events, report.loss_items), (3, 2));
    assert_eq!(
        (report.lost_observations, report.losses_of_unknown_size),
        (5, 1)
    );
    assert_eq!(report.failures.len(), 1);
    assert_eq!(&*report.failures[0].backend, "nflog");
    assert!(
        report.failures[0]
            .error
            .to_string()
            .starts_with("reading netlink: ")
    );
}

#[tokio::test]
async fn no_sources_write_nothing() {
    let mut writer = RecordWriter::new(OutputFormat::Text, Vec::new());
    let report = pipeline::write_all(
        Merger::new(MergeConfig::default()).into_stream(),
        &mut writer,
    )
    .await;
    assert_eq!(report.events, 0);
    assert!(writer.into_inner().unwrap().is_empty());
}

/// A pipe whose reader went away after `room` bytes.
struct ClosedAfter {
    room: usize,
}

impl std::io::Write for ClosedAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_closed_output_is_counted_and_the_stream_still_drained() {
    let mut merger = Merger::new(MergeConfig::default());
    let mut script = ScriptedSource::builder("ebpf");
    for port in 0..200 {
        script = script.opened(key(port), 1).closed(key(port), 2, 120, 2);
    }
    merger.add(Box::new(script.build())).await.unwrap();
    let mut writer = RecordWriter::new(OutputFormat::Json, ClosedAfter { room: 300 });
    let report = pipeline::write_all(merger.into_stream(), &mut writer).await;
    // Every event is observed and tallied, per destination too.
    assert_eq!((report.opened, report.closed), (200, 200));
    let (_, stats) = report.destinations.iter().next().unwrap();
    assert_eq!((stats.connections, stats.packets), (200, 400));
    // Two JSON lines fit in 300 bytes; the rest were not written.
    let output = &report.output;
    assert!(!output.is_complete());
    assert_eq!((output.written, output.unwritten), (2, 398));
    assert_eq!(
        output.error.as_ref().map(std::io::Error::kind),
        Some(std::io::ErrorKind::BrokenPipe)
    );
}
