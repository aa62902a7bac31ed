//! Properties of the event contract.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::sync::Arc;

use flow_core::counters::{Counters, DirectionCounters};
use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
use flow_core::process::{Attribution, Process};
use flow_core::record::{FlowRecord, JsonEncoder, JsonOptions, RecordItem};
use flow_core::workload::Workload;
use flow_core::{CloseReason, FlowError, FlowEvent, FlowEventKind, FlowKey, LossPoint};
use proptest::prelude::*;

fn any_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
        any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
    ]
}

fn any_key() -> impl Strategy<Value = FlowKey> {
    (
        any_addr(),
        any::<u16>(),
        any_addr(),
        any::<u16>(),
        any::<u8>(),
    )
        .prop_map(
            |(src_addr, src_port, dst_addr, dst_port, protocol)| FlowKey {
                src_addr,
                src_port,
                dst_addr,
                dst_port,
                protocol,
            },
        )
}

fn any_name() -> impl Strategy<Value = Arc<str>> {
    "[a-z0-9][a-z0-9.\\-\"é]{0,30}".prop_map(Arc::from)
}

fn any_lookup() -> impl Strategy<Value = DnsLookup> {
    (
        any_name(),
        any::<u16>(),
        any::<u16>(),
        proptest::collection::vec(any_addr(), 0..4),
        proptest::collection::vec(any_name(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(query, qtype, rcode, answers, cnames, truncated)| {
            DnsLookup::new(query, QueryType(qtype), ResponseCode(rcode))
                .with_answers(answers)
                .with_cnames(cnames)
                .truncated(truncated)
        })
}

fn any_kind() -> impl Strategy<Value = FlowEventKind> {
    prop_oneof![
        Just(FlowEventKind::Opened),
        (any::<u64>(), any::<u64>()).prop_map(|(pkt_count, byte_count)| FlowEventKind::Closed {
            pkt_count,
            byte_count
        }),
        (proptest::option::of(any_name()), any::<bool>())
            .prop_map(|(rule, enforced)| FlowEventKind::Denied { rule, enforced }),
        any_lookup().prop_map(|lookup| FlowEventKind::Dns(Arc::new(lookup))),
        (any::<u64>(), any::<u64>()).prop_map(|(pkt_count, byte_count)| FlowEventKind::Update {
            pkt_count,
            byte_count
        }),
    ]
}

/// Counters by direction that add up (halves of a random total).
fn any_directions() -> impl Strategy<Value = DirectionCounters> {
    (
        0..u64::MAX / 2,
        0..u64::MAX / 2,
        0..u64::MAX / 2,
        0..u64::MAX / 2,
    )
        .prop_map(|(a, b, c, d)| DirectionCounters::new(Counters::new(a, b), Counters::new(c, d)))
}

/// A process as a line can carry it: a pid, or at least a user (the
/// nflog backend's process not found).
fn any_process() -> impl Strategy<Value = Process> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(any_name()),
        proptest::option::of("/[a-z/ ]{0,20}"),
        proptest::option::of(proptest::collection::vec(".{0,8}", 0..4)),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        prop_oneof![Just(Attribution::Kernel), Just(Attribution::BestEffort)],
    )
        .prop_map(|(pid, comm, exe, cmdline, uid, gid, attribution)| {
            let mut process = Process::unidentified().attributed(attribution);
            process.pid = pid;
            process.comm = comm;
            process.exe = exe.map(Arc::from);
            process.cmdline = cmdline.map(|args| args.into_iter().map(Arc::from).collect());
            process.uid = if pid.is_none() { uid.or(Some(0)) } else { uid };
            process.gid = gid;
            process
        })
}

fn any_event() -> impl Strategy<Value = FlowEvent> {
    (
        any_key(),
        any_kind(),
        any::<u64>(),
        proptest::option::of(any_close_reason()),
        proptest::option::of(any_name()),
        proptest::option::of(any_name()),
        proptest::option::of(any_process()),
        any::<bool>(),
        (
            any::<bool>(),
            proptest::option::of(any_directions()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any_cgroup()),
        ),
    )
        .prop_map(
            |(
                key,
                kind,
                ts,
                reason,
                host,
                sni,
                process,
                resynced,
                (inbound, directions, start, cgroup),
            )| {
                // A reason is only written (and read) on a closed line;
                // directions and a start on closed and update lines.
                let reason = reason.filter(|_| matches!(kind, FlowEventKind::Closed { .. }));
                let event = match (&kind, directions) {
                    (FlowEventKind::Closed { .. }, Some(directions)) => {
                        FlowEvent::closed_by_direction(key, directions, ts)
                    }
                    (FlowEventKind::Update { .. }, Some(directions)) => {
                        FlowEvent::update_by_direction(key, directions, ts)
                    }
                    _ => FlowEvent::new(key, kind.clone(), ts),
                };
                event
                    .because(reason)
                    .named(host)
                    .with_sni(sni)
                    .by(process.map(Arc::new))
                    .resynced(resynced)
                    .inbound(inbound)
                    .within(cgroup.map(|cgroup| Arc::new(Workload::new(cgroup))))
                    .started(start.filter(|_| kind.counters().is_some()))
            },
        )
}

/// A cgroup path, now and then a container's.
fn any_cgroup() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z0-9@.\"\\\\ é-]{1,12}){0,4}",
        "[0-9a-f]{64}".prop_map(|id| format!("/system.slice/docker-{id}.scope")),
    ]
}

fn any_close_reason() -> impl Strategy<Value = CloseReason> {
    proptest::sample::select(CloseReason::ALL.to_vec())
}

fn any_record() -> impl Strategy<Value = FlowRecord<'static>> {
    let backend = "[a-z0-9_\\-\"\\\\ é]{0,12}";
    prop_oneof![
        (backend, any_event()).prop_map(|(backend, event)| FlowRecord::event(backend, event)),
        (
            backend,
            any_loss_point(),
            proptest::option::of(any::<u64>()),
            any::<u64>()
        )
            .prop_map(|(backend, point, count, ts)| FlowRecord::lost(backend, point, count, ts)),
    ]
}

fn any_loss_point() -> impl Strategy<Value = LossPoint> {
    proptest::sample::select(LossPoint::ALL.to_vec())
}

proptest! {
    #[test]
    fn json_round_trip(record in any_record()) {
        let mut line = Vec::new();
        record.write_json_line_with(&mut line, JsonOptions::default().cmdline(true)).unwrap();
        prop_assert_eq!(line.last(), Some(&b'\n'));
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let text = std::str::from_utf8(&line).unwrap();
        prop_assert_eq!(FlowRecord::from_json_line(text).unwrap(), record);
    }

    #[test]
    fn command_lines_are_written_only_when_asked(record in any_record()) {
        let mut line = Vec::new();
        record.write_json_line(&mut line).unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        prop_assert!(!text.contains("\"cmdline\""));
        let mut expected = record.clone();
        if let RecordItem::Event(event) = &mut expected.item
            && let Some(process) = &event.process
        {
            let mut process = (**process).clone();
            process.cmdline = None;
            event.to_mut().process = Some(Arc::new(process));
        }
        prop_assert_eq!(FlowRecord::from_json_line(text).unwrap(), expected);
    }

    /// An encoder copies what it kept of a process or of backends into
    /// later lines: each line is still the line its record alone makes.
    #[test]
    fn an_encoder_writes_each_line_as_the_record_alone(
        records in proptest::collection::vec(any_record(), 1..6),
        processes in proptest::collection::vec(any_process(), 1..4),
        picks in proptest::collection::vec((any::<usize>(), any::<usize>(), 0..3_usize), 1..40),
        cmdline in any::<bool>(),
    ) {
        let processes: Vec<Arc<Process>> = processes.into_iter().map(Arc::new).collect();
        let backends = ["ebpf", "nflog", "b\"x"];
        let options = JsonOptions::default().cmdline(cmdline);
        let mut encoder = JsonEncoder::new(options);
        let (mut encoded, mut alone) = (Vec::new(), Vec::new());
        for (record, process, others) in picks {
            let mut record = records[record % records.len()].clone();
            if let RecordItem::Event(event) = &mut record.item {
                event.to_mut().process = Some(Arc::clone(&processes[process % processes.len()]));
            }
            record.backend = backends[process % backends.len()].into();
            record.also_seen_by = backends[..others].iter().map(|&b| b.into()).collect();
            encoder.append_line(&record, &mut encoded);
            record.append_json_line(&mut alone, options);
        }
        prop_assert_eq!(String::from_utf8(encoded).unwrap(), String::from_utf8(alone).unwrap());
    }

    #[test]
    fn key_reversal_is_an_involution(key in any_key()) {
        prop_assert_eq!(key.reversed().reversed(), key);
        prop_assert_eq!(key.reversed().src(), key.dst());
    }

    #[test]
    fn display_never_panics(event in any_event(), count in proptest::option::of(any::<u64>()), ts in any::<u64>()) {
        prop_assert!(!event.to_string().is_empty());
        prop_assert!(!event.key.to_string().is_empty());
        let loss = FlowError::lost_at(LossPoint::QueueOverflow, count, ts);
        prop_assert!(!loss.to_string().is_empty());
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(line in ".{0,200}") {
        let _ = FlowRecord::from_json_line(&line);
    }

    #[test]
    fn named_enums_serialize_as_their_output_names(
        reason in proptest::sample::select(CloseReason::ALL.to_vec()),
        point in proptest::sample::select(LossPoint::ALL.to_vec()),
    ) {
        let json = serde_json::to_string(&reason).unwrap();
        prop_assert_eq!(&json, &format!("\"{}\"", reason.name()));
        prop_assert_eq!(serde_json::from_str::<CloseReason>(&json).unwrap(), reason);
        let json = serde_json::to_string(&point).unwrap();
        prop_assert_eq!(&json, &format!("\"{}\"", point.name()));
        prop_assert_eq!(serde_json::from_str::<LossPoint>(&json).unwrap(), point);
    }
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":1,"dst":"10.0.0.2","backend":"x"}"#,
            "missing field `dport` (required on \"opened\")",
        ),
        (
            r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":70000,"dst":"10.0.0.2","dport":1,"backend":"x"}"#,
            "field `sport`: invalid value: integer `70000`, expected u16 (column 71)",
        ),
        (
            r#"{"ts_ns":1,"kind":"opened","proto":"tcpp","src":"10.0.0.1","sport":1,"dst":"10.0.0.2","dport":1,"backend":"x"}"#,
            "field `proto`: unknown protocol \"tcpp\": expected tcp, udp, icmp, icmpv6 or a number 0-255",
        ),
        (
            r#"{"ts_ns":1,"kind":"gone","backend":"x"}"#,
            "field `kind`: unknown variant `gone`, expected one of `opened`, `closed`, `update`, `denied`, `dns`, `lost` (column 24)",
        ),
        (
            r#"{"ts_ns":1,"kind":"closed","proto":"udp","src":"::1","sport":1,"dst":"::1","dport":1,"packets":2,"backend":"x"}"#,
            "missing field `bytes` (required on \"closed\")",
        ),
        (
            r#"{"ts_ns":1,"kind":"opened","proto":"tcp","src":"10.0.0.300","sport":1,"dst":"10.0.0.2","dport":1,"backend":"x"}"#,
            "field `src`: invalid IP address syntax (column 59)",
        ),
        (
            r#"{"ts_ns":1,"kind":"lost","backend":"x"} trailing"#,
            "trailing characters (column 41)",
        ),
        ("", "EOF while parsing a value (column 0)"),
    ];
    for (line, expected) in cases {
        let error = FlowRecord::from_json_line(line).unwrap_err();
        assert_eq!(error.to_string(), expected, "for {line}");
    }
}

#[test]
fn lost_without_count_reads_as_unknown() {
    let record =
        FlowRecord::from_json_line(r#"{"ts_ns":3,"kind":"lost","backend":"ebpf"}"#).unwrap();
    assert_eq!(
        record.item,
        RecordItem::Lost {
            point: LossPoint::Recorded,
            count: None,
            timestamp_ns: 3
        }
    );
}

#[test]
fn a_loss_point_this_version_does_not_know_reads_as_unknown() {
    let record = FlowRecord::from_json_line(
        r#"{"ts_ns":3,"kind":"lost","backend":"ebpf","count":1,"point":"from_the_future"}"#,
    )
    .unwrap();
    assert!(matches!(
        record.item,
        RecordItem::Lost {
            point: LossPoint::Recorded,
            count: Some(1),
            ..
        }
    ));
}

#[test]
fn a_close_reason_this_version_does_not_know_reads_as_unknown() {
    let line = r#"{"ts_ns":3,"kind":"closed","proto":"tcp","src":"10.0.0.1","sport":1,"dst":"10.0.0.2","dport":2,"packets":2,"bytes":80,"reason":"from_the_future","backend":"x"}"#;
    let RecordItem::Event(event) = FlowRecord::from_json_line(line).unwrap().item else {
        panic!("a flow line")
    };
    assert_eq!(event.close_reason, None);
    let known = line.replace("from_the_future", "reset");
    let RecordItem::Event(event) = FlowRecord::from_json_line(&known).unwrap().item else {
        panic!("a flow line")
    };
    assert_eq!(event.close_reason, Some(CloseReason::Reset));
}

#[test]
fn a_resynced_event_says_so_and_reads_back_and_others_carry_no_such_field() {
    let key = FlowKey::tcp("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let line = |event: FlowEvent| {
        let mut line = Vec::new();
        FlowRecord::event("nflog", event)
            .write_json_line(&mut line)
            .unwrap();
        String::from_utf8(line).unwrap()
    };
    let listed = line(FlowEvent::closed(key, 2, 80, 3).resynced(true));
    assert!(
        listed.ends_with(
            r#""bytes":80,"resynced":true,"backend":"nflog","backends":["nflog"]}
"#
        ),
        "{listed}"
    );
    let RecordItem::Event(event) = FlowRecord::from_json_line(&listed).unwrap().item else {
        panic!("a flow line")
    };
    assert!(event.resynced);
    assert!(!line(FlowEvent::opened(key, 3)).contains("resynced"));
}

#[test]
fn unknown_protocols_are_written_as_numbers() {
    let key = FlowKey::new(
        "10.0.0.1:1".parse().unwrap(),
        "10.0.0.2:2".parse().unwrap(),
        132,
    );
    let mut line = Vec::new();
    FlowRecord::event("x", FlowEvent::opened(key, 0))
        .write_json_line(&mut line)
        .unwrap();
    assert!(
        String::from_utf8(line)
            .unwrap()
            .contains(r#""proto":"132""#)
    );
}

#[test]
fn counters_by_direction_and_the_start_are_written_on_closed_and_update_lines() {
    let key = FlowKey::tcp(
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.0.2:443".parse().unwrap(),
    );
    let both = DirectionCounters::new(Counters::new(6, 500), Counters::new(4, 700));
    let update = FlowEvent::update_by_direction(key, both, 7).started(3);
    let mut line = Vec::new();
    FlowRecord::event("ebpf", update.clone())
        .write_json_line(&mut line)
        .unwrap();
    let text = String::from_utf8(line).unwrap();
    assert_eq!(
        text,
        "{\"ts_ns\":7,\"kind\":\"update\",\"proto\":\"tcp\",\"src\":\"10.0.0.1\",\"sport\":40000,\
         \"dst\":\"10.0.0.2\",\"dport\":443,\"packets\":10,\"bytes\":1200,\"src_packets\":6,\
         \"src_bytes\":500,\"dst_packets\":4,\"dst_bytes\":700,\"start_ns\":3,\"backend\":\"ebpf\",\
         \"backends\":[\"ebpf\"]}\n"
    );
    let RecordItem::Event(read) = FlowRecord::from_json_line(&text).unwrap().item else {
        panic!("an event")
    };
    assert_eq!(read.into_owned(), update);
    // A closed line without them (an older file) reads with none.
    let old = r#"{"ts_ns":1,"kind":"closed","proto":"udp","src":"::1","sport":1,"dst":"::1","dport":2,"packets":2,"bytes":9,"backend":"x"}"#;
    let RecordItem::Event(read) = FlowRecord::from_json_line(old).unwrap().item else {
        panic!("an event")
    };
    assert_eq!((read.directions, read.start_ns), (None, None));
}

#[test]
fn counters_by_direction_come_whole_and_add_up() {
    let partial = r#"{"ts_ns":1,"kind":"closed","proto":"udp","src":"::1","sport":1,"dst":"::1","dport":2,"packets":2,"bytes":9,"src_packets":1,"src_bytes":4,"dst_packets":1,"backend":"x"}"#;
    assert_eq!(
        FlowRecord::from_json_line(partial).unwrap_err().to_string(),
        "missing field `dst_bytes` (a \"closed\" line with counters by direction has all four)"
    );
    let wrong = r#"{"ts_ns":1,"kind":"update","proto":"udp","src":"::1","sport":1,"dst":"::1","dport":2,"packets":2,"bytes":9,"src_packets":1,"src_bytes":4,"dst_packets":1,"dst_bytes":4,"backend":"x"}"#;
    assert_eq!(
        FlowRecord::from_json_line(wrong).unwrap_err().to_string(),
        "the counters by direction do not add up to `packets` 2 and `bytes` 9"
    );
    let overflow = r#"{"ts_ns":1,"kind":"update","proto":"udp","src":"::1","sport":1,"dst":"::1","dport":2,"packets":2,"bytes":9,"src_packets":1,"src_bytes":18446744073709551615,"dst_packets":1,"dst_bytes":10,"backend":"x"}"#;
    assert!(FlowRecord::from_json_line(overflow).is_err());
}
