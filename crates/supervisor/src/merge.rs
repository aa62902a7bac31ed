//! The merge engine: many flow sources in, one tagged stream out.
//!
//! Each source runs in its own tokio task that pulls from its stream and
//! forwards batches of tagged items into one bounded channel. Hence:
//!
//! - **Order**: each source's items come out in the order it yielded them
//!   (one task, one FIFO channel); items of different sources interleave.
//! - **Backpressure**: when the consumer is slow the channel fills, the
//!   forwarding task waits, and the source is not polled. Memory holds at
//!   most [`MergeConfig::queue_capacity`] items plus one batch per source;
//!   beyond that, a kernel-backed source overflows in the kernel, where its
//!   backend counts the loss.
//! - **Failure**: a source that ends or fails is reported with
//!   [`MergedItem::SourceEnded`] or [`MergedItem::SourceFailed`]; the others
//!   go on.
//! - **Shutdown**: [`ShutdownHandle::shutdown`] asks each source to finish
//!   ([`FlowSource::finish`]) and forwards its stream until it ends, for
//!   [`MergeConfig::finish_within`] at the most (past it, an
//!   [`LossPoint::Unfinished`] loss is reported); a source that does not
//!   finish (or a stream added without its source) has what is ready
//!   forwarded, bounded by the queue capacity. The merged stream then
//!   yields everything queued and ends. Dropping a source's stream
//!   releases its kernel objects.
//! - **Drop**: dropping the [`MergedStream`] stops every forwarding task at
//!   once, idle or not, and with it every source's stream.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_supervisor::merge::{MergeConfig, MergedItem, Merger};
//! use futures::{StreamExt, stream};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let key = FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
//! let mut merger = Merger::new(MergeConfig::default());
//! merger.add_stream("a", stream::iter([Ok(FlowEvent::opened(key, 1))]).boxed());
//! merger.add_stream("b", stream::iter([Ok(FlowEvent::opened(key, 2))]).boxed());
//! let items: Vec<MergedItem> = merger.into_stream().collect().await;
//! let events = items.iter().filter(|item| matches!(item, MergedItem::Event { .. })).count();
//! let ended = items.iter().filter(|item| matches!(item, MergedItem::SourceEnded { .. })).count();
//! assert_eq!((events, ended), (2, 2));
//! # });
//! ```

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use flow_core::record::{FlowRecord, RecordItem};
use flow_core::{FlowError, FlowEvent, FlowSource, FlowStream, LossPoint};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use batches::ReadyBatches;

mod batches;

/// Sizes of the merge engine's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeConfig {
    queue_capacity: usize,
    batch_size: usize,
    finish_within: Duration,
}

impl Default for MergeConfig {
    /// 65,536 queued items in batches of up to 256; sources get 5 seconds
    /// to finish at shutdown.
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            batch_size: 256,
            finish_within: Duration::from_secs(5),
        }
    }
}

impl MergeConfig {
    /// At most this many items wait between the sources and the consumer
    /// (at least one batch).
    #[must_use]
    pub fn queue_capacity(mut self, items: usize) -> Self {
        self.queue_capacity = items.max(1);
        self
    }

    /// A source forwards up to this many ready items at once (at least 1).
    /// Larger batches cost less per item; smaller ones bound memory tighter.
    #[must_use]
    pub fn batch_size(mut self, items: usize) -> Self {
        self.batch_size = items.max(1);
        self
    }

    /// At shutdown, a source that finishes ([`FlowSource::finish`]) has this
    /// long to end its stream; past it, the stream is dropped and an
    /// [`LossPoint::Unfinished`] loss reported for it.
    #[must_use]
    pub fn finish_within(mut self, bound: Duration) -> Self {
        self.finish_within = bound;
        self
    }

    /// Channel slots: whole batches that fit the queue capacity, at least one.
    fn batch_slots(&self) -> usize {
        (self.queue_capacity / self.batch_size).max(1)
    }
}

/// One item of the merged stream, tagged with its source's name.
#[derive(Debug)]
#[non_exhaustive]
pub enum MergedItem {
    /// A source observed an event.
    Event {
        /// The source's name (for a correlated event, the backend whose
        /// counters and time it carries).
        backend: Arc<str>,
        /// The event.
        event: FlowEvent,
        /// Other backends that observed the same event (filled in by
        /// [`crate::dedup`]; empty straight from a source).
        also_seen_by: Vec<Arc<str>>,
    },
    /// A source lost observations and goes on.
    Lost {
        /// The source's name.
        backend: Arc<str>,
        /// Where they were lost.
        point: LossPoint,
        /// How many, when known.
        count: Option<u64>,
        /// When the loss was noticed.
        timestamp_ns: u64,
    },
    /// A source failed; it yields nothing more, the others go on.
    SourceFailed {
        /// The source's name.
        backend: Arc<str>,
        /// Why.
        error: FlowError,
    },
    /// A source's stream ended, or it was stopped at shutdown.
    SourceEnded {
        /// The source's name.
        backend: Arc<str>,
    },
}

impl MergedItem {
    /// The name of the source this item came from.
    #[must_use]
    pub fn backend(&self) -> &str {
        match self {
            Self::Event { backend, .. }
            | Self::Lost { backend, .. }
            | Self::SourceFailed { backend, .. }
            | Self::SourceEnded { backend } => backend,
        }
    }

    /// The output record of an event or a loss; `None` for a source's end or
    /// failure, which are diagnostics rather than observations.
    #[must_use]
    pub fn to_record(&self) -> Option<FlowRecord<'_>> {
        match self {
            Self::Event {
                backend,
                event,
                also_seen_by,
            } => Some(FlowRecord {
                backend: Cow::Borrowed(backend),
                also_seen_by: also_seen_by.iter().map(|b| Cow::Borrowed(&**b)).collect(),
                item: RecordItem::Event(Cow::Borrowed(event)),
            }),
            Self::Lost {
                backend,
                point,
                count,
                timestamp_ns,
            } => Some(FlowRecord::lost(&**backend, *point, *count, *timestamp_ns)),
            Self::SourceFailed { .. } | Self::SourceEnded { .. } => None,
        }
    }

    /// What `backend`'s stream yielded, as a merged item: an event, a loss,
    /// or (a fatal error) the source's failure.
    #[must_use]
    pub fn from_source(backend: &Arc<str>, item: Result<FlowEvent, FlowError>) -> Self {
        let backend = Arc::clone(backend);
        match item {
            Ok(event) => Self::Event {
                backend,
                event,
                also_seen_by: Vec::new(),
            },
            Err(FlowError::Lost {
                point,
                count,
                timestamp_ns,
            }) => Self::Lost {
                backend,
                point,
                count,
                timestamp_ns,
            },
            Err(error) => Self::SourceFailed { backend, error },
        }
    }
}

/// Stops every source of a [`Merger`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks every source to finish and stops it once it has (see the
    /// module's documentation). The merged stream ends once the queue is
    /// drained.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Merges flow sources into one [`MergedStream`]. Use inside a tokio
/// runtime: each source gets a task.
#[derive(Debug)]
pub struct Merger {
    config: MergeConfig,
    sender: mpsc::Sender<Vec<MergedItem>>,
    receiver: mpsc::Receiver<Vec<MergedItem>>,
    shutdown: ShutdownHandle,
}

impl Merger {
    /// An engine with no sources yet.
    #[must_use]
    pub fn new(config: MergeConfig) -> Self {
        let (sender, receiver) = mpsc::channel(config.batch_slots());
        let (shutdown, _) = watch::channel(false);
        Self {
            config,
            sender,
            receiver,
            shutdown: ShutdownHandle(Arc::new(shutdown)),
        }
    }

    /// Starts `source` and merges its stream. When this returns `Ok`, the
    /// source observes everything from now on.
    ///
    /// # Errors
    /// The source's own error when it cannot start; the other sources are
    /// not affected.
    pub async fn add(&mut self, mut source: Box<dyn FlowSource>) -> Result<(), FlowError> {
        let stream = source.start().await?;
        self.add_started(source, stream);
        Ok(())
    }

    /// Merges the stream `source` returned when it was started, under the
    /// source's name; at shutdown the source is asked to finish.
    pub fn add_started(&mut self, source: Box<dyn FlowSource>, stream: FlowStream) {
        self.spawn_forwarder(source.name().into(), Some(source), stream);
    }

    /// Merges an already started stream under `backend`'s name; at
    /// shutdown, what it has ready is forwarded and it is dropped.
    pub fn add_stream(&mut self, backend: impl Into<Arc<str>>, stream: FlowStream) {
        self.spawn_forwarder(backend.into(), None, stream);
    }

    fn spawn_forwarder(
        &mut self,
        backend: Arc<str>,
        source: Option<Box<dyn FlowSource>>,
        stream: FlowStream,
    ) {
        let forwarder = Forwarder {
            backend,
            config: self.config,
            sender: self.sender.clone(),
            shutdown: self.shutdown.0.subscribe(),
        };
        tokio::spawn(forwarder.run(source, stream));
    }

    /// A handle that stops all sources, for signal handlers and timeouts.
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The merged stream. It ends when every source has ended or been
    /// stopped and everything queued has been yielded.
    #[must_use]
    pub fn into_stream(self) -> MergedStream {
        MergedStream {
            receiver: self.receiver,
            current: Vec::new().into_iter(),
        }
    }
}

/// The task that moves one source's items into the merge queue.
struct Forwarder {
    backend: Arc<str>,
    config: MergeConfig,
    sender: mpsc::Sender<Vec<MergedItem>>,
    shutdown: watch::Receiver<bool>,
}

/// Whether a forwarder keeps going after a batch.
enum Flow {
    Continue,
    Stop,
}

impl Forwarder {
    /// Forwards `stream`'s items; at shutdown asks `source` (the one that
    /// started it, when known) to finish.
    async fn run(mut self, mut source: Option<Box<dyn FlowSource>>, stream: FlowStream) {
        // Each item is tagged as it comes off the stream, straight into the
        // batch that is sent: an event is moved as few times as it can be
        // (it is large, and moving it was most of the merge's cost).
        let mut chunks =
            ReadyBatches::new(stream, Arc::clone(&self.backend), self.config.batch_size);
        loop {
            let chunk = tokio::select! {
                biased;
                // The consumer dropped the merged stream: release the
                // source now, not at its next item (an idle source may
                // never yield one).
                () = self.sender.closed() => return,
                // Err: every handle is gone, so no shutdown can come; the
                // branch is then disabled and the source runs to its end.
                Ok(_) = self.shutdown.wait_for(|stop| *stop) => break,
                chunk = chunks.next() => chunk,
            };
            let Some(items) = chunk else {
                self.send_end().await;
                return;
            };
            if let Flow::Stop = self.forward(items).await {
                return;
            }
        }
        // Shutdown: nothing already observed is thrown away.
        let finishing = source.as_mut().is_some_and(|source| source.finish());
        let flow = if finishing {
            self.forward_until_finished(&mut chunks).await
        } else {
            self.forward_ready(&mut chunks).await
        };
        if let Flow::Stop = flow {
            return;
        }
        // The source's stream is dropped (detaching its kernel objects)
        // before the end is reported, so a consumer that sees the merged
        // stream end knows every source is released.
        drop(chunks);
        drop(source);
        self.send_end().await;
    }

    /// Forwards what a source that was asked to finish yields until its
    /// stream ends, for [`MergeConfig::finish_within`] at the most; past
    /// it, reports what it still held as lost.
    async fn forward_until_finished(
        &self,
        chunks: &mut (impl Stream<Item = Vec<MergedItem>> + Unpin),
    ) -> Flow {
        let deadline = tokio::time::Instant::now() + self.config.finish_within;
        loop {
            let next = tokio::select! {
                biased;
                () = self.sender.closed() => return Flow::Stop,
                next = tokio::time::timeout_at(deadline, chunks.next()) => next,
            };
            match next {
                Ok(Some(items)) => {
                    if let Flow::Stop = self.forward(items).await {
                        return Flow::Stop;
                    }
                }
                Ok(None) => return Flow::Continue,
                Err(_) => {
                    tracing::warn!(
                        backend = %self.backend,
                        bound = ?self.config.finish_within,
                        "the source did not finish in time: what it still held is reported lost"
                    );
                    let unfinished = Err(FlowError::lost(LossPoint::Unfinished, None));
                    let lost = MergedItem::from_source(&self.backend, unfinished);
                    return self.forward(vec![lost]).await;
                }
            }
        }
    }

    /// Forwards what the source has ready now, up to a queue's worth.
    async fn forward_ready(
        &self,
        chunks: &mut (impl Stream<Item = Vec<MergedItem>> + Unpin),
    ) -> Flow {
        let mut budget = self.config.queue_capacity;
        while budget > 0 {
            let Some(Some(items)) = chunks.next().now_or_never() else {
                break;
            };
            budget = budget.saturating_sub(items.len());
            if let Flow::Stop = self.forward(items).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Tags and sends a batch; stops after a fatal error or when the
    /// consumer is gone.
    async fn forward(&self, mut batch: Vec<MergedItem>) -> Flow {
        let failure = batch
            .iter()
            .position(|item| matches!(item, MergedItem::SourceFailed { .. }));
        if let Some(failure) = failure {
            batch.truncate(failure + 1);
        }
        if self.sender.send(batch).await.is_err() || failure.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    async fn send_end(&self) {
        let end = MergedItem::SourceEnded {
            backend: Arc::clone(&self.backend),
        };
        // A consumer that is gone needs no end marker.
        let _ = self.sender.send(vec![end]).await;
    }
}

/// The merged stream of every source's items; see [`Merger`].
#[derive(Debug)]
pub struct MergedStream {
    receiver: mpsc::Receiver<Vec<MergedItem>>,
    current: std::vec::IntoIter<MergedItem>,
}

impl Stream for MergedStream {
    type Item = MergedItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MergedItem>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.current.next() {
                return Poll::Ready(Some(item));
            }
            match ready!(this.receiver.poll_recv(cx)) {
                Some(batch) => this.current = batch.into_iter(),
                None => return Poll::Ready(None),
            }
        }
    }
}
