//! Reading a backend's stream in a test: what it reported (the suite's
//! [`Observed`]), and checks against the generator and conntrack.

use std::collections::HashMap;
use std::time::Duration;

pub use flow_conformance::observe::{Observed, observe, observe_to_end, observe_until};
use flow_core::counters::DirectionCounters;
use flow_core::{FlowKey, FlowStream};

use crate::{ConntrackEntry, GeneratedFlow, Netns, TestEnv};

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

/// The backend's counters of each direction equal conntrack's original and
/// reply counters for the same flow.
///
/// # Panics
/// When they differ.
pub fn assert_directions_match_conntrack(
    netns: &Netns,
    key: &FlowKey,
    directions: DirectionCounters,
) {
    assert_directions_in_conntrack(&netns.conntrack_entries(), key, directions);
}

/// `entries` hold `key` with `directions`.
///
/// # Panics
/// When they do not.
pub fn assert_directions_in_conntrack(
    entries: &[ConntrackEntry],
    key: &FlowKey,
    directions: DirectionCounters,
) {
    let entry = entries
        .iter()
        .find(|entry| entry.key == *key)
        .unwrap_or_else(|| panic!("conntrack has no entry for {key}: {entries:#?}"));
    assert_eq!(
        directions, entry.directions,
        "packets and bytes of {key} by direction (initiator's, responder's): flowtrack vs conntrack"
    );
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
