//! Merge + JSON encoding throughput: 1,000,000 events from 4 sources, on one
//! core (a current-thread runtime), written to a sink. Results and method:
//! BENCHMARKS.md.

#![allow(missing_docs)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flow_core::{FlowEvent, FlowKey};
use flow_supervisor::merge::{MergeConfig, Merger};
use flow_supervisor::output::{OutputFormat, RecordWriter};
use flow_supervisor::pipeline;
use futures::{StreamExt, stream};

const SOURCES: u64 = 4;
const EVENTS_PER_SOURCE: u64 = 250_000;

/// The i-th event of a source: alternating opened/closed over distinct keys.
fn event(source: u64, i: u64) -> FlowEvent {
    let port = u16::try_from(i % 60_000).unwrap_or(0) + 1024;
    let host = u8::try_from(source).unwrap_or(0);
    let key = FlowKey::tcp(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, host, 1)), port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), 443),
    );
    if i.is_multiple_of(2) {
        FlowEvent::opened(key, 1_000_000 + i)
    } else {
        FlowEvent::closed(key, 12, 4_096 + i, 1_000_000 + i)
    }
}

async fn merge_and_encode(format: OutputFormat) -> u64 {
    let mut merger = Merger::new(MergeConfig::default());
    for source in 0..SOURCES {
        let events = stream::iter((0..EVENTS_PER_SOURCE).map(move |i| Ok(event(source, i))));
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
    group.bench_function("json", |b| {
        b.to_async(&runtime)
            .iter(|| merge_and_encode(OutputFormat::Json));
    });
    group.bench_function("text", |b| {
        b.to_async(&runtime)
            .iter(|| merge_and_encode(OutputFormat::Text));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
