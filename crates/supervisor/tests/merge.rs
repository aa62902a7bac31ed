//! The merge engine's guarantees: per-source order, tagging, failure
//! isolation, bounded buffering, drain on shutdown, release on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flow_backend_mock::{ScriptedSource, Step};
use flow_core::{FlowError, FlowEvent, FlowKey, FlowSource, LossPoint};
use flow_supervisor::merge::{MergeConfig, MergedItem, Merger};
use futures::{StreamExt, stream};
use proptest::prelude::*;

fn key(port: u16) -> FlowKey {
    FlowKey::udp(([10, 0, 0, 1], port).into(), ([10, 0, 0, 2], 53).into())
}

/// Each source's events, as (backend, timestamp) in arrival order.
fn events_of(items: &[MergedItem], backend: &str) -> Vec<u64> {
    items
        .iter()
        .filter_map(|item| match item {
            MergedItem::Event {
                backend: b, event, ..
            } if &**b == backend => Some(event.timestamp_ns),
            _ => None,
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn each_source_keeps_its_order_and_name(
        lengths in proptest::collection::vec(0_u64..3_000, 1..5),
        batch in 1_usize..300,
        capacity in 1_usize..2_000,
    ) {
        let items: Vec<MergedItem> = runtime().block_on(async {
            let mut merger = Merger::new(MergeConfig::default().batch_size(batch).queue_capacity(capacity));
            for (index, &length) in lengths.iter().enumerate() {
                let events = (0..length).map(|ts| FlowEvent::opened(key(1), ts));
                let source = ScriptedSource::from_events(format!("s{index}"), events.collect::<Vec<_>>());
                merger.add(Box::new(source)).await.unwrap();
            }
            merger.into_stream().collect().await
        });
        for (index, &length) in lengths.iter().enumerate() {
            let name = format!("s{index}");
            prop_assert_eq!(events_of(&items, &name), (0..length).collect::<Vec<_>>());
            let ends = items.iter().filter(|i| matches!(i, MergedItem::SourceEnded { backend } if **backend == *name)).count();
            prop_assert_eq!(ends, 1);
        }
    }
}

#[tokio::test]
async fn a_failing_source_does_not_stop_the_others() {
    let mut merger = Merger::new(MergeConfig::default());
    let failing = ScriptedSource::builder("bad")
        .opened(key(1), 1)
        .lost(LossPoint::NetlinkOverrun, Some(7))
        .error(FlowError::unavailable("bad", "socket closed"))
        .opened(key(2), 2)
        .build();
    let good = ScriptedSource::builder("good")
        .delay(Duration::from_millis(20))
        .opened(key(3), 3)
        .build();
    merger.add(Box::new(failing)).await.unwrap();
    merger.add(Box::new(good)).await.unwrap();
    let items: Vec<MergedItem> = merger.into_stream().collect().await;

    assert_eq!(events_of(&items, "bad"), [1]);
    assert_eq!(events_of(&items, "good"), [3]);
    assert!(items.iter().any(|i| matches!(
        i,
        MergedItem::Lost {
            count: Some(7),
            point: LossPoint::NetlinkOverrun,
            ..
        }
    )));
    let failures: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            MergedItem::SourceFailed { backend, error } => Some(format!("{backend}: {error}")),
            _ => None,
        })
        .collect();
    assert_eq!(failures, ["bad: bad backend unavailable: socket closed"]);
    assert!(
        items
            .iter()
            .any(|i| matches!(i, MergedItem::SourceEnded { backend } if &**backend == "good"))
    );
    assert!(
        !items
            .iter()
            .any(|i| matches!(i, MergedItem::SourceEnded { backend } if &**backend == "bad"))
    );
}

#[tokio::test]
async fn a_source_that_cannot_start_leaves_the_merger_usable() {
    let mut merger = Merger::new(MergeConfig::default());
    let mut started = ScriptedSource::from_events("x", Vec::new());
    drop(started.start().await.unwrap());
    assert!(merger.add(Box::new(started)).await.is_err());
    merger
        .add(Box::new(ScriptedSource::from_events(
            "y",
            vec![FlowEvent::opened(key(1), 1)],
        )))
        .await
        .unwrap();
    let items: Vec<_> = merger.into_stream().collect().await;
    assert_eq!(events_of(&items, "y"), [1]);
}

#[test]
fn an_unread_stream_bounds_what_is_pulled_from_sources() {
    runtime().block_on(async {
        let capacity = 1_000;
        let batch = 100;
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&pulled);
        let endless = stream::iter(0_u64..).map(move |ts| {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(FlowEvent::opened(key(1), ts))
        });
        let mut merger = Merger::new(
            MergeConfig::default()
                .queue_capacity(capacity)
                .batch_size(batch),
        );
        merger.add_stream("endless", endless.boxed());
        let mut merged = merger.into_stream();
        // Let the forwarder run until the queue is full, then some more.
        tokio::time::timeout(Duration::from_secs(30), async {
            while pulled.load(Ordering::Relaxed) < capacity as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the forwarder fills the queue");
        // The behaviour under test: while nobody reads, the forwarder pulls
        // nothing more, however long it is given.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let bound = (capacity + 2 * batch) as u64;
        let before = pulled.load(Ordering::Relaxed);
        assert!(
            before <= bound,
            "pulled {before} items with nobody reading (bound {bound})"
        );
        // Reading resumes the flow.
        let read: Vec<_> = (&mut merged).take(5_000).collect().await;
        assert_eq!(read.len(), 5_000);
        assert!(pulled.load(Ordering::Relaxed) > before);
    });
}

#[tokio::test]
async fn shutdown_drains_ready_items_and_releases_sources() {
    let (sender, source) = ScriptedSource::channel("live", 64);
    let mut merger = Merger::new(MergeConfig::default());
    merger.add(Box::new(source)).await.unwrap();
    let shutdown = merger.shutdown_handle();
    let mut merged = merger.into_stream();
    for ts in 0..5 {
        sender
            .send(Step::from(FlowEvent::opened(key(1), ts)))
            .await
            .unwrap();
    }
    // The first item proves the forwarder is running; the rest are ready.
    assert!(matches!(
        merged.next().await,
        Some(MergedItem::Event { .. })
    ));
    shutdown.shutdown();
    let rest: Vec<_> = merged.collect().await;
    assert_eq!(events_of(&rest, "live"), [1, 2, 3, 4]);
    assert!(matches!(rest.last(), Some(MergedItem::SourceEnded { .. })));
    // The merged stream ended although a sender is alive: the source was
    // stopped and its stream dropped.
    assert!(sender.is_closed());
}

#[tokio::test]
async fn dropping_the_merged_stream_releases_sources() {
    let (sender, source) = ScriptedSource::channel("live", 4);
    let mut merger = Merger::new(MergeConfig::default());
    merger.add(Box::new(source)).await.unwrap();
    let merged = merger.into_stream();
    sender
        .send(Step::from(FlowEvent::opened(key(1), 0)))
        .await
        .unwrap();
    drop(merged);
    // The forwarder notices the consumer is gone at its next send.
    let _ = sender.send(Step::from(FlowEvent::opened(key(1), 1))).await;
    tokio::time::timeout(Duration::from_secs(10), sender.closed())
        .await
        .expect("the source is released once the merged stream is dropped");
}

#[tokio::test]
async fn dropping_the_merged_stream_releases_an_idle_source_at_once() {
    let (sender, source) = ScriptedSource::channel("idle", 4);
    let mut merger = Merger::new(MergeConfig::default());
    merger.add(Box::new(source)).await.unwrap();
    let mut merged = merger.into_stream();
    sender
        .send(Step::from(FlowEvent::opened(key(1), 0)))
        .await
        .unwrap();
    // The forwarder has passed the item on and now waits on the source.
    assert!(matches!(
        merged.next().await,
        Some(MergedItem::Event { .. })
    ));
    drop(merged);
    // Nothing more comes from the source: the forwarder must notice the
    // consumer is gone without a next item, and drop the source's stream
    // (for a kernel backend: detach its programs, remove its table).
    tokio::time::timeout(Duration::from_secs(10), sender.closed())
        .await
        .expect("an idle source is released once the merged stream is dropped");
}

/// A source that holds what it observed until it is asked to finish (as a
/// backend with a read in progress, or unread kernel queues), then hands
/// it over after `delay` and ends its stream, or never does.
#[derive(Debug)]
struct HeldUntilFinished {
    finish: Arc<tokio::sync::Notify>,
    held: Option<Vec<Result<FlowEvent, FlowError>>>,
    delay: Duration,
    ends: bool,
}

impl HeldUntilFinished {
    fn new(delay: Duration, ends: bool) -> Self {
        Self {
            finish: Arc::new(tokio::sync::Notify::new()),
            held: Some(vec![
                Ok(FlowEvent::opened(key(1), 7)),
                Err(FlowError::lost(LossPoint::NetlinkOverrun, None)),
            ]),
            delay,
            ends,
        }
    }
}

#[async_trait::async_trait]
impl FlowSource for HeldUntilFinished {
    fn name(&self) -> &str {
        "held"
    }

    async fn start(&mut self) -> Result<flow_core::FlowStream, FlowError> {
        let (finish, held, delay) = (
            Arc::clone(&self.finish),
            self.held.take().unwrap_or_default(),
            self.delay,
        );
        let handed_over = stream::once(async move {
            finish.notified().await;
            tokio::time::sleep(delay).await;
            stream::iter(held)
        })
        .flatten();
        Ok(if self.ends {
            handed_over.boxed()
        } else {
            handed_over.chain(stream::pending()).boxed()
        })
    }

    fn finish(&mut self) -> bool {
        self.finish.notify_one();
        true
    }
}

/// What a merger of `source` alone yields when it is shut down at once.
async fn shut_down_at_once(config: MergeConfig, source: HeldUntilFinished) -> Vec<MergedItem> {
    let mut merger = Merger::new(config);
    merger.add(Box::new(source)).await.unwrap();
    let shutdown = merger.shutdown_handle();
    let merged = merger.into_stream();
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(30), merged.collect())
        .await
        .expect("the merged stream ends at shutdown")
}

#[tokio::test]
async fn shutdown_waits_for_a_finishing_source_to_hand_over_what_it_holds() {
    let held = HeldUntilFinished::new(Duration::from_millis(300), true);
    let items = shut_down_at_once(MergeConfig::default(), held).await;
    assert_eq!(events_of(&items, "held"), [7]);
    assert!(
        items.iter().any(|item| matches!(
            item,
            MergedItem::Lost {
                point: LossPoint::NetlinkOverrun,
                ..
            }
        )),
        "the held loss report came out: {items:?}"
    );
    assert!(matches!(items.last(), Some(MergedItem::SourceEnded { .. })));
}

#[tokio::test]
async fn a_source_that_does_not_finish_in_time_is_reported_unfinished() {
    let config = MergeConfig::default().finish_within(Duration::from_millis(200));
    let never = HeldUntilFinished::new(Duration::from_secs(3600), false);
    let items = shut_down_at_once(config, never).await;
    assert!(
        matches!(
            items.as_slice(),
            [
                MergedItem::Lost {
                    point: LossPoint::Unfinished,
                    count: None,
                    ..
                },
                MergedItem::SourceEnded { .. }
            ]
        ),
        "{items:?}"
    );
}
