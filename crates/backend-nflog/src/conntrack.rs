//! ctnetlink: typed `CTA_*` attributes, decoding a conntrack message into
//! a [`CtEntry`], and the requests flowtrack sends (get one entry, dump
//! the table).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flow_core::counters::{Counters, DirectionCounters};
use flow_core::{FlowKey, protocol};
use neli::consts::genl::NlAttrType;
use neli::consts::nl::NlmF;
use neli::neli_enum;

use crate::netlink::{self, AttrWriter, Attrs, Malformed, Nfgenmsg};

/// `NFNL_SUBSYS_CTNETLINK`.
pub(crate) const SUBSYSTEM: u8 = 1;
/// `IPCTNL_MSG_CT_NEW`: NEW and UPDATE events, and dump entries.
const MSG_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
const MSG_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`: DESTROY events.
const MSG_DELETE: u8 = 2;

/// Multicast groups: `NFNLGRP_CONNTRACK_NEW`, `_UPDATE`, `_DESTROY`.
pub(crate) const EVENT_GROUPS: [u32; 3] = [1, 2, 3];

/// Top-level conntrack attributes (`enum ctattr_type`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum CtAttr {
    TupleOrig = 1,
    TupleReply = 2,
    Status = 3,
    Protoinfo = 4,
    Mark = 8,
    CountersOrig = 9,
    CountersReply = 10,
    Id = 12,
    Timestamp = 20,
    MarkMask = 21,
    TimestampEvent = 27,
}
impl NlAttrType for CtAttr {}

/// Inside a tuple (`enum ctattr_tuple`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum TupleAttr {
    Ip = 1,
    Proto = 2,
}
impl NlAttrType for TupleAttr {}

/// Inside `CTA_TUPLE_IP` (`enum ctattr_ip`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum IpAttr {
    V4Src = 1,
    V4Dst = 2,
    V6Src = 3,
    V6Dst = 4,
}
impl NlAttrType for IpAttr {}

/// Inside `CTA_TUPLE_PROTO` (`enum ctattr_l4proto`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum ProtoAttr {
    Num = 1,
    SrcPort = 2,
    DstPort = 3,
    IcmpId = 4,
    IcmpType = 5,
    IcmpCode = 6,
    Icmpv6Id = 7,
    Icmpv6Type = 8,
    Icmpv6Code = 9,
}
impl NlAttrType for ProtoAttr {}

/// Inside `CTA_PROTOINFO` (`enum ctattr_protoinfo`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum ProtoinfoAttr {
    Tcp = 1,
}
impl NlAttrType for ProtoinfoAttr {}

/// Inside `CTA_PROTOINFO_TCP` (`enum ctattr_protoinfo_tcp`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum TcpInfoAttr {
    State = 1,
}
impl NlAttrType for TcpInfoAttr {}

/// Inside `CTA_COUNTERS_*` (`enum ctattr_counters`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum CounterAttr {
    Packets = 1,
    Bytes = 2,
}
impl NlAttrType for CounterAttr {}

/// Inside `CTA_TIMESTAMP` (`enum ctattr_tstamp`).
#[neli_enum(serialized_type = "u16")]
pub(crate) enum TimestampAttr {
    Start = 1,
    Stop = 2,
}
impl NlAttrType for TimestampAttr {}

/// TCP conntrack states that mean the connection is over
/// (`TCP_CONNTRACK_TIME_WAIT`, `TCP_CONNTRACK_CLOSE`).
pub(crate) const TCP_STATE_TIME_WAIT: u8 = 7;
/// See [`TCP_STATE_TIME_WAIT`].
pub(crate) const TCP_STATE_CLOSE: u8 = 8;

/// What a conntrack message says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtEventKind {
    /// A new entry (NEW event).
    New,
    /// An entry changed (UPDATE event) or was listed (dump or get reply).
    Update,
    /// An entry was removed (DESTROY event).
    Destroy,
}

/// One decoded conntrack message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CtEntry {
    /// What happened.
    pub(crate) kind: CtEventKind,
    /// The original tuple, initiator → responder.
    pub(crate) key: FlowKey,
    /// The kernel's id of the entry.
    pub(crate) id: u32,
    /// The ct mark.
    pub(crate) mark: u32,
    /// The TCP conntrack state, for TCP.
    pub(crate) tcp_state: Option<u8>,
    /// Packets and bytes of each direction (conntrack's original and
    /// reply counters), when accounting is on.
    pub(crate) counters: Option<DirectionCounters>,
    /// Kernel wall-clock stamps (ns since the epoch), when timestamps are on.
    pub(crate) start_ns: Option<u64>,
    /// See `start_ns`.
    pub(crate) stop_ns: Option<u64>,
    /// When the kernel recorded the event (`CTA_TIMESTAMP_EVENT`, wall
    /// clock ns; Linux 6.14 and later, with timestamps on): a NEW's is its
    /// first packet's, however late the message is read.
    pub(crate) event_ns: Option<u64>,
}

/// Why a message was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CtDecodeError {
    /// Not a conntrack entry message (an expectation, say).
    #[error("not a conntrack entry message (type {0:#06x})")]
    NotAnEntry(u16),
    /// Malformed: a missing or short attribute.
    #[error("malformed conntrack message: {0}")]
    Malformed(String),
}

fn malformed(what: impl std::fmt::Display) -> CtDecodeError {
    CtDecodeError::Malformed(what.to_string())
}

impl From<Malformed> for CtDecodeError {
    fn from(error: Malformed) -> Self {
        malformed(error)
    }
}

/// Decodes a conntrack message of nfnetlink type `kind` with `flags`.
pub(crate) fn decode(kind: u16, flags: NlmF, payload: &[u8]) -> Result<CtEntry, CtDecodeError> {
    if netlink::subsystem(kind) != SUBSYSTEM {
        return Err(CtDecodeError::NotAnEntry(kind));
    }
    let event = match (kind & 0xff) as u8 {
        MSG_NEW if flags.contains(NlmF::CREATE) && flags.contains(NlmF::EXCL) => CtEventKind::New,
        MSG_NEW => CtEventKind::Update,
        MSG_DELETE => CtEventKind::Destroy,
        _ => return Err(CtDecodeError::NotAnEntry(kind)),
    };
    let attrs = netlink::payload_attrs(payload)?;
    let tuple = attrs
        .nested(CtAttr::TupleOrig)?
        .ok_or_else(|| malformed("no original tuple"))?;
    let key = decode_tuple(tuple)?;
    let be32 = |attr: CtAttr| -> Result<Option<u32>, CtDecodeError> {
        attrs.get(attr)?.map(be_u32).transpose()
    };
    let tcp_state = match attrs.nested(CtAttr::Protoinfo)? {
        Some(info) => match info.nested(ProtoinfoAttr::Tcp)? {
            Some(tcp) => tcp
                .get(TcpInfoAttr::State)?
                .and_then(|state| state.first().copied()),
            None => None,
        },
        None => None,
    };
    let counters = match (
        attrs.nested(CtAttr::CountersOrig)?,
        attrs.nested(CtAttr::CountersReply)?,
    ) {
        (Some(orig), Some(reply)) => Some(DirectionCounters::new(
            decode_counters(orig)?,
            decode_counters(reply)?,
        )),
        _ => None,
    };
    let (start_ns, stop_ns) = match attrs.nested(CtAttr::Timestamp)? {
        Some(stamps) => {
            let stamp = |which| -> Result<Option<u64>, CtDecodeError> {
                stamps.get(which)?.map(be_u64).transpose()
            };
            (stamp(TimestampAttr::Start)?, stamp(TimestampAttr::Stop)?)
        }
        None => (None, None),
    };
    Ok(CtEntry {
        kind: event,
        key,
        id: be32(CtAttr::Id)?.unwrap_or(0),
        mark: be32(CtAttr::Mark)?.unwrap_or(0),
        tcp_state,
        counters,
        start_ns,
        stop_ns,
        event_ns: attrs.get(CtAttr::TimestampEvent)?.map(be_u64).transpose()?,
    })
}

/// Decodes every conntrack entry message of a datagram; also returns how
/// many messages were malformed (a truncated tail counts one). Other
/// message types (acks, expectations) are passed over.
pub(crate) fn decode_datagram(datagram: &[u8]) -> (Vec<CtEntry>, usize) {
    let (messages, truncated) = netlink::split(datagram);
    let mut malformed = usize::from(truncated.is_some());
    let mut entries = Vec::new();
    for message in messages {
        if let netlink::Received::Message {
            kind,
            flags,
            payload,
            ..
        } = message
        {
            match decode(kind, flags, payload) {
                Ok(entry) => entries.push(entry),
                Err(CtDecodeError::NotAnEntry(_)) => {}
                Err(error) => {
                    tracing::debug!(%error, "skipped a conntrack message");
                    malformed += 1;
                }
            }
        }
    }
    (entries, malformed)
}

fn decode_counters(counters: Attrs<'_>) -> Result<Counters, CtDecodeError> {
    let value = |which| -> Result<u64, CtDecodeError> {
        Ok(counters
            .get(which)?
            .map(be_u64)
            .transpose()?
            .unwrap_or_default())
    };
    Ok(Counters::new(
        value(CounterAttr::Packets)?,
        value(CounterAttr::Bytes)?,
    ))
}

fn decode_tuple(tuple: Attrs<'_>) -> Result<FlowKey, CtDecodeError> {
    let ip = tuple
        .nested(TupleAttr::Ip)?
        .ok_or_else(|| malformed("tuple without addresses"))?;
    let address =
        |attr| -> Result<Option<IpAddr>, CtDecodeError> { ip.get(attr)?.map(ip_addr).transpose() };
    let (src, dst) = match (address(IpAttr::V4Src)?, address(IpAttr::V4Dst)?) {
        (Some(src), Some(dst)) => (src, dst),
        _ => (
            address(IpAttr::V6Src)?.ok_or_else(|| malformed("tuple without a source"))?,
            address(IpAttr::V6Dst)?.ok_or_else(|| malformed("tuple without a destination"))?,
        ),
    };
    let proto = tuple
        .nested(TupleAttr::Proto)?
        .ok_or_else(|| malformed("tuple without a protocol"))?;
    let byte = |attr| -> Result<Option<u8>, CtDecodeError> {
        Ok(proto.get(attr)?.and_then(|b| b.first().copied()))
    };
    let port = |attr| -> Result<u16, CtDecodeError> {
        Ok(proto
            .get(attr)?
            .map(be_u16)
            .transpose()?
            .unwrap_or_default())
    };
    let protocol =
        byte(ProtoAttr::Num)?.ok_or_else(|| malformed("tuple without a protocol number"))?;
    let (src_port, dst_port) = match protocol {
        // ICMP keys: the echo identifier as source port, type<<8|code as
        // destination port (flow-core's convention).
        protocol::ICMP | protocol::ICMPV6 => {
            let (id, kind, code) = if protocol == protocol::ICMP {
                (ProtoAttr::IcmpId, ProtoAttr::IcmpType, ProtoAttr::IcmpCode)
            } else {
                (
                    ProtoAttr::Icmpv6Id,
                    ProtoAttr::Icmpv6Type,
                    ProtoAttr::Icmpv6Code,
                )
            };
            let type_code =
                u16::from(byte(kind)?.unwrap_or(0)) << 8 | u16::from(byte(code)?.unwrap_or(0));
            (port(id)?, type_code)
        }
        _ => (port(ProtoAttr::SrcPort)?, port(ProtoAttr::DstPort)?),
    };
    Ok(FlowKey {
        src_addr: src,
        src_port,
        dst_addr: dst,
        dst_port,
        protocol,
    })
}

fn ip_addr(bytes: &[u8]) -> Result<IpAddr, CtDecodeError> {
    match bytes.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).expect("4 bytes"),
        ))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).expect("16 bytes"),
        ))),
        n => Err(malformed(format!("an address of {n} bytes"))),
    }
}

fn be_u16(bytes: &[u8]) -> Result<u16, CtDecodeError> {
    bytes
        .try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| malformed("a 16-bit attribute of the wrong size"))
}

fn be_u32(bytes: &[u8]) -> Result<u32, CtDecodeError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| malformed("a 32-bit attribute of the wrong size"))
}

fn be_u64(bytes: &[u8]) -> Result<u64, CtDecodeError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| malformed("a 64-bit attribute of the wrong size"))
}

fn v6_octets(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V6(address) => address.octets(),
        IpAddr::V4(address) => address.to_ipv6_mapped().octets(),
    }
}

fn family(key: &FlowKey) -> u8 {
    if key.src_addr.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// Writes the original tuple of `key` as a `CTA_TUPLE_ORIG` attribute.
fn write_tuple(out: &mut AttrWriter<'_>, key: &FlowKey) {
    out.nested(CtAttr::TupleOrig.into(), |tuple| {
        tuple.nested(TupleAttr::Ip.into(), |ip| {
            match (key.src_addr, key.dst_addr) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    ip.attr(IpAttr::V4Src.into(), &src.octets());
                    ip.attr(IpAttr::V4Dst.into(), &dst.octets());
                }
                (src, dst) => {
                    ip.attr(IpAttr::V6Src.into(), &v6_octets(src));
                    ip.attr(IpAttr::V6Dst.into(), &v6_octets(dst));
                }
            }
        });
        tuple.nested(TupleAttr::Proto.into(), |proto| {
            proto.attr(ProtoAttr::Num.into(), &[key.protocol]);
            match key.protocol {
                protocol::ICMP | protocol::ICMPV6 => {
                    let [kind, code] = key.dst_port.to_be_bytes();
                    let (id_attr, type_attr, code_attr) = if key.protocol == protocol::ICMP {
                        (ProtoAttr::IcmpId, ProtoAttr::IcmpType, ProtoAttr::IcmpCode)
                    } else {
                        (
                            ProtoAttr::Icmpv6Id,
                            ProtoAttr::Icmpv6Type,
                            ProtoAttr::Icmpv6Code,
                        )
                    };
                    proto.attr(id_attr.into(), &key.src_port.to_be_bytes());
                    proto.attr(type_attr.into(), &[kind]);
                    proto.attr(code_attr.into(), &[code]);
                }
                _ => {
                    proto.attr(ProtoAttr::SrcPort.into(), &key.src_port.to_be_bytes());
                    proto.attr(ProtoAttr::DstPort.into(), &key.dst_port.to_be_bytes());
                }
            }
        });
    });
}

/// Appends to `out` a request for the one entry whose original tuple is
/// `key`, answered by one message (no ACK:
/// [`netlink::Answered::ByOneMessage`]). One is sent for each TCP flow that
/// closes: built by hand ([`AttrWriter`]).
pub(crate) fn append_get_request(out: &mut Vec<u8>, key: &FlowKey, seq: u32) {
    netlink::append_message(
        out,
        netlink::message_type(SUBSYSTEM, MSG_GET),
        NlmF::REQUEST,
        seq,
        (family(key), 0),
        |attrs| write_tuple(attrs, key),
    );
}

/// A request to dump the whole table (both families).
pub(crate) fn dump_request(seq: u32) -> Vec<u8> {
    netlink::encode(
        netlink::message_type(SUBSYSTEM, MSG_GET),
        NlmF::REQUEST | NlmF::DUMP,
        seq,
        Nfgenmsg::<u16>::new(libc::AF_UNSPEC as u8, 0, Vec::new()),
    )
}

/// A request to dump the entries whose ct mark is `mark` (the kernel
/// filters them: `CTA_MARK` with an all-ones `CTA_MARK_MASK`).
pub(crate) fn dump_marked_request(mark: u32, seq: u32) -> Vec<u8> {
    netlink::encode(
        netlink::message_type(SUBSYSTEM, MSG_GET),
        NlmF::REQUEST | NlmF::DUMP,
        seq,
        Nfgenmsg::new(
            libc::AF_UNSPEC as u8,
            0,
            vec![
                netlink::attr_be32(CtAttr::Mark.into(), mark),
                netlink::attr_be32(CtAttr::MarkMask.into(), u32::MAX),
            ],
        ),
    )
}

/// Rebuilds a message as the kernel would send it, for tests and fuzz
/// seeds: an entry of `kind` for `key` with `id`, `mark` and `counters`.
#[cfg(test)]
pub(crate) fn encode_event(
    kind: CtEventKind,
    key: &FlowKey,
    id: u32,
    mark: u32,
    tcp_state: Option<u8>,
    counters: Option<DirectionCounters>,
) -> Vec<u8> {
    let (message, flags) = match kind {
        CtEventKind::New => (MSG_NEW, NlmF::CREATE | NlmF::EXCL),
        CtEventKind::Update => (MSG_NEW, NlmF::empty()),
        CtEventKind::Destroy => (MSG_DELETE, NlmF::empty()),
    };
    let mut bytes = Vec::new();
    netlink::append_message(
        &mut bytes,
        netlink::message_type(SUBSYSTEM, message),
        flags,
        0,
        (family(key), 0),
        |attrs| {
            write_tuple(attrs, key);
            attrs.attr(CtAttr::Id.into(), &id.to_be_bytes());
            attrs.attr(CtAttr::Mark.into(), &mark.to_be_bytes());
            if let Some(state) = tcp_state {
                attrs.nested(CtAttr::Protoinfo.into(), |protoinfo| {
                    protoinfo.nested(ProtoinfoAttr::Tcp.into(), |tcp| {
                        tcp.attr(TcpInfoAttr::State.into(), &[state]);
                    });
                });
            }
            for (which, counted) in counters.iter().flat_map(|counters| {
                [
                    (CtAttr::CountersOrig, counters.src),
                    (CtAttr::CountersReply, counters.dst),
                ]
            }) {
                attrs.nested(which.into(), |counter| {
                    counter.attr(CounterAttr::Packets.into(), &counted.packets.to_be_bytes());
                    counter.attr(CounterAttr::Bytes.into(), &counted.bytes.to_be_bytes());
                });
            }
        },
    );
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_corpus;
    use proptest::prelude::*;

    fn corpus() -> Vec<Vec<u8>> {
        test_corpus::real("ctnetlink")
    }

    /// Crash regressions and captured messages decode without a panic.
    #[test]
    fn the_whole_fuzz_corpus_decodes() {
        let (inputs, crashes) = test_corpus::all("ctnetlink");
        for input in inputs {
            let _ = decode_datagram(&input);
        }
        assert!(crashes >= 1);
    }

    #[test]
    fn real_events_decode() {
        let entries: Vec<CtEntry> = corpus()
            .iter()
            .flat_map(|datagram| {
                let (entries, malformed) = decode_datagram(datagram);
                assert_eq!(malformed, 0);
                entries
            })
            .collect();
        let count = |kind| entries.iter().filter(|e| e.kind == kind).count();
        assert!(count(CtEventKind::New) >= 8, "{entries:#?}");
        assert!(count(CtEventKind::Update) >= 2);
        assert_eq!(
            count(CtEventKind::New),
            count(CtEventKind::Destroy),
            "conntrack -F destroyed all"
        );
        for entry in entries.iter().filter(|e| e.kind == CtEventKind::Destroy) {
            let counters = entry.counters.expect("accounting was on");
            assert!(
                counters.src.packets >= 1 && counters.src.bytes >= 28,
                "{entry:?}"
            );
            assert!(
                entry.start_ns.is_some() && entry.stop_ns >= entry.start_ns,
                "{entry:?}"
            );
        }
        let protocols: std::collections::BTreeSet<u8> =
            entries.iter().map(|e| e.key.protocol).collect();
        assert_eq!(
            protocols.into_iter().collect::<Vec<_>>(),
            vec![1, 6, 17, 58]
        );
        let echo = entries
            .iter()
            .find(|e| e.key.protocol == protocol::ICMPV6)
            .unwrap();
        assert_eq!(
            (echo.key.src_port, echo.key.dst_port),
            (4242, 128 << 8),
            "ICMPv6 key convention"
        );
        assert!(
            entries
                .iter()
                .any(|e| e.tcp_state == Some(TCP_STATE_TIME_WAIT))
        );
    }

    fn any_key() -> impl Strategy<Value = FlowKey> {
        let v4 = (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b)));
        let v6 = (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b)));
        (
            prop_oneof![v4, v6],
            prop::sample::select(vec![1u8, 6, 17, 58, 132]),
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(
                |((src_addr, dst_addr), protocol, src_port, dst_port)| FlowKey {
                    src_addr,
                    src_port,
                    dst_addr,
                    dst_port,
                    protocol,
                },
            )
    }

    #[test]
    fn the_event_time_is_decoded() {
        let key = FlowKey::tcp(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let mut message = encode_event(CtEventKind::New, &key, 7, 1, None, None);
        let (entries, _) = decode_datagram(&message);
        assert_eq!(entries[0].event_ns, None, "an older kernel sends none");
        // Appended as the kernel does, last; the message grows by it.
        // (An attribute: length and type, native order; a big-endian u64.)
        message.extend_from_slice(&12u16.to_ne_bytes());
        message.extend_from_slice(&u16::from(CtAttr::TimestampEvent).to_ne_bytes());
        message.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
        let length = u32::try_from(message.len()).unwrap();
        message[..4].copy_from_slice(&length.to_ne_bytes());
        let (entries, malformed) = decode_datagram(&message);
        assert_eq!(malformed, 0);
        assert_eq!(entries[0].event_ns, Some(1_700_000_000_123));
    }

    proptest! {
        #[test]
        fn entries_round_trip(
            key in any_key(),
            kind in prop::sample::select(vec![CtEventKind::New, CtEventKind::Update, CtEventKind::Destroy]),
            id: u32,
            mark: u32,
            tcp_state in proptest::option::of(0u8..10),
            counters in proptest::option::of((0u64..1 << 40, 0u64..1 << 50, 0u64..1 << 40, 0u64..1 << 50)),
        ) {
            let counters = counters.map(|(p, b, rp, rb)| {
                DirectionCounters::new(Counters::new(p, b), Counters::new(rp, rb))
            });
            let bytes = encode_event(kind, &key, id, mark, tcp_state, counters);
            let (entries, malformed) = decode_datagram(&bytes);
            prop_assert_eq!(malformed, 0);
            prop_assert_eq!(entries.len(), 1);
            let entry = &entries[0];
            prop_assert_eq!(entry.kind, kind);
            prop_assert_eq!(entry.key, key);
            prop_assert_eq!((entry.id, entry.mark, entry.tcp_state, entry.counters), (id, mark, tcp_state, counters));
        }

        #[test]
        fn get_requests_carry_the_tuple(key in any_key(), seq: u32) {
            let mut request = Vec::new();
            append_get_request(&mut request, &key, seq);
            // A GET request has the layout of an entry message: decode it as one.
            let (messages, malformed) = netlink::split(&request);
            prop_assert!(malformed.is_none());
            let netlink::Received::Message { payload, .. } = &messages[0] else {
                return Err(TestCaseError::fail("not a message"));
            };
            let attrs = netlink::payload_attrs(payload).unwrap();
            let tuple = attrs.nested(CtAttr::TupleOrig).unwrap().unwrap();
            prop_assert_eq!(decode_tuple(tuple).unwrap(), key);
        }

        #[test]
        fn mutated_real_messages_never_panic(datagram in test_corpus::mutated("ctnetlink")) {
            let _ = decode_datagram(&datagram);
        }

        #[test]
        fn arbitrary_bytes_never_panic(datagram in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_datagram(&datagram);
        }
    }
}
