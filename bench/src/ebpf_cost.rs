//! `flowtrack-bench ebpf-cost`: the eBPF programs' average cost per packet
//! (`kernel.bpf_stats_enabled`: run_time_ns / run_cnt) during a bulk TCP
//! transfer over loopback, and the transfer's throughput with the programs
//! attached and without, interleaved in the same run. The same is measured
//! of programs that only return "pass" (`bench/fixtures/pass.bpf.s`): the
//! floor of the measurement on this machine (the statistics' own clock
//! reads and the cgroup hook's call). Throughput is timed with the
//! statistics off: they cost every run two clock reads, which would be
//! charged to flowtrack.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TestRun, TestRunOptions};
use flow_backend_ebpf::{EbpfConfig, EbpfSource};
use flow_core::FlowSource;
use flowtrack_kernel_tests::{Netns, Server, TestCgroup};
use futures::StreamExt;

/// One transfer shape: total bytes and the size of each write.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    bytes: u64,
    chunk: usize,
}

/// One timed transfer from inside the cgroup; bytes per second.
fn transfer(netns: &Netns, cgroup: &TestCgroup, port: u16, shape: Shape) -> Result<f64> {
    let me = std::env::current_exe()?;
    let mut sender = netns.command(me.to_str().context("path")?);
    sender.args([
        "send",
        &format!("127.0.0.1:{port}"),
        &shape.bytes.to_string(),
        &shape.chunk.to_string(),
    ]);
    let started = Instant::now();
    let status = cgroup.wrap(&sender).status()?;
    let elapsed = started.elapsed();
    ensure!(status.success(), "the sender failed");
    Ok(shape.bytes as f64 / elapsed.as_secs_f64())
}

/// cgroup_skb programs that only let packets pass (see the module doc).
const PASS_OBJECT: &[u8] = include_bytes!("../fixtures/pass.bpf.o");

/// Loads the pass-only programs and attaches them to `cgroup`; dropping
/// the result detaches them.
fn attach_pass(cgroup: &Path) -> Result<aya::Ebpf> {
    let mut ebpf = aya::Ebpf::load(PASS_OBJECT).context("loading the pass-only programs")?;
    let cgroup = File::open(cgroup)?;
    for (name, attach_type) in [
        ("pass_egress", CgroupSkbAttachType::Egress),
        ("pass_ingress", CgroupSkbAttachType::Ingress),
    ] {
        let program: &mut CgroupSkb = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program.load()?;
        program.attach(&cgroup, attach_type, CgroupAttachMode::Single)?;
    }
    Ok(ebpf)
}

/// What the statistics cost a run by themselves, measured on the pass-only
/// egress program with `BPF_PROG_TEST_RUN`: the kernel times a test run's
/// whole loop of repeats with one pair of clock reads, so its average per
/// run is the program's true cost; with the statistics on, every run also
/// pays their two clock reads, and is charged part of that.
pub(crate) struct StatisticsOverhead {
    /// Nanoseconds per run, statistics off.
    pub(crate) off_ns: f64,
    /// Nanoseconds per run, statistics on.
    pub(crate) on_ns: f64,
    /// run_time_ns / run_cnt the statistics charged the program meanwhile.
    pub(crate) charged_ns: f64,
}

/// Runs per test run of [`statistics_overhead`]: about half a second with
/// the statistics on.
pub(crate) const OVERHEAD_REPEAT: u32 = 5_000_000;

/// Measures [`StatisticsOverhead`], the median of `trials` each way.
pub(crate) fn statistics_overhead(trials: usize) -> Result<StatisticsOverhead> {
    let mut ebpf = aya::Ebpf::load(PASS_OBJECT).context("loading the pass-only programs")?;
    let program: &mut CgroupSkb = ebpf
        .program_mut("pass_egress")
        .context("no program pass_egress")?
        .try_into()?;
    program.load()?;
    // Ethernet (the test run strips it for cgroup_skb), IPv4, TCP: an ACK.
    let mut packet = Vec::new();
    etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
        .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
        .tcp(40_000, 80, 1, 65_535)
        .ack(1)
        .write(&mut packet, &[])
        .context("building the test packet")?;
    let run = |program: &CgroupSkb| -> Result<f64> {
        let options = TestRunOptions {
            data_in: Some(&packet),
            repeat: OVERHEAD_REPEAT,
            ..TestRunOptions::default()
        };
        Ok(program.test_run(options)?.duration.as_nanos() as f64)
    };
    let (mut off, mut on, mut charged) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials {
        off.push(run(program)?);
        let stats = BpfStats::on()?;
        let before = program.info()?;
        on.push(run(program)?);
        let after = program.info()?;
        drop(stats);
        let runs = after.run_count() - before.run_count();
        ensure!(runs > 0, "the statistics counted no run of the test");
        charged.push((after.run_time() - before.run_time()).as_nanos() as f64 / runs as f64);
    }
    Ok(StatisticsOverhead {
        off_ns: median(&mut off),
        on_ns: median(&mut on),
        charged_ns: median(&mut charged),
    })
}

/// `kernel.bpf_stats_enabled=1` while it lives.
pub(crate) struct BpfStats;

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    /// Turns the statistics on.
    pub(crate) fn on() -> Result<Self> {
        std::fs::write(Self::SYSCTL, "1").context("enabling BPF stats")?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, "0");
    }
}

/// Σ `run_time_ns` and Σ `run_cnt` of the programs attached to `cgroup`
/// whose names `keep` keeps.
pub(crate) fn program_stats(cgroup: &Path, keep: impl Fn(&str) -> bool) -> Result<(u64, u64)> {
    let output = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()?;
    let attached: serde_json::Value =
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "bpftool cgroup show {}: {}",
                cgroup.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    let mut totals = (0, 0);
    for program in attached.as_array().context("bpftool cgroup show -j")? {
        let name = program["name"].as_str().unwrap_or_default();
        if !keep(name) {
            continue;
        }
        let id = program["id"].as_u64().context("program id")?;
        let output = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()?;
        let stats: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let (time, count) = (
            stats["run_time_ns"].as_u64().unwrap_or(0),
            stats["run_cnt"].as_u64().unwrap_or(0),
        );
        if std::env::var_os("FLOWTRACK_BENCH_VERBOSE").is_some() {
            eprintln!("{name}: {count} runs, {time} ns");
        }
        totals.0 += time;
        totals.1 += count;
    }
    Ok(totals)
}

/// One transfer with programs `prefix*` attached and BPF statistics on:
/// their cost per run, and their runs.
fn measured(
    netns: &Netns,
    cgroup: &TestCgroup,
    port: u16,
    shape: Shape,
    prefix: &str,
) -> Result<(f64, u64)> {
    // The cgroup_skb programs: not those run once per socket.
    let per_packet = |name: &str| name.starts_with(prefix) && !name.contains("sock_");
    let stats = BpfStats::on()?;
    let before = program_stats(&cgroup.path, per_packet)?;
    transfer(netns, cgroup, port, shape)?;
    let after = program_stats(&cgroup.path, per_packet)?;
    drop(stats);
    let runs = after.1 - before.1;
    ensure!(runs > 0, "no run of the {prefix}* programs was counted");
    Ok(((after.0 - before.0) as f64 / runs as f64, runs))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Bytes per transfer, by default.
pub(crate) const DEFAULT_BYTES: u64 = 1 << 30;
/// Rounds, by default: the machine's drift makes fewer unstable (at 5,
/// the throughput ratio's median moved from 0.92 to 1.04 between runs).
pub(crate) const DEFAULT_ROUNDS: usize = 15;

/// Measures the eBPF programs' cost per run and the throughput ratio;
/// returns the Markdown table.
pub(crate) fn ebpf_cost(bytes: u64, rounds: usize) -> Result<String> {
    if !flowtrack_kernel_tests::privileged("flowtrack-bench ebpf-cost") {
        bail!("needs root");
    }
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let me = std::env::current_exe()?;
    let mut sink = netns.command(me.to_str().context("path")?);
    sink.args(["sink", "127.0.0.1:0"]);
    let sink = Server::start(sink);
    let runtime = tokio::runtime::Runtime::new()?;
    let shapes = [
        Shape {
            name: "bulk: 1 MiB writes",
            bytes,
            chunk: 1 << 20,
        },
        Shape {
            name: "small: 100-byte writes, TCP_NODELAY",
            bytes: bytes / 64,
            chunk: 100,
        },
    ];
    let mut table = String::from(
        "| transfer | eBPF ns per program run (median) | without names or processes | pass-only program (floor) | flowtrack's work: run − floor, same round (median) | without names or processes: run − floor | runs per transfer | without flowtrack | with flowtrack | ratio with / without, same round: median (range) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for shape in shapes {
        let mut runs = 0;
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let (mut costs, mut bare_costs, mut floors) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Rotate which goes first, so that drift favours none.
            for turn in 0..4 {
                match (round + turn) % 4 {
                    0 => without.push(transfer(&netns, &cgroup, sink.port, shape)?),
                    1 => {
                        let config = EbpfConfig::new(&cgroup.path);
                        let stream = runtime.block_on(EbpfSource::new(config).start())?;
                        let reader = runtime.spawn(stream.for_each(|_| async {}));
                        with.push(transfer(&netns, &cgroup, sink.port, shape)?);
                        let (cost, count) =
                            measured(&netns, &cgroup, sink.port, shape, "flowtrack_")?;
                        reader.abort();
                        let _ = runtime.block_on(reader);
                        costs.push(cost);
                        runs = count;
                    }
                    2 => {
                        let config = EbpfConfig::new(&cgroup.path).names(false).processes(false);
                        let stream = runtime.block_on(EbpfSource::new(config).start())?;
                        let reader = runtime.spawn(stream.for_each(|_| async {}));
                        let (cost, _) = measured(&netns, &cgroup, sink.port, shape, "flowtrack_")?;
                        reader.abort();
                        let _ = runtime.block_on(reader);
                        bare_costs.push(cost);
                    }
                    _ => {
                        let programs = attach_pass(&cgroup.path)?;
                        floors.push(measured(&netns, &cgroup, sink.port, shape, "pass_")?.0);
                        drop(programs);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // Each round's pair, measured seconds apart: on a shared
        // machine, drift between rounds is larger than the difference.
        let pairwise = |a: &[f64], b: &[f64], f: fn(f64, f64) -> f64| -> Vec<f64> {
            a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect()
        };
        let mut work = pairwise(&costs, &floors, |cost, floor| cost - floor);
        let mut bare_work = pairwise(&bare_costs, &floors, |cost, floor| cost - floor);
        let mut ratios = pairwise(&with, &without, |with, without| with / without);
        let (lowest, highest) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        writeln!(
            table,
            "| {} ({} MB) | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {runs} | {:.2} GB/s | {:.2} GB/s | {:.3} ({lowest:.3}–{highest:.3}) |",
            shape.name,
            shape.bytes / 1_000_000,
            median(&mut costs),
            median(&mut bare_costs),
            median(&mut floors),
            median(&mut work),
            median(&mut bare_work),
            median(&mut without) / 1e9,
            median(&mut with) / 1e9,
            median(&mut ratios),
        )?;
    }
    let overhead = statistics_overhead(3)?;
    write!(
        table,
        "\n| pass-only egress program, BPF_PROG_TEST_RUN ×{OVERHEAD_REPEAT} on a TCP ACK (median of 3) | ns per run, statistics off | ns per run, statistics on | run_time_ns / run_cnt charged to it |\n|---|---|---|---|\n| the statistics' own cost | {:.0} ns | {:.0} ns | {:.1} ns |\n",
        overhead.off_ns, overhead.on_ns, overhead.charged_ns,
    )?;
    Ok(table)
}
