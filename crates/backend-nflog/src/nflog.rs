//! nfnetlink_log: binding a group, and decoding a logged packet into its
//! sequence number, prefix, owner and flow key.

use std::net::IpAddr;

use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
use flow_core::FlowKey;
use neli::attr::Attribute;
use neli::consts::netfilter::{LogCmd, LogCopyMode, NetfilterMsg, NfLogAttr, NfLogCfg};
use neli::consts::nl::NlmF;
use neli::types::Buffer;

use crate::netlink::{self, Nfgenmsg, attr};

/// `NFULNL_CFG_F_SEQ`: number the packets of this group.
const FLAG_SEQUENCE: u16 = 1;

/// Bytes of each packet copied to userspace: enough for an IPv6 header
/// with a few extension headers and the transport header.
pub(crate) const COPY_RANGE: u32 = 160;

/// The prefix of the log rules flowtrack installs for new flows.
pub(crate) const NEW_FLOW_PREFIX: &str = "flowtrack:new";

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
    /// The owner of the local socket (egress only).
    pub(crate) uid: Option<u32>,
    /// The packet's flow, oriented as the packet travelled.
    pub(crate) key: Option<FlowKey>,
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
pub(crate) fn decode(kind: u16, payload: &Buffer) -> Result<LoggedPacket, LogDecodeError> {
    if kind != u16::from(NetfilterMsg::LogPacket) {
        return Err(LogDecodeError::NotAPacket(kind));
    }
    let message = netlink::decode_payload::<NfLogAttr>(payload)
        .map_err(|e| LogDecodeError::Malformed(e.to_string()))?;
    let attrs = message.attrs.get_attr_handle();
    let be32 = |which| {
        attrs
            .get_attribute(which)
            .and_then(|a| <[u8; 4]>::try_from(a.payload().as_ref()).ok())
            .map(u32::from_be_bytes)
    };
    let prefix = attrs
        .get_attribute(NfLogAttr::Prefix)
        .map(|a| {
            let bytes = a.payload().as_ref();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        })
        .unwrap_or_default();
    let key = attrs
        .get_attribute(NfLogAttr::Payload)
        .and_then(|a| packet_key(a.payload().as_ref()));
    Ok(LoggedPacket {
        seq: be32(NfLogAttr::Seq),
        prefix,
        uid: be32(NfLogAttr::Uid),
        key,
    })
}

/// The flow of an IP packet (possibly cut short after its transport
/// header), oriented as it travelled; `None` when it cannot be told.
pub(crate) fn packet_key(packet: &[u8]) -> Option<FlowKey> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let (src_addr, dst_addr, protocol): (IpAddr, IpAddr, u8) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
        ),
        _ => return None,
    };
    let (src_port, dst_port) = match sliced.transport {
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
    Some(FlowKey {
        src_addr,
        src_port,
        dst_addr,
        dst_port,
        protocol,
    })
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
