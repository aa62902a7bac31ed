//! What the `run` tests share: the workload, running flowtrack in a test
//! namespace, and checks of its output and of the kernel state it leaves.

// Each test file uses what it needs of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flow_core::record::{FlowRecord, RecordItem};
use flowtrack_kernel_tests::Netns;

/// The flowtrack binary under test.
pub(crate) const FLOWTRACK: &str = env!("CARGO_BIN_EXE_flowtrack");

/// A UDP datagram of 100 bytes to 127.0.0.1:9 from a connected socket, then
/// exit status 7. Prints its source port.
pub(crate) const SEND_UDP: &str = "import socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.connect(('127.0.0.1',9))\n\
s.send(b'x'*100)\n\
print(s.getsockname()[1])\n\
s.close()\n\
sys.exit(7)";

/// `out` (JSON lines) holds exactly the opening and closing of SEND_UDP's
/// flow from `sport`, seen by `backend`, with its one datagram counted.
pub(crate) fn assert_one_udp_flow(out: &Path, backend: &str, sport: u16) {
    let lines = std::fs::read_to_string(out).unwrap();
    let records: Vec<FlowRecord<'static>> = lines
        .lines()
        .map(|l| FlowRecord::from_json_line(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records.iter().map(FlowRecord::kind_name).collect();
    assert_eq!(kinds, ["opened", "closed"], "{lines}");
    for record in &records {
        assert_eq!(record.backend, backend);
        let RecordItem::Event(event) = &record.item else {
            panic!("{record:?}")
        };
        assert_eq!(
            event.key.to_string(),
            format!("udp 127.0.0.1:{sport} -> 127.0.0.1:9")
        );
    }
    let RecordItem::Event(closed) = &records[1].item else {
        unreachable!()
    };
    assert_eq!(
        closed.kind,
        flow_core::FlowEventKind::Closed {
            pkt_count: 1,
            byte_count: 128
        },
        "one datagram: 100 + 8 + 20 bytes"
    );
}

/// `flowtrack ARGS` inside `netns`.
pub(crate) fn flowtrack_in(netns: &Netns, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .arg(FLOWTRACK)
        .args(args);
    command
}

/// `flowtrack`, run as user and group nobody (65534) with no other group.
pub(crate) fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        FLOWTRACK,
    ]);
    command
}

pub(crate) fn tables(netns: &Netns) -> String {
    let output = netns
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn accounting(netns: &Netns) -> String {
    let output = netns
        .command("sysctl")
        .args(["-n", "net.netfilter.nf_conntrack_acct"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// flowtrack's cgroups (`flowtrack-<pid>-<n>`) that belong to `pid`.
pub(crate) fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let mount = flow_cgroup::cgroup2_mount().expect("cgroup v2 is mounted");
    std::fs::read_dir(&mount)
        .expect("the cgroup mount is readable")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("flowtrack-{pid}-")))
        })
        .collect()
}

/// IDs of the BPF programs attached to `cgroup` (from `bpftool`).
pub(crate) fn attached_programs(cgroup: &Path) -> Vec<u64> {
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

fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Whether program `id` is unloaded within a few seconds (the kernel frees
/// programs after an RCU grace period, not at once).
pub(crate) fn program_goes_away(id: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while program_exists(id) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The kernel tests' traffic generator, built beside flowtrack in the same
/// workspace.
pub(crate) fn traffic_generator() -> std::path::PathBuf {
    let path = Path::new(FLOWTRACK).with_file_name("traffic");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        path.display()
    );
    path
}

/// The write end of a pipe whose reader has gone (`| head` after it exits).
pub(crate) fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// `/dev/full`, for writing: every write fails with "no space".
pub(crate) fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap()
}
