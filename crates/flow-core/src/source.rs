use std::pin::Pin;

use futures::Stream;

use crate::{FlowError, FlowEvent};

/// The stream a started [`FlowSource`] yields.
///
/// It owns everything the backend needs while it runs (kernel objects,
/// sockets, file descriptors); dropping it detaches and releases them.
/// Items are events or errors: a [`FlowError::Lost`] item is recoverable and
/// the stream goes on; after any other error the stream ends.
///
/// ```
/// use flow_core::{FlowEvent, FlowKey, FlowStream};
/// use futures::{StreamExt, stream};
/// let key = FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
/// let stream: FlowStream = stream::iter([Ok(FlowEvent::opened(key, 1))]).boxed();
/// # drop(stream);
/// ```
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<FlowEvent, FlowError>> + Send + 'static>>;

/// A backend that observes flows: the one trait every backend implements.
///
/// Object-safe, so a supervisor can hold `Box<dyn FlowSource>` of any kind;
/// `Debug`, so that a holder of one can be printed.
/// [`FlowSource::start`] does whatever must happen before the workload runs
/// (attach a program, subscribe to events) and returns once nothing will be
/// missed from then on.
///
/// ```
/// use async_trait::async_trait;
/// use flow_core::{FlowError, FlowEvent, FlowKey, FlowSource, FlowStream};
/// use futures::{StreamExt, stream};
///
/// /// A source that reports one fixed flow.
/// #[derive(Debug)]
/// struct OneFlow;
///
/// #[async_trait]
/// impl FlowSource for OneFlow {
///     fn name(&self) -> &str {
///         "one-flow"
///     }
///
///     async fn start(&mut self) -> Result<FlowStream, FlowError> {
///         let key = FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
///         Ok(stream::iter([Ok(FlowEvent::opened(key, 1))]).boxed())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut source: Box<dyn FlowSource> = Box::new(OneFlow);
/// let events: Vec<_> = source.start().await?.collect().await;
/// assert_eq!(events.len(), 1);
/// # Ok::<(), FlowError>(())
/// # }).unwrap();
/// ```
#[async_trait::async_trait]
pub trait FlowSource: std::fmt::Debug + Send {
    /// The backend's name, as the output's `backend` field shows it.
    fn name(&self) -> &str;

    /// Starts observing and returns the stream of observations.
    ///
    /// Called once. When it returns `Ok`, every flow that starts from then
    /// on is observed. Errors are fatal (not
    /// [`FlowError::Lost`]): the backend could not start.
    async fn start(&mut self) -> Result<FlowStream, FlowError>;

    /// Asks the started source to end its stream once it has yielded what
    /// it observed until now: what its kernel queues hold, a read in
    /// progress, the losses its counters show. Returns whether it will; the
    /// default does not.
    ///
    /// A supervisor that stops calls this, then reads the stream until it
    /// ends (within a bound; past it, a [`LossPoint::Unfinished`] loss is
    /// reported). A stream whose source says `false` is read for what is
    /// ready and dropped.
    ///
    /// [`LossPoint::Unfinished`]: crate::LossPoint::Unfinished
    fn finish(&mut self) -> bool {
        false
    }
}
