//! Correlation cost per flow with the table full (`--backend both`), from
//! 1,000 to 1,000,000 flows remembered: each flow is opened and closed by
//! both backends (4 items in, 2 lines out) and lingers, so once the table
//! is full every new flow evicts the oldest. The table is filled before
//! timing starts; the correlator's ticks run as in a real run (every
//! 250 ms, on tokio's clock). Results and method: BENCHMARKS.md.

#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flow_core::{FlowEvent, FlowKey};
use flow_supervisor::dedup::{Correlated, DedupConfig};
use flow_supervisor::merge::MergedItem;
use futures::StreamExt;
use futures::channel::mpsc;

/// Flows remembered at most, one benchmark each.
const CAPACITIES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// A correlator kept full across criterion's iterations.
struct Steady {
    input: mpsc::UnboundedSender<MergedItem>,
    output: Correlated<mpsc::UnboundedReceiver<MergedItem>>,
    backends: [Arc<str>; 2],
    flows: u64,
}

impl Steady {
    /// A correlator of `capacity` flows (a tokio runtime must be entered).
    fn new(capacity: usize) -> Self {
        let (input, receiver) = mpsc::unbounded();
        let config = DedupConfig::for_backends(["ebpf", "nflog"])
            .capacity(capacity)
            .expect("a capacity above zero");
        Self {
            input,
            output: Correlated::new(receiver, config),
            backends: [Arc::from("ebpf"), Arc::from("nflog")],
            flows: 0,
        }
    }

    /// The next flow's key: distinct for 2^40 flows.
    fn next_key(&mut self) -> FlowKey {
        let n = self.flows;
        self.flows += 1;
        let [_, _, _, a, b, c, d, e] = n.to_be_bytes();
        let port = u16::from_be_bytes([d, e]);
        FlowKey::tcp(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)), 443),
        )
    }

    /// One flow through the correlator: both backends open and close it.
    async fn flow(&mut self) {
        let key = self.next_key();
        for (index, event) in [
            (0, FlowEvent::opened(key, self.flows)),
            (1, FlowEvent::opened(key, self.flows)),
            (0, FlowEvent::closed(key, 12, 840, self.flows)),
            (1, FlowEvent::closed(key, 12, 840, self.flows)),
        ] {
            let item = MergedItem::from_source(&self.backends[index], Ok(event));
            self.input
                .unbounded_send(item)
                .expect("the correlator runs");
        }
        for _ in 0..2 {
            self.output
                .next()
                .await
                .expect("a line per opened and closed");
        }
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut group = c.benchmark_group("correlation_at_capacity");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for capacity in CAPACITIES {
        let mut steady = runtime.block_on(async {
            let mut steady = Steady::new(capacity);
            for _ in 0..capacity {
                steady.flow().await;
            }
            steady
        });
        assert_eq!(steady.output.remembered(), capacity, "the table is full");
        group.bench_function(BenchmarkId::from_parameter(capacity), |b| {
            b.iter_custom(|flows| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..flows {
                        steady.flow().await;
                    }
                    start.elapsed()
                })
            });
        });
        assert!(steady.output.evictions() > 0, "every new flow evicts one");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
