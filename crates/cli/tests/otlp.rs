//! `--export otlp+grpc://…`: what flowtrack writes reaches an OTLP
//! receiver built on the OpenTelemetry project's protocol definitions
//! (`flowtrack-otlp-receiver`: `opentelemetry-proto`'s gRPC service on
//! tonic) as one log record per closed flow, with the same flow, counters,
//! name and process; a receiver that is not there costs the run nothing
//! but the records, counted.

use std::collections::BTreeMap;

use flow_core::FlowEvent;
use flow_core::record::{FlowRecord, RecordItem};
use flowtrack_kernel_tests::{Netns, privileged};
use flowtrack_otlp_receiver::{Receiver, Value};

mod common;

use common::flowtrack_in;

/// The README's workload: a lookup at a responder of its own, an HTTP
/// fetch from the address answered (named), a UDP datagram, a TLS
/// ClientHello over IPv6 (its SNI).
const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workload.py");

/// What a record says of a flow, by attribute name.
type View = BTreeMap<&'static str, Value>;

/// The closed flows of a JSON-lines output, as their records should say.
fn written(lines: &str) -> Vec<View> {
    let closed =
        lines.lines().filter_map(
            |line| match FlowRecord::from_json_line(line).unwrap().item {
                RecordItem::Event(event) if event.kind.name() == "closed" => {
                    Some(event.into_owned())
                }
                _ => None,
            },
        );
    sorted(closed.map(|event| expected(&event)).collect())
}

/// The attributes `event`'s record must carry (the ones compared).
fn expected(event: &FlowEvent) -> View {
    let text = |value: &str| Value::Str(value.to_owned());
    let int = |value: u64| Value::Int(i64::try_from(value).unwrap());
    let key = &event.key;
    let mut view = View::from([
        ("network.transport", text(&key.protocol_name().to_string())),
        (
            "network.type",
            text(if key.src_addr.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            }),
        ),
        ("source.address", text(&key.src_addr.to_string())),
        ("source.port", int(key.src_port.into())),
        ("destination.address", text(&key.dst_addr.to_string())),
        ("destination.port", int(key.dst_port.into())),
    ]);
    let total = event.kind.counters().unwrap();
    let both = event.directions.unwrap();
    view.extend([
        ("flowtrack.packets", int(total.packets)),
        ("flowtrack.bytes", int(total.bytes)),
        ("flowtrack.src_packets", int(both.src.packets)),
        ("flowtrack.src_bytes", int(both.src.bytes)),
        ("flowtrack.dst_packets", int(both.dst.packets)),
        ("flowtrack.dst_bytes", int(both.dst.bytes)),
    ]);
    if let Some(server) = event.host.as_ref().or(event.sni.as_ref()) {
        view.insert("server.address", text(server));
    }
    if let Some(sni) = &event.sni {
        view.insert("flowtrack.sni", text(sni));
    }
    let process = event.process.as_ref().expect("the eBPF backend knows it");
    view.extend([
        ("process.pid", int(process.pid.unwrap().into())),
        (
            "process.executable.path",
            text(process.exe.as_ref().unwrap()),
        ),
        (
            "process.executable.name",
            text(process.comm.as_ref().unwrap()),
        ),
        ("process.user.id", int(process.uid.unwrap().into())),
    ]);
    view
}

/// The same attributes of the closed flows' records the receiver got.
fn received(receiver: &Receiver) -> Vec<View> {
    let records = receiver.records();
    let closed = records
        .iter()
        .filter(|record| record.event_name == "flowtrack.flow.closed");
    sorted(
        closed
            .map(|record| {
                let expected_keys = [
                    "network.transport",
                    "network.type",
                    "source.address",
                    "source.port",
                    "destination.address",
                    "destination.port",
                    "flowtrack.packets",
                    "flowtrack.bytes",
                    "flowtrack.src_packets",
                    "flowtrack.src_bytes",
                    "flowtrack.dst_packets",
                    "flowtrack.dst_bytes",
                    "server.address",
                    "flowtrack.sni",
                    "process.pid",
                    "process.executable.path",
                    "process.executable.name",
                    "process.user.id",
                ];
                expected_keys
                    .into_iter()
                    .filter_map(|name| Some((name, record.attributes.get(name)?.clone())))
                    .collect()
            })
            .collect(),
    )
}

/// `views` in a fixed order, to compare as multisets.
fn sorted(mut views: Vec<View>) -> Vec<View> {
    views.sort_by_cached_key(|view| format!("{view:?}"));
    views
}

/// `flowtrack run` of the workload in `netns` on the eBPF backend,
/// exporting to `url`: its stderr and the JSON lines it wrote.
fn run(netns: &Netns, url: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flows.jsonl");
    let args = format!(
        "run --backend ebpf --format json -o {} --export {url} -- python3 {WORKLOAD}",
        out.display()
    );
    let args: Vec<&str> = args.split(' ').collect();
    let output = flowtrack_in(netns, &args).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{:?} {stderr}", output.status);
    (stderr, std::fs::read_to_string(&out).unwrap())
}

#[test]
fn closed_flows_reach_an_otlp_receiver_as_written() {
    if !privileged("closed_flows_reach_an_otlp_receiver_as_written") {
        return;
    }
    let netns = Netns::new();
    let receiver = Receiver::start_in(Some(&netns.path()));
    let (stderr, lines) = run(&netns, &format!("otlp+grpc://{}", receiver.addr()));
    assert!(!stderr.contains("dropped"), "{stderr}");
    let expected = written(&lines);
    assert_eq!(expected.len(), 4, "{lines}");
    assert!(
        expected
            .iter()
            .any(|view| view.contains_key("server.address")),
        "the workload's flows are named: {lines}"
    );
    // flowtrack waited for the records to be taken before it exited.
    assert_eq!(received(&receiver), expected);
    let record = &receiver.records()[0];
    assert_eq!(
        record.resource["service.name"],
        Value::Str("flowtrack".into())
    );
}

#[test]
fn a_receiver_that_is_down_costs_the_records_counted_and_nothing_else() {
    if !privileged("a_receiver_that_is_down_costs_the_records_counted_and_nothing_else") {
        return;
    }
    let netns = Netns::new();
    // Nothing listens in a fresh namespace.
    let url = "otlp+grpc://127.0.0.1:4317";
    let (stderr, lines) = run(&netns, url);
    assert_eq!(
        written(&lines).len(),
        4,
        "every flow in the output: {lines}"
    );
    assert!(
        stderr.contains(&format!(
            "flowtrack: export to {url}: 4 flow records dropped (export_dropped"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("cannot export flow records"), "{stderr}");
    let in_band: u64 = lines
        .lines()
        .filter_map(
            |line| match FlowRecord::from_json_line(line).unwrap().item {
                RecordItem::Lost {
                    point: flow_core::LossPoint::ExportDropped,
                    count,
                    ..
                } => count,
                _ => None,
            },
        )
        .sum();
    assert_eq!(
        in_band, 4,
        "export_dropped loss items in the output: {lines}"
    );
}
