//! The IP packet an nflog message carries, cut to its rule's snaplen: the
//! flow it belongs to and, for a logged DNS answer or ClientHello, its
//! transport payload.

use std::net::IpAddr;

use etherparse::{
    IcmpEchoHeader, Icmpv4Type, Icmpv6Type, Ipv6Header, LaxNetSlice, LaxSlicedPacket,
    TransportSlice, UdpHeader,
};
use flow_core::FlowKey;

/// A logged packet's transport payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payload {
    /// The TCP segment's sequence number; `None` for a UDP datagram.
    pub(crate) tcp_seq: Option<u32>,
    /// The payload bytes the log copied.
    pub(crate) bytes: Vec<u8>,
    /// The payload's whole length as the packet's headers give it (more
    /// than `bytes` holds when the copy was cut).
    pub(crate) original_len: usize,
}

/// What a logged packet tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Packet {
    /// The packet's flow, oriented as it travelled; `None` when it cannot
    /// be told.
    pub(crate) key: Option<FlowKey>,
    /// The TCP or UDP payload, when asked for and there is one.
    pub(crate) payload: Option<Payload>,
}

/// Decodes an IP packet (possibly cut short anywhere); its payload too
/// when `with_payload`.
pub(crate) fn decode(packet: &[u8], with_payload: bool) -> Packet {
    let Ok(sliced) = LaxSlicedPacket::from_ip(packet) else {
        return Packet::default();
    };
    // Where the IP packet ends as its header says: past the copy when the
    // log cut it.
    let (src_addr, dst_addr, protocol, claimed_len): (IpAddr, IpAddr, u8, usize) = match &sliced.net
    {
        Some(LaxNetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
            usize::from(ip.header().total_len()),
        ),
        Some(LaxNetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
            Ipv6Header::LEN + usize::from(ip.header().payload_length()),
        ),
        _ => return Packet::default(),
    };
    let (src_port, dst_port) = match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => (tcp.source_port(), tcp.destination_port()),
        Some(TransportSlice::Udp(udp)) => (udp.source_port(), udp.destination_port()),
        Some(TransportSlice::Icmpv4(icmp)) => match icmp.icmp_type() {
            Icmpv4Type::EchoRequest(IcmpEchoHeader { id, .. }) => (id, 8 << 8),
            Icmpv4Type::EchoReply(IcmpEchoHeader { id, .. }) => (id, 8 << 8),
            _ => (
                0,
                u16::from(icmp.type_u8()) << 8 | u16::from(icmp.code_u8()),
            ),
        },
        Some(TransportSlice::Icmpv6(icmp)) => match icmp.icmp_type() {
            Icmpv6Type::EchoRequest(IcmpEchoHeader { id, .. }) => (id, 128 << 8),
            Icmpv6Type::EchoReply(IcmpEchoHeader { id, .. }) => (id, 128 << 8),
            _ => (
                0,
                u16::from(icmp.type_u8()) << 8 | u16::from(icmp.code_u8()),
            ),
        },
        _ => (0, 0),
    };
    let payload = match &sliced.transport {
        Some(TransportSlice::Udp(udp)) if with_payload => Some(Payload {
            tcp_seq: None,
            bytes: udp.payload().to_vec(),
            original_len: usize::from(udp.length())
                .saturating_sub(UdpHeader::LEN)
                .max(udp.payload().len()),
        }),
        Some(TransportSlice::Tcp(tcp)) if with_payload => {
            let bytes = tcp.payload();
            // The payload's offset in the packet: all headers before it.
            let offset = bytes.as_ptr().addr().saturating_sub(packet.as_ptr().addr());
            Some(Payload {
                tcp_seq: Some(tcp.sequence_number()),
                bytes: bytes.to_vec(),
                original_len: claimed_len.saturating_sub(offset).max(bytes.len()),
            })
        }
        _ => None,
    };
    Packet {
        key: Some(FlowKey {
            src_addr,
            src_port,
            dst_addr,
            dst_port,
            protocol,
        }),
        payload,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    /// A TCP segment 10.0.0.2:53 → 10.0.0.1:40000 with sequence number
    /// `seq` carrying `payload`.
    pub(crate) fn tcp_v4(seq: u32, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .tcp(53, 40000, seq, 1024)
            .ack(1);
        let mut packet = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut packet, payload).unwrap();
        packet
    }

    /// A UDP datagram [fd00::2]:53 → [fd00::1]:40000 carrying `payload`.
    pub(crate) fn udp_v6(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            64,
        )
        .udp(53, 40000);
        let mut packet = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut packet, payload).unwrap();
        packet
    }

    #[test]
    fn a_tcp_segment_gives_its_payload_and_sequence_number() {
        let packet = decode(&tcp_v4(4242, b"hello"), true);
        let key = packet.key.unwrap();
        assert_eq!((key.src_port, key.dst_port, key.protocol), (53, 40000, 6));
        assert_eq!(
            packet.payload,
            Some(Payload {
                tcp_seq: Some(4242),
                bytes: b"hello".to_vec(),
                original_len: 5
            })
        );
        assert_eq!(decode(&tcp_v4(1, b"x"), false).payload, None);
    }

    #[test]
    fn a_cut_copy_keeps_its_whole_length() {
        let payload = vec![7; 1000];
        for packet in [tcp_v4(9, &payload), udp_v6(&payload)] {
            let cut = &packet[..packet.len() - 400];
            let decoded = decode(cut, true);
            assert!(decoded.key.is_some());
            let payload = decoded.payload.unwrap();
            assert_eq!((payload.bytes.len(), payload.original_len), (600, 1000));
        }
    }

    #[test]
    fn a_datagram_gives_its_payload() {
        let packet = decode(&udp_v6(b"answer"), true);
        assert_eq!(
            packet.key.unwrap().src_addr,
            "fd00::2".parse::<IpAddr>().unwrap()
        );
        let payload = packet.payload.unwrap();
        assert_eq!(
            (payload.tcp_seq, &payload.bytes[..]),
            (None, &b"answer"[..])
        );
        assert_eq!(payload.original_len, 6);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), with_payload: bool) {
            let _ = decode(&bytes, with_payload);
        }

        #[test]
        fn any_cut_of_a_real_segment_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..400), cut: prop::sample::Index, flip: prop::sample::Index, byte: u8) {
            let mut packet = tcp_v4(1, &payload);
            let at = flip.index(packet.len());
            packet[at] ^= byte;
            packet.truncate(cut.index(packet.len() + 1));
            if let Some(payload) = decode(&packet, true).payload {
                prop_assert!(payload.original_len >= payload.bytes.len());
            }
        }
    }
}
