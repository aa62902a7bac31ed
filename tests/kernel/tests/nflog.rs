//! The nflog (conntrack + nfnetlink_log) backend on a real kernel: each test
//! has its own network namespace and cgroup; the traffic generator is the
//! ground truth and `conntrack` the independent peer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use flow_backend_nflog::{DENY_PREFIX, NflogConfig, NflogSource};
use flow_core::process::Attribution;
use flow_core::{
    CloseReason, FlowError, FlowEvent, FlowKey, FlowSource, FlowStream, LossPoint, protocol,
};
use flowtrack_kernel_tests::observe::{
    assert_in_conntrack, assert_matches_conntrack, headers, observe_storm, observe_until,
    over_both_families, unaccounted,
};
use flowtrack_kernel_tests::scenarios;
use flowtrack_kernel_tests::{ConntrackEvents, GeneratedFlow, TestEnv, generate};
use futures::StreamExt;

const TRAFFIC: &str = env!("CARGO_BIN_EXE_traffic");

fn env(test: &str) -> Option<TestEnv> {
    TestEnv::new(test, TRAFFIC)
}

/// The test's namespace, only the cgroup's connections.
fn cgroup_config(env: &TestEnv) -> NflogConfig {
    NflogConfig::cgroup(&env.cgroup.path).in_netns(env.netns.path())
}

async fn start(config: NflogConfig) -> FlowStream {
    NflogSource::new(config)
        .start()
        .await
        .expect("the nflog backend starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_over_ipv4_and_ipv6_with_known_payloads() {
    let Some(env) = env("nflog tcp_over_ipv4_and_ipv6_with_known_payloads") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    let (flows, observed) = over_both_families(
        &env,
        &mut stream,
        "tcp",
        &["--bytes", "100000"],
        &["--bytes", "3000"],
    )
    .await;
    for flow in &flows {
        assert_eq!(flow.received, flow.sent, "the echo came back");
        let key = flow.key();
        let (packets, bytes) = observed.closed_once(&key);
        assert!(
            bytes >= flow.sent + flow.received + packets * headers(flow),
            "{key}: {bytes} bytes"
        );
        assert!(packets >= 6, "handshake, data, FINs: {packets}");
        assert_eq!(observed.closed_because(&key), Some(CloseReason::Fin));
        // The entry lives on in TIME_WAIT: conntrack's own listing agrees.
        assert_matches_conntrack(&env.netns, &key, (packets, bytes));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_over_ipv4_and_ipv6_counts_every_datagram() {
    let Some(env) = env("nflog udp_over_ipv4_and_ipv6_counts_every_datagram") else {
        return;
    };
    // UDP flows close when the cgroup has no process left.
    let mut stream = start(cgroup_config(&env)).await;
    let (flows, observed) = over_both_families(
        &env,
        &mut stream,
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
        // UDP has no end: conntrack's timeout, or the cgroup emptied.
        let reason = observed.closed_because(&key);
        assert!(
            matches!(reason, Some(CloseReason::Idle | CloseReason::ScopeEnded)),
            "{key}: {reason:?}"
        );
        assert_matches_conntrack(&env.netns, &key, (packets, bytes));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_opens_and_closes() {
    let Some(env) = env("nflog a_refused_connection_opens_and_closes") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    scenarios::refused_connection(&env, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_echo_over_ipv4_and_ipv6() {
    let Some(env) = env("nflog icmp_echo_over_ipv4_and_ipv6") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    scenarios::icmp_echo(&env, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_connection_is_keyed_from_the_remote_peer() {
    let Some(env) = env("nflog an_inbound_connection_is_keyed_from_the_remote_peer") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    scenarios::inbound_connection(&env, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_outside_the_cgroup_is_not_reported() {
    let Some(env) = env("nflog traffic_outside_the_cgroup_is_not_reported") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    scenarios::outside_traffic_is_not_reported(&env, &mut stream).await;
}

/// `conntrack -E` beside the backend on a whole namespace: the same flows,
/// the same counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_events_see_the_same_flows_and_counters() {
    let Some(env) = env("nflog conntrack_events_see_the_same_flows_and_counters") else {
        return;
    };
    let tcp = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let udp = env.server_outside(&["serve-udp", "[::1]:0"]);
    let mut stream = start(NflogConfig::netns(env.netns.path())).await;
    let peer = ConntrackEvents::listen_for(&env.netns, "NEW");
    let mut flows = generate(&mut env.traffic(&[
        "tcp",
        &format!("127.0.0.1:{}", tcp.port),
        "--bytes",
        "2000",
        "--count",
        "20",
    ]));
    flows.extend(generate(&mut env.traffic(&[
        "udp",
        &format!("[::1]:{}", udp.port),
        "--datagrams",
        "2",
    ])));
    flows.extend(generate(&mut env.traffic(&[
        "icmp",
        "127.0.0.1:0",
        "--id",
        "77",
    ])));
    let keys: Vec<FlowKey> = flows.iter().map(GeneratedFlow::key).collect();
    // Whole-namespace scope: UDP and ICMP close at DESTROY, 30 s later;
    // TCP at once. Wait for the TCP closes and every open.
    let observed = observe_until(
        &mut stream,
        |observed| {
            keys.iter().all(|key| observed.opened.contains_key(key))
                && keys
                    .iter()
                    .filter(|key| key.protocol == 6)
                    .all(|key| observed.closed.contains_key(key))
        },
        Duration::from_secs(20),
    )
    .await;
    let heard: HashSet<FlowKey> = peer
        .destroyed()
        .into_iter()
        .map(|entry| entry.key)
        .collect();
    let reported: HashSet<FlowKey> = observed.opened.keys().copied().collect();
    assert_eq!(
        reported, heard,
        "flowtrack and conntrack -E saw the same flows"
    );
    assert_eq!(
        reported,
        keys.iter().copied().collect(),
        "and they are the generator's"
    );
    let table = env.netns.conntrack_entries();
    for key in keys.iter().filter(|key| key.protocol == 6) {
        let (packets, bytes) = observed.closed_once(key);
        assert_in_conntrack(&table, key, (packets, bytes));
    }
    assert_eq!(observed.lost, 0);
}

/// With a receive buffer far too small for a burst, overruns are reported
/// and the resync still gives every flow its Opened and Closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_receive_buffer_overruns_and_resyncs() {
    let Some(env) = env("nflog a_tiny_receive_buffer_overruns_and_resyncs") else {
        return;
    };
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let config = cgroup_config(&env)
        .receive_buffer(4096)
        .and_then(|config| config.max_receive_buffer(4096))
        .unwrap();
    let mut stream = start(config).await;
    let command = env.cgroup.wrap(&env.traffic(&[
        "tcp",
        &format!("127.0.0.1:{}", server.port),
        "--bytes",
        "1",
        "--count",
        "2000",
    ]));
    let (keys, observed) = observe_storm(&mut stream, command, Duration::from_secs(60)).await;
    assert!(
        observed.lost_items > 0,
        "overruns reported: {}",
        observed.lost_items
    );
    let missing = unaccounted(&keys, &observed);
    assert!(
        missing.is_empty(),
        "{} of {} flows without their Opened and Closed, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_drop_is_reported_denied() {
    let Some(env) = env("nflog a_logged_drop_is_reported_denied") else {
        return;
    };
    let group = 4711;
    let config = cgroup_config(&env).log_group(group);
    let mut stream = start(config).await;
    let mut nft = env.netns.command("nft");
    nft.arg(format!(
        "add table inet guard; \
         add chain inet guard out {{ type filter hook output priority 10; }}; \
         add rule inet guard out udp dport 9 log group {group} prefix \"{DENY_PREFIX}\" drop"
    ));
    assert!(nft.status().unwrap().success());
    // A local packet dropped on output fails the send with EPERM.
    let sport: u16 = env
        .python_inside(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1', 0))\n\
             try:\n    s.sendto(b'x', ('127.0.0.1', 9))\nexcept PermissionError:\n    pass\n\
             print(s.getsockname()[1])",
            &[],
        )
        .parse()
        .unwrap();
    let key = FlowKey::udp(
        format!("127.0.0.1:{sport}").parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    );
    let observed = observe_until(
        &mut stream,
        |o| o.denied.contains_key(&key),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(observed.denied.get(&key), Some(&1), "{observed:#?}");
}

fn sysctl(env: &TestEnv, name: &str) -> String {
    let output = env
        .netns
        .command("sysctl")
        .args(["-n", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn tables(env: &TestEnv) -> String {
    let output = env
        .netns
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_removes_the_table_and_restores_the_settings() {
    let Some(env) = env("nflog stopping_removes_the_table_and_restores_the_settings") else {
        return;
    };
    let settings = [
        "net.netfilter.nf_conntrack_acct",
        "net.netfilter.nf_conntrack_timestamp",
    ];
    for name in settings {
        assert_eq!(sysctl(&env, name), "0");
    }
    let first = start(cgroup_config(&env)).await;
    // A second source in the same process and namespace.
    let second = start(cgroup_config(&env)).await;
    assert!(tables(&env).contains("flowtrack_"), "{}", tables(&env));
    for name in settings {
        assert_eq!(sysctl(&env, name), "1", "{name} on while running");
    }
    drop(first);
    for name in settings {
        assert_eq!(
            sysctl(&env, name),
            "1",
            "{name} stays on while the second source runs"
        );
    }
    drop(second);
    // The listener threads clean up on their own, at once.
    wait_until("the last source restored the settings", || {
        tables(&env).is_empty() && settings.iter().all(|name| sysctl(&env, name) == "0")
    });
}

/// Polls `done` until it holds, for 10 seconds at the most.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Dropping an idle stream wakes its listener: the table goes at once,
/// and the drop does not wait for it on the runtime's thread.
#[tokio::test(flavor = "current_thread")]
async fn dropping_an_idle_stream_removes_its_table_promptly() {
    let Some(env) = env("nflog dropping_an_idle_stream_removes_its_table_promptly") else {
        return;
    };
    let stream = start(cgroup_config(&env)).await;
    assert!(tables(&env).contains("flowtrack_"), "{}", tables(&env));
    drop(stream);
    wait_until("the table is removed", || tables(&env).is_empty());
    assert_eq!(sysctl(&env, "net.netfilter.nf_conntrack_acct"), "0");
}

/// Waits for the end of `stream`, keeping what it yields.
async fn until_the_end(stream: &mut FlowStream) -> Vec<flow_core::FlowEvent> {
    let mut events = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = stream.next().await {
            events.push(item.expect("no error when the scope goes"));
        }
    });
    assert!(end.await.is_ok(), "the stream ended: {events:?}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cgroup_ends_the_stream() {
    let Some(env) = env("nflog a_removed_cgroup_ends_the_stream") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    let sport = env.python_inside(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(b'x', ('127.0.0.1', 9))\nprint(s.getsockname()[1])",
        &[],
    );
    let key = FlowKey::udp(
        format!("127.0.0.1:{sport}").parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    );
    std::fs::remove_dir(&env.cgroup.path).expect("the cgroup is empty and can be removed");
    let events = until_the_end(&mut stream).await;
    let keys: Vec<FlowKey> = events.iter().map(|event| event.key).collect();
    assert_eq!(keys, [key, key], "opened and closed: {events:?}");
    assert_eq!(tables(&env), "", "the table goes with the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_ends_the_stream_and_is_left() {
    let Some(env) = env("nflog a_deleted_namespace_ends_the_stream_and_is_left") else {
        return;
    };
    let mut stream = start(NflogConfig::netns(env.netns.path())).await;
    // An echo exchange: open until its conntrack entry expires (30 s).
    let flows = generate(&mut env.traffic(&["icmp", "127.0.0.1:0", "--id", "9"]));
    let status = std::process::Command::new("ip")
        .args(["netns", "delete", &env.netns.name])
        .status()
        .unwrap();
    assert!(status.success());
    let events = until_the_end(&mut stream).await;
    let closed: Vec<_> = events
        .iter()
        .filter(|event| event.close_reason == Some(CloseReason::ScopeEnded))
        .map(|event| event.key)
        .collect();
    assert_eq!(
        closed,
        [flows[0].key()],
        "closed as the scope ended: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cgroup_or_namespace_is_a_clear_error() {
    let Some(env) = env("nflog a_missing_cgroup_or_namespace_is_a_clear_error") else {
        return;
    };
    let config = NflogConfig::cgroup(env.cgroup.path.join("nope")).in_netns(env.netns.path());
    let error = NflogSource::new(config)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("does not exist"), "{error}");
    let error = NflogSource::new(NflogConfig::netns("/run/netns/flowtrack-no-such-ns"))
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("network namespace"), "{error}");
    assert_eq!(tables(&env), "");
}

/// What the stream yielded until `done` said, of an event, that it was
/// the last wanted (or the deadline): the events, and the losses reported.
async fn events_until(
    stream: &mut FlowStream,
    mut done: impl FnMut(&FlowEvent) -> bool,
    deadline: Duration,
) -> (Vec<FlowEvent>, Vec<LossPoint>) {
    let (mut events, mut losses) = (Vec::new(), Vec::new());
    let _ = tokio::time::timeout(deadline, async {
        loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    let last = done(&event);
                    events.push(event);
                    if last {
                        break;
                    }
                }
                Some(Err(FlowError::Lost { point, .. })) => losses.push(point),
                Some(Err(error)) => panic!("the backend failed: {error}"),
                None => break,
            }
        }
    })
    .await;
    (events, losses)
}

/// A `done` for [`events_until`]: true at the `count`th event that
/// `wanted` accepts.
fn counting(count: usize, wanted: impl Fn(&FlowEvent) -> bool) -> impl FnMut(&FlowEvent) -> bool {
    let mut seen = 0;
    move |event| {
        seen += usize::from(wanted(event));
        seen == count
    }
}

/// Whether `event` is the `kind` (by name) of `key`.
fn is(event: &FlowEvent, kind: &str, key: &FlowKey) -> bool {
    event.key == *key && event.kind.name() == kind
}

/// The events of `kind` (by name) to `port`.
fn to_port<'a>(events: &'a [FlowEvent], kind: &str, port: u16) -> Vec<&'a FlowEvent> {
    events
        .iter()
        .filter(|event| event.kind.name() == kind && event.key.dst_port == port)
        .collect()
}

const LOOKUPS: &str = include_str!("../scripts/lookups.py");

/// The `dns` events of the stream, by query name.
fn lookups(events: &[FlowEvent]) -> HashMap<&str, &FlowEvent> {
    events
        .iter()
        .filter_map(|event| Some((event.lookup()?.query.as_ref(), event)))
        .collect()
}

/// A lookup over TCP and one over UDP, each followed by a connection to
/// its answer, observed as `config` says: a `dns` event each, on the
/// lookup's own flow, and both connections named.
async fn lookups_name_the_connections_after_them(env: &TestEnv, config: NflogConfig) {
    let mut stream = start(config).await;
    let port: u16 = env.python_inside(LOOKUPS, &["1"]).parse().unwrap();
    let (events, losses) = events_until(
        &mut stream,
        counting(4, |event| {
            event.lookup().is_some()
                || (event.kind.name() == "closed" && event.key.dst_port == port)
        }),
        Duration::from_secs(20),
    )
    .await;
    assert!(losses.is_empty(), "{losses:?}");
    let dns = lookups(&events);
    for (query, protocol, address) in [
        ("tcp.example.test", protocol::TCP, "127.0.0.3"),
        ("n0.race.test", protocol::UDP, "127.1.0.1"),
    ] {
        let event = dns
            .get(query)
            .unwrap_or_else(|| panic!("{query}: {events:#?}"));
        // The lookup's own flow: the asking socket → the resolver.
        assert_eq!(event.key.dst().to_string(), "127.0.0.1:53");
        assert_eq!(event.key.protocol, protocol);
        let lookup = event.lookup().unwrap();
        assert_eq!(
            lookup.answers,
            [address.parse::<std::net::IpAddr>().unwrap()]
        );
        for kind in ["opened", "closed"] {
            let flow = to_port(&events, kind, port)
                .into_iter()
                .find(|event| event.key.dst_addr.to_string() == address)
                .unwrap_or_else(|| panic!("{kind} to {address}: {events:#?}"));
            assert_eq!(flow.host.as_deref(), Some(query), "{flow:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_over_udp_and_tcp_name_the_connections_after_them() {
    let Some(env) = env("nflog lookups_over_udp_and_tcp_name_the_connections_after_them") else {
        return;
    };
    lookups_name_the_connections_after_them(&env, cgroup_config(&env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_name_connections_in_a_namespace_scope() {
    let Some(env) = env("nflog lookups_name_connections_in_a_namespace_scope") else {
        return;
    };
    lookups_name_the_connections_after_them(&env, NflogConfig::netns(env.netns.path())).await;
}

/// The name a connection of [`LOOKUPS`] must carry, from its address.
fn looked_up_as(address: std::net::IpAddr) -> Option<String> {
    let std::net::IpAddr::V4(address) = address else {
        return None;
    };
    match address.octets() {
        [127, 0, 0, 3] => Some("tcp.example.test".to_owned()),
        [127, 1, high, low] if low > 0 => Some(format!(
            "n{}.race.test",
            usize::from(high) * 250 + usize::from(low) - 1
        )),
        _ => None,
    }
}

/// The race: each connection right after its lookup, the backend
/// read meanwhile; every one named (the listener reads the lookups' log
/// before each NEW event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lookups_each_followed_at_once_by_its_connection_are_all_named() {
    let Some(env) =
        env("nflog ten_thousand_lookups_each_followed_at_once_by_its_connection_are_all_named")
    else {
        return;
    };
    const COUNT: usize = 10_000;
    // Room for the storm's events while the listener catches up: a loss
    // would be reported, but would leave the ordering unproven.
    let config = cgroup_config(&env).receive_buffer(64 << 20).unwrap();
    let mut stream = start(config).await;
    let mut python = env.netns.command("python3");
    python.arg("-c").arg(LOOKUPS).arg(COUNT.to_string());
    let mut workload = env.cgroup.wrap(&python);
    let workload = std::thread::spawn(move || workload.output().expect("python3 runs"));
    let connection = |event: &FlowEvent| {
        event.kind.name() == "opened" && looked_up_as(event.key.dst_addr).is_some()
    };
    let (events, losses) = events_until(
        &mut stream,
        counting(COUNT + 1, connection),
        Duration::from_secs(120),
    )
    .await;
    let output = workload.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(losses.is_empty(), "{losses:?}");
    let opened: Vec<&FlowEvent> = events.iter().filter(|event| connection(event)).collect();
    assert_eq!(opened.len(), COUNT + 1);
    let unnamed: Vec<_> = opened
        .iter()
        .filter(|event| event.host.as_deref() != looked_up_as(event.key.dst_addr).as_deref())
        .collect();
    assert!(
        unnamed.is_empty(),
        "{} of {}: {unnamed:#?}",
        unnamed.len(),
        opened.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_names_its_connection() {
    let Some(env) = env("nflog a_client_hello_names_its_connection") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    let ports = env.python_inside(include_str!("../scripts/client_hello.py"), &[]);
    let (sport, dport) = ports.split_once(' ').unwrap();
    let key = FlowKey::tcp(
        format!("[::1]:{sport}").parse().unwrap(),
        format!("[::1]:{dport}").parse().unwrap(),
    );
    let (events, losses) = events_until(
        &mut stream,
        |event| is(event, "closed", &key),
        Duration::from_secs(20),
    )
    .await;
    assert!(losses.is_empty(), "{losses:?}");
    let closed = events.iter().find(|event| is(event, "closed", &key));
    let closed = closed.unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(closed.sni.as_deref(), Some("secure.example.test"));
    assert_eq!(closed.host, None, "no lookup named ::1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_as_nobody_has_uid_65534() {
    let Some(env) = env("nflog a_connection_made_as_nobody_has_uid_65534") else {
        return;
    };
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let mut stream = start(cgroup_config(&env)).await;
    let mut nobody = env.netns.command("setpriv");
    nobody
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            TRAFFIC,
        ])
        .args(["tcp", &format!("127.0.0.1:{}", server.port)]);
    let flows = generate(&mut env.cgroup.wrap(&nobody));
    let key = flows[0].key();
    let (events, _) = events_until(
        &mut stream,
        |event| is(event, "closed", &key),
        Duration::from_secs(20),
    )
    .await;
    for event in events.iter().filter(|event| event.key == key) {
        let process = event
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("{event:?}"));
        assert_eq!((process.uid, process.gid), (Some(65534), Some(65534)));
        assert_eq!(process.attribution, Attribution::BestEffort);
    }
    assert_eq!(events.iter().filter(|event| event.key == key).count(), 2);
}

/// A connection that stays open, observed as `config` says: its opened
/// event names the generator's process.
async fn the_process_of_a_long_lived_connection_is_found(env: &TestEnv, config: NflogConfig) {
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let mut stream = start(config).await;
    // Connected, then idle for two seconds: the socket is there when the
    // backend looks for it.
    let mut client = env
        .cgroup
        .wrap(&env.traffic(&[
            "tcp",
            &format!("127.0.0.1:{}", server.port),
            "--pause-ms",
            "2000",
        ]))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // `sh` and `ip netns exec` exec in place: the generator has this pid.
    let pid = client.id();
    let (events, losses) = events_until(
        &mut stream,
        |event| event.kind.name() == "opened" && event.key.dst_port == server.port,
        Duration::from_secs(20),
    )
    .await;
    assert!(client.wait().unwrap().success());
    assert!(losses.is_empty(), "{losses:?}");
    let opened = to_port(&events, "opened", server.port);
    let process = opened[0]
        .process
        .as_ref()
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(process.pid, Some(pid), "{process:?}");
    assert_eq!(process.comm.as_deref(), Some("traffic"));
    assert_eq!(process.exe.as_deref(), Some(TRAFFIC));
    assert_eq!((process.uid, process.gid), (Some(0), Some(0)));
    assert_eq!(process.attribution, Attribution::BestEffort);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_of_a_long_lived_connection_in_a_cgroup_is_found() {
    let Some(env) = env("nflog the_process_of_a_long_lived_connection_in_a_cgroup_is_found") else {
        return;
    };
    the_process_of_a_long_lived_connection_is_found(&env, cgroup_config(&env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_of_a_long_lived_connection_in_a_namespace_is_found() {
    let Some(env) = env("nflog the_process_of_a_long_lived_connection_in_a_namespace_is_found")
    else {
        return;
    };
    let config = NflogConfig::netns(env.netns.path());
    the_process_of_a_long_lived_connection_is_found(&env, config).await;
}

/// A server in the cgroup that listens and never accepts: it prints its
/// port, then waits for its input to end.
const LISTEN_ONLY: &str = "import socket, sys\n\
    listener = socket.create_server(('127.0.0.1', 0))\n\
    print(listener.getsockname()[1], flush=True)\n\
    sys.stdin.read()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_a_server_of_the_scope_carries_the_servers_process() {
    let Some(env) = env("nflog a_connection_to_a_server_of_the_scope_carries_the_servers_process")
    else {
        return;
    };
    let mut python = env.netns.command("python3");
    python.args(["-c", LISTEN_ONLY]);
    let mut server = env
        .cgroup
        .wrap(&python)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let mut stream = start(cgroup_config(&env)).await;
    // From outside the cgroup; the server never accepts it, so the
    // connection's own socket has no inode yet: the listener's counts.
    let sport = env
        .netns
        .command("python3")
        .args([
            "-c",
            &format!(
                "import socket\nc = socket.create_connection(('127.0.0.1', {}))\n\
             print(c.getsockname()[1])",
                port.trim()
            ),
        ])
        .output()
        .unwrap();
    let key = FlowKey::tcp(
        format!(
            "127.0.0.1:{}",
            String::from_utf8_lossy(&sport.stdout).trim()
        )
        .parse()
        .unwrap(),
        format!("127.0.0.1:{}", port.trim()).parse().unwrap(),
    );
    let (events, losses) = events_until(
        &mut stream,
        |event| is(event, "opened", &key),
        Duration::from_secs(20),
    )
    .await;
    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
    assert!(losses.is_empty(), "{losses:?}");
    let opened = events.iter().find(|event| is(event, "opened", &key));
    let opened = opened.unwrap_or_else(|| panic!("{events:#?}"));
    let process = opened
        .process
        .as_ref()
        .unwrap_or_else(|| panic!("{opened:?}"));
    assert_eq!(process.pid, Some(server.id()), "{process:?}");
    assert_eq!(process.comm.as_deref(), Some("python3"));
    assert_eq!(
        process.uid, None,
        "the packet came from outside: no owner in it"
    );
}

/// Sends one datagram from an unconnected UDP socket, prints its pid and
/// port, then waits for its input to end.
const SEND_AND_WAIT: &str = "import os, socket, sys\n\
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
    s.sendto(b'x', ('127.0.0.1', 9))\n\
    print(os.getpid(), s.getsockname()[1], flush=True)\n\
    sys.stdin.read()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconnected_udp_sender_is_found() {
    let Some(env) = env("nflog an_unconnected_udp_sender_is_found") else {
        return;
    };
    let mut stream = start(cgroup_config(&env)).await;
    let mut python = env.netns.command("python3");
    python.args(["-c", SEND_AND_WAIT]);
    let mut sender = env
        .cgroup
        .wrap(&python)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sender.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let (pid, sport) = line.trim().split_once(' ').unwrap();
    let key = FlowKey::udp(
        format!("127.0.0.1:{sport}").parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    );
    let (events, losses) = events_until(
        &mut stream,
        |event| is(event, "opened", &key),
        Duration::from_secs(20),
    )
    .await;
    drop(sender.stdin.take());
    assert!(sender.wait().unwrap().success());
    assert!(losses.is_empty(), "{losses:?}");
    let opened = events.iter().find(|event| is(event, "opened", &key));
    let opened = opened.unwrap_or_else(|| panic!("{events:#?}"));
    let process = opened
        .process
        .as_ref()
        .unwrap_or_else(|| panic!("{opened:?}"));
    assert_eq!(process.pid, Some(pid.parse().unwrap()), "{process:?}");
    assert_eq!((process.uid, process.gid), (Some(0), Some(0)));
}
