//! flowtrack's load harness (needs root). `flowtrack-bench report`
//! regenerates BENCHMARKS.md from measurements on the real kernel; the
//! other commands run one measurement and print its Markdown.

mod ebpf_cost;
mod export;
mod fuzz;
mod lookups;
mod policy;
mod report;
mod scale;
mod soak;
mod storm;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every measurement and writes BENCHMARKS.md (about 30 minutes
    /// with the defaults; needs root, nightly for fuzzing, and flowtrack
    /// and the traffic generator built beside this harness).
    Report {
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        /// Only these sections (comma-separated); the others are kept from
        /// the report already at `--out`.
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(report::section_names()))]
        only: Vec<String>,
        /// How long and how big each measurement is.
        #[command(flatten)]
        plan: report::Plan,
    },
    /// Memory of flowtrack and of the kernel with FLOWS concurrent flows.
    Scale {
        /// Concurrent flows.
        #[arg(long, default_value_t = 1_000_000)]
        flows: u64,
    },
    /// Mixed traffic with churn under `--backend both` for SECONDS.
    Soak {
        /// How long.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Per-packet cost of the eBPF programs and the throughput ratio.
    EbpfCost {
        /// Bytes per transfer.
        #[arg(long, default_value_t = ebpf_cost::DEFAULT_BYTES)]
        bytes: u64,
        /// Transfers with and without the programs, interleaved.
        #[arg(long, default_value_t = ebpf_cost::DEFAULT_ROUNDS)]
        rounds: usize,
    },
    /// Storms of short TCP connections, each watched by flowtrack and a
    /// peer side by side (nflog beside `conntrack -E`, nflog beside ulogd2,
    /// eBPF beside `conntrack -E`). Needs `flowtrack` built beside this
    /// harness.
    Storms {
        /// Connections to make.
        #[arg(long, default_value_t = 20_000)]
        flows: usize,
        /// Client threads making them.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Storms of short TCP connections each preceded by a DNS lookup,
    /// watched by flowtrack with its defaults, without names, and without
    /// processes: names and attribution captured, and what each costs.
    /// Needs `flowtrack` built beside this harness.
    Lookups {
        /// Connections to make (each after a lookup).
        #[arg(long, default_value_t = 20_000)]
        flows: usize,
    },
    /// What IPFIX export and interim updates cost: the eBPF storm without
    /// and with `--export ipfix+udp://` to a local nfcapd, and
    /// `--active-timeout 60` with OPEN_FLOWS flows open at once. Needs
    /// `flowtrack` built beside this harness, and nfdump.
    Export {
        /// Connections per storm.
        #[arg(long, default_value_t = 20_000)]
        flows: usize,
        /// Flows open at once for the active timeout.
        #[arg(long, default_value_t = 1_000_000)]
        open_flows: u64,
    },
    /// What an egress policy costs: connect() latency and the cgroup's CPU
    /// per connection with no policy, 1 rule and 1,000 rules (each
    /// backend, enforcing), and storms watched with the 1,000-rule policy
    /// in audit and enforce mode beside none. Needs `flowtrack` built
    /// beside this harness.
    Policy {
        /// Connections per client run.
        #[arg(long, default_value_t = policy::DEFAULT_CONNECTS)]
        connects: usize,
        /// Rounds of every policy, interleaved.
        #[arg(long, default_value_t = policy::DEFAULT_ROUNDS)]
        rounds: usize,
        /// Connections per storm.
        #[arg(long, default_value_t = 20_000)]
        flows: usize,
    },
    /// (internal) Connects to DST COUNT times, one after the other, and
    /// prints connect()'s median and 99th percentile in nanoseconds.
    #[command(hide = true)]
    Connects { dst: SocketAddr, count: usize },
    /// (internal) Makes FLOWS connections to DST from THREADS threads,
    /// each looked up at LOOKUP first when given.
    #[command(hide = true)]
    Storm {
        dst: SocketAddr,
        flows: usize,
        threads: usize,
        #[arg(long)]
        lookup: Option<SocketAddr>,
    },
    /// (internal) Answers `cN.storm.test` A queries on ADDR.
    #[command(hide = true)]
    Resolver { addr: SocketAddr },
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
        Cmd::Report { out, only, plan } => report::report(&plan, &only, &out),
        Cmd::Scale { flows } => print(scale::scale(flows)),
        Cmd::Soak { seconds } => print(soak::soak(seconds)),
        Cmd::EbpfCost { bytes, rounds } => print(ebpf_cost::ebpf_cost(bytes, rounds)),
        Cmd::Storms { flows, threads } => print(storm::storms(flows, threads)),
        Cmd::Lookups { flows } => print(lookups::lookups(flows)),
        Cmd::Export { flows, open_flows } => print(export::export(flows, open_flows)),
        Cmd::Policy {
            connects,
            rounds,
            flows,
        } => print(policy::policy(connects, rounds, flows)),
        Cmd::Connects { dst, count } => policy::connects(dst, count),
        Cmd::Storm {
            dst,
            flows,
            threads,
            lookup,
        } => storm::storm(dst, flows, threads, lookup),
        Cmd::Resolver { addr } => lookups::resolver(addr),
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

/// Prints a measurement's Markdown.
fn print(markdown: Result<String>) -> Result<()> {
    print!("{}", markdown?);
    Ok(())
}
