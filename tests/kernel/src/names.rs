//! Names and processes: the scenarios every kernel backend runs for them,
//! on a stream the test started for `env.cgroup`. The namespace's resolver
//! is the test DNS server (`dns-server`), asked through glibc
//! (`getaddrinfo`), as a real workload asks.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow_core::dns::{QueryType, ResponseCode};
use flow_core::{FlowKey, FlowStream, protocol};

use crate::observe::{Observed, observe_until};
use crate::{Server, TestEnv};

/// The test zone: names, a CNAME chain, an address two names share, an
/// IPv6 name, an answer too big for UDP, synthesized names for races, and
/// two names of their own for the policy's tests.
const ZONE: &[&str] = &[
    "127.0.0.1:53",
    "--record",
    "pypi.test",
    "A",
    "127.0.0.20",
    "--record",
    "evil.test",
    "A",
    "127.0.0.21",
    "--record",
    "a.test",
    "A",
    "127.0.0.10",
    "--record",
    "alias.test",
    "A",
    "127.0.0.10",
    "--record",
    "www.test",
    "CNAME",
    "cdn.test",
    "--record",
    "cdn.test",
    "A",
    "127.0.0.11",
    "--record",
    "v6.test",
    "AAAA",
    "::1",
    "--big",
    "big.test",
    "40",
    "--synthesize",
    "race.test",
];

/// Starts the test DNS server in `env`'s namespace as its resolver.
///
/// # Panics
/// When it does not start.
#[must_use]
pub fn serve_names(env: &TestEnv, dns_server: &Path) -> Server {
    serve_zone(&env.netns, dns_server)
}

/// Starts the test DNS server (at `dns_server`) with the test zone in
/// `netns`, as its resolver on 127.0.0.1:53: `pypi.test` (127.0.0.20),
/// `evil.test` (.21), `a.test` and `alias.test` (.10), `www.test` (CNAME
/// `cdn.test`, .11), `v6.test` (::1), `big.test` (40 addresses from
/// 127.200.0.1: too big for UDP), `N.race.test` (127.0.0.1 + N).
///
/// # Panics
/// When it does not start.
#[must_use]
pub fn serve_zone(netns: &crate::Netns, dns_server: &Path) -> Server {
    let server = netns.serve(dns_server, ZONE);
    netns.use_resolver("127.0.0.1:53".parse().expect("an address"));
    server
}

/// Resolves each name (glibc, IPv4 then IPv6 as asked) and connects to its
/// first address on PORT over TCP, sending a byte; prints each
/// connection's `name local-address local-port remote-address`.
const RESOLVE_AND_CONNECT: &str = r#"
import socket, sys
port = int(sys.argv[1])
for name in sys.argv[2:]:
    family = socket.AF_INET6 if name.startswith("v6") else socket.AF_INET
    if name.startswith("literal:"):
        address = name.split(":", 1)[1]
    else:
        address = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)[0][4][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.connect((address, port))
        s.sendall(b"x")
        s.recv(1)
        local = s.getsockname()
        print(name, local[0], local[1], address)
try:
    socket.getaddrinfo("nope.test", port, socket.AF_INET)
except socket.gaierror:
    print("nope.test failed")
"#;

/// A flow made by [`RESOLVE_AND_CONNECT`]: the name asked for (or
/// `literal:ADDRESS`) and its key.
fn connections(printed: &str, port: u16) -> Vec<(String, FlowKey)> {
    printed
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, local, local_port, remote] = fields[..] else {
                return None;
            };
            let local: IpAddr = local.parse().ok()?;
            let remote: IpAddr = remote.parse().ok()?;
            let key = FlowKey::tcp(
                SocketAddr::new(local.to_canonical(), local_port.parse().ok()?),
                SocketAddr::new(remote.to_canonical(), port),
            );
            Some((name.to_owned(), key))
        })
        .collect()
}

/// Flows to addresses the scope looked up carry the name it asked for (the
/// query name, not the end of a CNAME chain; the latest of two names of
/// one address), over UDP and after a truncated answer over TCP; a flow
/// to a literal address has none; each lookup is reported, a failed one
/// too.
///
/// # Panics
/// When the backend's report differs.
pub async fn lookups_name_flows(env: &TestEnv, stream: &mut FlowStream, dns_server: &Path) {
    let _dns = serve_names(env, dns_server);
    let server = env.server_outside(&["serve-tcp", "[::]:0", "--close-after", "1"]);
    let names = [
        "a.test",
        "www.test",
        "alias.test",
        "big.test",
        "v6.test",
        "literal:127.0.0.12",
    ];
    let mut args = vec![server.port.to_string()];
    args.extend(names.iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = env.python_inside(RESOLVE_AND_CONNECT, &args);
    assert!(printed.contains("nope.test failed"), "{printed}");
    let made = connections(&printed, server.port);
    assert_eq!(made.len(), names.len(), "{printed}");
    let keys: Vec<FlowKey> = made.iter().map(|(_, key)| *key).collect();
    let observed = observe_names(stream, &keys, 4).await;
    for (name, key) in &made {
        let host = observed.hosts.get(key).map(|host| &**host);
        match name.as_str() {
            "literal:127.0.0.12" => assert_eq!(host, None, "{key}: a literal address"),
            // a.test and alias.test share 127.0.0.10: the latest lookup
            // names it (alias.test was asked after a.test).
            "a.test" | "alias.test" => assert!(
                host == Some("a.test") || host == Some("alias.test"),
                "{key}: {host:?}"
            ),
            _ => assert_eq!(host, Some(name.as_str()), "{key}"),
        }
    }
    let alias = made.iter().find(|(name, _)| name == "alias.test").unwrap();
    assert_eq!(
        observed.hosts.get(&alias.1).map(|host| &**host),
        Some("alias.test"),
        "the latest name of a shared address"
    );
    let lookup = |query: &str| {
        observed
            .lookups
            .iter()
            .find(|(_, lookup)| &*lookup.query == query)
            .map(|(key, lookup)| (*key, lookup.clone()))
            .unwrap_or_else(|| panic!("no lookup of {query}: {:#?}", observed.lookups))
    };
    let (key, www) = lookup("www.test");
    assert_eq!(key.dst_port, 53);
    assert_eq!(www.qtype, QueryType::A);
    assert_eq!(www.rcode, ResponseCode::NO_ERROR);
    assert_eq!(www.cnames.len(), 1);
    assert_eq!(&*www.cnames[0], "cdn.test");
    assert_eq!(www.answers, ["127.0.0.11".parse::<IpAddr>().unwrap()]);
    let (_, nope) = lookup("nope.test");
    assert_eq!(nope.rcode, ResponseCode::NAME_ERROR);
    let big_over_tcp = observed.lookups.iter().any(|(key, lookup)| {
        &*lookup.query == "big.test" && key.protocol == protocol::TCP && lookup.answers.len() == 40
    });
    assert!(
        big_over_tcp,
        "the answer retried over TCP: {:#?}",
        observed.lookups
    );
}

/// Waits for `keys` to close and `lookups` lookups at least.
async fn observe_names(stream: &mut FlowStream, keys: &[FlowKey], lookups: usize) -> Observed {
    observe_until(
        stream,
        |observed| {
            observed.lookups.len() >= lookups
                && keys.iter().all(|key| observed.closed.contains_key(key))
        },
        Duration::from_secs(30),
    )
    .await
}

/// A TLS client's ClientHello names the server on the flow's close, even
/// with no lookup at all.
const CLIENT_HELLO: &str = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
local = s.getsockname()
s.setblocking(False)
tls = ssl.create_default_context().wrap_socket(s, server_hostname="secure.example.test", do_handshake_on_connect=False)
try:
    tls.do_handshake()
except (ssl.SSLError, OSError):
    pass
print(local[0], local[1])
tls.close()
"#;

/// A TLS ClientHello's server name is the flow's `sni`.
///
/// # Panics
/// When the backend's report differs.
pub async fn a_client_hello_names_the_server(env: &TestEnv, stream: &mut FlowStream) {
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
    let printed = env.python_inside(CLIENT_HELLO, &[&server.port.to_string()]);
    let (address, port) = printed.split_once(' ').expect("address and port");
    let key = FlowKey::tcp(
        SocketAddr::new(address.parse().unwrap(), port.parse().unwrap()),
        SocketAddr::new("127.0.0.1".parse().unwrap(), server.port),
    );
    let observed = observe_names(stream, &[key], 0).await;
    assert_eq!(
        observed.snis.get(&key).map(|sni| &**sni),
        Some("secure.example.test"),
        "{observed:#?}"
    );
}

/// Resolves `<n>.race.test` for n in 1..=N and sends one UDP datagram to
/// its address at once, each from a fresh socket; prints each socket's
/// local port and the address.
const RACE: &str = r#"
import socket, sys
for n in range(1, int(sys.argv[1]) + 1):
    address = socket.getaddrinfo(f"{n}.race.test", 9, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        s.send(b"x")
        print(s.getsockname()[1], address, n)
"#;

/// `cycles` lookups each followed at once by a flow to the fresh address:
/// every flow carries its name (the answer reached the scope before the
/// flow's first packet).
///
/// # Panics
/// When a flow is unnamed or misnamed.
pub async fn no_flow_races_its_lookup(
    env: &TestEnv,
    stream: &mut FlowStream,
    dns_server: &Path,
    cycles: usize,
) {
    let _dns = serve_names(env, dns_server);
    // The workload runs while the stream is read, as flowtrack reads it: a
    // reader that waited would let the ring buffer fill.
    let workload = {
        let mut python = env.netns.command("python3");
        python.arg("-c").arg(RACE).arg(cycles.to_string());
        env.cgroup.wrap(&python)
    };
    let printed = Arc::new(Mutex::new(None::<String>));
    let done = Arc::clone(&printed);
    let run = std::thread::spawn(move || {
        let mut workload = workload;
        let output = workload.output().expect("python3 runs");
        assert!(output.status.success(), "{output:?}");
        *done.lock().unwrap() = Some(String::from_utf8_lossy(&output.stdout).into_owned());
    });
    let expected = |printed: &str| -> Vec<(FlowKey, String)> {
        printed
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let key = FlowKey::udp(
                    SocketAddr::new("127.0.0.1".parse().unwrap(), fields[0].parse().unwrap()),
                    SocketAddr::new(fields[1].parse().unwrap(), 9),
                );
                (key, format!("{}.race.test", fields[2]))
            })
            .collect()
    };
    // The keys, parsed once the workload printed them, and how many of
    // them (in order) were seen opened: checked once per event, this
    // stays cheap with tens of thousands of events still to read.
    let mut wanted: Option<Vec<FlowKey>> = None;
    let mut seen = 0;
    let observed = observe_until(
        stream,
        |observed| {
            if wanted.is_none() {
                wanted = printed
                    .lock()
                    .unwrap()
                    .as_deref()
                    .map(|printed| expected(printed).into_iter().map(|(key, _)| key).collect());
            }
            let Some(keys) = &wanted else {
                return false;
            };
            while seen < keys.len() && observed.opened.contains_key(&keys[seen]) {
                seen += 1;
            }
            seen == keys.len()
        },
        Duration::from_secs(120),
    )
    .await;
    run.join().expect("the workload ran");
    let expected = expected(printed.lock().unwrap().as_deref().unwrap_or_default());
    assert_eq!(expected.len(), cycles);
    assert_eq!(observed.lost, 0, "flows lost: the race cannot be judged");
    assert_eq!(
        observed.names_lost, 0,
        "names lost: the race cannot be judged"
    );
    let unnamed: Vec<&(FlowKey, String)> = expected
        .iter()
        .filter(|(key, name)| observed.hosts.get(key).map(|host| &**host) != Some(name.as_str()))
        .collect();
    assert!(
        unnamed.is_empty(),
        "{} of {cycles} flows unnamed or misnamed, e.g. {:?}",
        unnamed.len(),
        unnamed.iter().take(5).collect::<Vec<_>>()
    );
}

/// A parent and three children with different programs, each connecting:
/// python itself, a thread of it, an unconnected UDP `sendto`, `bash` (its
/// `/dev/tcp`), and the traffic generator, which connects and exits at
/// once. Prints `what pid local-port` per connection (the thread's pid is
/// the process's; 0 for a port the process cannot tell).
const FAMILY: &str = r#"
import json, os, socket, subprocess, sys, threading
port, traffic = int(sys.argv[1]), sys.argv[2]
def connect(what):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x")
        s.recv(1)
        print(what, os.getpid(), s.getsockname()[1], flush=True)
connect("python")
thread = threading.Thread(target=connect, args=("thread",))
thread.start()
thread.join()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"x", ("127.0.0.1", 9))
print("sendto", os.getpid(), u.getsockname()[1], flush=True)
u.close()
bash = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo x >&3; head -c1 <&3 >/dev/null; echo $$"], capture_output=True, text=True, check=True)
print("bash", bash.stdout.strip(), 0, flush=True)
helper = subprocess.Popen([traffic, "tcp", f"127.0.0.1:{port}", "--bytes", "1"], stdout=subprocess.PIPE, text=True)
flow = json.loads(helper.communicate()[0].splitlines()[0])
print("helper", helper.pid, flow["src"].rsplit(":", 1)[1], flush=True)
"#;

/// One connection of a process scenario, as the process told it.
#[derive(Debug)]
pub struct Attributed {
    /// What made it: `python`, `thread`, `sendto`, `bash`, `helper`.
    pub what: String,
    /// The process's pid.
    pub pid: u32,
    /// Its flow.
    pub key: FlowKey,
}

/// Runs [`FAMILY`] in the scope against a TCP echo server outside it, and
/// observes each connection's opening; each connection (with its flow,
/// found by its process's pid where the process could not tell its port)
/// and what the backend said.
///
/// # Panics
/// When the workload fails or a flow is not reported.
pub async fn a_family_of_processes(
    env: &TestEnv,
    stream: &mut FlowStream,
    traffic: &Path,
) -> (Vec<Attributed>, Observed) {
    let server = env.server_outside(&["serve-tcp", "127.0.0.1:0", "--close-after", "1"]);
    let printed = env.python_inside(
        FAMILY,
        &[&server.port.to_string(), &traffic.display().to_string()],
    );
    let told: Vec<(String, u32, u16)> = printed
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [what, pid, port] = fields[..] else {
                return None;
            };
            Some((what.to_owned(), pid.parse().ok()?, port.parse().ok()?))
        })
        .collect();
    assert_eq!(told.len(), 5, "{printed}");
    let to_server = |port: u16, protocol: u8, dport: u16| {
        FlowKey::new(
            SocketAddr::new([127, 0, 0, 1].into(), port),
            SocketAddr::new([127, 0, 0, 1].into(), dport),
            protocol,
        )
    };
    let known: Vec<FlowKey> = told
        .iter()
        .filter(|(_, _, port)| *port != 0)
        .map(|(what, _, port)| match what.as_str() {
            "sendto" => to_server(*port, protocol::UDP, 9),
            _ => to_server(*port, protocol::TCP, server.port),
        })
        .collect();
    // Every connection to the server: the known ones, and bash's.
    let observed = observe_until(
        stream,
        |observed| {
            known.iter().all(|key| observed.opened.contains_key(key))
                && observed
                    .opened
                    .keys()
                    .filter(|key| key.dst_port == server.port)
                    .count()
                    >= 4
        },
        Duration::from_secs(30),
    )
    .await;
    let made = told
        .into_iter()
        .map(|(what, pid, port)| {
            let key = match (what.as_str(), port) {
                ("sendto", port) => to_server(port, protocol::UDP, 9),
                (_, 0) => *observed
                    .opened
                    .keys()
                    .find(|key| key.dst_port == server.port && !known.contains(key))
                    .unwrap_or_else(|| panic!("no flow of {what}: {observed:#?}")),
                (_, port) => to_server(port, protocol::TCP, server.port),
            };
            Attributed { what, pid, key }
        })
        .collect();
    (made, observed)
}

/// A server in the scope: prints its pid and port, accepts one connection
/// and echoes a byte; it keeps listening until its input ends, so that a
/// backend that looks the owner up after the connection ended (nflog)
/// still finds the process.
const SERVER: &str = r#"
import os, socket, sys
with socket.create_server(("127.0.0.1", 0)) as listener:
    print(os.getpid(), listener.getsockname()[1], flush=True)
    connection, _ = listener.accept()
    with connection:
        connection.sendall(connection.recv(1))
    sys.stdin.read()
"#;

/// A connection from outside the scope to a server inside it is
/// attributed to the server's process (the listener's owner).
///
/// # Panics
/// When the backend's report differs.
pub async fn an_accepted_connection_carries_the_servers_process(
    env: &TestEnv,
    stream: &mut FlowStream,
) -> (u32, Observed) {
    let mut python = env.netns.command("python3");
    python.arg("-c").arg(SERVER);
    let mut server = env
        .cgroup
        .wrap(&python)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().expect("piped")),
        &mut line,
    )
    .expect("the server says where it listens");
    let (pid, port) = line.trim().split_once(' ').expect("pid and port");
    let (pid, port): (u32, u16) = (pid.parse().unwrap(), port.parse().unwrap());
    let flows =
        crate::generate(&mut env.traffic(&["tcp", &format!("127.0.0.1:{port}"), "--bytes", "1"]));
    let key = flows[0].key();
    let observed = observe_until(
        stream,
        |observed| observed.opened.contains_key(&key),
        Duration::from_secs(20),
    )
    .await;
    drop(server.stdin.take());
    let _ = server.wait();
    let process = observed
        .processes
        .get(&key)
        .unwrap_or_else(|| panic!("{key} unattributed: {observed:#?}"));
    assert_eq!(process.pid, Some(pid), "the server's process");
    (pid, observed)
}
