//! Records read back from a recording, as the merged stream that wrote
//! them: in the same order, each with its backend and the other backends
//! that saw it, so that JSON output replays to itself byte for byte.
//!
//! ```
//! use flow_core::record::FlowRecord;
//! use flow_supervisor::output::{OutputFormat, RecordWriter};
//! use flow_supervisor::{pipeline, replay};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let recorded = concat!(
//!     r#"{"ts_ns":2,"kind":"lost","backend":"nflog","count":1}"#, "\n",
//!     r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":1,"dst":"10.0.0.2","dport":2,"backend":"ebpf","backends":["ebpf","nflog"]}"#, "\n",
//! );
//! let records = recorded.lines().map(|line| FlowRecord::from_json_line(line).unwrap());
//! let mut writer = RecordWriter::new(OutputFormat::Json, Vec::new());
//! let report = pipeline::write_all(replay::items(records), &mut writer).await;
//! assert_eq!(writer.into_inner().unwrap(), recorded.as_bytes());
//! assert_eq!((report.events, report.loss_items), (1, 1));
//! # });
//! ```

use std::sync::Arc;

use flow_core::FlowError;
use flow_core::record::{FlowRecord, RecordItem};
use futures::Stream;

use crate::merge::MergedItem;

/// The merged items `records` stand for, in their order; then the end of
/// each backend they name, in order of first appearance.
pub fn items<'a>(
    records: impl IntoIterator<Item = FlowRecord<'a>>,
) -> impl Stream<Item = MergedItem> + Unpin {
    futures::stream::iter(Items {
        records: records.into_iter(),
        names: Vec::new(),
        ended: 0,
    })
}

/// The iterator behind [`items`].
struct Items<I> {
    records: I,
    /// Each backend named so far, shared by its items.
    names: Vec<Arc<str>>,
    /// Backends whose end was yielded.
    ended: usize,
}

impl<I> Items<I> {
    /// The shared name of `backend`.
    fn name(&mut self, backend: &str) -> Arc<str> {
        if let Some(name) = self.names.iter().find(|name| ***name == *backend) {
            return Arc::clone(name);
        }
        let name: Arc<str> = backend.into();
        self.names.push(Arc::clone(&name));
        name
    }
}

impl<'a, I: Iterator<Item = FlowRecord<'a>>> Iterator for Items<I> {
    type Item = MergedItem;

    fn next(&mut self) -> Option<MergedItem> {
        let Some(record) = self.records.next() else {
            let name = self.names.get(self.ended)?;
            self.ended += 1;
            return Some(MergedItem::SourceEnded {
                backend: Arc::clone(name),
            });
        };
        let backend = self.name(&record.backend);
        Some(match record.item {
            RecordItem::Event(event) => MergedItem::Event {
                backend,
                event: event.into_owned(),
                also_seen_by: record
                    .also_seen_by
                    .iter()
                    .map(|other| self.name(other))
                    .collect(),
            },
            RecordItem::Lost {
                point,
                count,
                timestamp_ns,
            } => MergedItem::Lost {
                backend,
                point,
                count,
                timestamp_ns,
            },
            // RecordItem is non-exhaustive: a kind this version cannot
            // replay is reported rather than dropped.
            other => MergedItem::SourceFailed {
                backend,
                error: FlowError::invalid_input("replay", format!("cannot replay {other:?}")),
            },
        })
    }
}
