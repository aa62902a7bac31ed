//! `flowtrack-bench policy`: what an egress policy costs.
//!
//! - **connect()**: a client in the cgroup makes connections one after
//!   the other to a server outside it, timing each `connect()`, while a
//!   backend observes (no policy) or enforces a policy of 1 rule or of
//!   1,000 rules that allows the server; rounds interleave the policies,
//!   in the same run. The cgroup's CPU (`cpu.stat` `usage_usec`, where the
//!   socket hooks and the output hook's rules run: in the connecting
//!   process) per connection goes with it. For eBPF, the connect hook's own
//!   cost per run (BPF statistics, as `ebpf-cost` reads them) in a second
//!   pass with the statistics on.
//! - **Storms**: `flowtrack watch` over the storm of short connections
//!   (`storm`), without a policy, and with the 1,000-rule policy in audit
//!   and in enforce mode: flowtrack's CPU per 10,000 flows.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use flow_backend_ebpf::{EbpfConfig, EbpfSource};
use flow_backend_nflog::{NflogConfig, NflogSource};
use flow_core::FlowSource;
use flow_policy::{Mode, Policy};
use flowtrack_kernel_tests::{Netns, Server, TestCgroup};
use futures::StreamExt;

use crate::ebpf_cost::{BpfStats, program_stats};
use crate::storm::{Generator, Watched, Watcher, flowtrack_beside, flowtrack_line, harness, tally};

/// Connections per client run, by default.
pub(crate) const DEFAULT_CONNECTS: usize = 2_000;
/// Rounds of every policy, by default.
pub(crate) const DEFAULT_ROUNDS: usize = 5;

/// The policies compared; each allows the server (on loopback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// No policy: the backend observes.
    None,
    /// `allow tcp://127.0.0.0/8`.
    One,
    /// 999 prefixes (`10.x.y.0/24`) over ten ports, then loopback: ten
    /// groups of prefixes (the nflog backend's sets) and one.
    Thousand,
    /// 999 prefixes each with a port of its own, then loopback: 1,000
    /// groups, each an nf_tables rule of its own.
    ThousandPorts,
}

impl Rules {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none (observing)",
            Self::One => "1 rule",
            Self::Thousand => "1,000 rules (ten ports)",
            Self::ThousandPorts => "1,000 rules (a port each)",
        }
    }

    /// The allow rules.
    fn texts(self) -> Vec<String> {
        let prefix = |i: usize| format!("10.{}.{}.0/24", i / 256, i % 256);
        let mut texts: Vec<String> = match self {
            Self::None => return Vec::new(),
            Self::One => Vec::new(),
            Self::Thousand => (0..999)
                .map(|i| format!("tcp://{}:{}", prefix(i), 443 + i % 10))
                .collect(),
            Self::ThousandPorts => (0..999)
                .map(|i| format!("tcp://{}:{}", prefix(i), 1_000 + i))
                .collect(),
        };
        texts.push("tcp://127.0.0.0/8".to_owned());
        texts
    }

    fn policy(self) -> Result<Option<Arc<Policy>>> {
        let mut builder = Policy::builder().mode(Mode::Enforce);
        for text in self.texts() {
            builder = builder.allow(&text)?;
        }
        Ok(builder.build()?.map(Arc::new))
    }
}

/// Makes `count` connections to `dst` one after the other (connect, then
/// close) and prints the median and 99th percentile of `connect()`'s
/// time, in nanoseconds.
pub(crate) fn connects(dst: SocketAddr, count: usize) -> Result<()> {
    ensure!(count > 0, "no connection to make");
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = TcpStream::connect(dst)?;
        times.push(started.elapsed().as_nanos());
        drop(stream);
    }
    times.sort_unstable();
    println!("{} {}", times[count / 2], times[count * 99 / 100]);
    Ok(())
}

/// The cgroup's CPU time so far, in microseconds.
fn cgroup_usage_us(cgroup: &Path) -> Result<u64> {
    let stat = std::fs::read_to_string(cgroup.join("cpu.stat"))?;
    stat.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .context("cpu.stat has no usage_usec")?
        .trim()
        .parse()
        .context("usage_usec")
}

/// One client run: connect() p50 and p99 (µs), and the cgroup's CPU per
/// connection (µs).
fn client(netns: &Netns, cgroup: &TestCgroup, dst: SocketAddr, count: usize) -> Result<[f64; 3]> {
    let mut command = netns.command(&harness()?);
    command.args(["connects", &dst.to_string(), &count.to_string()]);
    let before = cgroup_usage_us(&cgroup.path)?;
    let output = cgroup.wrap(&command).output()?;
    let after = cgroup_usage_us(&cgroup.path)?;
    ensure!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    let mut numbers = printed.split_whitespace().map(str::parse::<f64>);
    let (p50, p99) = (
        numbers.next().context("p50")??,
        numbers.next().context("p99")??,
    );
    Ok([p50 / 1e3, p99 / 1e3, (after - before) as f64 / count as f64])
}

/// A backend the measurement starts in-process.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Ebpf,
    Nflog,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Nflog => "nflog",
        }
    }

    /// The policies compared on it (the nflog backend's rule per group of
    /// prefixes shows with a port each).
    fn rules(self) -> &'static [Rules] {
        match self {
            Self::Ebpf => &[Rules::None, Rules::One, Rules::Thousand],
            Self::Nflog => &[
                Rules::None,
                Rules::One,
                Rules::Thousand,
                Rules::ThousandPorts,
            ],
        }
    }

    fn source(
        self,
        netns: &Netns,
        cgroup: &TestCgroup,
        rules: Rules,
    ) -> Result<Box<dyn FlowSource>> {
        let policy = rules.policy()?;
        Ok(match self {
            Self::Ebpf => {
                let mut config = EbpfConfig::new(&cgroup.path);
                if let Some(policy) = policy {
                    config = config.enforce(policy);
                }
                Box::new(EbpfSource::new(config))
            }
            Self::Nflog => {
                let mut config = NflogConfig::cgroup(&cgroup.path).in_netns(netns.path());
                if let Some(policy) = policy {
                    config = config.enforce(policy);
                }
                Box::new(NflogSource::new(config))
            }
        })
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The connect() measurements of `backend`: a table row per policy.
fn connect_rows(
    runtime: &tokio::runtime::Runtime,
    backend: Backend,
    connects: usize,
    rounds: usize,
) -> Result<String> {
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let mut sink = netns.command(&harness()?);
    sink.args(["sink", "127.0.0.1:0"]);
    let sink = Server::start(sink);
    let dst = SocketAddr::from(([127, 0, 0, 1], sink.port));
    let policies = backend.rules();
    let mut measured: Vec<Vec<[f64; 3]>> = vec![Vec::new(); policies.len()];
    let mut hook_ns: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    for round in 0..rounds {
        // Rotate which goes first, so that drift favours none.
        for turn in 0..policies.len() {
            let index = (round + turn) % policies.len();
            let mut source = backend.source(&netns, &cgroup, policies[index])?;
            let stream = runtime.block_on(source.start())?;
            let reader = runtime.spawn(stream.for_each(|_| async {}));
            measured[index].push(client(&netns, &cgroup, dst, connects)?);
            if matches!(backend, Backend::Ebpf) && policies[index] != Rules::None {
                // The connect hooks (names cut to 15 characters by the
                // kernel: flowtrack_conne).
                let hooks = |name: &str| name.starts_with("flowtrack_conn");
                let stats = BpfStats::on()?;
                let before = program_stats(&cgroup.path, hooks)?;
                client(&netns, &cgroup, dst, connects)?;
                let after = program_stats(&cgroup.path, hooks)?;
                drop(stats);
                ensure!(after.1 > before.1, "no run of the connect hook counted");
                hook_ns[index].push((after.0 - before.0) as f64 / (after.1 - before.1) as f64);
            }
            reader.abort();
            let _ = runtime.block_on(reader);
        }
    }
    let mut rows = String::new();
    for (index, rules) in policies.iter().enumerate() {
        // Median, lowest and highest of the rounds.
        let column = |which: usize| {
            let mut values: Vec<f64> = measured[index].iter().map(|run| run[which]).collect();
            let middle = median(&mut values);
            (middle, values[0], values[values.len() - 1])
        };
        let (p50, p99, cpu) = (column(0), column(1).0, column(2));
        let hook = if hook_ns[index].is_empty() {
            "–".to_owned()
        } else {
            format!("{:.0} ns", median(&mut hook_ns[index]))
        };
        writeln!(
            rows,
            "| {} | {} | {:.1} µs ({:.1}–{:.1}) | {p99:.1} µs | {:.1} µs ({:.1}–{:.1}) | {hook} |",
            backend.name(),
            rules.name(),
            p50.0,
            p50.1,
            p50.2,
            cpu.0,
            cpu.1,
            cpu.2,
        )?;
    }
    Ok(rows)
}

/// Waits (a minute at most) until `flowtrack watch` with `backend` has
/// put itself in place: every eBPF program attached to the cgroup (the
/// verifier takes seconds over the enforcing hooks), or the nflog table
/// made (its policy's rules come in the batch after, before it reads).
fn ready(backend: Backend, netns: &Netns, cgroup: &TestCgroup, enforcing: bool) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done = match backend {
            Backend::Ebpf => {
                let hooks = if enforcing { 4 } else { 0 };
                flowtrack_kernel_tests::attached_programs(&cgroup.path).len()
                    >= flow_backend_ebpf::CGROUP_PROGRAMS.len() + hooks
            }
            Backend::Nflog => netns.tables().contains("flowtrack_"),
        };
        if done {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "flowtrack watch did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The storms with a policy: `flowtrack watch` with none, then the
/// 1,000-rule policy in audit and in enforce mode, twice each in turn;
/// the table rows.
fn storm_rows(flows: usize) -> Result<String> {
    let flowtrack = flowtrack_beside("flowtrack-bench policy")?;
    let dir = std::env::temp_dir().join(format!("flowtrack-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("policy.toml");
    let quoted: Vec<String> = Rules::Thousand
        .texts()
        .iter()
        .map(|rule| format!("\"{rule}\""))
        .collect();
    std::fs::write(&file, format!("allow = [{}]\n", quoted.join(", ")))?;
    let modes: [Option<&str>; 3] = [None, Some("audit"), Some("enforce")];
    let mut rows = String::new();
    for backend in [Backend::Ebpf, Backend::Nflog] {
        let mut results: Vec<Vec<(usize, usize, usize, f64)>> = vec![Vec::new(); modes.len()];
        for _ in 0..2 {
            for (index, mode) in modes.iter().enumerate() {
                let netns = Netns::new();
                let cgroup = TestCgroup::new();
                let mut echo = netns.command(&harness()?);
                echo.args(["echo", "127.0.0.1:0"]);
                let server = Server::start(echo);
                let mut watch = Command::new(&flowtrack);
                watch.args(["watch", "--backend", backend.name(), "--format", "json"]);
                watch.arg("--cgroup").arg(&cgroup.path);
                if let Some(mode) = mode {
                    watch.arg("--policy").arg(&file).args(["--mode", mode]);
                }
                // The cgroup's sockets in the storm's namespace (nsenter:
                // `ip netns exec` would mount a sysfs without cgroups).
                let mut ours = Command::new("nsenter");
                ours.arg(format!("--net=/run/netns/{}", netns.name))
                    .arg(watch.get_program())
                    .args(watch.get_args());
                if matches!(backend, Backend::Ebpf) {
                    netns.enable_conntrack();
                }
                let watcher = Watcher::spawn(ours)?;
                ready(backend, &netns, &cgroup, *mode == Some("enforce"))?;
                let generator = Generator {
                    netns: &netns,
                    cgroup: Some(&cgroup),
                    dst: SocketAddr::from(([127, 0, 0, 1], server.port)),
                    flows,
                    threads: 2,
                    lookup: None,
                };
                let storm = generator.run(vec![watcher])?;
                let Watched { lines, cpu, .. } =
                    storm.watched.into_iter().next().context("flowtrack")?;
                let counted = tally(&lines, &storm.made, flowtrack_line(server.port));
                let denied = lines
                    .iter()
                    .filter(|(_, line)| line.contains("\"kind\":\"denied\""))
                    .count();
                results[index].push((storm.total, counted.opened, denied, cpu));
            }
        }
        for (mode, runs) in modes.iter().zip(&results) {
            let total: usize = runs.iter().map(|run| run.0).sum();
            let opened: usize = runs.iter().map(|run| run.1).sum();
            let denied: usize = runs.iter().map(|run| run.2).sum();
            let cpu: f64 = runs.iter().map(|run| run.3).sum();
            let per_run: Vec<String> = runs
                .iter()
                .map(|run| format!("{:.3}", run.3 * 10_000.0 / run.0 as f64))
                .collect();
            writeln!(
                rows,
                "| {} | {} | {total} | {opened} ({:.2}%) | {denied} | **{:.3}** ({}) |",
                backend.name(),
                mode.map_or("none".to_owned(), |mode| format!("1,000 rules, {mode}")),
                100.0 * opened as f64 / total as f64,
                cpu * 10_000.0 / total as f64,
                per_run.join(", "),
            )?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Runs the policy measurements; the Markdown tables.
pub(crate) fn policy(connects: usize, rounds: usize, storm_flows: usize) -> Result<String> {
    if !flowtrack_kernel_tests::privileged("flowtrack-bench policy") {
        bail!("needs root");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let mut connect_table = String::from(
        "| backend | policy (enforce) | connect() p50: median of the rounds (range) | p99 (median) | cgroup CPU per connection: median (range) | eBPF connect hook per run (median) |\n|---|---|---|---|---|---|\n",
    );
    for backend in [Backend::Ebpf, Backend::Nflog] {
        connect_table.push_str(&connect_rows(&runtime, backend, connects, rounds)?);
    }
    let storms = storm_rows(storm_flows)?;
    Ok(format!(
        "{connect_table}\n\
         | backend | policy | flows made | opened captured | denied lines | flowtrack CPU s / 10k flows: both storms (each) |\n\
         |---|---|---|---|---|---|\n{storms}"
    ))
}
