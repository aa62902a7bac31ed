//! `flowtrack-bench storms`: storms of short TCP connections in a network
//! namespace, each watched at the same time by `flowtrack watch` and one
//! peer (nflog beside `conntrack -E -e NEW,DESTROY`, then beside ulogd2's
//! NFCT plugin; eBPF beside `conntrack -E`): flows
//! captured of flows made, loss reported, CPU per 10,000 flows, and the
//! delay from connect() to the line leaving each tool; and a storm outside
//! the scope, which the backends watch only to ignore.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use flow_core::clock::monotonic_now_ns;
use flowtrack_kernel_tests::{Netns, Server, TestCgroup};

/// A connection's source port and when its connect() began.
type Connect = (u16, u64);

/// Makes `flows` connections to `dst` from `threads` threads (each:
/// connect, send one byte, read the echo or EOF, close) and prints
/// `SPORT CONNECT_NS` per connection, CONNECT_NS the CLOCK_MONOTONIC time
/// just before connect(). With `lookup`, each connection first looks its
/// address up there (`crate::lookups`) and connects to the answer, on
/// `dst`'s port.
pub(crate) fn storm(
    dst: SocketAddr,
    flows: usize,
    threads: usize,
    lookup: Option<SocketAddr>,
) -> Result<()> {
    let per_thread = flows.div_ceil(threads.max(1));
    let workers: Vec<JoinHandle<Result<Vec<Connect>>>> = (0..threads.max(1))
        .map(|thread| {
            std::thread::spawn(move || {
                let mut made = Vec::with_capacity(per_thread);
                for index in thread * per_thread..(thread + 1) * per_thread {
                    let started = monotonic_now_ns();
                    let dst = match lookup {
                        Some(resolver) => {
                            SocketAddr::new(crate::lookups::look_up(resolver, index)?, dst.port())
                        }
                        None => dst,
                    };
                    let mut stream = TcpStream::connect(dst)?;
                    made.push((stream.local_addr()?.port(), started));
                    stream.write_all(b"x")?;
                    let _ = stream.read(&mut [0; 1])?;
                }
                Ok(made)
            })
        })
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for worker in workers {
        for (port, started) in worker
            .join()
            .map_err(|_| anyhow::anyhow!("a storm thread panicked"))??
        {
            writeln!(out, "{port} {started}")?;
        }
    }
    Ok(())
}

/// Lines of a watcher's stdout with the monotonic time each arrived.
fn timestamp_lines(stdout: ChildStdout) -> JoinHandle<Vec<(u64, String)>> {
    std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| (monotonic_now_ns(), line))
            .collect()
    })
}

/// CPU seconds (user + system) `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; 11 and 12 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Times `pid`'s threads (those alive now) have slept waiting for
/// something (voluntary context switches): the wakeups a watcher paid
/// for, which on these machines cost more than the work each brings.
pub(crate) fn sleeps(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        let switches = status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .context("voluntary_ctxt_switches in /proc/PID/task/TID/status")?;
        total += switches.trim().parse::<u64>()?;
    }
    Ok(total)
}

/// CPU seconds `pid` has used once it has settled: its start (loading
/// and verifying programs, parsing BTF: a few tenths of a second, longer
/// on a loaded machine) is over when two reads 200 ms apart agree (at most
/// 10 s). The storms compare what watching costs per flow, which a
/// one-off start would blur.
fn settled_cpu_seconds(pid: u32) -> Result<f64> {
    let mut before = cpu_seconds(pid)?;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_seconds(pid)?;
        if (now - before).abs() < 0.005 {
            break;
        }
        before = now;
    }
    Ok(before)
}

/// A watcher process and the thread collecting its lines.
pub(crate) struct Watcher {
    pub(crate) child: Child,
    lines: JoinHandle<Vec<(u64, String)>>,
}

impl Watcher {
    /// Starts `command` with its stdout read line by line.
    pub(crate) fn spawn(mut command: Command) -> Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let lines = timestamp_lines(child.stdout.take().context("piped stdout")?);
        Ok(Self { child, lines })
    }

    /// Interrupts it (SIGINT), waits for it, and returns its lines.
    pub(crate) fn stop(mut self) -> Result<Vec<(u64, String)>> {
        let pid = rustix::process::Pid::from_raw(self.child.id().cast_signed()).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
        self.child.wait()?;
        self.lines
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))
    }
}

/// What one tool reported about the storm.
pub(crate) struct Tally {
    pub(crate) opened: usize,
    pub(crate) closed: usize,
    pub(crate) lost_lines: usize,
    pub(crate) delays_ns: Vec<u64>,
}

/// Counts a tool's lines against the storm's flows: `parse` gives
/// (kind, source port) of a line about the storm's destination port. A
/// port can carry several connections in turn (loopback reuses ports in
/// TIME_WAIT): the k-th open of a port answers its k-th connect.
pub(crate) fn tally(
    lines: &[(u64, String)],
    made: &HashMap<u16, Vec<u64>>,
    parse: impl Fn(&str) -> Option<(&'static str, u16)>,
) -> Tally {
    let mut tally = Tally {
        opened: 0,
        closed: 0,
        lost_lines: 0,
        delays_ns: Vec::new(),
    };
    let mut opens: HashMap<u16, Vec<u64>> = HashMap::new();
    for (arrived, line) in lines {
        match parse(line) {
            Some(("opened", port)) if made.contains_key(&port) => {
                tally.opened += 1;
                opens.entry(port).or_default().push(*arrived);
            }
            Some(("closed", port)) if made.contains_key(&port) => tally.closed += 1,
            Some(("lost", _)) => tally.lost_lines += 1,
            _ => {}
        }
    }
    for (port, arrivals) in &opens {
        tally.delays_ns.extend(
            made[port]
                .iter()
                .zip(arrivals)
                .map(|(connect, arrived)| arrived.saturating_sub(*connect)),
        );
    }
    tally.delays_ns.sort_unstable();
    tally
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index] as f64 / 1e6
}

/// A flowtrack JSON line: (kind, sport).
pub(crate) fn flowtrack_line(dport: u16) -> impl Fn(&str) -> Option<(&'static str, u16)> {
    move |line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let kind = match value["kind"].as_str()? {
            "opened" => "opened",
            "closed" => "closed",
            "lost" => return Some(("lost", 0)),
            _ => return None,
        };
        (value["dport"].as_u64()? == u64::from(dport))
            .then(|| Some((kind, u16::try_from(value["sport"].as_u64()?).ok()?)))?
    }
}

/// How many of flowtrack's `opened` lines about the storm's flows (to
/// `dport`, from a port in `made`) carry a pid: the peers know no process.
fn opened_with_a_pid(lines: &[(u64, String)], made: &HashMap<u16, Vec<u64>>, dport: u16) -> usize {
    let storm_line = flowtrack_line(dport);
    lines
        .iter()
        .filter(|(_, line)| {
            matches!(storm_line(line), Some(("opened", port)) if made.contains_key(&port))
                && serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|value| value["pid"].is_u64())
        })
        .count()
}

/// A line of `conntrack -E` (`[NEW] ... sport=P dport=Q`) or of ulogd2's
/// PRINTFLOW (`[NEW] ORIG: ... SPT=P DPT=Q`): (kind, sport). The first
/// ports on the line are the original direction's.
fn event_line(
    dport: u16,
    sport_field: &'static str,
    dport_field: &'static str,
) -> impl Fn(&str) -> Option<(&'static str, u16)> {
    move |line| {
        let kind = if line.contains("[NEW]") {
            "opened"
        } else if line.contains("[DESTROY]") {
            "closed"
        } else {
            return None;
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.parse::<u16>().ok())
        };
        (field(dport_field)? == dport).then(|| Some((kind, field(sport_field)?)))?
    }
}

/// ulogd2's configuration for the comparison: the NFCT plugin in event
/// mode (no flow hash: a line per NEW and DESTROY event, like `conntrack
/// -E`), printed as text to stdout, flushed per line.
const ULOGD_CONF: &str = r#"[global]
logfile="/dev/null"
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inpflow_NFCT.so"
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_filter_IP2STR.so"
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_filter_PRINTFLOW.so"
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_LOGEMU.so"
stack=ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU

[ct1]
hash_enable=0
# NEW and DESTROY events
event_mask=0x00000005

[emu1]
file="/dev/stdout"
sync=1
"#;

/// A peer watcher: its name in the table, how to start it in a namespace,
/// and how to read its lines.
struct Peer {
    name: &'static str,
    start: fn(&Netns) -> Result<Watcher>,
    sport_field: &'static str,
    dport_field: &'static str,
}

/// `conntrack -E`, line-buffered.
fn start_conntrack(netns: &Netns) -> Result<Watcher> {
    let mut peer = netns.command("stdbuf");
    peer.args(["-oL", "conntrack", "-E", "-e", "NEW,DESTROY"]);
    Watcher::spawn(peer)
}

/// ulogd2 with [`ULOGD_CONF`] (read at its start, then removed).
fn start_ulogd(netns: &Netns) -> Result<Watcher> {
    ensure!(
        Command::new("ulogd").arg("--version").output().is_ok(),
        "ulogd not found: install Debian's ulogd2 (scripts/setup.sh does)"
    );
    let conf =
        std::env::temp_dir().join(format!("flowtrack-bench-{}-ulogd.conf", std::process::id()));
    std::fs::write(&conf, ULOGD_CONF)?;
    let mut ulogd = netns.command("ulogd");
    ulogd.arg("-c").arg(&conf);
    let watcher = Watcher::spawn(ulogd);
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::fs::remove_file(&conf);
    watcher
}

const PEERS: [Peer; 2] = [
    Peer {
        name: "conntrack -E -e NEW,DESTROY",
        start: start_conntrack,
        sport_field: "sport=",
        dport_field: "dport=",
    },
    Peer {
        name: "ulogd2 NFCT (event mode)",
        start: start_ulogd,
        sport_field: "SPT=",
        dport_field: "DPT=",
    },
];

/// Which flowtrack backend watches a storm.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// Scoped to the storm's namespace.
    Nflog,
    /// Scoped to a cgroup the generator runs in.
    Ebpf,
    /// Both at once (merged, one line per flow), scoped to a cgroup the
    /// generator runs in.
    Both,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Nflog => "nflog",
            Self::Ebpf => "ebpf",
            Self::Both => "both",
        }
    }
}

/// The storms: each backend beside `conntrack -E`, nflog beside ulogd2,
/// and both backends at once beside `conntrack -E`.
const STORMS: [(Backend, usize); 4] = [
    (Backend::Nflog, 0),
    (Backend::Nflog, 1),
    (Backend::Ebpf, 0),
    (Backend::Both, 0),
];

/// Runs the storms, flowtrack and one peer side by side on the same
/// traffic each time (two watchers at a time: the generator's two threads
/// and three watchers would crowd the two CPUs); returns the Markdown:
/// each storm's rate, then the table.
pub(crate) fn storms(flows: usize, threads: usize) -> Result<String> {
    let flowtrack = flowtrack_beside("flowtrack-bench storms")?;
    let mut rates = String::new();
    let mut rows = String::new();
    for (round, (backend, peer)) in STORMS.into_iter().enumerate() {
        let (rate, table_rows) = beside(&flowtrack, backend, &PEERS[peer], flows, threads)?;
        writeln!(rates, "storm {}: {rate}  ", round + 1)?;
        rows.push_str(&table_rows);
    }
    Ok(format!(
        "{rates}\n\
         | storm | tool | flows made | opened captured | opened with a pid | closed captured | loss reports | CPU s / 10k flows | CPU s / 10k events reported | wakeups / flow | connect → line p50 | p99 |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n{rows}"
    ))
}

/// A storm outside the scope: the nflog and eBPF backends each watch an
/// idle cgroup, started in the storm's namespace (as `--backend both`
/// starts there), while the generator, outside that cgroup, makes `flows`
/// connections: what ignoring the traffic of others costs each. A table:
/// lines written (none is the scope's), CPU per 10,000 connections made,
/// wakeups per connection.
pub(crate) fn outside_the_scope(flows: usize, threads: usize) -> Result<String> {
    let flowtrack = flowtrack_beside("flowtrack-bench storms")?;
    let flowtrack = flowtrack
        .to_str()
        .context("flowtrack's path is not UTF-8")?;
    let netns = Netns::new();
    let mut sink = netns.command(&harness()?);
    sink.args(["echo", "127.0.0.1:0"]);
    let server = Server::start(sink);
    let cgroup = TestCgroup::new();
    let backends = [Backend::Nflog, Backend::Ebpf];
    let mut watchers = Vec::new();
    for backend in backends {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", netns.name))
            .arg(flowtrack)
            .args(["watch", "--backend", backend.name(), "--format", "json"])
            .arg("--cgroup")
            .arg(&cgroup.path);
        watchers.push(Watcher::spawn(command)?);
    }
    let generator = Generator {
        netns: &netns,
        cgroup: None,
        dst: SocketAddr::from(([127, 0, 0, 1], server.port)),
        flows,
        threads,
        lookup: None,
    };
    let storm = generator.run(watchers)?;
    let total = storm.total as f64;
    let mut table = format!(
        "{} connections from {threads} threads in {:.2} s, outside the cgroup watched\n\n\
         | backend watching an idle cgroup | lines written | CPU s / 10k connections made outside | wakeups / connection |\n\
         |---|---|---|---|\n",
        storm.total, storm.seconds
    );
    for (backend, watched) in backends.into_iter().zip(&storm.watched) {
        writeln!(
            table,
            "| `watch --backend {}` | {} | {:.3} | {:.3} |",
            backend.name(),
            watched.lines.len(),
            watched.cpu * 10_000.0 / total,
            watched.sleeps as f64 / total,
        )?;
    }
    Ok(table)
}

/// One storm with flowtrack's `backend` and `peer` watching: the storm's
/// rate, and a table row for each.
fn beside(
    flowtrack: &std::path::Path,
    backend: Backend,
    peer: &Peer,
    flows: usize,
    threads: usize,
) -> Result<(String, String)> {
    let netns = Netns::new();
    let mut sink = netns.command(&harness()?);
    sink.args(["echo", "127.0.0.1:0"]);
    let server = Server::start(sink);

    let cgroup = TestCgroup::new();
    let flowtrack = flowtrack
        .to_str()
        .context("flowtrack's path is not UTF-8")?;
    let mut ours = match backend {
        // nflog under `both` watches the namespace it runs in: the
        // storm's, as a runner would start it beside its workload
        // (nsenter: `ip netns exec` would mount a sysfs without the
        // cgroup hierarchy).
        Backend::Both => {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net=/run/netns/{}", netns.name))
                .arg(flowtrack);
            command
        }
        Backend::Nflog | Backend::Ebpf => Command::new(flowtrack),
    };
    ours.args(["watch", "--backend", backend.name(), "--format", "json"]);
    match backend {
        Backend::Nflog => ours.args(["--netns", &netns.name]),
        Backend::Ebpf | Backend::Both => {
            // Nothing else makes conntrack track the namespace for the peer
            // (eBPF alone).
            netns.enable_conntrack();
            ours.arg("--cgroup").arg(&cgroup.path)
        }
    };
    let watchers = vec![Watcher::spawn(ours)?, (peer.start)(&netns)?];
    let generator = Generator {
        netns: &netns,
        cgroup: matches!(backend, Backend::Ebpf | Backend::Both).then_some(&cgroup),
        dst: SocketAddr::from(([127, 0, 0, 1], server.port)),
        flows,
        threads,
        lookup: None,
    };
    let storm = generator.run(watchers)?;
    let total = storm.total;
    let storm_seconds = storm.seconds;
    let made = &storm.made;
    let mut watched = storm.watched.into_iter();
    let (ours, theirs) = (
        watched.next().context("flowtrack")?,
        watched.next().context("peer")?,
    );
    let tallies = [
        (
            format!("flowtrack watch --backend {}", backend.name()),
            tally(&ours.lines, made, flowtrack_line(server.port)),
        ),
        (
            peer.name.to_owned(),
            tally(
                &theirs.lines,
                made,
                event_line(server.port, peer.sport_field, peer.dport_field),
            ),
        ),
    ];

    let per_10k = |cpu: f64| cpu * 10_000.0 / total as f64;
    let with_pid = opened_with_a_pid(&ours.lines, made, server.port);
    let attributed = [
        format!(
            "{with_pid} ({:.2}%)",
            100.0 * with_pid as f64 / total as f64
        ),
        "–".to_owned(),
    ];
    let mut rows = String::new();
    for (((name, tally), watched), attributed) in
        tallies.iter().zip([&ours, &theirs]).zip(attributed)
    {
        writeln!(
            rows,
            "| {} beside {} | {name} | {} | {} ({:.2}%) | {attributed} | {} | {} | {:.3} | {:.3} | {:.2} | {:.2} ms | {:.2} ms |",
            backend.name(),
            peer.name.split_whitespace().next().unwrap_or(peer.name),
            total,
            tally.opened,
            100.0 * tally.opened as f64 / total as f64,
            tally.closed,
            tally.lost_lines,
            per_10k(watched.cpu),
            watched.cpu * 10_000.0 / (tally.opened + tally.closed).max(1) as f64,
            watched.sleeps as f64 / total as f64,
            percentile(&tally.delays_ns, 0.5),
            percentile(&tally.delays_ns, 0.99),
        )?;
    }
    let rate = format!(
        "{total} connections from {threads} threads in {storm_seconds:.2} s ({:.0} per second), \
         flowtrack --backend {} beside {}",
        total as f64 / storm_seconds,
        backend.name(),
        peer.name
    );
    Ok((rate, rows))
}

/// The `flowtrack` binary built beside this harness, for `what`, which
/// needs root.
pub(crate) fn flowtrack_beside(what: &str) -> Result<std::path::PathBuf> {
    if !flowtrack_kernel_tests::privileged(what) {
        bail!("needs root");
    }
    let flowtrack = std::env::current_exe()?.with_file_name("flowtrack");
    ensure!(
        flowtrack.exists(),
        "{} not found: build it beside the harness (cargo build --release -p flowtrack -p flowtrack-bench)",
        flowtrack.display()
    );
    Ok(flowtrack)
}

/// This harness's path, to run its internal commands.
pub(crate) fn harness() -> Result<String> {
    Ok(std::env::current_exe()?
        .to_str()
        .context("the harness's path is not UTF-8")?
        .to_owned())
}

/// A storm to make: from `threads` threads in `netns` (in `cgroup` when
/// given), `flows` connections to `dst`, each looked up at `lookup` first
/// when given (see [`storm`]).
pub(crate) struct Generator<'a> {
    pub(crate) netns: &'a Netns,
    pub(crate) cgroup: Option<&'a TestCgroup>,
    pub(crate) dst: SocketAddr,
    pub(crate) flows: usize,
    pub(crate) threads: usize,
    pub(crate) lookup: Option<SocketAddr>,
}

/// What a storm made and what its watchers saw.
pub(crate) struct Storm {
    /// Per source port, when each of its connect()s began (sorted).
    pub(crate) made: HashMap<u16, Vec<u64>>,
    /// Connections made.
    pub(crate) total: usize,
    /// How long the storm took.
    pub(crate) seconds: f64,
    /// The generator's pid.
    pub(crate) pid: u32,
    /// What each watcher reported, and what it cost.
    pub(crate) watched: Vec<Watched>,
}

/// One watcher over a storm.
pub(crate) struct Watched {
    /// Its lines, each stamped on arrival.
    pub(crate) lines: Vec<(u64, String)>,
    /// The CPU seconds it spent.
    pub(crate) cpu: f64,
    /// Its [`sleeps`].
    pub(crate) sleeps: u64,
}

impl Generator<'_> {
    /// Runs the storm with `watchers` watching (given a second to
    /// subscribe and install their rules), lets the closes arrive, and
    /// stops them.
    pub(crate) fn run(&self, watchers: Vec<Watcher>) -> Result<Storm> {
        Ok(self.run_then(watchers, || Ok(()))?.0)
    }

    /// As [`Generator::run`], and `after_storm`'s result, read once the
    /// closes have arrived and before the watchers stop.
    pub(crate) fn run_then<T>(
        &self,
        watchers: Vec<Watcher>,
        after_storm: impl FnOnce() -> Result<T>,
    ) -> Result<(Storm, T)> {
        std::thread::sleep(Duration::from_secs(1));
        let mut before = Vec::new();
        for watcher in &watchers {
            let pid = watcher.child.id();
            before.push((settled_cpu_seconds(pid)?, sleeps(pid)?));
        }
        let mut generator = self.netns.command(&harness()?);
        generator.args([
            "storm".to_owned(),
            self.dst.to_string(),
            self.flows.to_string(),
            self.threads.to_string(),
        ]);
        if let Some(resolver) = self.lookup {
            generator.arg("--lookup").arg(resolver.to_string());
        }
        if let Some(cgroup) = self.cgroup {
            generator = cgroup.wrap(&generator);
        }
        let started = std::time::Instant::now();
        let child = generator
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let output = child.wait_with_output()?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(
            output.status.success(),
            "the storm failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut made: HashMap<u16, Vec<u64>> = HashMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some((port, at)) = line.split_once(' ') {
                made.entry(port.parse()?).or_default().push(at.parse()?);
            }
        }
        made.values_mut()
            .for_each(|connects| connects.sort_unstable());
        let total: usize = made.values().map(Vec::len).sum();
        ensure!(
            total == self.flows,
            "the storm made {total} of {} connections",
            self.flows
        );
        // TCP closes arrive within a second of the storm's end.
        std::thread::sleep(Duration::from_secs(2));
        let after = after_storm()?;
        let mut watched = Vec::new();
        for (watcher, (cpu_before, sleeps_before)) in watchers.into_iter().zip(before) {
            let pid = watcher.child.id();
            let (cpu, sleeps) = (cpu_seconds(pid)? - cpu_before, sleeps(pid)?);
            watched.push(Watched {
                cpu,
                sleeps: sleeps.saturating_sub(sleeps_before),
                lines: watcher.stop()?,
            });
        }
        let storm = Storm {
            made,
            total,
            seconds,
            pid,
            watched,
        };
        Ok((storm, after))
    }
}
