//! `flowtrack-bench lookups`: storms in which every connection is
//! preceded by a DNS lookup of a name of its own, answered with an
//! address of its own, each watched by flowtrack with its defaults beside
//! flowtrack without names (`--no-names`), then beside flowtrack without
//! processes (`--no-processes`), for each backend: flows named after
//! their lookup and attributed to the generator, of flows made; CPU per
//! 10,000 flows of each; the delay from connect() to the line. With the
//! eBPF backend, the `sock_create` program's cost per socket from the
//! kernel's BPF statistics.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use flowtrack_kernel_tests::{Netns, Server, TestCgroup};

use crate::storm::{Generator, Watched, Watcher, flowtrack_line, harness, percentile, tally};

/// The name the `index`-th connection looks up.
fn name(index: usize) -> String {
    format!("c{index}.storm.test")
}

/// The address the `index`-th connection's name resolves to: one of its
/// own on loopback (all of 127.0.0.0/8 is), so that each flow can be told
/// by its destination.
fn address(index: usize) -> Ipv4Addr {
    let [_, high, middle, low] = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
    Ipv4Addr::new(127, high.wrapping_add(1), middle, low)
}

/// The index whose [`address`] is `ip`.
fn index_of(ip: IpAddr) -> Option<usize> {
    let IpAddr::V4(ip) = ip else { return None };
    let [first, high, middle, low] = ip.octets();
    (first == 127 && high >= 1)
        .then(|| usize::from(high - 1) << 16 | usize::from(middle) << 8 | usize::from(low))
}

/// A query for `name`'s A record with transaction id `id`. Built by hand:
/// the harness needs one fixed shape, and a DNS library would hide what
/// goes on the wire.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        message.push(u8::try_from(label.len()).unwrap_or(63));
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

/// The answer to `query` (one of [`query`]'s shape naming `cN.…`): one A
/// record, [`address`]`(N)`; `None` for anything else.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let question_end = 12 + query.get(12..)?.iter().position(|&byte| byte == 0)? + 5;
    let first_label = query.get(13..13 + usize::from(*query.get(12)?))?;
    let index: usize = std::str::from_utf8(first_label.strip_prefix(b"c")?)
        .ok()?
        .parse()
        .ok()?;
    let mut response = query.get(..question_end)?.to_vec();
    response[2..4].copy_from_slice(&[0x81, 0x80]);
    response[6..8].copy_from_slice(&[0, 1]);
    response.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    response.extend_from_slice(&address(index).octets());
    Some(response)
}

/// Looks the `index`-th name up at `resolver` from a socket of its own
/// (as a stub resolver does), and returns the address answered.
pub(crate) fn look_up(resolver: SocketAddr, index: usize) -> Result<IpAddr> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.connect(resolver)?;
    socket.send(&query(index as u16, &name(index)))?;
    let mut buffer = [0_u8; 512];
    let len = socket.recv(&mut buffer)?;
    let octets: [u8; 4] = buffer[..len]
        .last_chunk()
        .copied()
        .context("a short DNS answer")?;
    Ok(IpAddr::from(octets))
}

/// Answers every query of [`query`]'s shape on `addr` with [`answer`].
pub(crate) fn resolver(addr: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind(addr)?;
    println!("ready {}", socket.local_addr()?.port());
    let mut buffer = [0_u8; 512];
    loop {
        let (len, client) = socket.recv_from(&mut buffer)?;
        if let Some(response) = answer(&buffer[..len]) {
            socket.send_to(&response, client)?;
        }
    }
}

/// What a flowtrack instance in a storm leaves out.
#[derive(Clone, Copy)]
enum Without {
    Nothing,
    Names,
    Processes,
}

impl Without {
    fn flag(self) -> Option<&'static str> {
        match self {
            Self::Nothing => None,
            Self::Names => Some("--no-names"),
            Self::Processes => Some("--no-processes"),
        }
    }
}

/// Per backend, its storms and the instances watching each: eBPF
/// instances side by side (each sees every flow of its cgroup); nflog
/// instances one at a time, since a connection holds one ct mark and only
/// the last instance to set it would report it.
const STORMS: [(&str, &[&[Without]]); 2] = [
    (
        "ebpf",
        &[
            &[Without::Nothing, Without::Names],
            &[Without::Nothing, Without::Processes],
        ],
    ),
    (
        "nflog",
        &[
            &[Without::Nothing],
            &[Without::Names],
            &[Without::Processes],
        ],
    ),
];

/// Runs the storms; returns the Markdown.
pub(crate) fn lookups(flows: usize) -> Result<String> {
    let flowtrack = crate::storm::flowtrack_beside("flowtrack-bench lookups")?;
    let mut rates = String::new();
    let mut rows = String::new();
    let mut hooks = String::new();
    for (backend, storms) in STORMS {
        for instances in storms {
            let storm = lookup_storm(&flowtrack, backend, instances, flows)?;
            writeln!(rates, "{}  ", storm.rate)?;
            rows.push_str(&storm.rows);
            hooks.push_str(&storm.hooks);
        }
    }
    Ok(format!(
        "{rates}\n\
         | storm | flowtrack | flows made | opened captured | named after their lookup | attributed to the generator | CPU s / 10k flows | connect → line p50 | p99 |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}\n\
         | eBPF storm | `sock_create` runs (sockets created in the cgroup) | ns per run (run_time_ns / run_cnt) |\n\
         |---|---|---|\n{hooks}"
    ))
}

/// One storm's Markdown: its rate line, its table rows, and its row of
/// the hook table (eBPF only).
struct Measured {
    rate: String,
    rows: String,
    hooks: String,
}

/// One storm with lookups, watched by flowtrack's `backend` once per
/// entry of `instances`, all at once.
fn lookup_storm(
    flowtrack: &std::path::Path,
    backend: &str,
    instances: &[Without],
    flows: usize,
) -> Result<Measured> {
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let mut echo = netns.command(&harness()?);
    echo.args(["echo", "0.0.0.0:0"]);
    let echo = Server::start(echo);
    let mut resolver = netns.command(&harness()?);
    resolver.args(["resolver", "127.0.0.53:53"]);
    let resolver = Server::start(resolver);
    let ebpf = backend == "ebpf";
    if ebpf {
        // As in the storms beside conntrack: the same traffic tracked.
        netns.enable_conntrack();
    }
    let mut watchers = Vec::new();
    for without in instances {
        let mut command = Command::new(flowtrack);
        command.args(["watch", "--backend", backend, "--format", "json"]);
        command.args(without.flag());
        if ebpf {
            command.arg("--cgroup").arg(&cgroup.path);
        } else {
            command.args(["--netns", &netns.name]);
        }
        watchers.push(Watcher::spawn(command)?);
    }
    // The watchers' programs are attached for this storm alone and the
    // cgroup holds nothing else: their statistics count only its sockets.
    let stats = ebpf.then(crate::ebpf_cost::BpfStats::on).transpose()?;
    let (storm, (hook_ns, hook_runs)) = Generator {
        netns: &netns,
        cgroup: Some(&cgroup),
        dst: SocketAddr::from(([127, 0, 0, 1], echo.port)),
        flows,
        threads: 2,
        lookup: Some(SocketAddr::from(([127, 0, 0, 53], resolver.port))),
    }
    .run_then(watchers, || {
        if ebpf {
            sock_create_stats(&cgroup)
        } else {
            Ok((0, 0))
        }
    })?;
    drop(stats);
    let storm_name = format!(
        "{backend}: {}",
        instances
            .iter()
            .map(|without| without.flag().unwrap_or("defaults"))
            .collect::<Vec<_>>()
            .join(" beside ")
    );
    let mut rows = String::new();
    for (without, Watched { lines, cpu, .. }) in instances.iter().zip(&storm.watched) {
        let counted = tally(lines, &storm.made, flowtrack_line(echo.port));
        let (named, attributed) = names_and_owners(lines, echo.port, storm.pid);
        let total = storm.total as f64;
        writeln!(
            rows,
            "| {storm_name} | `watch --backend {backend}{}` | {} | {} ({:.2}%) | {named} ({:.2}%) | {attributed} ({:.2}%) | {:.3} | {:.2} ms | {:.2} ms |",
            without
                .flag()
                .map(|flag| format!(" {flag}"))
                .unwrap_or_default(),
            storm.total,
            counted.opened,
            100.0 * counted.opened as f64 / total,
            100.0 * named as f64 / total,
            100.0 * attributed as f64 / total,
            cpu * 10_000.0 / total,
            percentile(&counted.delays_ns, 0.5),
            percentile(&counted.delays_ns, 0.99),
        )?;
    }
    let mut hooks = String::new();
    if ebpf {
        let ns = hook_ns as f64 / hook_runs.max(1) as f64;
        writeln!(hooks, "| {storm_name} | {hook_runs} | {ns:.1} ns |")?;
    }
    Ok(Measured {
        rate: format!(
            "{storm_name}: {} connections, each after a lookup, from 2 threads in {:.2} s ({:.0} per second)",
            storm.total,
            storm.seconds,
            storm.total as f64 / storm.seconds
        ),
        rows,
        hooks,
    })
}

/// Of a flowtrack instance's `opened` lines to the echo server's `port`:
/// how many carry the name their connection looked up, and how many the
/// generator's pid.
fn names_and_owners(lines: &[(u64, String)], port: u16, pid: u32) -> (usize, usize) {
    let (mut named, mut attributed) = (0, 0);
    for (_, line) in lines {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["kind"] != "opened" || value["dport"].as_u64() != Some(u64::from(port)) {
            continue;
        }
        let expected = value["dst"]
            .as_str()
            .and_then(|dst| dst.parse().ok())
            .and_then(index_of)
            .map(name);
        if expected.is_some() && value["host"].as_str() == expected.as_deref() {
            named += 1;
        }
        if value["pid"].as_u64() == Some(u64::from(pid)) {
            attributed += 1;
        }
    }
    (named, attributed)
}

/// Σ run_time_ns and Σ run_cnt of the `sock_create` programs attached to
/// `cgroup`.
fn sock_create_stats(cgroup: &TestCgroup) -> Result<(u64, u64)> {
    // bpftool names a program by its BTF name, else by the kernel's 15
    // characters ("flowtrack_sock_", as the release program's).
    crate::ebpf_cost::program_stats(&cgroup.path, |name| name.starts_with("flowtrack_sock_c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_answered_with_its_indexs_address_and_read_back() {
        for index in [0, 1, 255, 256, 19_999, 70_000] {
            let response = answer(&query(7, &name(index))).unwrap();
            assert_eq!(&response[..2], &[0, 7]);
            let octets: [u8; 4] = *response.last_chunk().unwrap();
            let ip = IpAddr::from(octets);
            assert_eq!(ip, IpAddr::V4(address(index)));
            assert_eq!(index_of(ip), Some(index));
        }
        assert_eq!(answer(b"\0\0short"), None);
        assert_eq!(answer(&query(1, "www.example.test")), None);
    }
}
