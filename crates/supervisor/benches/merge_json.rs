//! Merge + JSON encoding throughput: 1,000,000 events from 4 sources, on one
//! core (a current-thread runtime), written to a sink; plain, and with names
//! and processes as the enrichers attach them. Results and method:
//! BENCHMARKS.md.

#![allow(missing_docs)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flow_core::process::Process;
use flow_core::{FlowEvent, FlowKey};
use flow_supervisor::merge::{MergeConfig, Merger};
use flow_supervisor::output::{OutputFormat, RecordWriter};
use flow_supervisor::pipeline;
use futures::{StreamExt, stream};

const SOURCES: u64 = 4;
const EVENTS_PER_SOURCE: u64 = 250_000;

/// Processes each source's events are attributed to, in turn.
const PROCESSES_PER_SOURCE: u64 = 8;

/// What a source's events carry besides their keys: nothing, or what the
/// name and process enrichers attach (a name on `opened` events, a process
/// on every event, each shared by many events as the enrichers share them).
#[derive(Clone)]
struct Enrichment {
    host: Arc<str>,
    processes: Vec<Arc<Process>>,
}

impl Enrichment {
    fn for_source(source: u64) -> Self {
        let processes = (0..PROCESSES_PER_SOURCE)
            .map(|n| {
                let pid = u32::try_from(source * 1_000 + n).unwrap_or(0) + 4_000;
                Arc::new(
                    Process::new(pid)
                        .with_comm("python3")
                        .with_exe("/usr/bin/python3.12")
                        .with_uid(1_000),
                )
            })
            .collect();
        Self {
            host: Arc::from(format!("files-{source}.pythonhosted.org")),
            processes,
        }
    }

    /// `event`, named and attributed as the `i`-th event of its source (a
    /// flow's opened and closed events by the same process).
    fn apply(&self, event: FlowEvent, i: u64) -> FlowEvent {
        let index = usize::try_from(i / 2 % PROCESSES_PER_SOURCE).unwrap_or(0);
        let event = event.by(Arc::clone(&self.processes[index]));
        if i.is_multiple_of(2) {
            event.named(Arc::clone(&self.host))
        } else {
            event
        }
    }
}

/// The i-th event of a source: alternating opened/closed over distinct keys.
fn event(source: u64, i: u64, enrichment: Option<&Enrichment>) -> FlowEvent {
    let port = u16::try_from(i % 60_000).unwrap_or(0) + 1024;
    let host = u8::try_from(source).unwrap_or(0);
    let key = FlowKey::tcp(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, host, 1)), port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 443),
    );
    let event = if i.is_multiple_of(2) {
        FlowEvent::opened(key, 1_000_000 + i)
    } else {
        FlowEvent::closed(key, 12, 4_096 + i, 1_000_000 + i)
    };
    match enrichment {
        Some(enrichment) => enrichment.apply(event, i),
        None => event,
    }
}

async fn merge_and_encode(format: OutputFormat, enriched: bool) -> u64 {
    let mut merger = Merger::new(MergeConfig::default());
    for source in 0..SOURCES {
        let enrichment = enriched.then(|| Enrichment::for_source(source));
        let events = stream::iter(
            (0..EVENTS_PER_SOURCE).map(move |i| Ok(event(source, i, enrichment.as_ref()))),
        );
        merger.add_stream(format!("source-{source}"), events.boxed());
    }
    let mut writer = RecordWriter::new(format, io::sink());
    let report = pipeline::write_all(merger.into_stream(), &mut writer).await;
    assert!(report.output.is_complete(), "writing to a sink cannot fail");
    assert_eq!(report.events, SOURCES * EVENTS_PER_SOURCE);
    report.events
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let mut group = c.benchmark_group("merge_4_sources_1m_events");
    group.throughput(Throughput::Elements(SOURCES * EVENTS_PER_SOURCE));
    group.sample_size(10);
    for (name, format, enriched) in [
        ("json", OutputFormat::Json, false),
        ("text", OutputFormat::Text, false),
        ("json_names_processes", OutputFormat::Json, true),
        ("text_names_processes", OutputFormat::Text, true),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| merge_and_encode(format, enriched));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
