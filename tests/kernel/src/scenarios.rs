//! The traffic scenarios every kernel backend must pass, on a stream
//! started for `env.cgroup` ([`crate::backend_suite!`] generates a test of
//! each for a backend): the same traffic, the same expectations, the same
//! peer checks.

use std::time::Duration;

use flow_core::counters::Counters;
use flow_core::{CloseReason, FlowKey, FlowStream};

use crate::observe::{
    assert_directions_in_conntrack, assert_directions_match_conntrack, assert_in_conntrack,
    assert_matches_conntrack, headers, observe, over_both_families,
};
use crate::{ConntrackEvents, GeneratedFlow, TestEnv, generate};

/// TCP connections over IPv4 and IPv6 loopback to servers outside the
/// cgroup, with known payloads (100,000 and 3,000 bytes, echoed): keyed
/// from the connecting client, at least the payload and a header per
/// packet counted in each direction (what the client sent, what the
/// server sent back), closed on their FINs, as conntrack counts them.
///
/// # Panics
/// When the backend's report differs.
pub async fn tcp_over_both_families(env: &TestEnv, stream: &mut FlowStream) {
    let (flows, observed) = over_both_families(
        env,
        stream,
        "tcp",
        &["--bytes", "100000"],
        &["--bytes", "3000"],
    )
    .await;
    for flow in &flows {
        assert_eq!(flow.received, flow.sent, "the echo came back");
        let key = flow.key();
        assert_eq!(key.src(), flow.src, "oriented from the connecting client");
        let (packets, bytes) = observed.closed_once(&key);
        // At least the payload both ways and one header per packet (bytes
        // exactly equal conntrack's, below).
        assert!(
            bytes >= flow.sent + flow.received + packets * headers(flow),
            "{key}: {bytes} bytes"
        );
        assert!(packets >= 6, "handshake, data, FINs: {packets}");
        assert_eq!(observed.closed_because(&key), Some(CloseReason::Fin));
        let directions = observed.directions_once(&key);
        let sent = directions.src;
        let echoed = directions.dst;
        assert!(
            sent.bytes >= flow.sent + sent.packets * headers(flow) && sent.packets >= 3,
            "{key}: the client sent {sent:?} for {} payload bytes",
            flow.sent
        );
        assert!(
            echoed.bytes >= flow.received + echoed.packets * headers(flow) && echoed.packets >= 3,
            "{key}: the server sent {echoed:?} for {} payload bytes",
            flow.received
        );
        // The entry lives on in TIME_WAIT: conntrack's own listing agrees.
        assert_matches_conntrack(&env.netns, &key, (packets, bytes));
        assert_directions_match_conntrack(&env.netns, &key, directions);
    }
}

/// UDP flows over IPv4 and IPv6 loopback from connected sockets (5
/// datagrams of 512 bytes, 3 of 1,000, echoed): every datagram and its
/// header counted, in its direction, as conntrack counts them, closed for
/// one of `reasons`
/// (the eBPF backend: the socket's release; nflog: conntrack's timeout,
/// or the cgroup emptied — UDP has no end of its own).
///
/// # Panics
/// When the backend's report differs.
pub async fn udp_over_both_families(
    env: &TestEnv,
    stream: &mut FlowStream,
    reasons: &[CloseReason],
) {
    let (flows, observed) = over_both_families(
        env,
        stream,
        "udp",
        &["--bytes", "512", "--datagrams", "5"],
        &["--bytes", "1000", "--datagrams", "3"],
    )
    .await;
    for flow in &flows {
        let key = flow.key();
        let packets = 2 * flow.datagrams;
        let bytes = flow.sent + flow.received + packets * headers(flow);
        assert_eq!(observed.closed_once(&key), (packets, bytes), "{key}");
        let directions = observed.directions_once(&key);
        let header_bytes = flow.datagrams * headers(flow);
        assert_eq!(
            (directions.src, directions.dst),
            (
                Counters::new(flow.datagrams, flow.sent + header_bytes),
                Counters::new(flow.datagrams, flow.received + header_bytes)
            ),
            "{key}: the client's datagrams, then the echoes"
        );
        assert_directions_match_conntrack(&env.netns, &key, directions);
        let reason = observed.closed_because(&key);
        assert!(
            reason.is_some_and(|reason| reasons.contains(&reason)),
            "{key}: {reason:?}, not one of {reasons:?}"
        );
        assert_matches_conntrack(&env.netns, &key, (packets, bytes));
    }
}

/// A connection refused with a reset: opened and closed, SYN and RST
/// counted, each in its direction (the SYN, with its options, larger than
/// the bare RST), as conntrack's DESTROY event (at once for a reset
/// SYN_SENT entry) says.
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
    let directions = observed.directions_once(&key);
    assert_eq!((directions.src.packets, directions.dst.packets), (1, 1));
    assert!(
        directions.src.bytes > directions.dst.bytes,
        "the SYN sent, larger than the RST that answered: {directions:?}"
    );
    let heard = events.heard(&[key]);
    assert_in_conntrack(&heard, &key, (packets, bytes));
    assert_directions_in_conntrack(&heard, &key, directions);
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
        let one = Counters::new(1, ip + 8 + 32);
        let directions = observed.directions_once(&key);
        assert_eq!((directions.src, directions.dst), (one, one), "{key}");
        assert_matches_conntrack(&env.netns, &key, (packets, bytes));
    }
}

/// A client outside the cgroup connects to a server inside it: the flow is
/// keyed from the remote client, and counted, the client's bytes as the
/// initiator's.
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
    let directions = observed.directions_once(&key);
    for (direction, counted) in [("client's", directions.src), ("server's", directions.dst)] {
        assert!(
            counted.bytes >= 5000 + counted.packets * 40,
            "{key}: the {direction} {counted:?}"
        );
    }
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
