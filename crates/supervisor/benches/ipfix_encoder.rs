//! The IPFIX encoder's throughput (feature `ipfix`): flow records encoded
//! into messages of the UDP size (1,400 bytes, templates in each, as a
//! worst case) and the TCP size (65,535 bytes, no templates), IPv4 and
//! IPv6 records, in records per second. Nothing is sent: this is the
//! encoder's cost alone. Results and method: BENCHMARKS.md.

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flow_core::FlowKey;
use flow_core::counters::{Counters, DirectionCounters};
use flow_supervisor::export::ipfix::{
    Encoder, EndReason, FlowRecord, MAX_TCP_MESSAGE, MAX_UDP_MESSAGE,
};

/// Records encoded per iteration.
const RECORDS: u64 = 10_000;

/// `RECORDS` distinct records of one family.
fn records(v6: bool) -> Vec<FlowRecord> {
    (0..RECORDS)
        .map(|n| {
            let [_, _, _, _, _, a, b, c] = n.to_be_bytes();
            let (src, dst): (SocketAddr, SocketAddr) = if v6 {
                (
                    format!("[2001:db8::{a:x}:{b:x}{c:02x}]:40000")
                        .parse()
                        .unwrap(),
                    "[2001:db8::80]:443".parse().unwrap(),
                )
            } else {
                (
                    format!("10.{a}.{b}.{c}:40000").parse().unwrap(),
                    "192.0.2.80:443".parse().unwrap(),
                )
            };
            FlowRecord {
                key: FlowKey::tcp(src, dst),
                counters: DirectionCounters::new(
                    Counters::new(10 + n, 1_234 + n),
                    Counters::new(7, 56_789),
                ),
                start_ms: 1_795_927_209_152 + n,
                end_ms: 1_795_927_210_402 + n,
                reason: EndReason::EndOfFlow,
            }
        })
        .collect()
}

/// Encodes every record into messages of `max_len`; the bytes made.
fn encode(encoder: &mut Encoder, records: &[FlowRecord], templates: bool) -> usize {
    let mut bytes = 0;
    encoder.start(templates);
    for record in records {
        if !encoder.push(record) {
            bytes += black_box(encoder.finish(1_795_927_210, 0)).len();
            encoder.start(templates);
            let _ = encoder.push(record);
        }
    }
    bytes + black_box(encoder.finish(1_795_927_210, 0)).len()
}

fn encoder(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipfix_encoder");
    group.throughput(Throughput::Elements(RECORDS));
    for (family, v6) in [("v4", false), ("v6", true)] {
        let records = records(v6);
        for (transport, max_len, templates) in [
            ("udp", MAX_UDP_MESSAGE, true),
            ("tcp", MAX_TCP_MESSAGE, false),
        ] {
            let mut encoder = Encoder::new(max_len, 1);
            group.bench_with_input(
                BenchmarkId::new(transport, family),
                &records,
                |b, records| b.iter(|| encode(&mut encoder, records, templates)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, encoder);
criterion_main!(benches);
