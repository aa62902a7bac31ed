//! Reading a backend's stream in a test: what it reported, and checks
//! against the generator and conntrack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flow_core::dns::DnsLookup;
use flow_core::process::Process;
use flow_core::{CloseReason, FlowError, FlowEventKind, FlowKey, FlowStream, LossPoint};
use futures::StreamExt;

use crate::{ConntrackEntry, GeneratedFlow, Netns, TestEnv};

/// What the backend reported.
#[derive(Default, Debug)]
pub struct Observed {
    /// `Opened` events per key.
    pub opened: HashMap<FlowKey, u32>,
    /// Counters of each `Closed` per key.
    pub closed: HashMap<FlowKey, Vec<(u64, u64)>>,
    /// The reason of each `Closed` per key, in the same order.
    pub close_reasons: HashMap<FlowKey, Vec<Option<CloseReason>>>,
    /// `Denied` events per key.
    pub denied: HashMap<FlowKey, u32>,
    /// Observations of flows reported lost (a loss of unknown size counts
    /// one).
    pub lost: u64,
    /// Names and processes reported lost (payload and process records,
    /// name cache evictions): flows are still reported.
    pub names_lost: u64,
    /// Loss items.
    pub lost_items: u64,
    /// Observations reported lost at the flow table (evictions).
    pub evicted: u64,
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
    /// Keeps what `event` says of its flow's names and process.
    fn annotations_of(&mut self, event: &flow_core::FlowEvent) {
        match &event.kind {
            FlowEventKind::Opened => {
                if let Some(host) = &event.host {
                    self.hosts.insert(event.key, Arc::clone(host));
                }
                if let Some(process) = &event.process {
                    self.processes.insert(event.key, Arc::clone(process));
                }
            }
            FlowEventKind::Closed { .. } => {
                if let Some(sni) = &event.sni {
                    self.snis.insert(event.key, Arc::clone(sni));
                }
            }
            FlowEventKind::Dns(lookup) => self.lookups.push((event.key, Arc::clone(lookup))),
            _ => {}
        }
    }

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

    /// Why `key`'s one `Closed` closed ([`Observed::closed_once`]).
    ///
    /// # Panics
    /// When `key` was not opened and closed exactly once.
    pub fn closed_because(&self, key: &FlowKey) -> Option<CloseReason> {
        self.closed_once(key);
        self.close_reasons[key][0]
    }
}

/// Reads the stream until every key in `expected` is closed (then a little
/// longer, to catch duplicates), or until the deadline.
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
                        settle = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                    }
                    continue;
                }
            };
            if let Some(Ok(event)) = &next {
                observed.annotations_of(event);
            }
            match next {
                Some(Ok(event)) => match event.kind {
                    FlowEventKind::Opened => *observed.opened.entry(event.key).or_default() += 1,
                    FlowEventKind::Closed {
                        pkt_count,
                        byte_count,
                    } => {
                        observed
                            .closed
                            .entry(event.key)
                            .or_default()
                            .push((pkt_count, byte_count));
                        observed
                            .close_reasons
                            .entry(event.key)
                            .or_default()
                            .push(event.close_reason);
                    }
                    FlowEventKind::Denied => *observed.denied.entry(event.key).or_default() += 1,
                    _ => {}
                },
                Some(Err(FlowError::Lost { count, point, .. })) if !point.loses_flows() => {
                    observed.names_lost += count.unwrap_or(1);
                }
                Some(Err(FlowError::Lost { count, point, .. })) => {
                    observed.lost += count.unwrap_or(1);
                    observed.lost_items += 1;
                    if point == LossPoint::FlowTableEviction {
                        observed.evicted += count.unwrap_or(1);
                    }
                }
                Some(Err(error)) => panic!("the backend failed: {error}"),
                None => break,
            }
            if settle.is_none() && done(&observed) {
                settle = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
        }
    };
    let _ = tokio::time::timeout(deadline, read).await;
    observed
}

/// IP + transport header bytes of one packet without options.
#[must_use]
pub fn headers(flow: &GeneratedFlow) -> u64 {
    let ip = if flow.src.is_ipv4() { 20 } else { 40 };
    ip + if flow.protocol == 6 { 20 } else { 8 }
}

/// The backend's counters equal conntrack's for the same flow.
///
/// # Panics
/// When they differ.
pub fn assert_matches_conntrack(netns: &Netns, key: &FlowKey, counters: (u64, u64)) {
    assert_in_conntrack(&netns.conntrack_entries(), key, counters);
}

/// `entries` hold `key` with `counters`.
///
/// # Panics
/// When they do not.
pub fn assert_in_conntrack(entries: &[ConntrackEntry], key: &FlowKey, counters: (u64, u64)) {
    let entry = entries
        .iter()
        .find(|entry| entry.key == *key)
        .unwrap_or_else(|| panic!("conntrack has no entry for {key}: {entries:#?}"));
    assert_eq!(
        counters,
        (entry.packets, entry.bytes),
        "packets and bytes of {key}: flowtrack vs conntrack"
    );
}

/// Serves `protocol` (`tcp` or `udp`) on IPv4 and IPv6 loopback outside
/// the cgroup, runs the generator inside it against both with `v4_args`
/// and `v6_args`, and returns the generated flows and what `stream` (started
/// before) reported: exactly those two flows, nothing lost.
///
/// # Panics
/// When the backend reports other flows, or loss.
pub async fn over_both_families(
    env: &TestEnv,
    stream: &mut FlowStream,
    protocol: &str,
    v4_args: &[&str],
    v6_args: &[&str],
) -> (Vec<GeneratedFlow>, Observed) {
    let serve = format!("serve-{protocol}");
    let v4 = env.server_outside(&[&serve, "127.0.0.1:0"]);
    let v6 = env.server_outside(&[&serve, "[::1]:0"]);
    let mut flows = Vec::new();
    for (dst, args) in [
        (format!("127.0.0.1:{}", v4.port), v4_args),
        (format!("[::1]:{}", v6.port), v6_args),
    ] {
        let mut command = vec![protocol, dst.as_str()];
        command.extend_from_slice(args);
        flows.extend(env.inside(&command));
    }
    let keys: Vec<FlowKey> = flows.iter().map(GeneratedFlow::key).collect();
    let observed = observe(stream, &keys, Duration::from_secs(20)).await;
    assert_eq!(
        observed.opened.len(),
        2,
        "exactly the generator's flows: {observed:#?}"
    );
    assert_eq!(observed.lost, 0);
    (flows, observed)
}

/// Runs the generator `command` (a storm of connections) on a thread while
/// reading `stream`, as flowtrack does, until as many flows are closed as
/// it made, or until `deadline`. Returns the keys it made and what was seen.
///
/// # Panics
/// When the generator fails.
pub async fn observe_storm(
    stream: &mut FlowStream,
    mut command: std::process::Command,
    deadline: Duration,
) -> (Vec<FlowKey>, Observed) {
    let generated = std::sync::Arc::new(std::sync::OnceLock::new());
    let generator = std::thread::spawn({
        let generated = std::sync::Arc::clone(&generated);
        move || {
            let keys: Vec<FlowKey> = crate::generate(&mut command)
                .iter()
                .map(GeneratedFlow::key)
                .collect();
            let _ = generated.set(keys);
        }
    });
    let observed = observe_until(
        stream,
        |observed| {
            generated
                .get()
                .is_some_and(|keys: &Vec<FlowKey>| observed.closed_total() >= keys.len() as u64)
        },
        deadline,
    )
    .await;
    generator.join().expect("the generator runs");
    let keys = generated.get().expect("the generator reported its flows");
    (keys.clone(), observed)
}

/// The flows of `keys` not reported with exactly one `Opened` and one
/// `Closed` each, with how many times they were made. Loopback reuses a
/// port in TIME_WAIT, so one 5-tuple can carry several flows in turn: each
/// must be opened and closed.
#[must_use]
pub fn unaccounted(keys: &[FlowKey], observed: &Observed) -> Vec<(FlowKey, u32)> {
    let mut made: HashMap<FlowKey, u32> = HashMap::new();
    for key in keys {
        *made.entry(*key).or_default() += 1;
    }
    made.into_iter()
        .filter(|(key, times)| {
            observed.opened.get(key) != Some(times)
                || observed.closed.get(key).map(Vec::len) != Some(*times as usize)
        })
        .collect()
}
