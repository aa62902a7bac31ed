//! nfnetlink_log: binding a group, and decoding a logged packet into its
//! sequence number, prefix, hook, owner, flow key and (for DNS answers and
//! ClientHellos) payload.

use flow_core::FlowKey;
use neli::consts::netfilter::{LogCmd, LogCopyMode, NetfilterMsg, NfLogAttr, NfLogCfg};
use neli::consts::nl::NlmF;

use crate::netlink::{self, Nfgenmsg, attr};
use crate::packet::{self, Payload};

/// `NFULNL_CFG_F_SEQ`: number the packets of this group.
const FLAG_SEQUENCE: u16 = 1;

/// The prefix of the log rules flowtrack installs for new flows.
pub(crate) const NEW_FLOW_PREFIX: &str = "flowtrack:new";

/// The prefix of the log rules for the scope's DNS answers.
pub(crate) const DNS_PREFIX: &str = "flowtrack:dns";

/// The prefix of the log rule for the ClientHellos the scope sends.
pub(crate) const HELLO_PREFIX: &str = "flowtrack:hello";

/// Bytes of a new flow's first packet copied: enough for an IPv6 header
/// with a few extension headers and the transport header.
pub(crate) const NEW_FLOW_SNAPLEN: u32 = 160;

/// Room for the headers before a payload: IPv6 (40 bytes) with extension
/// headers, or TCP with options (up to 60).
const HEADER_ROOM: u32 = 120;

/// Payload bytes kept of a DNS answer or a ClientHello: EDNS answers of
/// 1232 bytes and more, ClientHellos of about 1.8 KB with post-quantum key
/// shares (a longer one is cut, and counted).
pub(crate) const PAYLOAD_MAX: u32 = 2047;

/// Bytes of a DNS answer or ClientHello packet copied.
pub(crate) const PAYLOAD_SNAPLEN: u32 = HEADER_ROOM + PAYLOAD_MAX;

/// Bytes of each packet the group copies to userspace at the most: the
/// largest snaplen of flowtrack's rules (each rule's own snaplen lowers it
/// for its packets; a deny rule without one copies this much).
pub(crate) const COPY_RANGE: u32 = PAYLOAD_SNAPLEN;

/// `NF_INET_LOCAL_OUT`: the hook of locally generated packets.
pub(crate) const HOOK_OUTPUT: u8 = 3;

/// A log prefix that marks a drop: `log group N prefix "flowtrack:deny…"`
/// on a drop rule makes the dropped packets `Denied` events.
pub const DENY_PREFIX: &str = "flowtrack:deny";

/// The configuration request binding `group` to this socket: copy the first
/// [`COPY_RANGE`] bytes, deliver each packet at once (queue threshold 1),
/// and number packets so that gaps show.
pub(crate) fn bind_request(group: u16, seq: u32) -> Vec<u8> {
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[u8::from(LogCopyMode::Packet), 0]);
    let attrs = vec![
        attr(NfLogCfg::Cmd.into(), [u8::from(LogCmd::Bind)]),
        attr(NfLogCfg::Mode.into(), mode),
        attr(NfLogCfg::QThresh.into(), 1u32.to_be_bytes()),
        attr(NfLogCfg::Timeout.into(), 1u32.to_be_bytes()),
        attr(NfLogCfg::Flags.into(), FLAG_SEQUENCE.to_be_bytes()),
    ];
    netlink::encode(
        u16::from(NetfilterMsg::LogConfig),
        NlmF::REQUEST | NlmF::ACK,
        seq,
        Nfgenmsg::new(libc::AF_UNSPEC as u8, group, attrs),
    )
}

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedPacket {
    /// The group's sequence number (counts from 0 per bind).
    pub(crate) seq: Option<u32>,
    /// The log rule's prefix.
    pub(crate) prefix: String,
    /// The netfilter hook that logged it (`NF_INET_*`).
    pub(crate) hook: Option<u8>,
    /// The owner of the local socket (egress only): user and group.
    pub(crate) uid: Option<u32>,
    /// See `uid`.
    pub(crate) gid: Option<u32>,
    /// The packet's flow, oriented as the packet travelled.
    pub(crate) key: Option<FlowKey>,
    /// A DNS answer's or ClientHello's transport payload.
    pub(crate) payload: Option<Payload>,
}

/// Why a message was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LogDecodeError {
    /// Not a logged packet.
    #[error("not an nflog packet message (type {0:#06x})")]
    NotAPacket(u16),
    /// Malformed.
    #[error("malformed nflog message: {0}")]
    Malformed(String),
}

/// Decodes an nfnetlink_log message of type `kind`.
pub(crate) fn decode(kind: u16, payload: &[u8]) -> Result<LoggedPacket, LogDecodeError> {
    if kind != u16::from(NetfilterMsg::LogPacket) {
        return Err(LogDecodeError::NotAPacket(kind));
    }
    let malformed = |e: netlink::Malformed| LogDecodeError::Malformed(e.to_string());
    let attrs = netlink::payload_attrs(payload).map_err(malformed)?;
    let be32 = |which: NfLogAttr| -> Result<Option<u32>, LogDecodeError> {
        Ok(attrs
            .get(which)
            .map_err(malformed)?
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .map(u32::from_be_bytes))
    };
    let prefix = attrs
        .get(NfLogAttr::Prefix)
        .map_err(malformed)?
        .map(|bytes| {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        })
        .unwrap_or_default();
    let with_payload = prefix == DNS_PREFIX || prefix == HELLO_PREFIX;
    let packet = attrs
        .get(NfLogAttr::Payload)
        .map_err(malformed)?
        .map(|bytes| packet::decode(bytes, with_payload))
        .unwrap_or_default();
    // nfulnl_msg_packet_hdr: hardware protocol (2 bytes), hook, padding.
    let hook = attrs
        .get(NfLogAttr::PacketHdr)
        .map_err(malformed)?
        .and_then(|header| header.get(2).copied());
    Ok(LoggedPacket {
        seq: be32(NfLogAttr::Seq)?,
        prefix,
        hook,
        uid: be32(NfLogAttr::Uid)?,
        gid: be32(NfLogAttr::Gid)?,
        key: packet.key,
        payload: packet.payload,
    })
}

/// Follows a group's sequence numbers and tells how many packets a gap
/// skipped (the kernel drops packets when the socket's queue is full).
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    next: Option<u32>,
}

impl Sequence {
    /// Records `seq`; returns how many numbers were skipped before it.
    pub(crate) fn observe(&mut self, seq: u32) -> u32 {
        let gap = self.next.map_or(0, |next| seq.wrapping_sub(next));
        self.next = Some(seq.wrapping_add(1));
        // A number from the past (reordering cannot happen on one socket,
        // but a rebind restarts at 0) is not a gap.
        if gap < u32::MAX / 2 { gap } else { 0 }
    }
}

/// Decodes every logged packet of a datagram; also returns how many
/// messages were malformed (a truncated tail counts one).
pub(crate) fn decode_datagram(datagram: &[u8]) -> (Vec<LoggedPacket>, usize) {
    let (messages, truncated) = netlink::split(datagram);
    let mut malformed = usize::from(truncated.is_some());
    let mut packets = Vec::new();
    for message in messages {
        if let netlink::Received::Message { kind, payload, .. } = message {
            match decode(kind, payload) {
                Ok(packet) => packets.push(packet),
                Err(LogDecodeError::NotAPacket(_)) => {}
                Err(error) => {
                    tracing::debug!(%error, "skipped an nflog message");
                    malformed += 1;
                }
            }
        }
    }
    (packets, malformed)
}

/// Rebuilds a logged-packet message as the kernel sends it, for tests and
/// fuzz seeds.
#[cfg(test)]
pub(crate) fn encode_packet(seq: u32, prefix: &str, packet: &[u8]) -> Vec<u8> {
    let family = if packet.first().is_some_and(|b| b >> 4 == 6) {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let attrs = vec![
        // Hardware protocol (unused), the output hook, padding.
        attr(NfLogAttr::PacketHdr.into(), [0, 0, HOOK_OUTPUT, 0]),
        netlink::attr_str(NfLogAttr::Prefix.into(), prefix),
        netlink::attr_be32(NfLogAttr::Seq.into(), seq),
        attr(NfLogAttr::Payload.into(), packet),
    ];
    netlink::encode(
        u16::from(NetfilterMsg::LogPacket),
        NlmF::empty(),
        0,
        Nfgenmsg::new(family as u8, 7, attrs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_corpus;
    use flow_core::protocol;
    use proptest::prelude::*;

    fn corpus() -> Vec<Vec<u8>> {
        test_corpus::real("nflog")
    }

    /// Crash regressions and captured messages decode without a panic.
    #[test]
    fn the_whole_fuzz_corpus_decodes() {
        let (inputs, crashes) = test_corpus::all("nflog");
        for input in inputs {
            let _ = decode_datagram(&input);
        }
        assert!(crashes >= 1);
    }

    #[test]
    fn real_logged_packets_decode() {
        let packets: Vec<LoggedPacket> = corpus()
            .iter()
            .flat_map(|datagram| {
                let (packets, malformed) = decode_datagram(datagram);
                assert_eq!(malformed, 0);
                packets
            })
            .collect();
        assert!(packets.iter().all(|p| p.seq.is_some() && p.key.is_some()));
        let denied: Vec<&LoggedPacket> = packets
            .iter()
            .filter(|p| p.prefix.starts_with(DENY_PREFIX))
            .collect();
        assert_eq!(denied.len(), 2, "one UDP datagram to port 9 per family");
        assert!(
            denied
                .iter()
                .all(|p| p.key.unwrap().dst_port == 9 && p.key.unwrap().protocol == protocol::UDP)
        );
        let protocols: std::collections::BTreeSet<u8> =
            packets.iter().map(|p| p.key.unwrap().protocol).collect();
        assert_eq!(
            protocols.into_iter().collect::<Vec<_>>(),
            vec![1, 6, 17, 58]
        );
        let echo = packets
            .iter()
            .find(|p| p.key.unwrap().protocol == protocol::ICMP)
            .unwrap()
            .key
            .unwrap();
        assert_eq!(
            (echo.src_port, echo.dst_port),
            (4242, 8 << 8),
            "ICMP key convention"
        );
    }

    #[test]
    fn real_dns_answers_and_client_hellos_decode_with_their_payload() {
        let (packets, _) = decode_datagram(&corpus().concat());
        let with = |prefix: &str| -> Vec<&LoggedPacket> {
            packets.iter().filter(|p| p.prefix == prefix).collect()
        };
        let answers = with(DNS_PREFIX);
        assert_eq!(answers.len(), 2, "one lookup per family");
        for answer in answers {
            let payload = answer.payload.as_ref().unwrap();
            assert_eq!(answer.key.unwrap().src_port, 53);
            assert_eq!(payload.tcp_seq, None);
            assert_eq!(&payload.bytes[..2], &[0x42, 0x42], "the answer's id");
            assert_eq!(payload.original_len, payload.bytes.len());
        }
        let hellos = with(HELLO_PREFIX);
        assert_eq!(hellos.len(), 2, "one ClientHello per family");
        for hello in hellos {
            let payload = hello.payload.as_ref().unwrap();
            assert!(payload.tcp_seq.is_some());
            assert_eq!((payload.bytes[0], payload.bytes[5]), (0x16, 0x01));
            assert_eq!(payload.original_len, payload.bytes.len(), "copied whole");
            assert!(payload.bytes.windows(8).any(|w| w == b"pypi.org"));
        }
        assert!(
            with(NEW_FLOW_PREFIX)
                .iter()
                .all(|p| p.payload.is_none() && p.hook == Some(HOOK_OUTPUT) && p.uid == Some(0))
        );
    }

    #[test]
    fn dns_answers_and_client_hellos_carry_their_payload() {
        let segment = crate::packet::tests::tcp_v4(77, b"\x16\x03\x01");
        for (prefix, kept) in [
            (DNS_PREFIX, true),
            (HELLO_PREFIX, true),
            (NEW_FLOW_PREFIX, false),
            (DENY_PREFIX, false),
        ] {
            let (packets, malformed) = decode_datagram(&encode_packet(1, prefix, &segment));
            assert_eq!((packets.len(), malformed), (1, 0));
            let packet = &packets[0];
            assert_eq!(packet.hook, Some(HOOK_OUTPUT));
            assert!(packet.key.is_some());
            assert_eq!(packet.payload.is_some(), kept, "{prefix}");
            if let Some(payload) = &packet.payload {
                assert_eq!((payload.tcp_seq, payload.bytes.len()), (Some(77), 3));
            }
        }
    }

    #[test]
    fn gaps_in_sequence_numbers_are_counted() {
        let mut sequence = Sequence::default();
        assert_eq!(sequence.observe(0), 0);
        assert_eq!(sequence.observe(1), 0);
        assert_eq!(sequence.observe(5), 3);
        assert_eq!(sequence.observe(0), 0, "a restart is not a gap");
        let mut sequence = Sequence::default();
        assert_eq!(sequence.observe(u32::MAX), 0);
        assert_eq!(sequence.observe(2), 2, "wraps around");
    }

    proptest! {
        #[test]
        fn logged_packets_round_trip(seq: u32, prefix in "[a-z:]{0,30}", sport: u16, dport: u16) {
            let mut packet = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
            packet.extend_from_slice(&sport.to_be_bytes());
            packet.extend_from_slice(&dport.to_be_bytes());
            packet.extend_from_slice(&[0, 8, 0, 0]);
            let (packets, malformed) = decode_datagram(&encode_packet(seq, &prefix, &packet));
            prop_assert_eq!(malformed, 0);
            prop_assert_eq!(packets.len(), 1);
            prop_assert_eq!(packets[0].seq, Some(seq));
            prop_assert_eq!(&packets[0].prefix, &prefix);
            let key = packets[0].key.unwrap();
            prop_assert_eq!((key.src_port, key.dst_port, key.protocol), (sport, dport, 17));
        }

        #[test]
        fn any_payload_bytes_are_safe(seq: u32, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (packets, _) = decode_datagram(&encode_packet(seq, "x", &payload));
            prop_assert_eq!(packets.len(), 1);
        }

        #[test]
        fn mutated_real_messages_never_panic(datagram in test_corpus::mutated("nflog")) {
            let _ = decode_datagram(&datagram);
        }

        #[test]
        fn arbitrary_bytes_never_panic(datagram in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_datagram(&datagram);
        }
    }
}
