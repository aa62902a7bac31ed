//! The scenarios every backend must pass, on a stream the test started for
//! `env.cgroup` (each backend's test file starts its own, then runs these):
//! the same traffic, the same expectations, the same peer checks.

use std::time::Duration;

use flow_core::{CloseReason, FlowKey, FlowStream};

use crate::observe::{assert_in_conntrack, assert_matches_conntrack, observe};
use crate::{ConntrackEvents, GeneratedFlow, TestEnv, generate};

/// A connection refused with a reset: opened and closed, SYN and RST
/// counted, as conntrack's DESTROY event (at once for a reset SYN_SENT
/// entry) says.
///
/// # Panics
/// When the backend's report differs.
pub async fn refused_connection(env: &TestEnv, stream: &mut FlowStream) {
    let events = ConntrackEvents::listen(&env.netns);
    // Port 9 (discard): nothing listens in a fresh namespace.
    let flows = env.inside(&["refused", "127.0.0.1:9"]);
    let key = flows[0].key();
    let observed = observe(stream, &[key], Duration::from_secs(20)).await;
    let (packets, bytes) = observed.closed_once(&key);
    assert_eq!(packets, 2, "SYN and RST");
    assert_eq!(observed.closed_because(&key), Some(CloseReason::Reset));
    assert_in_conntrack(&events.destroyed(), &key, (packets, bytes));
}

/// ICMP and ICMPv6 echo: request and reply of 32 bytes of payload each,
/// keyed by identifier and type (flow-core's convention).
///
/// # Panics
/// When the backend's report differs.
pub async fn icmp_echo(env: &TestEnv, stream: &mut FlowStream) {
    let mut flows = env.inside(&["icmp", "127.0.0.1:0", "--id", "4242"]);
    flows.extend(env.inside(&["icmp", "[::1]:0", "--id", "4343"]));
    let keys: Vec<FlowKey> = flows.iter().map(GeneratedFlow::key).collect();
    let observed = observe(stream, &keys, Duration::from_secs(20)).await;
    for flow in &flows {
        let key = flow.key();
        let (packets, bytes) = observed.closed_once(&key);
        let ip = if flow.src.is_ipv4() { 20 } else { 40 };
        assert_eq!((packets, bytes), (2, 2 * (ip + 8 + 32)), "{key}");
        assert_matches_conntrack(&env.netns, &key, (packets, bytes));
    }
}

/// A client outside the cgroup connects to a server inside it: the flow is
/// keyed from the remote client, and counted.
///
/// # Panics
/// When the backend's report differs.
pub async fn inbound_connection(env: &TestEnv, stream: &mut FlowStream) {
    let server = env.server_inside(&["serve-tcp", "127.0.0.1:0"]);
    let flows = generate(&mut env.traffic(&[
        "tcp",
        &format!("127.0.0.1:{}", server.port),
        "--bytes",
        "5000",
    ]));
    let key = flows[0].key();
    assert_eq!(key.dst_port, server.port);
    let observed = observe(stream, &[key], Duration::from_secs(20)).await;
    let (packets, bytes) = observed.closed_once(&key);
    assert!(bytes >= 2 * 5000 + packets * 40);
    assert_matches_conntrack(&env.netns, &key, (packets, bytes));
    assert_eq!(observed.opened.len(), 1, "{observed:#?}");
}

/// The same connection from outside and from inside the cgroup: only the
/// inside one is reported.
///
/// # Panics
/// When the backend's report differs.
pub async fn outside_traffic_is_not_reported(env: &TestEnv, stream: &mut FlowStream) {
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let dst = format!("127.0.0.1:{}", server.port);
    let outside = generate(&mut env.traffic(&["tcp", &dst, "--bytes", "100"]));
    let inside = env.inside(&["tcp", &dst, "--bytes", "100"]);
    let observed = observe(stream, &[inside[0].key()], Duration::from_secs(20)).await;
    let _ = observed.closed_once(&inside[0].key());
    assert!(
        !observed.opened.contains_key(&outside[0].key()),
        "{observed:#?}"
    );
    assert_eq!(observed.opened.len(), 1, "{observed:#?}");
}
