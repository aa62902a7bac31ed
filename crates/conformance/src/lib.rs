//! The conformance suite of [`FlowSource`]: one check per clause of the
//! contract every flowtrack backend keeps, run by each backend's tests
//! against a [`Subject`] of their own (in the spirit of object_store's
//! `integration` module).
//!
//! The contract, clause by clause:
//!
//! - [`starts_once`]: a source starts once; a second start is refused with
//!   [`FlowError::Unavailable`] and disturbs nothing.
//! - [`reports_flows`]: once started, every flow of its scope is reported,
//!   opened once and closed once, with its counters.
//! - [`a_fatal_error_ends_the_stream`]: after an error other than
//!   [`FlowError::Lost`] the stream yields nothing and ends.
//! - [`loss_is_recoverable`]: after a [`FlowError::Lost`] the stream goes
//!   on, and flows are reported again.
//! - [`reports_updates`]: with an active timeout, a flow open longer than
//!   it is reported with its counters so far (`Update`), which never
//!   exceed its final counters, direction by direction.
//! - [`dropping_the_stream_releases_everything_promptly`]: dropping an idle
//!   stream releases every kernel object of the source at once.
//!
//! [`run_all`] runs them one after the other. The mock backend runs the
//! suite in plain `cargo test` (this crate's `tests/mock.rs`); the kernel
//! backends in the kernel tests (`flowtrack_kernel_tests::backend_suite!`).

pub mod observe;

use std::time::Duration;

use async_trait::async_trait;
use flow_core::counters::DirectionCounters;
use flow_core::{FlowError, FlowEvent, FlowKey, FlowSource, FlowStream};
use futures::StreamExt;

use crate::observe::{Observed, observe, observe_to_end, observe_until};

/// How long a check waits for what a source must report.
const WAIT: Duration = Duration::from_secs(30);

/// The active timeout of [`reports_updates`]'s source.
pub const UPDATE_EVERY: Duration = Duration::from_secs(1);

/// How long [`reports_updates`]'s flow stays open: long enough for an
/// update whatever the phase of the source's rounds (the first comes one
/// to two timeouts after the flow opened).
pub const LONG_FLOW_OPEN: Duration = Duration::from_secs(3);

/// How soon a dropped stream must have released every kernel object.
const PROMPTLY: Duration = Duration::from_secs(5);

/// How often [`dropping_the_stream_releases_everything_promptly`] looks
/// again at what is left.
const POLL: Duration = Duration::from_millis(20);

/// A flow a [`Subject`] made, which its source must report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedFlow {
    /// The flow's key, oriented initiator → responder.
    pub key: FlowKey,
    /// Its `Closed` event's packets and bytes, where the subject knows them.
    pub counters: Option<(u64, u64)>,
    /// Its `Closed` event's counters by direction, where the subject knows
    /// them.
    pub directions: Option<DirectionCounters>,
    /// Of a long flow ([`Subject::make_long_flow`]): the bytes each
    /// direction had carried at least (initiator's, responder's) while the
    /// flow stayed open, which its last update must count.
    pub open_bytes: Option<(u64, u64)>,
}

impl ExpectedFlow {
    /// A flow whose counters are not checked.
    #[must_use]
    pub fn new(key: FlowKey) -> Self {
        Self {
            key,
            counters: None,
            directions: None,
            open_bytes: None,
        }
    }

    /// The same flow, closed with `packets` and `bytes`.
    #[must_use]
    pub fn counted(self, packets: u64, bytes: u64) -> Self {
        Self {
            counters: Some((packets, bytes)),
            ..self
        }
    }

    /// The same flow, having carried at least `src` bytes from its
    /// initiator and `dst` from its responder while it stayed open.
    #[must_use]
    pub fn open_with(self, src: u64, dst: u64) -> Self {
        Self {
            open_bytes: Some((src, dst)),
            ..self
        }
    }

    /// The same flow, closed with `directions` (and their sum in all).
    #[must_use]
    pub fn counted_by_direction(self, directions: DirectionCounters) -> Self {
        let total = directions.total();
        Self {
            directions: Some(directions),
            ..self.counted(total.packets, total.bytes)
        }
    }
}

/// A backend under test, as its test harness drives it: fresh sources of
/// one scope, traffic in that scope, and the outside events the contract
/// speaks of.
///
/// The checks call [`Subject::source`] (or one of its variants) once, start
/// what it gives, and then call the other methods while they hold its
/// stream; a subject acts on the source it made last.
#[async_trait]
pub trait Subject: Send + Sync {
    /// A fresh, unstarted source of the subject's scope.
    fn source(&self) -> Box<dyn FlowSource>;

    /// A fresh source that [`Subject::break_source`] can make fail (the
    /// nflog backend: a table without the owner flag, which another
    /// process may delete). [`Subject::source`] unless told otherwise.
    fn breakable_source(&self) -> Box<dyn FlowSource> {
        self.source()
    }

    /// A fresh source that [`Subject::cause_loss`] can make lose
    /// observations (small buffers). [`Subject::source`] unless told
    /// otherwise.
    fn lossy_source(&self) -> Box<dyn FlowSource> {
        self.source()
    }

    /// Makes traffic in the scope and returns its flows, which the started
    /// source must report, each opened and closed (and nothing else).
    async fn make_flows(&self) -> Vec<ExpectedFlow>;

    /// A fresh source that reports every flow open for `every` with its
    /// counters so far, every `every` (an active timeout).
    fn updating_source(&self, every: Duration) -> Box<dyn FlowSource>;

    /// Makes one flow in the scope that stays open for `open_for` at least,
    /// passing traffic before and after, then closes; returns it once
    /// closed.
    async fn make_long_flow(&self, open_for: Duration) -> ExpectedFlow;

    /// Makes the started source fail fatally, from outside (eBPF: detach
    /// its programs; nflog: delete its table; mock: script a fatal error).
    async fn break_source(&self);

    /// Makes the started source lose observations while nobody reads its
    /// stream, and go on (eBPF: a burst into a tiny ring; nflog: into a
    /// tiny netlink buffer; mock: script a loss).
    async fn cause_loss(&self);

    /// The kernel objects of the subject's source still present (programs
    /// attached to its cgroup, its nf_tables table, settings it changed),
    /// one line each; empty when nothing is left.
    fn leftovers(&self) -> Vec<String>;
}

/// Starts `source`.
///
/// # Panics
/// When it does not start.
async fn start(mut source: Box<dyn FlowSource>) -> FlowStream {
    source
        .start()
        .await
        .unwrap_or_else(|error| panic!("the {} source does not start: {error}", source.name()))
}

/// The keys of `flows`.
fn keys(flows: &[ExpectedFlow]) -> Vec<FlowKey> {
    flows.iter().map(|flow| flow.key).collect()
}

/// `observed` holds each of `flows` opened once and closed once, with its
/// counters where they are known.
///
/// # Panics
/// When it does not.
fn assert_reported(observed: &Observed, flows: &[ExpectedFlow]) {
    assert!(!flows.is_empty(), "the subject made no flow");
    for flow in flows {
        let counters = observed.closed_once(&flow.key);
        if let Some(expected) = flow.counters {
            assert_eq!(counters, expected, "packets and bytes of {}", flow.key);
        }
        if let Some(expected) = flow.directions {
            assert_eq!(
                observed.directions_once(&flow.key),
                expected,
                "packets and bytes of {} by direction",
                flow.key
            );
        }
    }
}

/// Polls the subject's leftovers until none is left, for [`PROMPTLY`]
/// from `since` at the most.
///
/// # Panics
/// When some are still there by then.
async fn assert_released(subject: &dyn Subject, since: tokio::time::Instant, when: &str) {
    loop {
        let left = subject.leftovers();
        if left.is_empty() {
            return;
        }
        assert!(
            since.elapsed() < PROMPTLY,
            "{when}, still held after {PROMPTLY:?}: {left:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A source starts once: a second `start` is refused with
/// [`FlowError::Unavailable`] naming the backend ("already started"), and
/// the stream of the first goes on reporting the subject's flows.
///
/// # Panics
/// When the source breaks the clause.
pub async fn starts_once(subject: &dyn Subject) {
    let mut source = subject.source();
    let name = source.name().to_owned();
    let mut stream = source
        .start()
        .await
        .unwrap_or_else(|error| panic!("the {name} source does not start: {error}"));
    match source.start().await {
        Ok(_) => panic!("the {name} source started twice"),
        Err(FlowError::Unavailable { backend, reason }) => {
            assert_eq!(backend, name, "the refusal names the backend");
            assert!(reason.contains("already started"), "{reason}");
        }
        Err(error) => panic!("a second start of {name}: {error}, not Unavailable"),
    }
    let flows = subject.make_flows().await;
    let observed = observe(&mut stream, &keys(&flows), WAIT).await;
    assert_reported(&observed, &flows);
}

/// Once started, the source reports every flow of its scope: each opened
/// once and closed once, with its counters, nothing lost, and nothing
/// that is not the subject's.
///
/// # Panics
/// When the source breaks the clause.
pub async fn reports_flows(subject: &dyn Subject) {
    let mut stream = start(subject.source()).await;
    let flows = subject.make_flows().await;
    let observed = observe(&mut stream, &keys(&flows), WAIT).await;
    assert_reported(&observed, &flows);
    assert_eq!(observed.lost, 0, "nothing lost: {observed:#?}");
    assert_eq!(
        observed.opened.len(),
        flows.len(),
        "only the subject's flows: {observed:#?}"
    );
}

/// An error other than [`FlowError::Lost`] ends the stream: the source,
/// broken from outside, reports a fatal error, then ends; nothing of it is
/// left in the kernel once the stream is dropped.
///
/// # Panics
/// When the source breaks the clause.
pub async fn a_fatal_error_ends_the_stream(subject: &dyn Subject) {
    let mut stream = start(subject.breakable_source()).await;
    subject.break_source().await;
    let error = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Err(error)) if !error.is_recoverable() => break error,
                Some(_) => {}
                None => panic!("the stream ended without reporting why"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no fatal error within {WAIT:?} of breaking the source"));
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(None) => {}
        Ok(Some(item)) => panic!("{item:?} after the fatal error {error}"),
        Err(_) => panic!("the stream did not end after the fatal error {error}"),
    }
    let dropped = tokio::time::Instant::now();
    drop(stream);
    assert_released(subject, dropped, "after a fatal error").await;
}

/// [`FlowError::Lost`] is recoverable: a source that lost observations
/// while nobody read says so in its stream, and goes on reporting flows.
///
/// # Panics
/// When the source breaks the clause.
pub async fn loss_is_recoverable(subject: &dyn Subject) {
    let mut stream = start(subject.lossy_source()).await;
    subject.cause_loss().await;
    let before = observe_until(&mut stream, |observed| observed.lost_items > 0, WAIT).await;
    assert!(before.lost_items > 0, "the loss is reported: {before:#?}");
    let flows = subject.make_flows().await;
    let after = observe(&mut stream, &keys(&flows), WAIT).await;
    assert_reported(&after, &flows);
}

/// With an active timeout, a flow open longer than it is reported while
/// open with its counters so far (`Update`): each update carries counters
/// by direction that add up to its totals, never more in either direction
/// than the next update or the flow's close, stamped between the flow's
/// opening and its close, with the time it opened when the source gives
/// one; the last counts what the flow carried while open.
///
/// # Panics
/// When the source breaks the clause.
pub async fn reports_updates(subject: &dyn Subject) {
    let mut stream = start(subject.updating_source(UPDATE_EVERY)).await;
    // The stream is read while the flow is open, as a consumer does: a
    // source may do its work only when polled.
    let made = std::sync::OnceLock::new();
    let (flow, observed) = tokio::join!(
        async {
            let flow = subject.make_long_flow(LONG_FLOW_OPEN).await;
            made.get_or_init(|| flow.key);
            flow
        },
        observe_until(
            &mut stream,
            |observed| made
                .get()
                .is_some_and(|key| observed.closed.contains_key(key)),
            WAIT + LONG_FLOW_OPEN,
        )
    );
    assert_reported(&observed, &[flow]);
    let key = flow.key;
    let updates = observed.updates.get(&key).map_or(&[][..], Vec::as_slice);
    assert!(
        !updates.is_empty(),
        "no update of {key}, open {LONG_FLOW_OPEN:?} with an active timeout of \
         {UPDATE_EVERY:?}: {observed:#?}"
    );
    let closed = &observed.close_events[&key][0];
    let opened_at = observed.opened_at[&key];
    let mut later: Vec<&FlowEvent> = updates.iter().skip(1).collect();
    later.push(closed);
    for (update, next) in updates.iter().zip(later) {
        let so_far = update.kind.counters().expect("an update has counters");
        let directions = update
            .directions
            .unwrap_or_else(|| panic!("{update}: no counters by direction"));
        assert_eq!(directions.total(), so_far, "{update}");
        if let Some(after) = next.directions {
            assert!(
                directions.src.within(after.src) && directions.dst.within(after.dst),
                "{update} counts more than what followed: {next}"
            );
        }
        assert!(
            (opened_at..=closed.timestamp_ns).contains(&update.timestamp_ns),
            "{update} not between the opening at {opened_at} and the close"
        );
        if let Some(start) = update.start_ns {
            assert_eq!(start, opened_at, "{update} opened when the flow did");
        }
    }
    if let (Some((src, dst)), Some(last)) = (flow.open_bytes, updates.last()) {
        let counted = last.directions.unwrap_or_default();
        assert!(
            counted.src.bytes >= src && counted.dst.bytes >= dst,
            "{last} counts less than the {src} and {dst} bytes carried while open"
        );
    }
}

/// Dropping the stream releases every kernel object of the source at once,
/// an idle stream too (one with nothing to yield, whose source would only
/// notice on its next item): what [`Subject::leftovers`] lists is gone
/// within 5 seconds of the drop.
///
/// # Panics
/// When the source breaks the clause.
pub async fn dropping_the_stream_releases_everything_promptly(subject: &dyn Subject) {
    let mut stream = start(subject.source()).await;
    assert!(
        !subject.leftovers().is_empty(),
        "a started source holds something the subject can see"
    );
    let flows = subject.make_flows().await;
    let observed = observe(&mut stream, &keys(&flows), WAIT).await;
    assert_reported(&observed, &flows);
    let dropped = tokio::time::Instant::now();
    drop(stream);
    assert_released(subject, dropped, "after the drop").await;
}

/// Asked to finish ([`FlowSource::finish`]) after it lost observations
/// while nobody read, a source says it will, yields what it holds (the
/// loss among it) and ends its stream within 5 seconds (a merge's bound
/// for it), having released everything by then.
///
/// # Panics
/// When the source breaks the clause.
pub async fn finishing_hands_over_the_losses_then_ends(subject: &dyn Subject) {
    let mut source = subject.lossy_source();
    let name = source.name().to_owned();
    let mut stream = source
        .start()
        .await
        .unwrap_or_else(|error| panic!("the {name} source does not start: {error}"));
    subject.cause_loss().await;
    assert!(source.finish(), "the {name} source finishes");
    let observed = tokio::time::timeout(PROMPTLY, observe_to_end(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("the {name} stream did not end within {PROMPTLY:?}"));
    assert!(
        observed.lost_items > 0,
        "the loss is handed over: {observed:#?}"
    );
    assert_eq!(
        subject.leftovers(),
        Vec::<String>::new(),
        "released once ended"
    );
}

/// Every check, one after the other, on `subject`.
///
/// # Panics
/// When the subject's sources break a clause.
pub async fn run_all(subject: &dyn Subject) {
    starts_once(subject).await;
    reports_flows(subject).await;
    a_fatal_error_ends_the_stream(subject).await;
    loss_is_recoverable(subject).await;
    reports_updates(subject).await;
    dropping_the_stream_releases_everything_promptly(subject).await;
    finishing_hands_over_the_losses_then_ends(subject).await;
}
