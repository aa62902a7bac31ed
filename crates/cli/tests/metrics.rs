//! The metrics server under hostile or careless clients: it never spins
//! when descriptors run out, and clients that never send cannot hold its
//! descriptors.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowtrack_kernel_tests::privileged;

mod common;

use common::{FLOWTRACK, scrape, wait_until};

/// `flowtrack run --metrics-addr 127.0.0.1:0 -- sleep SECONDS` and the
/// address its metrics server bound (from its stderr line).
fn run_serving_metrics(seconds: u32) -> (Child, SocketAddr) {
    let mut child = Command::new(FLOWTRACK)
        .args([
            "run",
            "--backend",
            "ebpf",
            "--metrics-addr",
            "127.0.0.1:0",
            "--",
        ])
        .args(["sleep", &seconds.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowtrack starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("flowtrack: serving metrics on http://")?
                .strip_suffix("/metrics")?
                .parse()
                .ok()
        })
        .expect("flowtrack says where it serves metrics");
    // Keep reading stderr so that flowtrack never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    // The server is bound before the backend starts: wait for the backend.
    wait_until("the eBPF backend is up", || {
        scrape(addr)
            .is_some_and(|metrics| metrics.contains("flowtrack_backend_up{backend=\"ebpf\"} 1"))
    });
    (child, addr)
}

/// Ends the run as Ctrl-C would: flowtrack passes SIGINT to the command,
/// cleans up and exits.
fn stop(mut child: Child) {
    let pid = rustix::process::Pid::from_raw(child.id().cast_signed()).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let _ = child.wait();
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// User and system CPU time of `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Connections waiting in the accept queue of the TCP socket listening on
/// `port` in this network namespace (`/proc/net/tcp`: a listener's
/// `rx_queue`).
fn accept_queue(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        // sl local_address rem_address st tx_queue:rx_queue ...; st 0A: LISTEN
        .find(|fields| fields[1].ends_with(&local) && fields[3] == "0A")
        .and_then(|fields| u64::from_str_radix(fields[4].split(':').nth(1)?, 16).ok())
        .expect("flowtrack listens on the port")
}

#[test]
fn out_of_descriptors_the_metrics_server_waits_instead_of_spinning() {
    if !privileged("out_of_descriptors_the_metrics_server_waits_instead_of_spinning") {
        return;
    }
    let (child, addr) = run_serving_metrics(20);
    let pid = child.id();
    // Leave it two spare descriptors: the third client cannot be accepted
    // (EMFILE) and stays in the accept queue, keeping the socket readable.
    let limit = open_descriptors(pid) + 2;
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success());
    let _clients: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until(
        "flowtrack is out of descriptors, a client left waiting",
        || open_descriptors(pid) >= limit && accept_queue(addr.port()) > 0,
    );
    let before = cpu_ticks(pid);
    let window = Instant::now();
    // The behaviour under test: what it does with its CPU meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    let elapsed_ticks = window.elapsed().as_millis() as u64 / 10;
    stop(child);
    // A spin on accept uses a whole CPU: every tick of the window.
    assert!(
        used * 4 < elapsed_ticks,
        "flowtrack used {used} of {elapsed_ticks} clock ticks while it could not accept"
    );
}

#[test]
fn clients_that_never_send_cannot_hold_the_servers_descriptors() {
    if !privileged("clients_that_never_send_cannot_hold_the_servers_descriptors") {
        return;
    }
    let (child, addr) = run_serving_metrics(60);
    let pid = child.id();
    let baseline = open_descriptors(pid);
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // The most held while every connection is accepted (served or
    // closed at once): until none is left in the accept queue.
    let mut held = open_descriptors(pid);
    wait_until("every client is accepted", || {
        held = held.max(open_descriptors(pid));
        accept_queue(addr.port()) == 0
    });
    // 64 connections at most, and a few the runtime holds meanwhile (a
    // connection accepted to be closed, blocking threads' files).
    assert!(
        held <= baseline + 64 + 32,
        "500 idle clients hold {} of flowtrack's descriptors (baseline {baseline})",
        held - baseline
    );
    // Idle connections time out; a real scrape gets through while the
    // idle clients are still connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        if let Some(response) = scrape(addr) {
            break Some(response);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(idle);
    stop(child);
    let response = answered.expect("a scrape is answered despite 500 idle clients");
    assert!(response.contains("flowtrack_backend_up"), "{response}");
}
