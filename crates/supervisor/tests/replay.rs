//! JSON lines as flowtrack writes them replay to themselves, byte for byte:
//! every line's backend, the backends that also saw it, and the order.

use flow_backend_mock::Replay;
use flow_core::record::FlowRecord;
use flow_core::{FlowEvent, FlowKey, LossPoint};
use flow_supervisor::output::{OutputFormat, RecordWriter};
use flow_supervisor::{pipeline, replay};
use proptest::prelude::*;

const BACKENDS: [&str; 3] = ["ebpf", "nflog", "mock"];

/// A line as flowtrack writes one: an event seen by one backend or more
/// (its own first, the others once each), or a backend's loss.
fn written_record() -> impl Strategy<Value = FlowRecord<'static>> {
    let backend = 0..BACKENDS.len();
    let others = proptest::sample::subsequence(BACKENDS.to_vec(), 0..=2);
    let event = (
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
        any::<u64>(),
        proptest::option::of((any::<u64>(), any::<u64>())),
    )
        .prop_map(|(addr, sport, dport, ts, closed)| {
            let key = FlowKey::udp((addr, sport).into(), ([10, 0, 0, 1], dport).into());
            match closed {
                Some((packets, bytes)) => FlowEvent::closed(key, packets, bytes, ts),
                None => FlowEvent::opened(key, ts),
            }
        });
    let loss = (
        proptest::sample::select(LossPoint::ALL.to_vec()),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
    );
    prop_oneof![
        (backend.clone(), others, event).prop_map(|(backend, others, event)| {
            let mut record = FlowRecord::event(BACKENDS[backend], event);
            record.also_seen_by = others
                .into_iter()
                .filter(|other| *other != BACKENDS[backend])
                .map(Into::into)
                .collect();
            record
        }),
        (backend, loss).prop_map(|(backend, (point, count, ts))| {
            FlowRecord::lost(BACKENDS[backend], point, count, ts)
        }),
    ]
}

proptest! {
    #[test]
    fn json_replays_to_itself(records in proptest::collection::vec(written_record(), 0..40)) {
        let mut file = RecordWriter::new(OutputFormat::Json, Vec::new());
        for record in &records {
            file.write(record).unwrap();
        }
        let file = file.into_inner().unwrap();
        let replayed = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let recorded = Replay::read(&file[..], "recorded").await.unwrap();
                let mut writer = RecordWriter::new(OutputFormat::Json, Vec::new());
                let report =
                    pipeline::write_all(replay::items(recorded.into_records()), &mut writer).await;
                assert!(report.output.is_complete());
                writer.into_inner().unwrap()
            });
        prop_assert_eq!(String::from_utf8(replayed).unwrap(), String::from_utf8(file).unwrap());
    }
}
