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
    let report = pipeline::write_all(merger.into_stream(), &mut writer)
        .await
        .unwrap();
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
    .await
    .unwrap();
    assert_eq!(report.events, 0);
    assert!(writer.into_inner().unwrap().is_empty());
}
