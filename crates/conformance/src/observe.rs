//! Reading a source's stream in a test: what it reported, tallied per flow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flow_core::counters::DirectionCounters;
use flow_core::dns::DnsLookup;
use flow_core::process::Process;
use flow_core::{CloseReason, FlowError, FlowEvent, FlowEventKind, FlowKey, FlowStream, LossPoint};
use futures::StreamExt;

/// How long [`observe_until`] goes on reading once its condition holds, to
/// catch what should not come (a second `Opened`, a second `Closed`).
const SETTLE: Duration = Duration::from_millis(300);

/// What a source reported.
#[derive(Default, Debug)]
pub struct Observed {
    /// `Opened` events per key.
    pub opened: HashMap<FlowKey, u32>,
    /// Counters of each `Closed` per key.
    pub closed: HashMap<FlowKey, Vec<(u64, u64)>>,
    /// The reason of each `Closed` per key, in the same order.
    pub close_reasons: HashMap<FlowKey, Vec<Option<CloseReason>>>,
    /// Each `Closed` per key, whole (counters by direction, start), in the
    /// same order.
    pub close_events: HashMap<FlowKey, Vec<FlowEvent>>,
    /// `Update` events per key, in order.
    pub updates: HashMap<FlowKey, Vec<FlowEvent>>,
    /// The time of each key's latest `Opened`.
    pub opened_at: HashMap<FlowKey, u64>,
    /// `Denied` events per key.
    pub denied: HashMap<FlowKey, u32>,
    /// Observations of flows reported lost (a loss of unknown size counts
    /// one).
    pub lost: u64,
    /// Loss items of flows.
    pub lost_items: u64,
    /// Observations reported lost at the flow table (evictions).
    pub evicted: u64,
    /// Names and processes reported lost (payload and process records,
    /// name cache evictions: [`LossPoint::loses_flows`] is false); the
    /// flows are still reported.
    pub names_lost: u64,
    /// The host each key's latest `Opened` was named after.
    pub hosts: HashMap<FlowKey, Arc<str>>,
    /// The server name each key's latest `Closed` carried.
    pub snis: HashMap<FlowKey, Arc<str>>,
    /// The process each key's latest `Opened` was attributed to.
    pub processes: HashMap<FlowKey, Arc<Process>>,
    /// The lookups reported, in order, with their flow.
    pub lookups: Vec<(FlowKey, Arc<DnsLookup>)>,
}

impl Observed {
    /// `Opened` events of every key.
    #[must_use]
    pub fn opened_total(&self) -> u64 {
        self.opened.values().map(|&n| u64::from(n)).sum()
    }

    /// `Closed` events of every key.
    #[must_use]
    pub fn closed_total(&self) -> u64 {
        self.closed.values().map(|closes| closes.len() as u64).sum()
    }

    /// The counters of `key`'s one `Closed`, after its one `Opened`.
    ///
    /// # Panics
    /// When `key` was not opened and closed exactly once.
    pub fn closed_once(&self, key: &FlowKey) -> (u64, u64) {
        assert_eq!(
            self.opened.get(key),
            Some(&1),
            "one Opened for {key}: {self:#?}"
        );
        let closed = self
            .closed
            .get(key)
            .unwrap_or_else(|| panic!("no Closed for {key}: {self:#?}"));
        assert_eq!(closed.len(), 1, "one Closed for {key}");
        closed[0]
    }

    /// The counters of each direction of `key`'s one `Closed`
    /// ([`Observed::closed_once`]).
    ///
    /// # Panics
    /// When `key` was not opened and closed exactly once, or its close has
    /// no counters by direction.
    pub fn directions_once(&self, key: &FlowKey) -> DirectionCounters {
        self.closed_once(key);
        self.close_events[key][0]
            .directions
            .unwrap_or_else(|| panic!("no counters by direction on the close of {key}"))
    }

    /// Why `key`'s one `Closed` closed ([`Observed::closed_once`]).
    ///
    /// # Panics
    /// When `key` was not opened and closed exactly once.
    pub fn closed_because(&self, key: &FlowKey) -> Option<CloseReason> {
        self.closed_once(key);
        self.close_reasons[key][0]
    }

    /// Tallies one event.
    fn event(&mut self, event: &FlowEvent) {
        let key = event.key;
        match &event.kind {
            FlowEventKind::Opened => {
                *self.opened.entry(key).or_default() += 1;
                self.opened_at.insert(key, event.timestamp_ns);
                if let Some(host) = &event.host {
                    self.hosts.insert(key, Arc::clone(host));
                }
                if let Some(process) = &event.process {
                    self.processes.insert(key, Arc::clone(process));
                }
            }
            FlowEventKind::Dns(lookup) => self.lookups.push((key, Arc::clone(lookup))),
            FlowEventKind::Closed {
                pkt_count,
                byte_count,
            } => {
                self.closed
                    .entry(key)
                    .or_default()
                    .push((*pkt_count, *byte_count));
                self.close_reasons
                    .entry(key)
                    .or_default()
                    .push(event.close_reason);
                self.close_events
                    .entry(key)
                    .or_default()
                    .push(event.clone());
                if let Some(sni) = &event.sni {
                    self.snis.insert(key, Arc::clone(sni));
                }
            }
            FlowEventKind::Denied { .. } => *self.denied.entry(key).or_default() += 1,
            FlowEventKind::Update { .. } => {
                self.updates.entry(key).or_default().push(event.clone())
            }
            _ => {}
        }
    }

    /// Tallies one loss item.
    fn loss(&mut self, point: LossPoint, count: Option<u64>) {
        if !point.loses_flows() {
            self.names_lost += count.unwrap_or(1);
            return;
        }
        self.lost += count.unwrap_or(1);
        self.lost_items += 1;
        if point == LossPoint::FlowTableEviction {
            self.evicted += count.unwrap_or(1);
        }
    }
}

/// Reads the stream to its end.
///
/// # Panics
/// When the stream yields a fatal error.
pub async fn observe_to_end(stream: &mut FlowStream) -> Observed {
    let mut observed = Observed::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => observed.event(&event),
            Err(FlowError::Lost { count, point, .. }) => observed.loss(point, count),
            Err(error) => panic!("the backend failed: {error}"),
        }
    }
    observed
}

/// Reads the stream until every key in `expected` is closed (then a little
/// longer, to catch duplicates), or until the deadline.
///
/// # Panics
/// When the stream yields a fatal error.
pub async fn observe(
    stream: &mut FlowStream,
    expected: &[FlowKey],
    deadline: Duration,
) -> Observed {
    observe_until(
        stream,
        |observed| expected.iter().all(|key| observed.closed.contains_key(key)),
        deadline,
    )
    .await
}

/// Reads the stream until `done` holds (then a little longer, to catch
/// duplicates), or until the deadline.
///
/// # Panics
/// When the stream yields a fatal error.
pub async fn observe_until(
    stream: &mut FlowStream,
    mut done: impl FnMut(&Observed) -> bool,
    deadline: Duration,
) -> Observed {
    let mut observed = Observed::default();
    let read = async {
        let mut settle: Option<tokio::time::Instant> = None;
        loop {
            // Wake at least every 100 ms, so that `done` is checked again
            // even when no event comes.
            let wake = tokio::time::Instant::now() + Duration::from_millis(100);
            let next = match tokio::time::timeout_at(
                settle.map_or(wake, |until| until.min(wake)),
                stream.next(),
            )
            .await
            {
                Ok(next) => next,
                Err(_) if settle.is_some_and(|until| tokio::time::Instant::now() >= until) => break,
                Err(_) => {
                    if settle.is_none() && done(&observed) {
                        settle = Some(tokio::time::Instant::now() + SETTLE);
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(event)) => observed.event(&event),
                Some(Err(FlowError::Lost { count, point, .. })) => observed.loss(point, count),
                Some(Err(error)) => panic!("the backend failed: {error}"),
                None => break,
            }
            if settle.is_none() && done(&observed) {
                settle = Some(tokio::time::Instant::now() + SETTLE);
            }
        }
    };
    let _ = tokio::time::timeout(deadline, read).await;
    observed
}
