//! `flowtrack-bench ebpf-cost`: the eBPF programs' average cost per packet
//! (`kernel.bpf_stats_enabled`: run_time_ns / run_cnt) during a bulk TCP
//! transfer over loopback, and the transfer's throughput with the programs
//! attached and without, interleaved in the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
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

/// `run_time_ns` and `run_cnt` of the flowtrack programs attached to `cgroup`.
fn program_stats(cgroup: &Path) -> Result<(u64, u64)> {
    let output = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()?;
    let attached: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut totals = (0, 0);
    for program in attached.as_array().context("bpftool cgroup show -j")? {
        let name = program["name"].as_str().unwrap_or_default();
        if !name.starts_with("flowtrack_") || name.contains("release") {
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

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
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling BPF stats")?;
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
        "| transfer | eBPF ns per program run (median) | runs per transfer | without flowtrack | with flowtrack | ratio with / without |\n|---|---|---|---|---|---|\n",
    );
    for shape in shapes {
        let (mut without, mut with, mut costs, mut runs) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for round in 0..rounds {
            // Alternate which goes first, so that drift favours neither.
            for attached in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                if !attached {
                    without.push(transfer(&netns, &cgroup, sink.port, shape)?);
                    continue;
                }
                let stream =
                    runtime.block_on(EbpfSource::new(EbpfConfig::new(&cgroup.path)).start())?;
                let reader = runtime.spawn(stream.for_each(|_| async {}));
                let before = program_stats(&cgroup.path)?;
                with.push(transfer(&netns, &cgroup, sink.port, shape)?);
                let after = program_stats(&cgroup.path)?;
                reader.abort();
                let _ = runtime.block_on(reader);
                runs = after.1 - before.1;
                costs.push((after.0 - before.0) as f64 / runs.max(1) as f64);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let (without, with, cost) = (median(&mut without), median(&mut with), median(&mut costs));
        writeln!(
            table,
            "| {} ({} MB) | {cost:.1} ns | {runs} | {:.2} GB/s | {:.2} GB/s | {:.3} |",
            shape.name,
            shape.bytes / 1_000_000,
            without / 1e9,
            with / 1e9,
            with / without
        )?;
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    Ok(table)
}
