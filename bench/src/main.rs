//! flowtrack's load harness. `flowtrack-bench ebpf-cost` measures, on the
//! real kernel, the eBPF programs' average cost per packet
//! (`kernel.bpf_stats_enabled`: run_time_ns / run_cnt) during a bulk TCP
//! transfer over loopback, and the transfer's throughput with the programs
//! attached and without, interleaved in the same run. It prints a Markdown
//! table for BENCHMARKS.md. Needs root.

mod storm;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use flow_backend_ebpf::{EbpfConfig, EbpfSource};
use flow_core::FlowSource;
use flowtrack_kernel_tests::{Netns, Server, TestCgroup};
use futures::StreamExt;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-packet cost of the eBPF programs and the throughput ratio.
    EbpfCost {
        /// Bytes per transfer.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// Transfers with and without the programs, interleaved.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// A storm of short TCP connections watched by `flowtrack --backend
    /// nflog` and by `conntrack -E` side by side. Needs `flowtrack` built
    /// beside this harness.
    NflogStorm {
        /// Connections to make.
        #[arg(long, default_value_t = 20_000)]
        flows: usize,
        /// Client threads making them.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// (internal) Makes FLOWS connections to DST from THREADS threads.
    #[command(hide = true)]
    Storm {
        dst: SocketAddr,
        flows: usize,
        threads: usize,
    },
    /// (internal) Accepts connections and echoes one byte on each.
    #[command(hide = true)]
    Echo { addr: SocketAddr },
    /// (internal) Accepts connections and discards what they send.
    #[command(hide = true)]
    Sink { addr: SocketAddr },
    /// (internal) Sends BYTES to DST in writes of CHUNK bytes (NODELAY) and
    /// waits for the sink to close.
    #[command(hide = true)]
    Send {
        dst: SocketAddr,
        bytes: u64,
        chunk: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::EbpfCost { bytes, rounds } => ebpf_cost(bytes, rounds),
        Cmd::NflogStorm { flows, threads } => storm::nflog_storm(flows, threads),
        Cmd::Storm {
            dst,
            flows,
            threads,
        } => storm::storm(dst, flows, threads),
        Cmd::Echo { addr } => echo(addr),
        Cmd::Sink { addr } => sink(addr),
        Cmd::Send { dst, bytes, chunk } => send(dst, bytes, chunk),
    }
}

/// Answers each connection's byte on a thread of its own.
fn echo(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("ready {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut byte = [0_u8; 1];
            if stream.read(&mut byte).unwrap_or(0) == 1 {
                let _ = stream.write_all(&byte);
            }
        });
    }
    Ok(())
}

fn sink(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("ready {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut buffer = vec![0_u8; 1 << 20];
    for stream in listener.incoming() {
        let mut stream = stream?;
        while stream.read(&mut buffer)? > 0 {}
    }
    Ok(())
}

fn send(dst: SocketAddr, bytes: u64, chunk: usize) -> Result<()> {
    let mut stream = TcpStream::connect(dst)?;
    stream.set_nodelay(true)?;
    let chunk = vec![0x42_u8; chunk.max(1)];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64))?;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(())
}

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

fn ebpf_cost(bytes: u64, rounds: usize) -> Result<()> {
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
    println!(
        "| transfer | eBPF ns per program run (median) | runs per transfer | without flowtrack | with flowtrack | ratio with / without |"
    );
    println!("|---|---|---|---|---|---|");
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
        println!(
            "| {} ({} MB) | {cost:.1} ns | {runs} | {:.2} GB/s | {:.2} GB/s | {:.3} |",
            shape.name,
            shape.bytes / 1_000_000,
            without / 1e9,
            with / 1e9,
            with / without
        );
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    Ok(())
}
