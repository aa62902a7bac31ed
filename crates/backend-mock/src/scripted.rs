//! A [`FlowSource`] that plays a script.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flow_core::counters::DirectionCounters;
use flow_core::dns::DnsLookup;
use flow_core::{FlowError, FlowEvent, FlowKey, FlowSource, FlowStream, LossPoint};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};

/// One step of a script.
#[derive(Debug)]
pub enum Step {
    /// Yield this item: an event, a loss, or a (fatal) error.
    Item(Result<FlowEvent, FlowError>),
    /// Wait this long before the next step (tokio time, so paused test
    /// clocks apply).
    Delay(Duration),
}

impl From<FlowEvent> for Step {
    fn from(event: FlowEvent) -> Self {
        Self::Item(Ok(event))
    }
}

impl From<FlowError> for Step {
    fn from(error: FlowError) -> Self {
        Self::Item(Err(error))
    }
}

impl From<Result<FlowEvent, FlowError>> for Step {
    fn from(item: Result<FlowEvent, FlowError>) -> Self {
        Self::Item(item)
    }
}

/// A [`FlowSource`] that yields a scripted sequence of items.
///
/// It behaves like a real backend: a fatal (non-[`Lost`](FlowError::Lost))
/// error ends its stream, and it can be started only once.
///
/// ```
/// use flow_backend_mock::{ScriptedSource, Step};
/// use flow_core::{FlowEvent, FlowKey, FlowSource};
/// use futures::StreamExt;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let key = FlowKey::udp("10.0.0.1:5353".parse().unwrap(), "10.0.0.2:53".parse().unwrap());
/// let (sender, mut source) = ScriptedSource::channel("live", 16);
/// sender.send(Step::from(FlowEvent::opened(key, 1))).await.unwrap();
/// drop(sender); // the stream ends when every sender is gone
/// let items: Vec<_> = source.start().await?.collect().await;
/// assert_eq!(items.len(), 1);
/// # Ok::<(), flow_core::FlowError>(())
/// # }).unwrap();
/// ```
pub struct ScriptedSource {
    name: String,
    script: Option<BoxStream<'static, Step>>,
    /// A channel's: notified, the script ends after the steps sent.
    finish: Option<Arc<Notify>>,
}

impl ScriptedSource {
    /// A source that plays `script`, a stream of steps.
    pub fn from_stream(
        name: impl Into<String>,
        script: impl Stream<Item = Step> + Send + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            script: Some(script.boxed()),
            finish: None,
        }
    }

    /// A source that plays a list or iterator of steps.
    pub fn from_steps<I>(name: impl Into<String>, steps: I) -> Self
    where
        I: IntoIterator<Item = Step>,
        I::IntoIter: Send + 'static,
    {
        Self::from_stream(name, stream::iter(steps))
    }

    /// A source that yields these events, in order, then ends.
    ///
    /// ```
    /// use flow_backend_mock::ScriptedSource;
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
    /// let source = ScriptedSource::from_events("mock", vec![FlowEvent::opened(key, 1)]);
    /// ```
    pub fn from_events<I>(name: impl Into<String>, events: I) -> Self
    where
        I: IntoIterator<Item = FlowEvent>,
        I::IntoIter: Send + 'static,
    {
        Self::from_steps(name, events.into_iter().map(Step::from))
    }

    /// A source that yields these items (events, losses, errors), in order.
    pub fn from_items<I>(name: impl Into<String>, items: I) -> Self
    where
        I: IntoIterator<Item = Result<FlowEvent, FlowError>>,
        I::IntoIter: Send + 'static,
    {
        Self::from_steps(name, items.into_iter().map(Step::Item))
    }

    /// A source fed live through a channel of `capacity` steps; it ends when
    /// every sender is dropped, or, asked to finish
    /// ([`FlowSource::finish`]), after the steps sent until then.
    pub fn channel(name: impl Into<String>, capacity: usize) -> (mpsc::Sender<Step>, Self) {
        let (sender, receiver) = mpsc::channel(capacity);
        let finish = Arc::new(Notify::new());
        let script = stream::unfold(
            (receiver, Arc::clone(&finish)),
            |(mut receiver, finish)| async move {
                let step = tokio::select! {
                    biased;
                    step = receiver.recv() => step,
                    // Closed, the channel yields what it holds, then ends.
                    () = finish.notified() => {
                        receiver.close();
                        receiver.recv().await
                    }
                };
                step.map(|step| (step, (receiver, finish)))
            },
        );
        let mut source = Self::from_stream(name, script);
        source.finish = Some(finish);
        (sender, source)
    }

    /// A builder for a script written step by step.
    pub fn builder(name: impl Into<String>) -> ScriptBuilder {
        ScriptBuilder {
            name: name.into(),
            steps: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ScriptedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedSource")
            .field("name", &self.name)
            .field("started", &self.script.is_none())
            .finish_non_exhaustive()
    }
}

/// Plays a script: sleeps on delays, yields items, and stops after a fatal
/// error as a real backend would.
fn play(script: BoxStream<'static, Step>) -> FlowStream {
    stream::unfold(Some(script), |script| async move {
        let mut script = script?;
        loop {
            match script.next().await? {
                Step::Delay(duration) => tokio::time::sleep(duration).await,
                Step::Item(item) => {
                    let fatal = item.as_ref().is_err_and(|error| !error.is_recoverable());
                    return Some((item, (!fatal).then_some(script)));
                }
            }
        }
    })
    .boxed()
}

#[async_trait]
impl FlowSource for ScriptedSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&mut self) -> Result<FlowStream, FlowError> {
        let script = self.script.take().ok_or_else(|| {
            FlowError::unavailable(&self.name, "this scripted source was already started")
        })?;
        Ok(play(script))
    }

    /// A channel's script ends after the steps sent until now; other
    /// scripts play on.
    fn finish(&mut self) -> bool {
        self.finish.as_ref().inspect(|f| f.notify_one()).is_some()
    }
}

/// Writes a script step by step; [`ScriptBuilder::build`] makes the source.
#[derive(Debug)]
pub struct ScriptBuilder {
    name: String,
    steps: Vec<Step>,
}

impl ScriptBuilder {
    /// Adds any step.
    #[must_use]
    pub fn step(mut self, step: impl Into<Step>) -> Self {
        self.steps.push(step.into());
        self
    }

    /// Adds an event.
    #[must_use]
    pub fn event(self, event: FlowEvent) -> Self {
        self.step(event)
    }

    /// Adds an `Opened` event.
    #[must_use]
    pub fn opened(self, key: FlowKey, timestamp_ns: u64) -> Self {
        self.event(FlowEvent::opened(key, timestamp_ns))
    }

    /// Adds a `Closed` event.
    #[must_use]
    pub fn closed(self, key: FlowKey, pkt_count: u64, byte_count: u64, timestamp_ns: u64) -> Self {
        self.event(FlowEvent::closed(key, pkt_count, byte_count, timestamp_ns))
    }

    /// Adds a `Closed` event with the counters of each direction (what the
    /// initiator sent, what the responder sent).
    ///
    /// ```
    /// use flow_backend_mock::ScriptedSource;
    /// use flow_core::counters::{Counters, DirectionCounters};
    /// use flow_core::FlowKey;
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?);
    /// let both = DirectionCounters::new(Counters::new(6, 700), Counters::new(5, 9_300));
    /// let source = ScriptedSource::builder("mock")
    ///     .opened(key, 1)
    ///     .update(key, DirectionCounters::new(Counters::new(3, 300), Counters::new(2, 4_000)), 2)
    ///     .closed_by_direction(key, both, 3)
    ///     .build();
    /// # drop(source);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn closed_by_direction(
        self,
        key: FlowKey,
        counters: DirectionCounters,
        timestamp_ns: u64,
    ) -> Self {
        self.event(FlowEvent::closed_by_direction(key, counters, timestamp_ns))
    }

    /// Adds an `Update`: a flow still open, with its counters so far in
    /// each direction.
    #[must_use]
    pub fn update(self, key: FlowKey, counters: DirectionCounters, timestamp_ns: u64) -> Self {
        self.event(FlowEvent::update_by_direction(key, counters, timestamp_ns))
    }

    /// Adds a DNS lookup the scope made, on the lookup's flow `key` (the
    /// asking socket → the resolver): what a backend reports when an
    /// answer arrives. Names and processes ride on events: script them
    /// with [`ScriptBuilder::event`] and `FlowEvent::named`, `with_sni`,
    /// `by`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use flow_backend_mock::ScriptedSource;
    /// use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
    /// use flow_core::process::Process;
    /// use flow_core::{FlowEvent, FlowKey};
    ///
    /// let resolver = FlowKey::udp("10.0.0.1:5353".parse()?, "10.0.0.53:53".parse()?);
    /// let flow = FlowKey::tcp("10.0.0.1:40000".parse()?, "151.101.0.223:443".parse()?);
    /// let curl = Arc::new(Process::new(4711).with_comm("curl").with_exe("/usr/bin/curl"));
    /// let source = ScriptedSource::builder("mock")
    ///     .dns(resolver, DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NO_ERROR)
    ///         .with_answers(["151.101.0.223".parse()?]), 1)
    ///     .event(FlowEvent::opened(flow, 2).named("pypi.org").by(Arc::clone(&curl)))
    ///     .event(FlowEvent::closed(flow, 10, 4_000, 3).named("pypi.org").with_sni("pypi.org").by(curl))
    ///     .build();
    /// # drop(source);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn dns(self, key: FlowKey, lookup: DnsLookup, timestamp_ns: u64) -> Self {
        self.event(FlowEvent::dns(key, lookup, timestamp_ns))
    }

    /// Adds a recoverable loss item, stamped when it is played.
    #[must_use]
    pub fn lost(self, point: LossPoint, count: Option<u64>) -> Self {
        self.step(FlowError::lost(point, count))
    }

    /// Adds an error; a fatal one ends the stream when it is played.
    #[must_use]
    pub fn error(self, error: FlowError) -> Self {
        self.step(error)
    }

    /// Adds a pause.
    #[must_use]
    pub fn delay(self, duration: Duration) -> Self {
        self.step(Step::Delay(duration))
    }

    /// The source that plays the script.
    #[must_use]
    pub fn build(self) -> ScriptedSource {
        ScriptedSource::from_steps(self.name, self.steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey::tcp(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn losses_do_not_end_the_stream() {
        let mut source = ScriptedSource::builder("s")
            .lost(LossPoint::SequenceGap, Some(4))
            .opened(key(), 2)
            .build();
        let items: Vec<_> = source.start().await.unwrap().collect().await;
        assert!(matches!(
            items[0],
            Err(FlowError::Lost {
                point: LossPoint::SequenceGap,
                count: Some(4),
                ..
            })
        ));
        assert_eq!(items[1].as_ref().unwrap().timestamp_ns, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn delays_wait_on_tokio_time() {
        let mut source = ScriptedSource::builder("s")
            .delay(Duration::from_secs(30))
            .opened(key(), 1)
            .build();
        let started = tokio::time::Instant::now();
        let items: Vec<_> = source.start().await.unwrap().collect().await;
        assert_eq!(items.len(), 1);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }
}
