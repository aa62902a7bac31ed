//! `flowtrack-bench report`: runs every measurement and writes
//! BENCHMARKS.md — the tables, with what each measures and how.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::{ebpf_cost, export, fuzz, lookups, policy, scale, soak, storm};

/// How long and how big each measurement is.
#[derive(Debug, clap::Args)]
pub(crate) struct Plan {
    /// eBPF cost: bytes per transfer.
    #[arg(long, default_value_t = ebpf_cost::DEFAULT_BYTES)]
    pub(crate) ebpf_bytes: u64,
    /// eBPF cost: rounds with and without the programs.
    #[arg(long, default_value_t = ebpf_cost::DEFAULT_ROUNDS)]
    pub(crate) ebpf_rounds: usize,
    /// Storm: connections.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) storm_flows: usize,
    /// Memory at scale: concurrent flows.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) scale_flows: u64,
    /// Policy: connections per client run.
    #[arg(long, default_value_t = policy::DEFAULT_CONNECTS)]
    pub(crate) policy_connects: usize,
    /// Policy: rounds of every policy.
    #[arg(long, default_value_t = policy::DEFAULT_ROUNDS)]
    pub(crate) policy_rounds: usize,
    /// Soak: seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) soak_seconds: u64,
    /// Fuzzing: seconds per target.
    #[arg(long, default_value_t = 600)]
    pub(crate) fuzz_seconds: u64,
}

/// `uname -r`, the CPU count and the date, for each section.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs, Linux {}, {date}", kernel.trim())
}

/// The stdout of the criterion benchmark `bench` of flow-supervisor.
fn cargo_bench(bench: &str) -> Result<String> {
    let output = Command::new("cargo")
        .args([
            "bench",
            "-p",
            "flow-supervisor",
            "--features",
            "ipfix",
            "--bench",
            bench,
            "--",
            "--noplot",
        ])
        .output()
        .context("running cargo bench (from the repository's root)")?;
    ensure!(
        output.status.success(),
        "cargo bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// criterion's `[low estimate high]` after `label` on `line` (`time:`,
/// `thrpt:`), each value with its unit, e.g. `["1.02 µs", ...]`; `None`
/// on other lines and on a change line (`[+1% +2% +3%]`).
fn estimate<'a>(line: &'a str, label: &str) -> Option<[String; 3]> {
    let values = line.trim().strip_prefix(label)?;
    let values = values.trim().trim_start_matches('[').trim_end_matches(']');
    let words: Vec<&'a str> = values.split_whitespace().collect();
    (words.len() == 6).then(|| [0, 2, 4].map(|i| format!("{} {}", words[i], words[i + 1])))
}

/// Merge + JSON/text throughput from the criterion benchmark.
fn merge() -> Result<String> {
    merge_table(&cargo_bench("merge_json")?)
}

/// The table of [`merge`] from criterion's output `text`.
fn merge_table(text: &str) -> Result<String> {
    let mut table =
        String::from("| output | throughput (criterion's estimate, low – high) |\n|---|---|\n");
    let mut format = "";
    for line in text.lines() {
        if let Some(name) = line
            .split_whitespace()
            .next()
            .and_then(|w| w.strip_prefix("merge_4_sources_1m_events/"))
        {
            format = merge_row_name(name);
        }
        if let Some([low, mid, high]) = estimate(line, "thrpt:") {
            writeln!(table, "| {format} | **{mid}** ({low} – {high}) |")?;
        }
    }
    Ok(table)
}

/// The row of the merge benchmark's function `name` (`json`,
/// `text_names_processes`, …).
fn merge_row_name(name: &str) -> &'static str {
    match (name.starts_with("json"), name.ends_with("_names_processes")) {
        (true, false) => "JSON lines",
        (false, false) => "text",
        (true, true) => "JSON lines, names and processes",
        (false, true) => "text, names and processes",
    }
}

/// A criterion time (`1.0221 µs`) in nanoseconds.
fn nanoseconds(time: &str) -> Option<f64> {
    let (value, unit) = time.split_once(' ')?;
    let scale = match unit {
        "ps" => 1e-3,
        "ns" => 1.0,
        "µs" | "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    Some(value.parse::<f64>().ok()? * scale)
}

/// Correlation cost per flow at each capacity, from the criterion
/// benchmark, with its ratio to the smallest capacity's.
fn correlation() -> Result<String> {
    correlation_table(&cargo_bench("correlation")?)
}

/// The table of [`correlation`] from criterion's output `text`.
fn correlation_table(text: &str) -> Result<String> {
    let mut table = String::from(
        "| flows remembered (full) | time per flow (criterion's estimate, low – high) | \
         flows per second | × the cost at the smallest |\n|---|---|---|---|\n",
    );
    let (mut capacity, mut time, mut first) = (String::new(), None, None);
    for line in text.lines() {
        if let Some(name) = line
            .split_whitespace()
            .next()
            .and_then(|w| w.strip_prefix("correlation_at_capacity/"))
        {
            name.clone_into(&mut capacity);
        }
        if let Some(estimates) = estimate(line, "time:") {
            time = Some(estimates);
        }
        // The throughput line follows its time line.
        if let Some([_, rate, _]) = estimate(line, "thrpt:")
            && let Some([low, mid, high]) = time.take()
        {
            let ns = nanoseconds(&mid).context("criterion's time unit")?;
            let ratio = ns / *first.get_or_insert(ns);
            writeln!(
                table,
                "| {capacity} | **{mid}** ({low} – {high}) | {rate} | {ratio:.2} |"
            )?;
        }
    }
    Ok(table)
}

/// A section of the report: its name for `--only`, its heading, and the
/// measurement that writes its body.
struct Section {
    name: &'static str,
    heading: &'static str,
    write: fn(&Plan, &str) -> Result<String>,
}

/// The sections, in the report's order.
const SECTIONS: [Section; 10] = [
    Section {
        name: "merge",
        heading: "## Merge + encoding",
        write: merge_section,
    },
    Section {
        name: "correlation",
        heading: "## Correlation under `--backend both`: cost per flow at capacity",
        write: correlation_section,
    },
    Section {
        name: "ebpf-cost",
        heading: "## eBPF backend: per-packet cost and throughput",
        write: ebpf_section,
    },
    Section {
        name: "storm",
        heading: "## Storms of short connections beside `conntrack -E` and ulogd2",
        write: storm_section,
    },
    Section {
        name: "lookups",
        heading: "## Names and processes: storms with a lookup before every connection",
        write: lookups_section,
    },
    Section {
        name: "policy",
        heading: "## Egress policy: connect() latency, cost per decision, storms",
        write: policy_section,
    },
    Section {
        name: "scale",
        heading: "## Memory at scale",
        write: scale_section,
    },
    Section {
        name: "export",
        heading: "## Export: the IPFIX encoder, a storm exported, interim updates at scale",
        write: export_section,
    },
    Section {
        name: "soak",
        heading: "## Soak under `--backend both`",
        write: soak_section,
    },
    Section {
        name: "fuzz",
        heading: "## Fuzzing runs",
        write: fuzz_section,
    },
];

/// The names `--only` accepts: the sections'.
pub(crate) fn section_names() -> impl Iterator<Item = &'static str> {
    SECTIONS.iter().map(|section| section.name)
}

/// The sections of an earlier report, by heading.
fn earlier_sections(text: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            sections.push((line.to_owned(), String::new()));
        }
        if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    sections
}

/// Runs the sections in `only` (all when empty) and writes the report to
/// `out`, keeping the other sections of the report already there. The file
/// is rewritten after each section, so a failure keeps what was measured.
pub(crate) fn report(plan: &Plan, only: &[String], out: &Path) -> Result<()> {
    let machine = machine();
    let earlier = earlier_sections(&std::fs::read_to_string(out).unwrap_or_default());
    let mut bodies: Vec<String> = SECTIONS
        .iter()
        .map(|section| {
            earlier
                .iter()
                .find(|(heading, _)| heading == section.heading)
                .map(|(_, body)| body.clone())
                .unwrap_or_default()
        })
        .collect();
    for (index, section) in SECTIONS.iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|name| name == section.name) {
            ensure!(
                !bodies[index].is_empty(),
                "{} has no section {:?} to keep: run it too",
                out.display(),
                section.heading
            );
            continue;
        }
        eprintln!("== {}", section.name);
        bodies[index] = format!(
            "{}\n\n{}\n",
            section.heading,
            (section.write)(plan, &machine)?
        );
        std::fs::write(out, format!("{HEADER}{}", bodies.concat()))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

const HEADER: &str = "# Benchmarks\n\n\
Written by `flowtrack-bench report` (see the README): every table below\n\
comes from the harness, on the machine named in each section. Performance\n\
is measured here, never asserted as wall-clock limits in tests: the\n\
machines are shared and noisy. Where two things are compared, they run\n\
side by side in the same run.\n\n";

fn merge_section(_plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: 1,000,000 flow events from 4 sources (250,000 each, alternating\n\
         `opened`/`closed` over distinct TCP keys) merged by `Merger` (65,536-item\n\
         queue, batches of 256) and written by `pipeline::write_all` through\n\
         `RecordWriter` to `io::sink()`, on a current-thread tokio runtime (one\n\
         core); generating the events is included. \"Names and processes\": as\n\
         the enrichers attach them, each `opened` event carries its destination's\n\
         name and every event a process (pid, comm, exe, uid), each of a source's\n\
         8 processes shared by the events of many flows.\n\n\
         **How**: the criterion benchmark `crates/supervisor/benches/merge_json.rs`\n\
         (`cargo bench -p flow-supervisor --bench merge_json`). **Machine**: {machine}.\n\n{}\n",
        merge()?
    ))
}

fn correlation_section(_plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: the `--backend both` correlation (`Correlated`, eBPF and\n\
         nflog) with its table full, at 1,000 to 1,000,000 flows remembered\n\
         (`--dedup-capacity`): each flow is opened and closed by both backends\n\
         (4 items in, 2 lines out) and lingers, so every new flow evicts the\n\
         oldest. The table is filled before timing starts; the correlator's\n\
         ticks run as in a real run (every 250 ms). Eviction takes the front of\n\
         a table kept in creation order and a tick looks only at what is due,\n\
         so the work per flow is the same at any size; what rises is memory\n\
         latency, as the table outgrows the CPU's caches. (The linear scan for\n\
         the oldest flow that it replaced cost 10.9 µs per flow at 1,000 flows\n\
         and 34.7 ms at 1,000,000, on this machine on 2026-11-29.)\n\n\
         **How**: the criterion benchmark `crates/supervisor/benches/correlation.rs`\n\
         (`cargo bench -p flow-supervisor --bench correlation`), on a\n\
         current-thread tokio runtime (one core). **Machine**: {machine}.\n\n{}\n",
        correlation()?
    ))
}

fn ebpf_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: a bulk TCP transfer over loopback in a test network namespace,\n\
         from a sender inside a cgroup to a sink outside it, timed with flowtrack's\n\
         eBPF programs attached to the cgroup, with pass-only programs attached\n\
         instead (`bench/fixtures/pass.bpf.s`: `r0 = 1; exit`), and without any,\n\
         interleaved (the order rotates each round), {} rounds, medians. With\n\
         `kernel.bpf_stats_enabled=1` the cost per program run is Σ run_time_ns /\n\
         Σ run_cnt of the egress and ingress programs over the transfer; the\n\
         pass-only programs' cost is the floor of that measurement on this\n\
         machine (the statistics' two clock reads around each run, and the\n\
         hook's call), so flowtrack's own work is the difference, taken\n\
         within each round. Throughput is timed in transfers of its own with\n\
         the statistics off (their clock reads would be charged to flowtrack),\n\
         and its ratio taken within each round (the range shows the machine's\n\
         noise). Two shapes: 1 MiB writes (GSO: few, large socket buffers)\n\
         and 100-byte writes with TCP_NODELAY. Once a connection is\n\
         established, each of its sockets counts its packets in its socket\n\
         storage (a storage lookup and two plain adds to the slot its CPU\n\
         owns, nothing else); the handshake and the FINs go through the flow\n\
         table. Target: under 50 ns per packet; throughput\n\
         ratio at least 0.97. *Without names or processes*: the same\n\
         programs loaded with naming off and without the process programs\n\
         (`--no-names --no-processes`), measured in the same rounds: what a\n\
         packet pays for the DNS and ClientHello paths is the difference (a\n\
         port compare and, on a flow's first packets, a flag test).\n\
         **Machine**: {machine}.\n\n\
         **The statistics' own cost** (second table): the pass-only egress\n\
         program, loaded but not attached, run {} times by `BPF_PROG_TEST_RUN`\n\
         on a 54-byte TCP ACK. The kernel times a test run's whole loop with one\n\
         pair of clock reads, so its average per run, with the statistics off,\n\
         is what the program really costs (loop included); with them on, each\n\
         run also pays their two `sched_clock()` reads (here the paravirtual\n\
         kvm-clock), and run_time_ns / run_cnt charges the program part of\n\
         them. That charge, for a program that does nothing, is the lowest\n\
         cost per run this method can report on this machine: compare it with\n\
         the target, which assumes an empty program measures about 10 ns.\n\n{}\n",
        plan.ebpf_rounds,
        ebpf_cost::OVERHEAD_REPEAT,
        ebpf_cost::ebpf_cost(plan.ebpf_bytes, plan.ebpf_rounds)?
    ))
}

fn storm_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: {} short TCP connections (connect, one byte each way, close)\n\
         over loopback in a fresh namespace, as fast as two client threads can,\n\
         four times: each time `flowtrack watch --format json` (default\n\
         settings) and one peer watch it at the same time — the nflog backend\n\
         (scoped to the namespace) beside `stdbuf -oL conntrack -E -e\n\
         NEW,DESTROY`, then beside ulogd2 (Debian's 2.0.8: the NFCT plugin in\n\
         event mode without its flow hash, PRINTFLOW to stdout flushed per line;\n\
         see `ULOGD_CONF` in `bench/src/storm.rs`), then the eBPF backend\n\
         (scoped to a cgroup the generator runs in) beside `conntrack -E`,\n\
         then both backends at once (`--backend both`, the same cgroup,\n\
         started inside the storm's namespace so that its nflog half sees it)\n\
         beside `conntrack -E`: its CPU compares with the sum of the nflog and\n\
         eBPF rows.\n\
         One peer at a time: with three watchers and the generator's two\n\
         threads on two CPUs, flowtrack's p99 rose from about 1 ms to 4–7 ms.\n\
         Each tool's lines are stamped with CLOCK_MONOTONIC on arrival; the\n\
         generator stamps each connect(). A port reused from TIME_WAIT carries\n\
         several flows in turn: the k-th open of a port answers its k-th connect.\n\
         CPU is the tool's user + system time over the storm (from when its\n\
         start is over: its CPU time stops rising), per 10,000\n\
         connections made and per 10,000 events (opened + closed lines) it\n\
         reported; *opened with a pid*: flowtrack's `opened` lines that name\n\
         the process (the peers know none); *wakeups / flow*: the times its threads slept waiting\n\
         (voluntary context switches) over the storm, per connection made —\n\
         on this virtual machine each costs more than the work it brings,\n\
         and it is far less noisy than CPU time. `conntrack -E` and\n\
         ulogd2 see a DESTROY only when an entry expires (120 s after a clean close) or is\n\
         replaced by a reused port; flowtrack reports every close at once, from\n\
         the TCP state. Targets: 100% captured with default settings, never\n\
         worse than the peers; for eBPF also p99 under 1 ms. **Machine**: {machine}.\n\n{}\n\
         **Outside the scope**: the same storm, made outside an idle cgroup\n\
         that both backends watch at once (each started in the storm's\n\
         namespace). The eBPF programs run only for the cgroup's sockets; the\n\
         nflog backend's event socket carries a classic BPF filter that drops\n\
         the events of connections without its ct mark in the kernel (without\n\
         it: 0.37–0.40 CPU s per 10,000 connections and 1.3 wakeups per\n\
         connection, measured when the filter came in).\n\n{}\n",
        plan.storm_flows,
        storm::storms(plan.storm_flows, 2)?,
        storm::outside_the_scope(plan.storm_flows, 2)?
    ))
}

/// The IPFIX encoder's throughput from its criterion benchmark.
fn encoder() -> Result<String> {
    let text = cargo_bench("ipfix_encoder")?;
    let mut table = String::from(
        "| messages | records | records per second (criterion's estimate, low – high) |\n|---|---|---|\n",
    );
    let mut name = String::new();
    for line in text.lines() {
        if let Some(bench) = line
            .split_whitespace()
            .next()
            .and_then(|w| w.strip_prefix("ipfix_encoder/"))
        {
            bench.clone_into(&mut name);
        }
        if let Some([low, mid, high]) = estimate(line, "thrpt:") {
            let (transport, family) = name.split_once('/').unwrap_or((&name, ""));
            let messages = match transport {
                "udp" => "UDP size (1,400 B, templates in each)",
                _ => "TCP size (65,535 B)",
            };
            writeln!(
                table,
                "| {messages} | {family} | **{mid}** ({low} – {high}) |"
            )?;
        }
    }
    Ok(table)
}

fn export_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: the IPFIX encoder alone (criterion, `cargo bench -p\n\
         flow-supervisor --features ipfix --bench ipfix_encoder`): 10,000\n\
         distinct biflow records encoded into messages, IPv4 and IPv6, of\n\
         the UDP exporter's size (templates in every message, its worst\n\
         case) and the TCP exporter's, nothing sent. Then the eBPF storm of\n\
         the storms above ({} connections, two threads), watched by\n\
         `flowtrack watch --backend ebpf --format json` alone, four times\n\
         alternating: without export, then with `--export\n\
         ipfix+udp://127.0.0.1:PORT` to nfcapd 1.7.1 on the same machine;\n\
         *records at the collector* are nfdump's records of the storm's\n\
         flows (the collector stopped once it read every datagram).\n\
         Then `--active-timeout 60` with {} idle UDP flows open at once (the\n\
         workload of *Memory at scale*, every flow sent to again in rounds 2 s\n\
         apart so that none idles out; eBPF, JSON to /dev/null): flowtrack's\n\
         CPU from the moment every flow is reported opened to 130 s after it\n\
         started, a window that holds its update walk at 120 s (the first\n\
         that reports flows opened after it started: every one of them),\n\
         against the same window without an active timeout. **Machine**:\n\
         {machine}.\n\n{}\n{}\n",
        plan.storm_flows,
        plan.scale_flows,
        encoder()?,
        export::export(plan.storm_flows, plan.scale_flows)?
    ))
}

fn lookups_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: {} short TCP connections over loopback in a fresh namespace,\n\
         from two client threads, each connection preceded by a DNS lookup of a\n\
         name of its own (`cN.storm.test`, asked from a new UDP socket, as a\n\
         stub resolver does) at a responder on 127.0.0.53:53, which answers\n\
         an address of its own on loopback (127.1.0.0 onwards), to which the\n\
         connection goes: a storm of 2 flows per connection, whose every TCP\n\
         flow can be told by its address. eBPF (scoped to the generator's\n\
         cgroup): two storms, each watched by two `flowtrack watch --format\n\
         json` side by side, its defaults beside `--no-names`, then beside\n\
         `--no-processes`. nflog (scoped to the namespace): three storms, one\n\
         instance each (defaults, `--no-names`, `--no-processes`), since a\n\
         connection holds one ct mark and only one nflog instance reports it.\n\
         *Named after their lookup*: `opened` lines whose `host` is the\n\
         name looked up for that address; *attributed*: those whose `pid` is\n\
         the generator's. CPU, delays and the rest as in the storms above.\n\
         The `sock_create` program (the eBPF backend's attribution: it runs\n\
         once per socket created in the cgroup, two per connection here)\n\
         is timed by the kernel's BPF statistics over the storm (each run\n\
         is also charged part of the statistics' own clock reads, about 44 ns\n\
         on this machine: see the eBPF section). **Machine**: {machine}.\n\n{}\n",
        plan.storm_flows,
        lookups::lookups(plan.storm_flows)?
    ))
}

fn scale_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: one process in a test namespace and cgroup sends one UDP\n\
         datagram to each of {} distinct addresses and ports, then stays alive,\n\
         so that every flow is open at once; `flowtrack watch --cgroup` with each\n\
         backend reports them (JSON to /dev/null; the count is read from its\n\
         metrics). The eBPF table is sized to hold them (`--flow-table-entries`\n\
         1.25 × the flows); for nflog, the global `nf_conntrack_max` is raised to\n\
         the same for the run and put back after. flowtrack's memory is its peak\n\
         RSS (growth over its RSS before the flows); the kernel's is the eBPF\n\
         maps' `bytes_memlock`, or the conntrack entries' slab (objects × size).\n\
         Both are bounded by configuration: eBPF by `--flow-table-entries` (its\n\
         userspace keeps no per-flow state), nflog by `nf_conntrack_max` (one\n\
         tracker entry per open flow) and, under `both`, by `--dedup-capacity`.\n\
         The kernel's memory is read once the sender has sent to every\n\
         destination (all flows open, none idle yet); flowtrack's peak RSS at\n\
         the end. *Reported opened* and *reported lost* (observations, from\n\
         the loss items) are read from flowtrack's metrics until they account\n\
         for every flow or stop moving for 15 s; *all reported after* is when\n\
         they last changed, counted from the sender's start. **Machine**: {machine}.\n\n{}\n",
        plan.scale_flows,
        scale::scale(plan.scale_flows)?
    ))
}

fn policy_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: first, a client in the cgroup connects {} times, one\n\
         connection after the other, to a server outside it on loopback, timing\n\
         each `connect()`, while a backend observes (no policy) or enforces a\n\
         policy that allows the server: 1 rule, or 1,000 (999 prefixes\n\
         `10.x.y.0/24` over ten ports, then loopback; for nflog also with a port\n\
         each: 1,000 groups, so 1,000 nf_tables rules in turn). The policies\n\
         take turns over {} rounds, in the same run: medians of the rounds, with\n\
         their range where the rounds' spread (the machine is shared) tells\n\
         how large a difference must be to mean something. The\n\
         cgroup's CPU (`cpu.stat` `usage_usec`: the socket hooks and the output\n\
         hook's rules run in the connecting process) per connection includes\n\
         the client's own work, the same in every row. For eBPF the connect\n\
         hook's cost per run (`run_time_ns / run_cnt`, statistics on in a second\n\
         pass: they add their own clock reads, see the eBPF section). Then the\n\
         storm of short connections (two client threads, an echo server) watched\n\
         by `flowtrack watch --cgroup` without a policy, and with the 1,000-rule\n\
         policy (ten ports) in audit and in enforce mode, each twice in turn:\n\
         flowtrack's CPU per 10,000 flows. **How**: `flowtrack-bench policy`.\n\
         **Machine**: {machine}.\n\n{}\n",
        plan.policy_connects,
        plan.policy_rounds,
        policy::policy(plan.policy_connects, plan.policy_rounds, plan.storm_flows)?
    ))
}

fn soak_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: `flowtrack run --backend both` over a loop of steady mixed\n\
         traffic with churn (each round 20 TCP connections with 512 bytes\n\
         echoed, a UDP flow of two datagrams over IPv6, an ICMP echo every tenth\n\
         round, 0.2 s of rest), for {} s; RSS and open descriptors sampled every\n\
         5 s after the first 10 s until the traffic stops (not while flowtrack\n\
         drains and exits), with the size of the correlation table\n\
         (`flowtrack_correlation_flows` from `--metrics-addr`), shown once a\n\
         minute. A closed flow stays in that table for the 120 s linger (longer\n\
         while conntrack still owes a UDP flow's DESTROY), so it, and the RSS\n\
         with it, fills for about two minutes and then stays flat. *Keys not\n\
         balanced* counts `closed` lines with no `opened` before them on their\n\
         key, and keys left open. The suite runs the same for 60 s\n\
         (`FLOWTRACK_SOAK_SECONDS` sets it) and fails if RSS or descriptors grow.\n\
         **Machine**: {machine}.\n\n{}\n",
        plan.soak_seconds,
        soak::soak(plan.soak_seconds)?
    ))
}

fn fuzz_section(plan: &Plan, machine: &str) -> Result<String> {
    Ok(format!(
        "**What**: each cargo-fuzz target (`fuzz/`) for {} s from the committed\n\
         corpus (real kernel messages from `fuzz/seed_netlink.py`, ring records\n\
         from `fuzz/seed_ring_records.py`, and `crash-*` inputs kept as\n\
         regressions: the first netlink runs crashed inside neli's parser, which\n\
         the decoders no longer use), two at a time on the two CPUs. A crash\n\
         fails the report. **Machine**: {machine}.\n\n{}\n",
        plan.fuzz_seconds,
        fuzz::fuzz(plan.fuzz_seconds)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_table_names_each_variant() {
        let text = "merge_4_sources_1m_events/json
                        time:   [380.00 ms 388.00 ms 399.00 ms]
                        thrpt:  [2.5000 Melem/s 2.5752 Melem/s 2.6300 Melem/s]
merge_4_sources_1m_events/text_names_processes
                        time:   [380.00 ms 388.00 ms 399.00 ms]
                        thrpt:  [2.1000 Melem/s 2.2000 Melem/s 2.3000 Melem/s]
";
        assert_eq!(
            merge_table(text).unwrap(),
            "| output | throughput (criterion's estimate, low – high) |\n|---|---|\n\
             | JSON lines | **2.5752 Melem/s** (2.5000 Melem/s – 2.6300 Melem/s) |\n\
             | text, names and processes | **2.2000 Melem/s** (2.1000 Melem/s – 2.3000 Melem/s) |\n"
        );
    }

    #[test]
    fn the_correlation_table_reads_criterions_estimates_and_skips_its_change_lines() {
        let text = "correlation_at_capacity/1000
                        time:   [979.98 ns 1.0221 µs 1.0760 µs]
                        thrpt:  [929.41 Kelem/s 978.41 Kelem/s 1.0204 Melem/s]
                 change:
                        time:   [-1.0% +2.0% +3.0%] (p = 0.15 > 0.05)
                        thrpt:  [-3.0% -2.0% +1.0%]
correlation_at_capacity/1000000
                        time:   [2.1028 µs 2.1435 µs 2.1990 µs]
                        thrpt:  [454.75 Kelem/s 466.54 Kelem/s 475.56 Kelem/s]
";
        let table = correlation_table(text).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| 1000 | **1.0221 µs** (979.98 ns – 1.0760 µs) | 978.41 Kelem/s | 1.00 |",
                "| 1000000 | **2.1435 µs** (2.1028 µs – 2.1990 µs) | 466.54 Kelem/s | 2.10 |",
            ]
        );
    }
}
