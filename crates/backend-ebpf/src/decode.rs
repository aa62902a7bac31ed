//! Ring-buffer records into what they report: flow events (an opening with
//! its socket's owner), copied payloads, and process records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use flow_core::counters::{Counters, DirectionCounters};
use flow_core::{CloseReason, FlowEvent, FlowKey};
use flow_ebpf_common::{
    CLOSE_FIN, CLOSE_IDLE, CLOSE_RST, CLOSE_SCOPE_ENDED, CLOSE_SOCK_RELEASE, DecodeError,
    FAMILY_V4, PacketCounts, PayloadRecord, RECORD_CLOSED, RECORD_DENIED, RECORD_DNS, RECORD_EXEC,
    RECORD_FIRST_PAYLOAD, RECORD_FORK, RECORD_OPENED, RawExecRecord, RawFlowKey, RawFlowRecord,
    RawForkRecord, RawOpenedRecord, RawOwner, record_kind,
};
use flow_enrich::process::split_args;
use flow_enrich::{Exec, Owner};

/// The DNS port: the server end of a lookup's flow.
const DNS_PORT: u16 = 53;

/// What one ring-buffer record reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record<'a> {
    /// A flow opened, with its socket's owner when it has one, and the id
    /// of its socket's cgroup (0: no socket).
    Opened(FlowEvent, Option<Owner>, u64),
    /// A flow closed.
    Closed(FlowEvent),
    /// The enforced policy refused a connection, a datagram or an echo
    /// request (the source end is unknown, zero, when a socket-address
    /// hook refused it).
    Denied {
        /// What was refused.
        flow: FlowKey,
        /// The id of the rule that denied it; 0 for the default.
        rule: u16,
        /// When.
        timestamp_ns: u64,
        /// The refused process, when known.
        owner: Option<Owner>,
        /// The id of the refused socket's cgroup (0: unknown).
        cgroup_id: u64,
    },
    /// A DNS answer reached the scope on the lookup's flow `flow` (the
    /// asking socket → the resolver).
    DnsAnswer {
        /// The lookup's flow.
        flow: FlowKey,
        /// TCP: the sequence number of the copied segment.
        tcp_seq: Option<u32>,
        /// The copy.
        payload: &'a [u8],
        /// The payload's whole length.
        original_len: usize,
        /// When it passed.
        timestamp_ns: u64,
    },
    /// The first payload a TCP flow's initiator sent.
    FirstPayload {
        /// The flow, as the kernel table keys it (either orientation).
        flow: FlowKey,
        /// The copy.
        payload: &'a [u8],
    },
    /// A process of the scope executed a program.
    Exec(Exec),
    /// A process of the scope forked: (pid, start time) of the parent and
    /// of the child.
    Fork((u32, u64), (u32, u64)),
}

/// Decodes one ring-buffer record.
///
/// Records are length-checked; bytes that are not a record give an error,
/// never a panic.
///
/// # Errors
/// [`DecodeError`]: wrong length, unknown kind or address family, a copied
/// length beyond the record.
///
/// ```
/// use flow_backend_ebpf::decode_record;
/// assert!(decode_record(&[0_u8; 3]).is_err());
/// ```
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    match record_kind(bytes)? {
        RECORD_OPENED => {
            let record = RawOpenedRecord::decode(bytes)?;
            let event = FlowEvent::opened(flow_key(&record.flow.key), record.flow.first_seen_ns);
            Ok(Record::Opened(
                event,
                owner(&record.owner),
                record.cgroup_id,
            ))
        }
        RECORD_DENIED => {
            let record = RawOpenedRecord::decode(bytes)?;
            Ok(Record::Denied {
                flow: flow_key(&record.flow.key),
                rule: u16::try_from(record.flow.close_reason).unwrap_or(0),
                timestamp_ns: record.flow.timestamp_ns,
                owner: owner(&record.owner),
                cgroup_id: record.cgroup_id,
            })
        }
        RECORD_CLOSED => {
            let record = RawFlowRecord::decode(bytes)?;
            let event = FlowEvent::closed_by_direction(
                flow_key(&record.key),
                directions(&record.orig, &record.reply),
                record.timestamp_ns,
            )
            .started(record.first_seen_ns)
            .because(close_reason(record.close_reason));
            Ok(Record::Closed(event))
        }
        RECORD_DNS | RECORD_FIRST_PAYLOAD => payload(PayloadRecord::decode(bytes)?),
        RECORD_EXEC => Ok(Record::Exec(exec(&RawExecRecord::decode(bytes)?))),
        RECORD_FORK => {
            let fork = RawForkRecord::decode(bytes)?;
            Ok(Record::Fork(
                (fork.parent_tgid, fork.parent_start_ns),
                (fork.child_tgid, fork.child_start_ns),
            ))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

fn payload(record: PayloadRecord<'_>) -> Result<Record<'_>, DecodeError> {
    let header = record.header;
    let canonical = flow_key(&header.key);
    Ok(if header.kind == RECORD_DNS {
        // The resolver is the port-53 end.
        let flow = if canonical.src_port == DNS_PORT {
            canonical.reversed()
        } else {
            canonical
        };
        Record::DnsAnswer {
            flow,
            tcp_seq: (canonical.protocol == flow_core::protocol::TCP).then_some(header.tcp_seq),
            payload: record.data,
            original_len: header.orig_len as usize,
            timestamp_ns: header.timestamp_ns,
        }
    } else {
        Record::FirstPayload {
            flow: canonical,
            payload: record.data,
        }
    })
}

/// The socket owner a kernel record carries, if any.
fn owner(raw: &RawOwner) -> Option<Owner> {
    (raw.tgid != 0).then(|| {
        Owner::new(raw.tgid)
            .started(raw.start_ns)
            .with_comm(text(&raw.comm))
            .with_ids(raw.uid, raw.gid)
    })
}

fn exec(raw: &RawExecRecord) -> Exec {
    let copied = raw.args.get(..raw.args_copied as usize).unwrap_or_default();
    let mut args = split_args(copied);
    if raw.args_copied < raw.args_len
        && let Some(last) = args.last_mut()
    {
        // The command line was longer than the copy: say where it ends.
        *last = format!("{last}…").into();
    }
    Exec::new(
        raw.tgid,
        raw.start_ns,
        text(&raw.filename).to_string(),
        args,
    )
    .executed_file(text(&raw.basename).to_string())
}

/// A NUL-terminated kernel string, invalid UTF-8 replaced.
fn text(bytes: &[u8]) -> Arc<str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into()
}

/// The contract's close reason for a record's `CLOSE_*`; `None` for a
/// number this version does not know.
fn close_reason(raw: u32) -> Option<CloseReason> {
    match raw {
        CLOSE_FIN => Some(CloseReason::Fin),
        CLOSE_RST => Some(CloseReason::Reset),
        CLOSE_SOCK_RELEASE => Some(CloseReason::SocketReleased),
        CLOSE_IDLE => Some(CloseReason::Idle),
        CLOSE_SCOPE_ENDED => Some(CloseReason::ScopeEnded),
        _ => None,
    }
}

/// The contract's counters of a flow from its kernel counters: `orig`
/// what the initiator sent, `reply` what the responder sent.
pub(crate) fn directions(orig: &PacketCounts, reply: &PacketCounts) -> DirectionCounters {
    DirectionCounters::new(
        Counters::new(orig.packets, orig.bytes),
        Counters::new(reply.packets, reply.bytes),
    )
}

/// The contract's key for a kernel key.
pub(crate) fn flow_key(raw: &RawFlowKey) -> FlowKey {
    FlowKey {
        src_addr: address(raw.family, &raw.src_addr),
        src_port: raw.src_port,
        dst_addr: address(raw.family, &raw.dst_addr),
        dst_port: raw.dst_port,
        protocol: raw.protocol,
    }
}

/// An address as the kernel's records hold it (`family`'s layout).
pub(crate) fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::FlowEventKind;
    use flow_ebpf_common::{
        EXEC_RECORD_SIZE, OPENED_RECORD_SIZE, PAYLOAD_HEADER_SIZE, PAYLOAD_SMALL, RECORD_SIZE,
    };
    use proptest::prelude::*;

    /// A flow record's bytes as the kernel lays them out (native endian),
    /// followed by an owner for an opened one.
    fn encode(record: &RawFlowRecord, owner: &RawOwner) -> Vec<u8> {
        let mut out = Vec::with_capacity(OPENED_RECORD_SIZE);
        out.extend(record.kind.to_ne_bytes());
        out.extend(record.close_reason.to_ne_bytes());
        out.extend(encode_key(&record.key));
        for value in [
            record.orig.packets,
            record.orig.bytes,
            record.reply.packets,
            record.reply.bytes,
            record.first_seen_ns,
            record.timestamp_ns,
        ] {
            out.extend(value.to_ne_bytes());
        }
        if record.kind == RECORD_OPENED {
            for value in [owner.tgid, owner.uid, owner.gid, owner.pad] {
                out.extend(value.to_ne_bytes());
            }
            out.extend(owner.start_ns.to_ne_bytes());
            out.extend(owner.comm);
            out.extend(u64::from(owner.uid).to_ne_bytes()); // a cgroup id
        }
        out
    }

    fn encode_key(key: &RawFlowKey) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(key.src_addr);
        out.extend(key.dst_addr);
        out.extend(key.src_port.to_ne_bytes());
        out.extend(key.dst_port.to_ne_bytes());
        out.push(key.protocol);
        out.push(key.family);
        out.extend(key.pad);
        out
    }

    fn any_key() -> impl Strategy<Value = RawFlowKey> {
        (
            prop_oneof![Just(4_u8), Just(6_u8)],
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<(u16, u16, u8)>(),
        )
            .prop_map(|(family, src, dst, (sport, dport, protocol))| {
                let mut key = RawFlowKey {
                    src_addr: src,
                    dst_addr: dst,
                    src_port: sport,
                    dst_port: dport,
                    protocol,
                    family,
                    pad: [0; 2],
                };
                if family == 4 {
                    key.src_addr[4..].fill(0);
                    key.dst_addr[4..].fill(0);
                }
                key
            })
    }

    fn any_record() -> impl Strategy<Value = (RawFlowRecord, RawOwner)> {
        (
            prop_oneof![Just(RECORD_OPENED), Just(RECORD_CLOSED)],
            any_key(),
            any::<(u64, u64, u64, u64, u64, u64)>(),
            0_u32..8,
            any::<(u32, u32, u32, u64, [u8; 16])>(),
        )
            .prop_map(
                |(kind, key, (p, b, rp, rb, f, t), reason, (tgid, uid, gid, start_ns, comm))| {
                    let record = RawFlowRecord {
                        kind,
                        close_reason: reason,
                        key,
                        orig: PacketCounts {
                            packets: p,
                            bytes: b,
                        },
                        reply: PacketCounts {
                            packets: rp,
                            bytes: rb,
                        },
                        first_seen_ns: f,
                        timestamp_ns: t,
                    };
                    let owner = RawOwner {
                        tgid,
                        uid,
                        gid,
                        pad: 0,
                        start_ns,
                        comm,
                    };
                    (record, owner)
                },
            )
    }

    #[test]
    fn the_fuzz_corpus_decodes() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ring_record");
        let mut seeds = 0;
        for entry in std::fs::read_dir(corpus).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            decode_record(&bytes).unwrap();
            seeds += 1;
        }
        assert!(seeds >= 10);
    }

    #[test]
    fn the_layout_is_what_the_kernel_writes() {
        assert_eq!(RECORD_SIZE, 96);
        assert_eq!(OPENED_RECORD_SIZE, 144);
        assert_eq!(PAYLOAD_HEADER_SIZE, 64);
        assert_eq!(EXEC_RECORD_SIZE % 8, 0);
        assert_eq!(std::mem::size_of::<RawFlowKey>(), 40);
        let owner = RawOwner::default();
        let opened = RawFlowRecord {
            kind: RECORD_OPENED,
            ..RawFlowRecord::default()
        };
        assert_eq!(encode(&opened, &owner).len(), OPENED_RECORD_SIZE);
    }

    #[test]
    fn a_dns_answer_is_keyed_from_the_asking_socket() {
        let key = RawFlowKey {
            src_addr: [10, 0, 0, 53, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 53,
            dst_port: 40_000,
            protocol: 17,
            family: 4,
            pad: [0; 2],
        };
        let mut bytes = Vec::new();
        for value in [RECORD_DNS, 3, 3, 0] {
            bytes.extend(value.to_ne_bytes());
        }
        bytes.extend(encode_key(&key));
        bytes.extend(7_u64.to_ne_bytes());
        bytes.extend([1, 2, 3]);
        bytes.resize(PAYLOAD_HEADER_SIZE + PAYLOAD_SMALL, 0);
        let Record::DnsAnswer {
            flow,
            tcp_seq,
            payload,
            ..
        } = decode_record(&bytes).unwrap()
        else {
            panic!("a DNS answer")
        };
        assert_eq!(flow.to_string(), "udp 10.0.0.1:40000 -> 10.0.0.53:53");
        assert_eq!((tcp_seq, payload), (None, &[1, 2, 3][..]));
    }

    proptest! {
        #[test]
        fn valid_records_decode_to_their_event((record, owner) in any_record()) {
            match decode_record(&encode(&record, &owner)).unwrap() {
                Record::Opened(event, decoded_owner, cgroup_id) => {
                    prop_assert_eq!(record.kind, RECORD_OPENED);
                    prop_assert_eq!(cgroup_id, u64::from(owner.uid), "encoded as the cgroup id");
                    prop_assert_eq!(event.timestamp_ns, record.first_seen_ns);
                    prop_assert_eq!(event.key.src_port, record.key.src_port);
                    prop_assert_eq!(decoded_owner.and_then(|o| o.pid), (owner.tgid != 0).then_some(owner.tgid));
                }
                Record::Closed(event) => {
                    let FlowEventKind::Closed { pkt_count, byte_count } = event.kind else {
                        panic!("a close")
                    };
                    let directions = event.directions.expect("counted by direction");
                    prop_assert_eq!(
                        (directions.src.packets, directions.src.bytes, directions.dst.packets, directions.dst.bytes),
                        (record.orig.packets, record.orig.bytes, record.reply.packets, record.reply.bytes)
                    );
                    prop_assert_eq!(
                        (pkt_count, byte_count),
                        (
                            record.orig.packets.saturating_add(record.reply.packets),
                            record.orig.bytes.saturating_add(record.reply.bytes)
                        )
                    );
                    prop_assert_eq!(event.start_ns, Some(record.first_seen_ns));
                    prop_assert_eq!(event.close_reason, close_reason(record.close_reason));
                    prop_assert_eq!(event.key.src_addr.is_ipv4(), record.key.family == 4);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        #[test]
        fn garbage_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = decode_record(&bytes);
        }

        #[test]
        fn mutated_records_never_panic((record, owner) in any_record(), at in 0..RECORD_SIZE, byte in any::<u8>()) {
            let mut bytes = encode(&record, &owner);
            bytes[at] = byte;
            let _ = decode_record(&bytes);
        }
    }
}
