//! The harness of flowtrack's kernel tests: privileges, network namespaces,
//! cgroups and processes placed in them, the traffic generator's ground
//! truth, and conntrack as an independent peer.
//!
//! Every test makes its own namespace and cgroup with unique names and
//! removes them when dropped, even when the test fails. Traffic only goes to
//! addresses inside namespaces the test made.

pub mod names;
pub mod observe;
pub mod policy;
pub mod scenarios;
pub mod soak;
pub mod suite;

pub use flow_conformance as conformance;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flow_core::FlowKey;
use flow_core::counters::{Counters, DirectionCounters};
use serde::{Deserialize, Serialize};

/// One flow the generator made, with what it sent and received (payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedFlow {
    /// IANA protocol number.
    pub protocol: u8,
    /// The generator's own end (ICMP: the echo identifier as port).
    pub src: SocketAddr,
    /// The peer (ICMP: `type << 8 | code` as port).
    pub dst: SocketAddr,
    /// Payload bytes sent.
    pub sent: u64,
    /// Payload bytes received.
    pub received: u64,
    /// Datagrams sent (UDP, ICMP), 0 for TCP.
    pub datagrams: u64,
}

impl GeneratedFlow {
    /// A flow record.
    #[must_use]
    pub fn new(
        protocol: u8,
        src: SocketAddr,
        dst: SocketAddr,
        sent: u64,
        received: u64,
        datagrams: u64,
    ) -> Self {
        Self {
            protocol,
            src,
            dst,
            sent,
            received,
            datagrams,
        }
    }

    /// The key flowtrack must report for this flow.
    #[must_use]
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.src, self.dst, self.protocol)
    }
}

/// A UDP datagram of 100 bytes to 127.0.0.1:9 from a connected socket, then
/// exit status 7. Prints its source port. Nothing answers on port 9: the
/// flow is one packet of 128 bytes (100 + 8 + 20).
pub const SEND_UDP: &str = "import socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.connect(('127.0.0.1',9))\n\
s.send(b'x'*100)\n\
print(s.getsockname()[1])\n\
s.close()\n\
sys.exit(7)";

/// Runs [`SEND_UDP`] in `cgroup` and `netns`; the key of its flow.
///
/// # Panics
/// When the script does not exit with status 7 and its port.
pub fn send_udp(cgroup: &TestCgroup, netns: &Netns) -> FlowKey {
    let mut python = netns.command("python3");
    python.args(["-c", SEND_UDP]);
    let sent = cgroup.wrap(&python).output().expect("python3 runs");
    assert_eq!(sent.status.code(), Some(7), "{sent:?}");
    let sport: u16 = String::from_utf8_lossy(&sent.stdout)
        .trim()
        .parse()
        .expect("SEND_UDP prints its port");
    FlowKey::udp(
        SocketAddr::from(([127, 0, 0, 1], sport)),
        SocketAddr::from(([127, 0, 0, 1], 9)),
    )
}

/// IDs of flowtrack's BPF programs attached to `cgroup` (from `bpftool`).
#[must_use]
pub fn attached_programs(cgroup: &Path) -> Vec<u64> {
    let output = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("flowtrack_"))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// IDs of the BPF links attached to `cgroup` (from `bpftool`); none once
/// it is gone.
#[must_use]
pub fn cgroup_links(cgroup: &Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(cgroup).map(|metadata| metadata.ino()) else {
        return Vec::new();
    };
    let output = Command::new("bpftool")
        .args(["-j", "link", "list"])
        .output()
        .expect("bpftool runs");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["cgroup_id"].as_u64() == Some(inode))
        .filter_map(|link| link["id"].as_u64())
        .collect()
}

/// Detaches the BPF link `id` from outside its process, as an operator's
/// `bpftool link detach` would.
///
/// # Panics
/// When `bpftool` fails.
pub fn detach_link(id: u64) {
    run(Command::new("bpftool").args(["link", "detach", "id", &id.to_string()]));
}

/// Whether this process may run the privileged tests. Without root they are
/// skipped with a message, unless `FLOWTRACK_REQUIRE_PRIVILEGED=1` (CI),
/// where skipping is a failure.
///
/// # Panics
/// When privileges are missing and required.
#[must_use]
pub fn privileged(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("FLOWTRACK_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root, and FLOWTRACK_REQUIRE_PRIVILEGED=1 forbids skipping it"
    );
    eprintln!("skipping {test}: needs root (network namespaces, cgroups, BPF)");
    false
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// A unique name for this process's `kind` of object. The first one made
/// in a process sweeps away what killed test processes left
/// ([`sweep_dead_tests`]).
fn unique(kind: &str) -> String {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_dead_tests);
    format!(
        "ft{kind}-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    )
}

/// The test process that made an object named by [`unique`] (`ftKIND-PID-N`).
fn maker_of(name: &str, kind: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("ft")?
        .strip_prefix(kind)?
        .strip_prefix('-')?;
    let (pid, serial) = rest.split_once('-')?;
    serial.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` is gone (a test process killed before its drops
/// ran: its namespaces and cgroups, and the servers in them, stay).
fn is_gone(pid: u32) -> bool {
    !Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the namespaces and cgroups of test processes that no longer
/// run, with what still runs in them. A pid that lives again (reused)
/// keeps them: they are swept once it is gone.
pub fn sweep_dead_tests() {
    let dead = |name: &str, kind: &str| maker_of(name, kind).is_some_and(is_gone);
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name, "ns") {
            drop(Netns { name });
        }
    }
    if let Ok(mount) = flow_cgroup::cgroup2_mount() {
        for entry in std::fs::read_dir(&mount).into_iter().flatten().flatten() {
            if dead(&entry.file_name().to_string_lossy(), "cg") {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
}

/// Removes cgroup `path`, its descendants first, killing what runs in them.
fn remove_cgroup_tree(path: &Path) {
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = flow_cgroup::kill_and_remove(path);
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Which end of a TCP port's connections [`Netns::tcp_port_counts`] counts
/// for.
#[derive(Clone, Copy, Debug)]
pub enum PortSide {
    /// The socket bound to the port.
    Server,
    /// The socket connected to it.
    Client,
}

/// A network namespace with loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Makes a fresh namespace with `lo` up.
    ///
    /// # Panics
    /// When `ip` fails.
    #[must_use]
    pub fn new() -> Self {
        let name = unique("ns");
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        run(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]));
        netns
    }

    /// Its nsfs path, `/run/netns/NAME`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Starts `server` (the generator at that path) with `args` in the
    /// namespace, and waits for its `ready PORT` line.
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn serve(&self, server: &std::path::Path, args: &[&str]) -> Server {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(server)
            .args(args);
        Server::start(command)
    }

    /// Makes `server` the namespace's resolver: `ip netns exec` mounts
    /// `/etc/netns/NAME/resolv.conf` (`nameserver IP`) over
    /// `/etc/resolv.conf`, and `/etc/netns/NAME/nsswitch.conf` (the host's,
    /// with `hosts: files dns`, so that glibc asks the server rather than
    /// systemd-resolved over its socket); both go when the namespace is
    /// dropped. glibc only talks to port 53: serve there inside the
    /// namespace (`dns-server 127.0.0.1:53`).
    ///
    /// # Panics
    /// When the port is not 53, or the files cannot be written.
    pub fn use_resolver(&self, server: SocketAddr) {
        assert_eq!(
            server.port(),
            53,
            "glibc's resolver only talks to port 53: serve DNS on {}:53 in the namespace",
            server.ip()
        );
        let directory = self.etc();
        std::fs::create_dir_all(&directory).expect("/etc/netns/NAME can be made");
        std::fs::write(
            directory.join("resolv.conf"),
            format!("nameserver {}\n", server.ip()),
        )
        .expect("resolv.conf is written");
        let host = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
        let mut nsswitch: String = host
            .lines()
            .filter(|line| !line.trim_start().starts_with("hosts:"))
            .map(|line| format!("{line}\n"))
            .collect();
        nsswitch.push_str("hosts: files dns\n");
        std::fs::write(directory.join("nsswitch.conf"), nsswitch)
            .expect("nsswitch.conf is written");
    }

    /// `/etc/netns/NAME`: files `ip netns exec` mounts over `/etc`.
    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// `program args` to run inside the namespace.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// `GET /metrics` on 127.0.0.1:`port` inside the namespace, from
    /// outside any observed cgroup; `None` while nothing answers there.
    #[must_use]
    pub fn scrape_metrics(&self, port: u16) -> Option<String> {
        let output = self
            .command("python3")
            .args([
                "-c",
                &format!(
                    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
                ),
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `nft list tables` in this namespace.
    ///
    /// # Panics
    /// When `nft` cannot run.
    #[must_use]
    pub fn tables(&self) -> String {
        let output = self
            .command("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The value of the sysctl `name` in this namespace.
    ///
    /// # Panics
    /// When `sysctl` cannot run.
    #[must_use]
    pub fn sysctl(&self, name: &str) -> String {
        let output = self
            .command("sysctl")
            .args(["-n", name])
            .output()
            .expect("sysctl runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Makes conntrack track this namespace (an nft rule with a `ct`
    /// expression) with accounting on, so that `conntrack -L` can be the
    /// peer check.
    ///
    /// # Panics
    /// When `nft` or `sysctl` fail.
    pub fn enable_conntrack(&self) {
        let mut nft = self.command("nft");
        nft.args(["add table inet flowtrack_test; \
             add chain inet flowtrack_test out { type filter hook output priority 0; }; \
             add rule inet flowtrack_test out ct state new counter"]);
        run(&mut nft);
        run(self
            .command("sysctl")
            .args(["-qw", "net.netfilter.nf_conntrack_acct=1"]));
    }

    /// Starts counting, with nft, the TCP packets to and from `port` as
    /// they are sent (the output hook) and as they are received (the input
    /// hook): what a socket of the cgroup sees when its peer is outside it
    /// ([`Netns::tcp_port_counts`]). conntrack counts a loopback packet
    /// once, as it is sent; a large one may reach the receiver as several
    /// socket buffers, which is what a receiving socket counts.
    ///
    /// # Panics
    /// When `nft` fails.
    pub fn count_tcp_port(&self, port: u16) {
        let mut rules = String::from("add table inet flowtrack_port; ");
        for (chain, hook) in [("sent", "output"), ("received", "input")] {
            rules += &format!(
                "add chain inet flowtrack_port {chain} {{ type filter hook {hook} priority 0; }}; "
            );
            for (match_, direction) in [("dport", "to"), ("sport", "from")] {
                rules += &format!(
                    "add rule inet flowtrack_port {chain} tcp {match_} {port} counter \
                     comment \"{direction} {chain}\"; "
                );
            }
        }
        run(self.command("nft").arg(rules));
    }

    /// Packets and bytes counted since [`Netns::count_tcp_port`], as the
    /// socket on `side` of the port sees them: the server's (on the port)
    /// receives what goes to the port and sends what comes from it; the
    /// client's, the other way round.
    ///
    /// # Panics
    /// When `nft` fails or prints no JSON.
    #[must_use]
    pub fn tcp_port_counts(&self, side: PortSide) -> (u64, u64) {
        let output = self
            .command("nft")
            .args(["-j", "list", "table", "inet", "flowtrack_port"])
            .output()
            .expect("nft runs");
        let listed: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("nft -j prints JSON");
        let seen = match side {
            PortSide::Server => ["to received", "from sent"],
            PortSide::Client => ["to sent", "from received"],
        };
        let mut counts = (0, 0);
        for item in listed["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            if !seen.iter().any(|comment| rule["comment"] == *comment) {
                continue;
            }
            for expression in rule["expr"].as_array().into_iter().flatten() {
                let counter = &expression["counter"];
                counts.0 += counter["packets"].as_u64().unwrap_or(0);
                counts.1 += counter["bytes"].as_u64().unwrap_or(0);
            }
        }
        counts
    }

    /// conntrack's entries in this namespace.
    ///
    /// # Panics
    /// When `conntrack` fails.
    #[must_use]
    pub fn conntrack_entries(&self) -> Vec<ConntrackEntry> {
        let output = self
            .command("conntrack")
            .args(["-L", "-o", "extended"])
            .output()
            .expect("conntrack runs");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(ConntrackEntry::parse)
            .collect()
    }
}

/// `conntrack -E` listening for events in a namespace: the independent peer
/// of a backend on the same traffic.
#[derive(Debug)]
pub struct ConntrackEvents {
    child: Child,
    heard: std::sync::mpsc::Receiver<ConntrackEntry>,
    reader: std::thread::JoinHandle<()>,
}

/// The netlink protocol of conntrack events (`NETLINK_NETFILTER`).
const NETLINK_NETFILTER: &str = "12";

/// How long [`ConntrackEvents`] waits for `conntrack -E` to subscribe, and
/// for the events it is asked to hear.
const CONNTRACK_WAIT: Duration = Duration::from_secs(20);

impl ConntrackEvents {
    /// Starts listening for DESTROY events in `netns`: the peer for flows
    /// whose entry conntrack deletes at once (a refused connection).
    ///
    /// # Panics
    /// When `conntrack` cannot start.
    #[must_use]
    pub fn listen(netns: &Netns) -> Self {
        Self::listen_for(netns, "DESTROY")
    }

    /// Starts listening for `events` (`conntrack -e` syntax: `NEW`,
    /// `NEW,DESTROY`) in `netns`, and returns once it has subscribed (its
    /// netfilter socket has joined the event groups): every event from
    /// then on is heard.
    ///
    /// # Panics
    /// When `conntrack` cannot start, or does not subscribe in time.
    #[must_use]
    pub fn listen_for(netns: &Netns, events: &str) -> Self {
        let mut child = netns
            .command("conntrack")
            .args(["-E", "-e", events, "-o", "extended"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("conntrack -E starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, heard) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(entry) = ConntrackEntry::parse(&line) {
                    let _ = sender.send(entry);
                }
            }
        });
        let listening = Self {
            child,
            heard,
            reader,
        };
        let deadline = Instant::now() + CONNTRACK_WAIT;
        while !subscribed(listening.child.id()) {
            assert!(
                Instant::now() < deadline,
                "conntrack -E did not subscribe to events within {CONNTRACK_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        listening
    }

    /// Waits until an event of each of `keys` has been heard (for 20
    /// seconds at the most), stops listening, and returns the entries of
    /// every event heard (counters are zero on events that carry none).
    ///
    /// # Panics
    /// When the listener cannot be stopped.
    #[must_use]
    pub fn heard(mut self, keys: &[FlowKey]) -> Vec<ConntrackEntry> {
        let mut entries: Vec<ConntrackEntry> = Vec::new();
        let deadline = Instant::now() + CONNTRACK_WAIT;
        while !keys
            .iter()
            .all(|key| entries.iter().any(|entry| entry.key == *key))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.heard.recv_timeout(left) {
                Ok(entry) => entries.push(entry),
                // The caller's assertions say what is missing.
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        self.child.wait().expect("conntrack -E ends");
        self.reader.join().expect("the conntrack -E reader");
        entries.extend(self.heard.try_iter());
        entries
    }
}

/// Whether process `pid` has a netfilter netlink socket subscribed to
/// multicast groups (`/proc/PID/net/netlink`: its `Groups` column, matched
/// to the process's socket descriptors by inode).
fn subscribed(pid: u32) -> bool {
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = descriptors
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let Ok(sockets) = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")) else {
        return false;
    };
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    sockets.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 10
            && fields[1] == NETLINK_NETFILTER
            && u32::from_str_radix(fields[3], 16).is_ok_and(|groups| groups != 0)
            && inodes.iter().any(|inode| inode == fields[9])
    })
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep it alive: kill them first.
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// One conntrack entry's original tuple and counters (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackEntry {
    /// The original tuple as a flow key (ICMP: id and type/code as ports).
    pub key: FlowKey,
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// The original direction's counters (the initiator's) and the
    /// reply's.
    pub directions: DirectionCounters,
    /// TCP: the connection's state (`ESTABLISHED`, `TIME_WAIT`, …), when
    /// the line gives it.
    pub tcp_state: Option<String>,
}

impl ConntrackEntry {
    /// Parses a `conntrack -L -o extended` or `conntrack -E -o extended`
    /// line (the latter starts with an event tag such as `[DESTROY]`).
    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line
            .split_whitespace()
            .skip_while(|field| field.starts_with('['))
            .collect();
        let protocol: u8 = fields.get(3)?.parse().ok()?;
        let value = |name: &str, nth: usize| {
            fields
                .iter()
                .filter_map(|field| field.strip_prefix(name)?.strip_prefix('='))
                .nth(nth)
        };
        let (sport, dport) = match protocol {
            1 | 58 => {
                let kind: u16 = value("type", 0)?.parse().ok()?;
                let code: u16 = value("code", 0)?.parse().ok()?;
                (value("id", 0)?.parse().ok()?, kind << 8 | code)
            }
            _ => (
                value("sport", 0)?.parse().ok()?,
                value("dport", 0)?.parse().ok()?,
            ),
        };
        let key = FlowKey {
            src_addr: value("src", 0)?.parse().ok()?,
            src_port: sport,
            dst_addr: value("dst", 0)?.parse().ok()?,
            dst_port: dport,
            protocol,
        };
        let number = |name: &str, nth: usize| {
            value(name, nth)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let direction = |nth| Counters::new(number("packets", nth), number("bytes", nth));
        let directions = DirectionCounters::new(direction(0), direction(1));
        let total = directions.total();
        // `tcp 6 TIMEOUT STATE src=…`: the state is the first word of
        // capitals before the tuple.
        let tcp_state = fields
            .iter()
            .skip(4)
            .take_while(|field| !field.contains('='))
            .find(|field| field.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .filter(|_| protocol == 6)
            .map(|state| (*state).to_owned());
        Some(Self {
            key,
            packets: total.packets,
            bytes: total.bytes,
            directions,
            tcp_state,
        })
    }
}

/// Twenty thousand connections from the test cgroup whose two ends close
/// at once, observed on `stream`: a server on CPU 1 that closes after one
/// byte, and clients on CPU 0 that close after its echo, so the two FINs,
/// and the ACKs each draws, pass on different CPUs. Every flow must close
/// on its FIN exchange within a minute, none lost.
///
/// # Panics
/// When a flow is not reported closed, or a loss is.
pub async fn crossing_fins_close_on_their_fins(env: &TestEnv, stream: &mut flow_core::FlowStream) {
    let server = Server::start(on_cpu(
        1,
        &env.traffic(&["serve-tcp", "127.0.0.1:0", "--close-after", "1"]),
    ));
    let dst = format!("127.0.0.1:{}", server.port);
    let command = on_cpu(
        0,
        &env.cgroup.wrap(&env.traffic(&[
            "tcp",
            &dst,
            "--bytes",
            "1",
            "--count",
            "20000",
            "--threads",
            "2",
            "--close-after-echo",
        ])),
    );
    let (keys, observed) = observe::observe_storm(stream, command, Duration::from_secs(60)).await;
    assert_eq!(keys.len(), 20_000);
    assert_eq!(observed.lost, 0);
    assert_eq!(
        observe::unaccounted(&keys, &observed),
        [],
        "every flow closed on its FINs"
    );
}

/// A cgroup v2 directory for one test; its processes are killed and it is
/// removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    /// The directory.
    pub path: PathBuf,
}

impl TestCgroup {
    /// Makes a fresh cgroup under the cgroup v2 mount.
    ///
    /// # Panics
    /// When cgroup v2 is not mounted or the directory cannot be made.
    #[must_use]
    pub fn new() -> Self {
        let mount = flow_cgroup::cgroup2_mount().expect("cgroup v2 is mounted");
        let path = mount.join(unique("cg"));
        std::fs::create_dir(&path).expect("the test cgroup can be made");
        Self { path }
    }

    /// Wraps `command` so that it joins this cgroup before it executes
    /// (through `sh`, so the test needs no unsafe `pre_exec`).
    #[must_use]
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg("echo 0 > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.path)
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = flow_cgroup::kill_and_remove(&self.path);
    }
}

/// A test's network namespace and cgroup, and the traffic generator run
/// in them.
#[derive(Debug)]
pub struct TestEnv {
    /// The namespace every process of the test runs in.
    pub netns: Netns,
    /// The cgroup the observed processes join.
    pub cgroup: TestCgroup,
    traffic: String,
}

impl TestEnv {
    /// A fresh namespace and cgroup for `test`, which runs the generator at
    /// `traffic` (its `CARGO_BIN_EXE_traffic`); `None` when the test must
    /// skip (see [`privileged`]).
    #[must_use]
    pub fn new(test: &str, traffic: &str) -> Option<Self> {
        privileged(test).then(|| Self {
            netns: Netns::new(),
            cgroup: TestCgroup::new(),
            traffic: traffic.to_owned(),
        })
    }

    /// The generator with `args`, in the namespace, outside the cgroup.
    #[must_use]
    pub fn traffic(&self, args: &[&str]) -> Command {
        let mut command = self.netns.command(&self.traffic);
        command.args(args);
        command
    }

    /// Runs a Python `script` with `args` inside the namespace and the
    /// cgroup; what it printed, trimmed.
    ///
    /// # Panics
    /// When the script fails.
    #[must_use]
    pub fn python_inside(&self, script: &str, args: &[&str]) -> String {
        let mut python = self.netns.command("python3");
        python.arg("-c").arg(script).args(args);
        let output = self.cgroup.wrap(&python).output().expect("python3 runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs the generator inside the cgroup; its flows.
    #[must_use]
    pub fn inside(&self, args: &[&str]) -> Vec<GeneratedFlow> {
        generate(&mut self.cgroup.wrap(&self.traffic(args)))
    }

    /// Starts a generator server outside the cgroup.
    #[must_use]
    pub fn server_outside(&self, args: &[&str]) -> Server {
        Server::start(self.traffic(args))
    }

    /// Starts a generator server inside the cgroup.
    #[must_use]
    pub fn server_inside(&self, args: &[&str]) -> Server {
        Server::start(self.cgroup.wrap(&self.traffic(args)))
    }
}

/// `command`, run by `taskset` on CPU `cpu` only (affinity survives the
/// `exec`s of [`TestCgroup::wrap`] and [`Netns::command`]).
#[must_use]
pub fn on_cpu(cpu: usize, command: &Command) -> Command {
    let mut pinned = Command::new("taskset");
    pinned
        .arg("--cpu-list")
        .arg(cpu.to_string())
        .arg(command.get_program())
        .args(command.get_args());
    pinned
}

/// A server started by a test; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl Server {
    /// Starts `command` (the generator's `serve-*`) and waits for its
    /// `ready PORT` line.
    ///
    /// # Panics
    /// When the server does not start.
    #[must_use]
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server says it is ready");
        let port = line
            .strip_prefix("ready ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected server greeting {line:?}"));
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the generator `command` to completion and returns the flows it
/// reports.
///
/// # Panics
/// When it fails.
#[must_use]
pub fn generate(command: &mut Command) -> Vec<GeneratedFlow> {
    let output = command.output().expect("the generator starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("the generator writes JSON lines"))
        .collect()
}

/// A shell loop, for `seconds`, of steady mixed traffic with connection
/// churn, made by the generator at `traffic`: each round 20 TCP connections
/// (512 bytes echoed) to 127.0.0.1:`tcp_port`, a UDP flow of two datagrams
/// to `[::1]:udp_port`, an ICMP echo every tenth round, then 0.2 s of rest
/// (the workload's pace: a steady rate, not a wait for anything).
#[must_use]
pub fn churn_workload(
    traffic: &std::path::Path,
    tcp_port: u16,
    udp_port: u16,
    seconds: u64,
) -> String {
    format!(
        "end=$(( $(date +%s) + {seconds} )); i=0; while [ $(date +%s) -lt $end ]; do \
         {t} tcp 127.0.0.1:{tcp_port} --bytes 512 --count 20 >/dev/null; \
         {t} udp [::1]:{udp_port} --datagrams 2 >/dev/null; \
         i=$((i + 1)); [ $((i % 10)) -eq 0 ] && {t} icmp 127.0.0.1:0 --id $i >/dev/null; \
         sleep 0.2; done",
        t = traffic.display(),
    )
}

/// The value of the sample `name{labels}` in a Prometheus text scrape.
#[must_use]
pub fn metric_sample(scraped: &str, name_and_labels: &str) -> Option<u64> {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// The sum of every sample of the metric `name` (all its label values) in
/// a Prometheus text scrape.
#[must_use]
pub fn metric_sum(scraped: &str, name: &str) -> u64 {
    scraped
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `VmRSS` of `pid` in KiB (0 once it is gone), and how many file
/// descriptors it has open.
#[must_use]
pub fn rss_and_fds(pid: u32) -> (u64, usize) {
    let rss = status_kib(pid, "VmRSS:").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// A `kB` field of /proc/`pid`/status (`VmRSS:`, `VmHWM:`).
#[must_use]
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_name_the_test_process_that_made_them() {
        assert_eq!(maker_of("ftns-4711-3", "ns"), Some(4711));
        assert_eq!(maker_of("ftcg-4711-0", "cg"), Some(4711));
        for other in [
            "ftns-4711-3",
            "ftcg-x-1",
            "ftcg-4711",
            "system.slice",
            "ftcg-1-2-3",
        ] {
            assert_eq!(maker_of(other, "cg"), None, "{other}");
        }
    }

    #[test]
    fn a_killed_tests_namespace_and_cgroup_are_swept_with_their_processes() {
        if !privileged("a_killed_tests_namespace_and_cgroup_are_swept_with_their_processes") {
            return;
        }
        let mut exited = Command::new("true").spawn().unwrap();
        exited.wait().unwrap();
        let dead = exited.id();
        assert!(is_gone(dead));
        // What a test killed before its drops left: a namespace with a
        // server in it, a cgroup with a child cgroup and a process.
        let netns = format!("ftns-{dead}-0");
        run(Command::new("ip").args(["netns", "add", &netns]));
        let mut server = Command::new("ip")
            .args(["netns", "exec", &netns, "sleep", "600"])
            .spawn()
            .unwrap();
        let cgroup = flow_cgroup::cgroup2_mount()
            .unwrap()
            .join(format!("ftcg-{dead}-0"));
        std::fs::create_dir_all(cgroup.join("child")).unwrap();
        let mut sleeper = Command::new("sh")
            .arg("-c")
            .arg("echo 0 > \"$0/cgroup.procs\" && exec sleep 600")
            .arg(cgroup.join("child"))
            .spawn()
            .unwrap();
        // Another test process's first namespace or cgroup sweeps too, and
        // may take these first: that is the sweep under test as well.
        wait_until_populated_or_swept(&cgroup.join("child"));
        let alive = unique("ns"); // a live process's name: kept
        run(Command::new("ip").args(["netns", "add", &alive]));
        let kept = Netns { name: alive };
        sweep_dead_tests();
        assert!(
            !Path::new("/run/netns").join(&netns).exists(),
            "namespace swept"
        );
        assert!(!cgroup.exists(), "cgroup swept");
        assert!(kept.path().exists(), "a live test's namespace is kept");
        assert!(
            server.wait().is_ok() && sleeper.wait().is_ok(),
            "their processes killed"
        );
    }

    fn wait_until_populated_or_swept(cgroup: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cgroup.exists() && flow_cgroup::is_populated(cgroup) != Some(true) {
            assert!(
                Instant::now() < deadline,
                "{} never populated",
                cgroup.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
