//! A hand-written IPFIX (RFC 7011) encoder for flowtrack's two record
//! layouts: RFC 5103 biflows over IPv4 (template 256) and IPv6 (257).
//!
//! No crate was used: the layout is fixed and tiny (two templates), the
//! encoder writes into one reused buffer without allocating per record,
//! and the crates that encode IPFIX are either unmaintained or pull in a
//! large dependency tree (see `/work/notes/research-export.md` in the
//! project's history: `netflow_parser` allocates per field, NetGauze's
//! build brings TLS crates our license policy refuses).
//!
//! Each record is one flow, the initiator as source: forward counters
//! (IEs 1, 2) are what the initiator sent, the reverse ones (enterprise
//! 29305, IEs 1 and 2: the only reverse IEs nfdump maps) what the
//! responder sent. Counters are deltas: an update record carries what
//! the flow carried since its previous record, so a collector adds the
//! records of one flow up to its totals.

use std::net::IpAddr;

use flow_core::counters::DirectionCounters;
use flow_core::{CloseReason, FlowKey};

/// The IPFIX version number.
const VERSION: u16 = 10;
/// The message header's length.
const HEADER: usize = 16;
/// A set header's length.
const SET_HEADER: usize = 4;
/// The set id of a template set.
const TEMPLATE_SET: u16 = 2;
/// The template of IPv4 biflows.
pub const TEMPLATE_V4: u16 = 256;
/// The template of IPv6 biflows.
pub const TEMPLATE_V6: u16 = 257;
/// The IANA enterprise number of RFC 5103 reverse information elements.
const REVERSE_PEN: u32 = 29_305;
/// The largest message sent over UDP: below a 1,500-byte MTU with the IP
/// and UDP headers.
pub const MAX_UDP_MESSAGE: usize = 1_400;
/// The largest message sent over TCP (the header's length field is 16 bits).
pub const MAX_TCP_MESSAGE: usize = 65_535;

/// One field of a template: information element id, length, and whether
/// it is the reverse (RFC 5103) of that element.
type Field = (u16, u16, bool);

/// The fields after the addresses, in order: ports, protocol, the
/// initiator's octets and packets, start and end (ms since the epoch), the
/// end reason, the responder's octets and packets.
const COMMON: [Field; 10] = [
    (7, 2, false),   // sourceTransportPort
    (11, 2, false),  // destinationTransportPort
    (4, 1, false),   // protocolIdentifier
    (1, 8, false),   // octetDeltaCount
    (2, 8, false),   // packetDeltaCount
    (152, 8, false), // flowStartMilliseconds
    (153, 8, false), // flowEndMilliseconds
    (136, 1, false), // flowEndReason
    (1, 8, true),    // reverseOctetDeltaCount
    (2, 8, true),    // reversePacketDeltaCount
];

/// A data record's length, by family.
const fn record_len(address: usize) -> usize {
    2 * address + 2 + 2 + 1 + 8 + 8 + 8 + 8 + 1 + 8 + 8
}

/// `flowEndReason` (IANA registry, IE 136).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// 1: idle timeout.
    Idle = 1,
    /// 2: active timeout (an interim record of a flow still open).
    Active = 2,
    /// 3: end of flow detected (FIN, reset, its socket released).
    EndOfFlow = 3,
    /// 4: forced end (the observed scope ended).
    Forced = 4,
}

impl EndReason {
    /// The reason a closed flow's record carries: FIN, reset and a
    /// released socket are ends of flow; idle is idle; the scope's end
    /// forces it; an unknown reason (nflog: conntrack destroyed the entry,
    /// which for flows without a TCP end is its timeout) is idle.
    #[must_use]
    pub fn of_close(reason: Option<CloseReason>) -> Self {
        match reason {
            Some(CloseReason::Fin | CloseReason::Reset | CloseReason::SocketReleased) => {
                Self::EndOfFlow
            }
            Some(CloseReason::ScopeEnded) => Self::Forced,
            _ => Self::Idle,
        }
    }
}

/// One flow record, as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// The flow, initiator first.
    pub key: FlowKey,
    /// What each direction carried since the flow's previous record.
    pub counters: DirectionCounters,
    /// When the flow started, ms since the UNIX epoch.
    pub start_ms: u64,
    /// When this record ends (the close, or the update), ms since the
    /// UNIX epoch.
    pub end_ms: u64,
    /// Why.
    pub reason: EndReason,
}

/// Builds IPFIX messages into one reused buffer: a template set when asked
/// for, then data sets, one per run of records of the same family.
#[derive(Debug)]
pub struct Encoder {
    buffer: Vec<u8>,
    max_len: usize,
    domain: u32,
    /// Where the open data set's header is, and its template.
    open_set: Option<(usize, u16)>,
    records: u32,
}

impl Encoder {
    /// An encoder of messages of at most `max_len` bytes (at least room
    /// for the templates and one record) for observation domain `domain`.
    #[must_use]
    pub fn new(max_len: usize, domain: u32) -> Self {
        Self {
            buffer: Vec::with_capacity(max_len),
            max_len: max_len.max(HEADER + templates_len() + SET_HEADER + record_len(16)),
            domain,
            open_set: None,
            records: 0,
        }
    }

    /// Starts a message: its header (length, time and sequence number are
    /// set by [`Encoder::finish`]), and the templates when `templates`.
    pub fn start(&mut self, templates: bool) {
        self.buffer.clear();
        self.buffer.resize(HEADER, 0);
        self.open_set = None;
        self.records = 0;
        if templates {
            write_templates(&mut self.buffer);
        }
    }

    /// Data records in the message so far.
    #[must_use]
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Adds `record` if the message has room for it (else `false`: finish
    /// this message and start another).
    pub fn push(&mut self, record: &FlowRecord) -> bool {
        let (template, address) = match (record.key.src_addr, record.key.dst_addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (TEMPLATE_V4, 4),
            _ => (TEMPLATE_V6, 16),
        };
        let set_needed = self.open_set.is_none_or(|(_, open)| open != template);
        let needed = record_len(address) + if set_needed { SET_HEADER } else { 0 };
        if self.buffer.len() + needed > self.max_len {
            return false;
        }
        if set_needed {
            self.close_set();
            self.open_set = Some((self.buffer.len(), template));
            self.buffer.extend_from_slice(&template.to_be_bytes());
            self.buffer.extend_from_slice(&[0, 0]);
        }
        let buffer = &mut self.buffer;
        match (record.key.src_addr, record.key.dst_addr) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                buffer.extend_from_slice(&src.octets());
                buffer.extend_from_slice(&dst.octets());
            }
            (src, dst) => {
                buffer.extend_from_slice(&v6(src).octets());
                buffer.extend_from_slice(&v6(dst).octets());
            }
        }
        buffer.extend_from_slice(&record.key.src_port.to_be_bytes());
        buffer.extend_from_slice(&record.key.dst_port.to_be_bytes());
        buffer.push(record.key.protocol);
        buffer.extend_from_slice(&record.counters.src.bytes.to_be_bytes());
        buffer.extend_from_slice(&record.counters.src.packets.to_be_bytes());
        buffer.extend_from_slice(&record.start_ms.to_be_bytes());
        buffer.extend_from_slice(&record.end_ms.to_be_bytes());
        buffer.push(record.reason as u8);
        buffer.extend_from_slice(&record.counters.dst.bytes.to_be_bytes());
        buffer.extend_from_slice(&record.counters.dst.packets.to_be_bytes());
        self.records += 1;
        true
    }

    /// Finishes the message: its length, export time (UNIX seconds), the
    /// sequence number (data records sent before it in this session) and
    /// observation domain. The message is ready to send.
    pub fn finish(&mut self, export_secs: u32, sequence: u32) -> &[u8] {
        self.close_set();
        let len = u16::try_from(self.buffer.len()).unwrap_or(u16::MAX);
        let header = &mut self.buffer[..HEADER];
        header[0..2].copy_from_slice(&VERSION.to_be_bytes());
        header[2..4].copy_from_slice(&len.to_be_bytes());
        header[4..8].copy_from_slice(&export_secs.to_be_bytes());
        header[8..12].copy_from_slice(&sequence.to_be_bytes());
        header[12..16].copy_from_slice(&self.domain.to_be_bytes());
        &self.buffer
    }

    /// Writes the open data set's length.
    fn close_set(&mut self) {
        if let Some((at, _)) = self.open_set.take() {
            let len = u16::try_from(self.buffer.len() - at).unwrap_or(u16::MAX);
            self.buffer[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// An address as IPv6 (an IPv4 one mapped), for a flow whose two ends
/// differ in family (never from a backend; a replayed file may hold one).
fn v6(addr: IpAddr) -> std::net::Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The template set's length.
const fn templates_len() -> usize {
    SET_HEADER + 2 * (4 + 2 * 4 + (COMMON.len() - 2) * 4 + 2 * 8)
}

/// Appends the template set: both templates.
fn write_templates(buffer: &mut Vec<u8>) {
    buffer.extend_from_slice(&TEMPLATE_SET.to_be_bytes());
    buffer.extend_from_slice(&(templates_len() as u16).to_be_bytes());
    for (template, (src, dst, len)) in [(TEMPLATE_V4, (8, 12, 4)), (TEMPLATE_V6, (27, 28, 16))] {
        buffer.extend_from_slice(&template.to_be_bytes());
        buffer.extend_from_slice(&(COMMON.len() as u16 + 2).to_be_bytes());
        let addresses: [Field; 2] = [(src, len, false), (dst, len, false)];
        for (id, len, reverse) in addresses.iter().chain(&COMMON) {
            if *reverse {
                buffer.extend_from_slice(&(id | 0x8000).to_be_bytes());
                buffer.extend_from_slice(&len.to_be_bytes());
                buffer.extend_from_slice(&REVERSE_PEN.to_be_bytes());
            } else {
                buffer.extend_from_slice(&id.to_be_bytes());
                buffer.extend_from_slice(&len.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flow_core::counters::Counters;

    use super::*;

    fn record(key: FlowKey) -> FlowRecord {
        FlowRecord {
            key,
            counters: DirectionCounters::new(Counters::new(10, 1_234), Counters::new(7, 56_789)),
            start_ms: 1_795_927_209_152,
            end_ms: 1_795_927_210_402,
            reason: EndReason::EndOfFlow,
        }
    }

    #[test]
    fn a_v4_record_after_its_template_is_laid_out_as_rfc_7011_says() {
        let mut encoder = Encoder::new(MAX_UDP_MESSAGE, 1);
        encoder.start(true);
        let key = FlowKey::tcp(
            "10.1.2.3:40000".parse().unwrap(),
            "192.0.2.80:443".parse().unwrap(),
        );
        assert!(encoder.push(&record(key)));
        let message = encoder.finish(1_795_927_210, 0).to_vec();
        assert_eq!(
            message.len(),
            HEADER + templates_len() + SET_HEADER + record_len(4)
        );
        assert_eq!(&message[0..4], &[0, 10, 0, message.len() as u8]);
        assert_eq!(&message[12..16], &[0, 0, 0, 1]);
        // The template set: id 2, both templates of 12 fields.
        assert_eq!(&message[16..20], &[0, 2, 0, templates_len() as u8]);
        assert_eq!(&message[20..24], &[1, 0, 0, 12]);
        // The data set of template 256, then the addresses and ports.
        let data = HEADER + templates_len();
        assert_eq!(&message[data..data + 2], &[1, 0]);
        assert_eq!(&message[data + 4..data + 12], &[10, 1, 2, 3, 192, 0, 2, 80]);
        assert_eq!(&message[data + 12..data + 17], &[0x9c, 0x40, 0x01, 0xbb, 6]);
    }

    #[test]
    fn records_that_do_not_fit_are_refused() {
        let mut encoder = Encoder::new(MAX_UDP_MESSAGE, 1);
        encoder.start(false);
        let key = FlowKey::udp(
            "[2001:db8::1]:40000".parse().unwrap(),
            "[2001:db8::80]:53".parse().unwrap(),
        );
        let mut pushed = 0;
        while encoder.push(&record(key)) {
            pushed += 1;
        }
        assert_eq!(
            pushed,
            (MAX_UDP_MESSAGE - HEADER - SET_HEADER) / record_len(16)
        );
        assert!(encoder.finish(0, 0).len() <= MAX_UDP_MESSAGE);
    }

    mod round_trip {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

        use flow_core::counters::Counters;
        use proptest::prelude::*;

        use super::super::super::decode::decode;
        use super::*;

        fn address(v6: bool) -> impl Strategy<Value = IpAddr> {
            if v6 {
                any::<u128>()
                    .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
                    .boxed()
            } else {
                any::<u32>()
                    .prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)))
                    .boxed()
            }
        }

        fn record() -> impl Strategy<Value = FlowRecord> {
            let reason = prop_oneof![
                Just(EndReason::Idle),
                Just(EndReason::Active),
                Just(EndReason::EndOfFlow),
                Just(EndReason::Forced),
            ];
            any::<bool>()
                .prop_flat_map(|v6| (address(v6), address(v6)))
                .prop_flat_map(move |(src, dst)| {
                    (
                        Just((src, dst)),
                        any::<(u16, u16, u8)>(),
                        any::<[u64; 4]>(),
                        any::<(u64, u64)>(),
                        reason.clone(),
                    )
                })
                .prop_map(
                    |((src, dst), (sport, dport, protocol), c, (start_ms, end_ms), reason)| {
                        FlowRecord {
                            key: FlowKey {
                                src_addr: src,
                                dst_addr: dst,
                                src_port: sport,
                                dst_port: dport,
                                protocol,
                            },
                            counters: DirectionCounters::new(
                                Counters::new(c[0], c[1]),
                                Counters::new(c[2], c[3]),
                            ),
                            start_ms,
                            end_ms,
                            reason,
                        }
                    },
                )
        }

        proptest! {
            /// What the encoder writes, an independent decoder
            /// (netflow_parser) reads back to the same records, in order,
            /// over messages of either transport's size.
            #[test]
            fn records_decode_to_what_was_encoded(
                records in proptest::collection::vec(record(), 1..60),
                tcp in any::<bool>(),
            ) {
                let mut encoder = Encoder::new(if tcp { MAX_TCP_MESSAGE } else { MAX_UDP_MESSAGE }, 7);
                let mut stream = Vec::new();
                let mut sequence = 0;
                encoder.start(true);
                for record in &records {
                    if !encoder.push(record) {
                        sequence += encoder.records();
                        stream.extend_from_slice(encoder.finish(1, sequence - encoder.records()));
                        encoder.start(true);
                        prop_assert!(encoder.push(record));
                    }
                }
                stream.extend_from_slice(encoder.finish(1, sequence));
                let decoded = decode(&stream);
                prop_assert_eq!(decoded.records, records);
            }
        }
    }
}
