//! `--export ipfix+udp://…` and `ipfix+tcp://…`: what flowtrack writes
//! reaches an IPFIX collector of its own (nfcapd, from Debian's nfdump,
//! over UDP; over TCP, which nfcapd does not take, a collector written here
//! whose stream `ipfixDump` from libfixbuf-tools decodes; scripts/setup.sh
//! installs both) and decodes there to the same flows; what a collector
//! down, or not reading, misses is counted in-band (`export_dropped`), in
//! the summary and in the metrics, and holds nothing back.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use flow_core::FlowEvent;
use flow_core::record::{FlowRecord, RecordItem};
use flowtrack_kernel_tests::{Netns, privileged};

mod common;

use common::{FLOWTRACK, Lines, flowtrack_in, scrape, wait_until};

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

/// The flows a collector decoded are the output's (addresses, ports,
/// protocol, packets and bytes of each direction, a flow's records added
/// up), each lasting as long, within a millisecond.
fn assert_same_flows(
    collected: &HashMap<Flow, (u64, u64)>,
    expected: &HashMap<Flow, u64>,
    what: &str,
) {
    assert_eq!(
        collected.keys().collect::<HashSet<_>>(),
        expected.keys().collect(),
        "{what}: addresses, ports, protocol, packets and bytes of each direction"
    );
    for (flow, (first, last)) in collected {
        let took = expected[flow];
        assert!(
            (last - first).abs_diff(took) <= 1,
            "{what} {flow:?}: {first}..{last} at the collector, {took} ms in the output"
        );
    }
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
    assert_same_flows(&collected, &expected, "replayed");
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
        assert_same_flows(&collected, &expected, backend);
    }
}

/// An IPFIX-over-TCP collector written here, on 127.0.0.1: it accepts
/// connections and keeps each one's byte stream until flowtrack closes it;
/// or, not `reading`, accepts them with a small receive buffer and never
/// reads.
struct TcpCollector {
    port: u16,
    accepted: Receiver<()>,
    streams: Receiver<Vec<u8>>,
}

impl TcpCollector {
    fn start(reading: bool) -> Self {
        Self::on(0, reading)
    }

    fn on(port: u16, reading: bool) -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        if !reading {
            socket.set_recv_buffer_size(4_096).unwrap();
        }
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        socket.listen(16).unwrap();
        let listener = TcpListener::from(socket);
        let port = listener.local_addr().unwrap().port();
        let (accept, accepted) = channel();
        let (keep, streams) = channel();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let _ = accept.send(());
                if reading {
                    let mut bytes = Vec::new();
                    let _ = stream.read_to_end(&mut bytes);
                    let _ = keep.send(bytes);
                } else {
                    held.push(stream);
                }
            }
        });
        Self {
            port,
            accepted,
            streams,
        }
    }

    fn url(&self, query: &str) -> String {
        format!("ipfix+tcp://127.0.0.1:{}{query}", self.port)
    }
}

/// A port of 127.0.0.1 nothing listens on (bound, then let go).
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ipfixDump`'s decoding of an IPFIX stream, each data record with the
/// keys `nfdump -o json` uses (so that [`collected`] reads both), after
/// checking that the templates came before the first data record.
fn ipfix_dump(stream: &[u8]) -> Vec<serde_json::Value> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), stream).unwrap();
    let output = Command::new("ipfixDump")
        .arg("-i")
        .arg(file.path())
        .env("TZ", "UTC")
        .output()
        .expect("ipfixDump runs (Debian package libfixbuf-tools; scripts/setup.sh installs it)");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let first_data = text.find("--- data record").unwrap_or(text.len());
    assert!(
        text[..first_data].contains("--- template record ---"),
        "templates first: {text}"
    );
    let names = [
        ("sourceIPv4Address", "src4_addr"),
        ("destinationIPv4Address", "dst4_addr"),
        ("sourceIPv6Address", "src6_addr"),
        ("destinationIPv6Address", "dst6_addr"),
        ("sourceTransportPort", "src_port"),
        ("destinationTransportPort", "dst_port"),
        ("protocolIdentifier", "proto"),
        ("packetDeltaCount", "in_packets"),
        ("octetDeltaCount", "in_bytes"),
        ("reversePacketDeltaCount", "out_packets"),
        ("reverseOctetDeltaCount", "out_bytes"),
        ("flowStartMilliseconds", "first"),
        ("flowEndMilliseconds", "last"),
    ];
    text.split("--- data record")
        .skip(1)
        .map(|record| {
            let mut json = serde_json::Map::new();
            for line in record.lines() {
                let Some((name, value)) = line.split_once(" : ") else {
                    continue;
                };
                let name = name.split_whitespace().last().unwrap_or_default();
                let Some((_, key)) = names.iter().find(|(ipfix, _)| *ipfix == name) else {
                    continue;
                };
                let value = value.trim();
                json.insert(
                    (*key).to_owned(),
                    match *key {
                        "first" | "last" => value.replacen(' ', "T", 1).into(),
                        "src6_addr" | "dst6_addr" => value
                            .parse::<std::net::Ipv6Addr>()
                            .unwrap()
                            .to_string()
                            .into(),
                        "src4_addr" | "dst4_addr" => value.into(),
                        _ => value.parse::<u64>().unwrap().into(),
                    },
                );
            }
            json.into()
        })
        .collect()
}

/// The lost items of a JSON-lines output: (backend, point, count).
fn losses(lines: &str) -> Vec<(String, String, u64)> {
    lines
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["kind"] == "lost")
        .map(|line| {
            (
                line["backend"].as_str().unwrap().to_owned(),
                line["point"].as_str().unwrap().to_owned(),
                line["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The records the lost items of `lines` say `url` dropped (every lost
/// item is one of these).
fn export_dropped(lines: &str, url: &str) -> u64 {
    losses(lines)
        .iter()
        .map(|(backend, point, count)| {
            assert_eq!((backend.as_str(), point.as_str()), (url, "export_dropped"));
            count
        })
        .sum()
}

/// The lines of `output` that are not lost items.
fn events_only(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| !line.contains("\"kind\":\"lost\""))
        .collect()
}

#[test]
fn replayed_flows_reach_a_tcp_collector_as_written() {
    let collector = TcpCollector::start(true);
    let output = assert_cmd::Command::cargo_bin("flowtrack")
        .unwrap()
        .arg("replay")
        .arg(recorded())
        .args(["--format", "json", "--export", &collector.url("")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let expected = written(&stdout);
    let stream = collector.streams.recv().unwrap();
    let collected = collected(&ipfix_dump(&stream));
    assert_same_flows(&collected, &expected, "over TCP");
}

#[test]
fn what_an_unreachable_collector_misses_is_a_lost_item_at_export_dropped() {
    let url = format!("ipfix+tcp://127.0.0.1:{}", unused_port());
    let replay = |format: &str| {
        let output = assert_cmd::Command::cargo_bin("flowtrack")
            .unwrap()
            .arg("replay")
            .arg(recorded())
            .args(["--format", format, "--export", &url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (json, stderr) = replay("json");
    // The update and the two closes.
    assert_eq!(
        losses(&json),
        [(url.clone(), "export_dropped".to_owned(), 3)],
        "{json}"
    );
    let input = std::fs::read_to_string(recorded()).unwrap();
    assert_eq!(
        events_only(&json),
        input.lines().collect::<Vec<_>>(),
        "every flow"
    );
    assert!(
        stderr.contains(&format!(
            "cannot export flow records to {url}: Connection refused"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "flowtrack: export to {url}: 3 flow records dropped"
        )),
        "{stderr}"
    );
    let (text, _) = replay("text");
    assert!(
        text.lines().any(|line| line.contains(&url)
            && line.ends_with("3 flow records not exported (export dropped)")),
        "{text}"
    );
}

#[test]
fn a_tcp_collector_that_stops_reading_holds_no_flow_back() {
    let collector = TcpCollector::start(false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flows.jsonl");
    // More than the socket buffers hold (about 6 MB of records): the
    // exporter's writes stall.
    let flows = 100_000;
    let lines: String = (0..flows)
        .map(|n| {
            format!(
                "{{\"ts_ns\":{},\"kind\":\"closed\",\"proto\":\"tcp\",\"src\":\"10.{}.{}.{}\",\"sport\":40000,\"dst\":\"192.0.2.80\",\"dport\":443,\"packets\":3,\"bytes\":300,\"src_packets\":2,\"src_bytes\":200,\"dst_packets\":1,\"dst_bytes\":100,\"start_ns\":1000,\"reason\":\"fin\",\"backend\":\"ebpf\",\"backends\":[\"ebpf\"]}}\n",
                2_000 + n,
                n / 65_536,
                n / 256 % 256,
                n % 256
            )
        })
        .collect();
    std::fs::write(&file, &lines).unwrap();
    let url = collector.url("?queue=100");
    let output = assert_cmd::Command::cargo_bin("flowtrack")
        .unwrap()
        .arg("replay")
        .arg(&file)
        .args(["--format", "json", "--export", &url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        events_only(&stdout),
        lines.lines().collect::<Vec<_>>(),
        "every flow"
    );
    let dropped = export_dropped(&stdout, &url);
    assert!(dropped > 0 && dropped <= flows, "{dropped}");
    assert!(
        stderr.contains(&format!(
            "flowtrack: export to {url}: {dropped} flow records dropped"
        )),
        "{stderr}"
    );
    assert!(collector.accepted.try_recv().is_ok(), "it was connected to");
}

/// Two rounds of TCP connections between sockets of the command: 20 to one
/// server, then, once the file `argv[1]` exists, 10 to another.
const ROUNDS: &str = r"
import os, socket, sys, threading, time
def round(count):
    server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen(count)
    def serve():
        for _ in range(count):
            peer, _ = server.accept(); peer.recv(100); peer.sendall(b'y' * 50); peer.close()
    thread = threading.Thread(target=serve); thread.start()
    for _ in range(count):
        client = socket.create_connection(server.getsockname()); client.sendall(b'x' * 100)
        while client.recv(100): pass
        client.close()
    thread.join(); server.close()
round(20)
deadline = time.time() + 60
while not os.path.exists(sys.argv[1]) and time.time() < deadline: time.sleep(0.05)
round(10)
";

#[test]
fn a_collector_down_then_up_misses_what_overflowed_counted_and_gets_the_rest() {
    if !privileged("a_collector_down_then_up_misses_what_overflowed_counted_and_gets_the_rest") {
        return;
    }
    let port = unused_port();
    let url = format!("ipfix+tcp://127.0.0.1:{port}?queue=5");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flows.jsonl");
    let go = dir.path().join("go");
    let mut flowtrack = Command::new(FLOWTRACK)
        .args(["run", "--backend", "ebpf", "--format", "json", "-o"])
        .arg(&out)
        .args(["--metrics-addr", "127.0.0.1:0", "--export", &url])
        .args(["--", "python3", "-c", ROUNDS])
        .arg(&go)
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowtrack starts");
    let stderr = Lines::follow(flowtrack.stderr.take().unwrap());
    let mut metrics = None;
    stderr.wait_for("flowtrack serves metrics", |lines| {
        metrics = lines.iter().find_map(|line| {
            line.strip_prefix("flowtrack: serving metrics on http://")?
                .strip_suffix("/metrics")?
                .parse::<SocketAddr>()
                .ok()
        });
        metrics.is_some()
    });
    // The first round's 20 closes: 5 wait in the queue, 15 are dropped.
    let dropped = format!(
        "flowtrack_observations_lost_total{{backend=\"{url}\",point=\"export_dropped\"}} 15"
    );
    wait_until("the metrics count 15 records dropped", || {
        scrape(metrics.unwrap()).is_some_and(|text| text.contains(&dropped))
    });
    let collector = TcpCollector::on(port, true);
    collector
        .accepted
        .recv_timeout(Duration::from_secs(60))
        .expect("the exporter connects again");
    std::fs::write(&go, "").unwrap();
    let status = flowtrack.wait().unwrap();
    let stderr = stderr.all();
    assert!(status.success(), "{stderr}");
    let lines = std::fs::read_to_string(&out).unwrap();
    let written = written(&lines);
    assert_eq!(written.len(), 30, "every flow in the output: {lines}");
    let lost = export_dropped(&lines, &url);
    assert_eq!(lost, 15, "{lines}");
    assert!(
        stderr.contains("exports dropped 15 flow records (export_dropped"),
        "the summary: {stderr}"
    );
    assert!(
        stderr.contains(&format!("export to {url} works again")),
        "{stderr}"
    );
    // Fresh templates on the new connection, then the 5 queued records
    // and the second round's 10.
    let collected = collected(&ipfix_dump(&collector.streams.recv().unwrap()));
    assert_eq!(collected.len(), 15, "{collected:?}");
    for flow in collected.keys() {
        assert!(written.contains_key(flow), "{flow:?} not in {written:?}");
    }
}
