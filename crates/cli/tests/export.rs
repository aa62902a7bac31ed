//! `--export ipfix+udp://…`: what flowtrack writes reaches an IPFIX
//! collector of its own (nfcapd, from Debian's nfdump; scripts/setup.sh
//! installs it) and decodes there (nfdump) to the same flows.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flow_core::FlowEvent;
use flow_core::record::{FlowRecord, RecordItem};
use flowtrack_kernel_tests::{Netns, privileged};

mod common;

use common::flowtrack_in;

/// A flow as both sides tell it: addresses, ports, protocol, each
/// direction's packets and bytes.
type Flow = (String, String, u16, u16, u8, [u64; 4]);

/// nfcapd receiving on a free UDP port of 127.0.0.1, writing under `dir`.
struct Nfcapd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nfcapd {
    /// In flowtrack's network namespace.
    fn start() -> Self {
        Self::start_with(Command::new("nfcapd"))
    }

    /// `nfcapd`, run by `nfcapd` (in a namespace of a test's).
    fn start_with(mut nfcapd: Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = nfcapd
            .args(["-p", &port.to_string(), "-b", "127.0.0.1", "-w"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nfcapd runs (Debian package nfdump; scripts/setup.sh installs it)");
        let collector = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !collector.listening() {
            assert!(
                Instant::now() < deadline,
                "nfcapd never bound UDP port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        collector
    }

    /// Whether a socket is bound to the port (`/proc/PID/net/udp`: in
    /// nfcapd's namespace).
    fn listening(&self) -> bool {
        let bound = format!("0100007F:{:04X}", self.port);
        std::fs::read_to_string(format!("/proc/{}/net/udp", self.child.id()))
            .unwrap()
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(bound.as_str()))
    }

    fn url(&self) -> String {
        format!("ipfix+udp://127.0.0.1:{}", self.port)
    }

    /// Datagrams waiting in nfcapd's socket (`rx_queue`, in bytes).
    fn unread(&self) -> u64 {
        let bound = format!("0100007F:{:04X}", self.port);
        std::fs::read_to_string(format!("/proc/{}/net/udp", self.child.id()))
            .unwrap()
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.get(1) == Some(&bound.as_str()))
            .and_then(|fields| fields[4].split_once(':').map(|(_, rx)| rx.to_owned()))
            .map_or(0, |rx| u64::from_str_radix(&rx, 16).unwrap())
    }

    /// Stops nfcapd once it has read every datagram sent (SIGTERM: it
    /// closes its file; a datagram still queued then would be left
    /// unread) and decodes what it received with `nfdump -o json`.
    fn stop_and_read(mut self) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.unread() > 0 {
            assert!(Instant::now() < deadline, "nfcapd never read what was sent");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = rustix::process::Pid::from_raw(self.child.id().cast_signed()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        assert!(self.child.wait().unwrap().success());
        let output = Command::new("nfdump")
            .arg("-R")
            .arg(self.dir.path())
            .args(["-o", "json"])
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
    }
}

/// The flows nfdump decoded, the records of one flow added up, with the
/// start of its first record and the end of its last (ms, UTC).
fn collected(records: &[serde_json::Value]) -> HashMap<Flow, (u64, u64)> {
    type Key = (String, String, u16, u16, u8);
    let mut flows: HashMap<Key, ([u64; 4], u64, u64)> = HashMap::new();
    for record in records {
        let text = |v4: &str, v6: &str| {
            let value = record.get(v4).or_else(|| record.get(v6));
            value.and_then(|value| value.as_str()).unwrap().to_owned()
        };
        let number = |name: &str| {
            record
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let key = (
            text("src4_addr", "src6_addr"),
            text("dst4_addr", "dst6_addr"),
            u16::try_from(number("src_port")).unwrap(),
            u16::try_from(number("dst_port")).unwrap(),
            u8::try_from(number("proto")).unwrap(),
        );
        let counters = ["in_packets", "in_bytes", "out_packets", "out_bytes"].map(number);
        let ms = |name: &str| epoch_ms(record[name].as_str().unwrap());
        let flow = flows.entry(key).or_insert(([0; 4], u64::MAX, 0));
        flow.0
            .iter_mut()
            .zip(counters)
            .for_each(|(sum, add)| *sum += add);
        flow.1 = flow.1.min(ms("first"));
        flow.2 = flow.2.max(ms("last"));
    }
    flows
        .into_iter()
        .map(
            |((src, dst, sport, dport, proto), (counters, first, last))| {
                ((src, dst, sport, dport, proto, counters), (first, last))
            },
        )
        .collect()
}

/// `2026-11-29T04:40:09.152` (UTC) in ms since the epoch.
fn epoch_ms(text: &str) -> u64 {
    let (date, time) = text.split_once('T').unwrap();
    let mut day = date.split('-').map(|part| part.parse::<i64>().unwrap());
    let (y, m, d) = (
        day.next().unwrap(),
        day.next().unwrap(),
        day.next().unwrap(),
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|part| part.parse::<i64>().unwrap());
    let secs = days * 86_400
        + hms.next().unwrap() * 3_600
        + hms.next().unwrap() * 60
        + hms.next().unwrap();
    u64::try_from(secs * 1_000 + ms.parse::<i64>().unwrap()).unwrap()
}

/// The closed flows of a JSON-lines output, with their duration (ms).
fn written(lines: &str) -> HashMap<Flow, u64> {
    lines
        .lines()
        .filter_map(
            |line| match FlowRecord::from_json_line(line).unwrap().item {
                RecordItem::Event(event) => Some(event.into_owned()),
                _ => None,
            },
        )
        .filter(|event: &FlowEvent| event.kind.name() == "closed")
        .map(|event| {
            let both = event.directions.unwrap();
            let flow = (
                event.key.src_addr.to_string(),
                event.key.dst_addr.to_string(),
                event.key.src_port,
                event.key.dst_port,
                event.key.protocol,
                [
                    both.src.packets,
                    both.src.bytes,
                    both.dst.packets,
                    both.dst.bytes,
                ],
            );
            let took = (event.timestamp_ns - event.start_ns.unwrap()) / 1_000_000;
            (flow, took)
        })
        .collect()
}

fn recorded() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/export.jsonl")
}

#[test]
fn replayed_flows_reach_nfcapd_as_written() {
    let collector = Nfcapd::start();
    let output = assert_cmd::Command::cargo_bin("flowtrack")
        .unwrap()
        .arg("replay")
        .arg(recorded())
        .args(["--format", "json", "--export", &collector.url()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = written(&stdout);
    let collected = collected(&collector.stop_and_read());
    assert_eq!(
        collected.keys().collect::<std::collections::HashSet<_>>(),
        expected.keys().collect(),
        "addresses, ports, protocol, packets and bytes of each direction (the update and the close of one flow added up)"
    );
    for (flow, (first, last)) in &collected {
        let took = expected[flow];
        assert!(
            (last - first).abs_diff(took) <= 1,
            "{flow:?}: {first}..{last} at the collector, {took} ms in the output"
        );
    }
}

/// A TCP connection between two sockets of the command (5,000 bytes, 3,000
/// back) and a UDP datagram of 100 bytes with no answer.
const WORKLOAD: &str = r"
import socket, threading
server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()
def serve():
    peer, _ = server.accept(); data = b''
    while len(data) < 5000: data += peer.recv(65536)
    peer.sendall(data[:3000]); peer.close()
thread = threading.Thread(target=serve); thread.start()
client = socket.create_connection(server.getsockname()); client.sendall(b'x' * 5000)
while client.recv(65536): pass
client.close(); thread.join()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.connect(('127.0.0.1', 9)); udp.send(b'y' * 100); udp.close()
";

#[test]
fn each_backends_flows_reach_nfcapd_as_written() {
    if !privileged("each_backends_flows_reach_nfcapd_as_written") {
        return;
    }
    for backend in ["ebpf", "nflog"] {
        let netns = Netns::new();
        let collector = Nfcapd::start_with(netns.command("nfcapd"));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("flows.jsonl");
        let output = flowtrack_in(
            &netns,
            &[
                "run",
                "--backend",
                backend,
                "--format",
                "json",
                "-o",
                out.to_str().unwrap(),
                "--export",
                &collector.url(),
                "--",
                "python3",
                "-c",
                WORKLOAD,
            ],
        )
        .output()
        .unwrap();
        assert!(output.status.success(), "{backend}: {output:?}");
        let expected = written(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(expected.len(), 2, "{backend}: {expected:?}");
        let collected = collected(&collector.stop_and_read());
        assert_eq!(
            collected.keys().collect::<std::collections::HashSet<_>>(),
            expected.keys().collect(),
            "{backend}: addresses, ports, protocol, packets and bytes of each direction"
        );
        for (flow, (first, last)) in &collected {
            let took = expected[flow];
            assert!(
                (last - first).abs_diff(took) <= 1,
                "{backend} {flow:?}: {first}..{last} at the collector, {took} ms in the output"
            );
        }
    }
}
