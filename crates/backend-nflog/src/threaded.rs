//! A reader on a thread of its own ([`NflogConfig::own_thread`]): the
//! thread runs a current-thread runtime that reads the sockets and hands
//! batches to the stream over a channel.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use flow_core::FlowError;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::listener::{self, Finisher, Item};
use crate::{BACKEND_NAME, NflogConfig};

/// Batches in flight between the thread and the stream: when they are
/// not taken, the thread waits and the kernel's queue absorbs (then
/// overruns, which is reported).
const BATCHES_IN_FLIGHT: usize = 64;

/// The stream of a reader on its own thread; dropping it stops the thread.
pub(crate) struct Threaded {
    receiver: mpsc::Receiver<Vec<Item>>,
    pending: VecDeque<Item>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a reader of `config` on a thread of its own; returns its stream,
/// and what asks it to finish, once its rules are installed.
pub(crate) async fn spawn(config: NflogConfig) -> Result<(Threaded, Finisher), FlowError> {
    let (sender, receiver) = mpsc::channel(BATCHES_IN_FLIGHT);
    let (started_tx, started_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("flowtrack-nflog-reader".into())
        .spawn(move || read_on_this_thread(config, &sender, started_tx))
        .map_err(|e| FlowError::io("starting the nflog reader thread", e))?;
    let stream = Threaded {
        receiver,
        pending: VecDeque::new(),
        thread: Some(thread),
    };
    match started_rx.await {
        Ok(Ok(finisher)) => Ok((stream, finisher)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(FlowError::unavailable(
            BACKEND_NAME,
            "the reader thread ended before it was ready",
        )),
    }
}

/// The thread: starts the reader, says whether it started, then sends
/// its batches until its stream ends or the [`Threaded`] is dropped.
/// `items` is dropped (ending the stream) after the reader is.
fn read_on_this_thread(
    config: NflogConfig,
    items: &mpsc::Sender<Vec<Item>>,
    started: oneshot::Sender<Result<Finisher, FlowError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = started.send(Err(FlowError::io("starting the nflog reader's runtime", e)));
            return;
        }
    };
    runtime.block_on(async move {
        let mut reader = match listener::spawn(config).await {
            Ok(reader) => reader,
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        let _ = started.send(Ok(reader.finisher()));
        loop {
            let batch = tokio::select! {
                // The stream was dropped: stop now, idle or not.
                () = items.closed() => return,
                batch = reader.next_batch() => batch,
            };
            // None: the reader's session is undone; the stream ends.
            let Some(batch) = batch else { return };
            if items.send(batch).await.is_err() {
                return;
            }
        }
    });
    // The runtime's shutdown waits for the reader's session to be undone
    // (its thread joined on the blocking pool).
    drop(runtime);
}

impl Stream for Threaded {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.pending.extend(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Threaded {
    fn drop(&mut self) {
        // Closed first: the thread, waiting to send or for messages, stops.
        self.receiver.close();
        if let Some(thread) = self.thread.take() {
            listener::join_off_runtime(thread);
        }
    }
}
