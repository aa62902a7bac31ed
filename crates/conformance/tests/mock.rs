//! The mock backend's scripted source keeps the contract: the whole suite,
//! in plain `cargo test`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};

use async_trait::async_trait;
use flow_backend_mock::{ScriptedSource, Step};
use flow_conformance::{ExpectedFlow, Subject};
use std::time::Duration;

use flow_core::counters::{Counters, DirectionCounters};
use flow_core::{FlowError, FlowEvent, FlowKey, FlowSource, LossPoint};
use tokio::sync::mpsc;

/// Scripted sources fed live through a channel: the subject scripts
/// traffic, losses and failures into the source it made last, and its
/// stream holds the channel's receiving end (its "kernel object") until
/// it is dropped or has failed.
#[derive(Default)]
struct Scripted {
    script: Mutex<Option<mpsc::Sender<Step>>>,
    next_port: AtomicU16,
}

impl Scripted {
    /// A key of its own for each flow.
    fn next_key(&self) -> FlowKey {
        let port = 40_000 + self.next_port.fetch_add(1, Ordering::Relaxed);
        FlowKey::tcp(
            format!("10.0.0.1:{port}").parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        )
    }

    /// The channel into the source made last.
    fn script(&self) -> mpsc::Sender<Step> {
        self.script
            .lock()
            .unwrap()
            .clone()
            .expect("a source was made")
    }

    async fn play(&self, step: impl Into<Step>) {
        self.script()
            .send(step.into())
            .await
            .expect("the source's stream is there");
    }
}

#[async_trait]
impl Subject for Scripted {
    fn source(&self) -> Box<dyn FlowSource> {
        let (sender, source) = ScriptedSource::channel("mock", 64);
        *self.script.lock().unwrap() = Some(sender);
        Box::new(source)
    }

    async fn make_flows(&self) -> Vec<ExpectedFlow> {
        let key = self.next_key();
        let counted = DirectionCounters::new(Counters::new(4, 300), Counters::new(2, 100));
        self.play(FlowEvent::opened(key, 1)).await;
        self.play(FlowEvent::closed_by_direction(key, counted, 2).started(1))
            .await;
        vec![ExpectedFlow::new(key).counted_by_direction(counted)]
    }

    /// A scripted source plays what it is given: the same as `source`.
    fn updating_source(&self, _every: Duration) -> Box<dyn FlowSource> {
        self.source()
    }

    /// Two updates while open, as a backend with that timeout would report
    /// them, then the close.
    async fn make_long_flow(&self, open_for: Duration) -> ExpectedFlow {
        let key = self.next_key();
        let open_ns = u64::try_from(open_for.as_nanos()).unwrap();
        let at = |step: u64| Counters::new(step, 100 * step);
        self.play(FlowEvent::opened(key, 10)).await;
        for step in 1..=2 {
            let so_far = DirectionCounters::new(at(step), at(step - 1));
            self.play(
                FlowEvent::update_by_direction(key, so_far, 10 + step * open_ns / 3).started(10),
            )
            .await;
        }
        let last = DirectionCounters::new(at(3), at(3));
        self.play(FlowEvent::closed_by_direction(key, last, 10 + open_ns).started(10))
            .await;
        ExpectedFlow::new(key)
            .counted_by_direction(last)
            .open_with(200, 100)
    }

    /// A fatal error, then a flow that must not come out after it.
    async fn break_source(&self) {
        self.play(FlowError::unavailable("mock", "broken from outside"))
            .await;
        self.make_flows().await;
    }

    async fn cause_loss(&self) {
        self.play(FlowError::lost(LossPoint::QueueOverflow, Some(3)))
            .await;
    }

    fn leftovers(&self) -> Vec<String> {
        self.script
            .lock()
            .unwrap()
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .map(|_| "the script channel's receiving end".to_owned())
            .into_iter()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_source_keeps_the_contract() {
    flow_conformance::run_all(&Scripted::default()).await;
}
