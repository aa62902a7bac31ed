//! The eBPF backend on a real kernel: each test has its own network
//! namespace and cgroup; the traffic generator is the ground truth and
//! conntrack (with accounting) the independent peer. The suite every
//! backend runs (the contract and the traffic scenarios) comes first;
//! then what only this backend does.

use std::time::Duration;

use flow_backend_ebpf::{EbpfConfig, EbpfSource};
use flow_core::{CloseReason, FlowKey, FlowSource, FlowStream};
use flowtrack_kernel_tests::names;
use flowtrack_kernel_tests::observe::{
    assert_matches_conntrack, observe, observe_storm, observe_to_end, observe_until, unaccounted,
};
use flowtrack_kernel_tests::suite::KernelBackend;
use flowtrack_kernel_tests::{
    PortSide, Server, TestEnv, attached_programs, cgroup_links, crossing_fins_close_on_their_fins,
    detach_link, on_cpu,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_traffic");

/// The test's environment, or `None` when it must skip.
fn env(test: &str) -> Option<TestEnv> {
    TestEnv::new(test, TRAFFIC)
}

/// Test defaults: sweeps and FIN linger short, so closes come quickly.
fn config(env: &TestEnv) -> EbpfConfig {
    EbpfConfig::new(&env.cgroup.path)
        .sweep_interval(Duration::from_millis(100))
        .and_then(|config| config.fin_linger(Duration::from_millis(300)))
        .unwrap()
}

async fn start(config: EbpfConfig) -> FlowStream {
    EbpfSource::new(config)
        .start()
        .await
        .expect("the eBPF backend attaches")
}

/// The backend attached, with conntrack on as the peer.
async fn start_with_peer(env: &TestEnv) -> FlowStream {
    env.netns.enable_conntrack();
    start(config(env)).await
}

/// The eBPF backend, as the suite drives it.
#[derive(Clone, Copy)]
struct Ebpf;

impl KernelBackend for Ebpf {
    /// conntrack, the peer of the scenarios' counters, is off in a fresh
    /// namespace (the nflog backend turns it on itself).
    fn prepare(&self, env: &TestEnv) {
        env.netns.enable_conntrack();
    }

    fn source(&self, env: &TestEnv) -> Box<dyn FlowSource> {
        Box::new(EbpfSource::new(config(env)))
    }

    /// 64 KiB: overrun by the loss's connections with nobody reading, with
    /// room for the records of the workload that follows, made while
    /// nobody reads either (a dozen execs, about 1.4 KB each: a pyenv
    /// python starts through three).
    fn lossy_source(&self, env: &TestEnv) -> Box<dyn FlowSource> {
        Box::new(EbpfSource::new(config(env).ring_bytes(65_536).unwrap()))
    }

    fn updating_source(&self, env: &TestEnv, every: std::time::Duration) -> Box<dyn FlowSource> {
        Box::new(EbpfSource::new(config(env).active_timeout(every).unwrap()))
    }

    fn enforcing_source(
        &self,
        env: &TestEnv,
        policy: std::sync::Arc<flow_policy::Policy>,
    ) -> Box<dyn FlowSource> {
        Box::new(EbpfSource::new(config(env).enforce(policy)))
    }

    /// Its socket-address hooks pointed at a directory that is no cgroup.
    fn failing_enforcing_source(
        &self,
        env: &TestEnv,
        policy: std::sync::Arc<flow_policy::Policy>,
    ) -> Box<dyn FlowSource> {
        Box::new(EbpfSource::new(
            config(env).enforce(policy).fail_enforcement(),
        ))
    }

    /// The `connect4`/`connect6` hooks' verdict.
    fn tcp_refusal(&self) -> &'static str {
        "EPERM"
    }

    /// Detaches its programs' links from the cgroup, as `bpftool link
    /// detach` would.
    fn break_source(&self, env: &TestEnv) {
        let links = cgroup_links(&env.cgroup.path);
        assert_eq!(
            links.len(),
            flow_backend_ebpf::CGROUP_PROGRAMS.len(),
            "the source's links: {links:?}"
        );
        links.into_iter().for_each(detach_link);
    }

    fn leftovers(&self, env: &TestEnv) -> Vec<String> {
        attached_programs(&env.cgroup.path)
            .into_iter()
            .map(|id| format!("BPF program {id} attached to {}", env.cgroup.path.display()))
            .collect()
    }

    /// A UDP flow closes with its socket.
    fn udp_close_reasons(&self) -> &'static [CloseReason] {
        &[CloseReason::SocketReleased]
    }
}

flowtrack_kernel_tests::backend_suite!(Ebpf);

/// An established connection idle for longer than the TCP idle timeout
/// stays open while its socket counts it (the server's, inside the cgroup,
/// counting both directions: its client is outside), and closes once, with
/// every packet the server's socket sent and received. Before sockets
/// counted their flows, the sweep closed it during the pause and the rest
/// went unreported.
///
/// The peer here is nft, not conntrack: conntrack counts a loopback packet
/// as it is sent, and the large ones reach the server as several socket
/// buffers (loopback segments them on the way), each counted as received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_established_connection_stays_open_until_it_closes() {
    let Some(env) = env("an_idle_established_connection_stays_open_until_it_closes") else {
        return;
    };
    let config = config(&env).tcp_idle(Duration::from_millis(300)).unwrap();
    let mut stream = start(config).await;
    let server = env.server_inside(&["serve-tcp", "127.0.0.1:0"]);
    env.netns.count_tcp_port(server.port);
    let dst = format!("127.0.0.1:{}", server.port);
    // Read while the generator runs: the sweep that would close the idle
    // flow runs as the stream is read.
    let command = env.traffic(&["tcp", &dst, "--bytes", "4000000", "--pause-ms", "1500"]);
    let (keys, observed) = observe_storm(&mut stream, command, Duration::from_secs(20)).await;
    let (packets, bytes) = observed.closed_once(&keys[0]);
    assert!(bytes >= 2 * 4_000_000 + packets * 40, "{bytes} bytes");
    assert_eq!(
        (packets, bytes),
        env.netns.tcp_port_counts(PortSide::Server),
        "flowtrack vs nft"
    );
    assert_eq!(observed.opened.len(), 1, "{observed:#?}");
}

/// On a machine with more CPUs than a socket has counter slots, the CPUs
/// past the slots' owners count atomically in shared counters. Here CPU 0
/// owns its slot and CPU 1 shares one: the server inside the cgroup runs
/// on CPU 1 (what it sends, it counts there), the client on CPU 0 (where
/// the loopback delivers what it sends, and where the server's socket
/// acknowledges it): every byte once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpus_sharing_a_counter_slot_count_every_byte_once() {
    let Some(env) = env("cpus_sharing_a_counter_slot_count_every_byte_once") else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(cpus >= 2, "needs two CPUs, has {cpus}");
    let config = config(&env).own_slot_cpus(1);
    let mut stream = start(config).await;
    let server = Server::start(on_cpu(
        1,
        &env.cgroup.wrap(&env.traffic(&["serve-tcp", "127.0.0.1:0"])),
    ));
    env.netns.count_tcp_port(server.port);
    let dst = format!("127.0.0.1:{}", server.port);
    let command = on_cpu(0, &env.traffic(&["tcp", &dst, "--bytes", "4000000"]));
    let (keys, observed) = observe_storm(&mut stream, command, Duration::from_secs(20)).await;
    let (packets, bytes) = observed.closed_once(&keys[0]);
    assert!(bytes >= 2 * 4_000_000 + packets * 40, "{bytes} bytes");
    assert_eq!(
        (packets, bytes),
        env.netns.tcp_port_counts(PortSide::Server),
        "flowtrack vs nft"
    );
}

/// A connection reset while both its ends, inside the cgroup, count it in
/// their sockets: the reset closes it once the other end has handed its
/// counts over (its socket's release), once, with every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_between_two_counting_sockets_closes_once_with_every_byte() {
    let Some(env) = env("a_reset_between_two_counting_sockets_closes_once_with_every_byte") else {
        return;
    };
    let mut stream = start_with_peer(&env).await;
    let server = env.server_inside(&["serve-tcp", "127.0.0.1:0"]);
    let flows = env.inside(&[
        "tcp",
        &format!("127.0.0.1:{}", server.port),
        "--bytes",
        "1000000",
        "--reset",
    ]);
    let key = flows[0].key();
    let observed = observe(&mut stream, &[key], Duration::from_secs(20)).await;
    let (packets, bytes) = observed.closed_once(&key);
    assert!(packets >= 4, "handshake, data, reset: {packets}");
    assert_matches_conntrack(&env.netns, &key, (packets, bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_ten_thousand_connections_loses_nothing() {
    let Some(env) = env("a_storm_of_ten_thousand_connections_loses_nothing") else {
        return;
    };
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let mut stream = start(EbpfConfig::new(&env.cgroup.path)).await;
    let dst = format!("127.0.0.1:{}", server.port);
    let command = env
        .cgroup
        .wrap(&env.traffic(&["tcp", &dst, "--bytes", "1", "--count", "10000"]));
    let (keys, observed) = observe_storm(&mut stream, command, Duration::from_secs(180)).await;
    assert_eq!(keys.len(), 10_000);
    assert_eq!(observed.lost, 0, "no loss at default sizes");
    assert_eq!(
        unaccounted(&keys, &observed),
        [],
        "every flow opened and closed"
    );
    assert_eq!(observed.opened_total(), 10_000);
}

/// Both ends close at once, thousands of times from two threads: the FINs
/// cross, and the two last ACKs may pass at the same moment on two CPUs.
/// Every flow still closes on its FIN exchange: none is left for
/// `fin_linger` to close (set here far beyond the test's wait). Each
/// program once read the flow's flags before marking its ACK, so both
/// could miss the other's mark: a few flows in ten thousand waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_closes_close_on_their_fin_exchange() {
    let Some(env) = env("simultaneous_closes_close_on_their_fin_exchange") else {
        return;
    };
    let config = EbpfConfig::new(&env.cgroup.path)
        .fin_linger(Duration::from_secs(3600))
        .unwrap();
    let mut stream = start(config).await;
    crossing_fins_close_on_their_fins(&env, &mut stream).await;
}

/// Both ends in the cgroup; the server closes first, and the client's
/// kernel acknowledges that FIN on its own before the client closes. The
/// server's socket, orphaned in FIN_WAIT2, turns timewait, and its last
/// ACK leaves from the kernel's control socket, outside the cgroup: no
/// egress program sees it, only the client's ingress. The flow still
/// closes on its FIN exchange (`fin_linger` is set far beyond the test's
/// wait); it once waited for the linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_ack_from_a_timewait_socket_closes_the_flow() {
    let Some(env) = env("a_last_ack_from_a_timewait_socket_closes_the_flow") else {
        return;
    };
    let config = EbpfConfig::new(&env.cgroup.path)
        .fin_linger(Duration::from_secs(3600))
        .unwrap();
    let mut stream = start(config).await;
    let client_port = env.python_inside(
        "import socket, time\n\
         listener = socket.create_server(('127.0.0.1', 0))\n\
         client = socket.create_connection(listener.getsockname())\n\
         accepted, _ = listener.accept()\n\
         accepted.close()\n\
         time.sleep(0.2)\n\
         print(client.getsockname()[1])\n\
         client.close()",
        &[],
    );
    let observed = observe_until(
        &mut stream,
        |observed| !observed.closed.is_empty(),
        Duration::from_secs(20),
    )
    .await;
    let closed: Vec<u16> = observed.closed.keys().map(|key| key.src_port).collect();
    assert_eq!(
        closed,
        [client_port.parse::<u16>().unwrap()],
        "{observed:#?}"
    );
    assert_eq!(
        observed.close_reasons.values().cloned().collect::<Vec<_>>(),
        [vec![Some(CloseReason::Fin)]],
        "{observed:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_ring_buffer_reports_every_lost_record() {
    let Some(env) = env("a_tiny_ring_buffer_reports_every_lost_record") else {
        return;
    };
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    // One page: room for about 46 records.
    let config = config(&env).ring_bytes(4096).unwrap();
    let mut stream = start(config).await;
    // Nobody reads while 500 connections open and close: the ring overflows.
    let flows = env.inside(&[
        "tcp",
        &format!("127.0.0.1:{}", server.port),
        "--bytes",
        "1",
        "--count",
        "500",
    ]);
    let records = 2 * flows.len() as u64;
    let observed = observe_until(
        &mut stream,
        |observed| observed.opened_total() + observed.closed_total() + observed.lost >= records,
        Duration::from_secs(30),
    )
    .await;
    let opened = observed.opened_total();
    let closed = observed.closed_total();
    assert!(observed.lost > 0, "the tiny ring must overflow");
    assert_eq!(
        opened + closed + observed.lost,
        records,
        "every record is delivered or counted as lost"
    );
}

/// UDP over IPv6 with a destination-options extension header (8 bytes,
/// PadN) on every datagram the client sends.
const UDP6_WITH_DSTOPTS: &str = "import socket,sys,json\n\
port=int(sys.argv[1])\n\
s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0,0,1,4,0,0,0,0]))\n\
s.connect(('::1',port))\n\
s.send(b'e'*200)\n\
s.settimeout(5)\n\
s.recv(1000)\n\
print(s.getsockname()[1])\n\
s.close()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_extension_headers_are_skipped() {
    let Some(env) = env("ipv6_extension_headers_are_skipped") else {
        return;
    };
    env.netns.enable_conntrack();
    let server = env.server_outside(&["serve-udp", "[::1]:0"]);
    let mut stream = start(config(&env)).await;
    let sport: u16 = env
        .python_inside(UDP6_WITH_DSTOPTS, &[&server.port.to_string()])
        .parse()
        .unwrap();
    let key = FlowKey::udp(
        format!("[::1]:{sport}").parse().unwrap(),
        format!("[::1]:{}", server.port).parse().unwrap(),
    );
    let observed = observe(&mut stream, &[key], Duration::from_secs(20)).await;
    // Request: IPv6 40 + options 8 + UDP 8 + 200; echo: 40 + 8 + 200.
    let counters = observed.closed_once(&key);
    assert_eq!(counters, (2, 256 + 248));
    assert_matches_conntrack(&env.netns, &key, counters);
}

/// Sends one datagram to each of `count` ports from one socket: as many
/// UDP flows, all open at once (nothing answers; they stay idle).
const UDP_FAN_OUT: &str = "import socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
for port in range(20000,20000+int(sys.argv[1])): s.sendto(b'x',('127.0.0.1',port))\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_table_reports_every_evicted_flow() {
    let Some(env) = env("a_full_flow_table_reports_every_evicted_flow") else {
        return;
    };
    let config = config(&env).flow_table_entries(256).unwrap();
    let mut stream = start(config).await;
    let made = 2_000_u64;
    let _ = env.python_inside(UDP_FAN_OUT, &[&made.to_string()]);
    // The process is gone: the flows still in the table close; the others
    // were evicted, and each eviction is a reported loss.
    let observed = observe_until(
        &mut stream,
        |observed| observed.closed_total() + observed.evicted >= made,
        Duration::from_secs(30),
    )
    .await;
    let opened = observed.opened_total();
    let closed = observed.closed_total();
    assert_eq!(opened, made, "every flow opened");
    assert!(observed.evicted > 0, "the table overflowed");
    assert_eq!(
        closed + observed.evicted,
        made,
        "flows made = flows closed + flows reported evicted"
    );
}

/// Flows the full table evicted just before a finish are in what it hands
/// over: counted lost, not left out as if still open (a walk finds
/// evictions, and with an hour between sweeps only the finish's last walk
/// can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_just_before_a_finish_are_reported() {
    let Some(env) = env("evictions_just_before_a_finish_are_reported") else {
        return;
    };
    let config = config(&env)
        .sweep_interval(Duration::from_secs(3600))
        .and_then(|config| config.flow_table_entries(256))
        .unwrap();
    let mut source = EbpfSource::new(config);
    let mut stream = source.start().await.expect("the eBPF backend attaches");
    // The first sweep (at once, on the first read) walks the empty table.
    let _ = observe_until(&mut stream, |_| false, Duration::from_millis(500)).await;
    let made = 2_000_u64;
    let _ = env.python_inside(UDP_FAN_OUT, &[&made.to_string()]);
    // The flows still in the table close as the process ends.
    let before = observe_until(
        &mut stream,
        |observed| observed.closed_total() > 0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(before.evicted, 0, "no walk yet: {before:#?}");
    assert!(source.finish(), "the eBPF source finishes");
    let after = tokio::time::timeout(Duration::from_secs(10), observe_to_end(&mut stream))
        .await
        .expect("the stream ends");
    // At most the table's 256 entries were not evicted: those closed, or
    // still open as the observation stopped.
    assert!(
        after.evicted >= made - 256,
        "the finish's walk found them: {after:#?}"
    );
    assert!(
        before.closed_total() + after.closed_total() + after.evicted <= made,
        "no flow counted twice"
    );
}

/// Connects to 127.0.0.1:`argv[1]`, then `argv[2]` times: 70 writes of 100
/// bytes (TCP_NODELAY: a packet each) and a datagram to the next of 300
/// UDP ports;
/// then reads the echo, closes, and prints the TCP connection's source
/// port.
const BUSY_TCP_AMONG_UDP: &str = "import socket,sys\n\
t=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\n\
t.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n\
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
for i in range(int(sys.argv[2])): [t.sendall(b'x'*100) for _ in range(70)]; \
u.sendto(b'x',('127.0.0.1',20000+i%300))\n\
t.shutdown(socket.SHUT_WR)\n\
while t.recv(1<<20): pass\n\
print(t.getsockname()[1])\n\
t.close()\n";

/// A busy TCP connection, counted by its socket, survives a full table
/// (256 entries) churning through 300 UDP flows, each sent to again and
/// again, though its packets no longer look it up in the table; it closes
/// once, with every packet (nft is the peer: the echo comes back from
/// outside the cgroup, see the idle connection's test). A lookup every 64
/// packets, tried against the LRU taking it for idle, made no difference
/// here, so there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_counted_by_its_socket_outlives_evictions() {
    let Some(env) = env("a_busy_connection_counted_by_its_socket_outlives_evictions") else {
        return;
    };
    let config = config(&env).flow_table_entries(256).unwrap();
    let mut stream = start(config).await;
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    env.netns.count_tcp_port(server.port);
    let datagrams: u32 = 2_000;
    let client_port = env.python_inside(
        BUSY_TCP_AMONG_UDP,
        &[&server.port.to_string(), &datagrams.to_string()],
    );
    let key = FlowKey::tcp(
        format!("127.0.0.1:{client_port}").parse().unwrap(),
        format!("127.0.0.1:{}", server.port).parse().unwrap(),
    );
    let observed = observe(&mut stream, &[key], Duration::from_secs(30)).await;
    assert!(observed.evicted > 0, "the table overflowed");
    let (packets, bytes) = observed.closed_once(&key);
    assert!(
        bytes >= 2 * u64::from(datagrams) * 70 * 100,
        "{bytes} bytes"
    );
    assert_eq!(
        (packets, bytes),
        env.netns.tcp_port_counts(PortSide::Client),
        "flowtrack vs nft"
    );
}

const DNS_SERVER: &str = env!("CARGO_BIN_EXE_dns-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_name_the_flows_to_their_answers() {
    let Some(env) = env("lookups_name_the_flows_to_their_answers") else {
        return;
    };
    let mut stream = start(config(&env)).await;
    names::lookups_name_flows(&env, &mut stream, DNS_SERVER.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_names_its_server() {
    let Some(env) = env("a_client_hello_names_its_server") else {
        return;
    };
    let mut stream = start(config(&env)).await;
    names::a_client_hello_names_the_server(&env, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lookups_each_followed_by_a_flow_leave_none_unnamed() {
    let Some(env) = env("ten_thousand_lookups_each_followed_by_a_flow_leave_none_unnamed") else {
        return;
    };
    let mut stream = start(config(&env)).await;
    names::no_flow_races_its_lookup(&env, &mut stream, DNS_SERVER.as_ref(), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_carries_its_process() {
    let Some(env) = env("every_flow_carries_its_process") else {
        return;
    };
    let mut stream = start(config(&env)).await;
    let (made, observed) = names::a_family_of_processes(&env, &mut stream, TRAFFIC.as_ref()).await;
    let python = std::fs::canonicalize(
        String::from_utf8(
            std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    for connection in &made {
        let process = observed
            .processes
            .get(&connection.key)
            .unwrap_or_else(|| panic!("{connection:?} unattributed: {observed:#?}"));
        assert_eq!(process.pid, Some(connection.pid), "{connection:?}");
        assert_eq!(process.uid, Some(0), "{connection:?}");
        let (comm, exe) = match connection.what.as_str() {
            "bash" => ("bash", std::fs::canonicalize("/usr/bin/bash").unwrap()),
            "helper" => ("traffic", std::fs::canonicalize(TRAFFIC).unwrap()),
            _ => ("python3", python.clone()),
        };
        assert_eq!(process.comm.as_deref(), Some(comm), "{connection:?}");
        assert_eq!(
            process.exe.as_deref(),
            Some(exe.to_str().unwrap()),
            "{connection:?}: the program, even of a process gone within a millisecond"
        );
        assert!(
            process
                .cmdline
                .as_ref()
                .is_some_and(|args| !args.is_empty())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_connection_carries_the_servers_process() {
    let Some(env) = env("an_accepted_connection_carries_the_servers_process") else {
        return;
    };
    let mut stream = start(config(&env)).await;
    names::an_accepted_connection_carries_the_servers_process(&env, &mut stream).await;
}
