use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::protocol;

/// The 5-tuple of one flow, oriented initiator → responder.
///
/// This is conntrack's "original" tuple: for an outbound connection `src` is
/// the local socket; for an accepted inbound connection `src` is the remote
/// peer. Every backend orients keys this way, so the same flow has the same
/// key whichever backend saw it.
///
/// `protocol` is the IANA number ([`crate::protocol`]). For TCP and UDP the
/// ports are the transport ports. ICMP and ICMPv6 have no ports; their keys
/// carry the echo identifier in `src_port` and the initiating message's
/// `type << 8 | code` in `dst_port` (see [`FlowKey::icmp`]).
///
/// ```
/// use flow_core::FlowKey;
/// // An outbound connection: the local socket is the source.
/// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "93.184.216.34:443".parse()?);
/// assert_eq!(key.to_string(), "tcp 10.0.0.1:40000 -> 93.184.216.34:443");
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Address of the initiator.
    pub src_addr: IpAddr,
    /// Port of the initiator (ICMP: echo identifier).
    pub src_port: u16,
    /// Address of the responder.
    pub dst_addr: IpAddr,
    /// Port of the responder (ICMP: `type << 8 | code`).
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
}

impl FlowKey {
    /// A key from two socket addresses and a protocol number.
    ///
    /// ```
    /// use flow_core::{FlowKey, protocol};
    /// let key = FlowKey::new("[::1]:5000".parse()?, "[::1]:53".parse()?, protocol::UDP);
    /// assert_eq!(key.dst_port, 53);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn new(src: SocketAddr, dst: SocketAddr, protocol: u8) -> Self {
        Self {
            src_addr: src.ip(),
            src_port: src.port(),
            dst_addr: dst.ip(),
            dst_port: dst.port(),
            protocol,
        }
    }

    /// A TCP key.
    ///
    /// ```
    /// use flow_core::FlowKey;
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// assert_eq!(key.protocol, 6);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(src, dst, protocol::TCP)
    }

    /// A UDP key.
    ///
    /// ```
    /// use flow_core::FlowKey;
    /// let key = FlowKey::udp("10.0.0.1:5353".parse()?, "10.0.0.2:53".parse()?);
    /// assert_eq!(key.protocol, 17);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(src, dst, protocol::UDP)
    }

    /// An ICMP key (ICMPv6 when `src` is an IPv6 address).
    ///
    /// The echo identifier goes in `src_port`, `icmp_type << 8 | code` of the
    /// message that started the exchange (echo request: type 8, or 128 for
    /// ICMPv6) in `dst_port`.
    ///
    /// ```
    /// use flow_core::{FlowKey, protocol};
    /// let key = FlowKey::icmp("10.0.0.1".parse()?, "10.0.0.2".parse()?, 8, 0, 77);
    /// assert_eq!((key.protocol, key.src_port, key.dst_port), (protocol::ICMP, 77, 8 << 8));
    /// let key6 = FlowKey::icmp("::1".parse()?, "::1".parse()?, 128, 0, 77);
    /// assert_eq!(key6.protocol, protocol::ICMPV6);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, code: u8, identifier: u16) -> Self {
        let protocol = if src.is_ipv6() {
            protocol::ICMPV6
        } else {
            protocol::ICMP
        };
        Self {
            src_addr: src,
            src_port: identifier,
            dst_addr: dst,
            dst_port: u16::from(icmp_type) << 8 | u16::from(code),
            protocol,
        }
    }

    /// The initiator's socket address.
    ///
    /// ```
    /// use flow_core::FlowKey;
    /// let key = FlowKey::tcp("[::1]:40000".parse()?, "[::1]:80".parse()?);
    /// assert_eq!(key.src().to_string(), "[::1]:40000");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.src_addr, self.src_port)
    }

    /// The responder's socket address.
    ///
    /// ```
    /// use flow_core::FlowKey;
    /// let key = FlowKey::udp("10.0.0.1:5353".parse()?, "10.0.0.2:53".parse()?);
    /// assert_eq!(key.dst().port(), 53);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.dst_addr, self.dst_port)
    }

    /// The same flow seen from the other end: source and destination swapped.
    ///
    /// Backends that see a reply packet first use this to find the flow's
    /// key; reversing twice gives the key back.
    ///
    /// ```
    /// use flow_core::FlowKey;
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// assert_eq!(key.reversed().src_port, 80);
    /// assert_eq!(key.reversed().reversed(), key);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            src_port: self.dst_port,
            dst_addr: self.src_addr,
            dst_port: self.src_port,
            protocol: self.protocol,
        }
    }

    /// The protocol's display name (`tcp`, `udp`, …, or its number).
    ///
    /// ```
    /// use flow_core::FlowKey;
    /// let key = FlowKey::new("10.0.0.1:1".parse()?, "10.0.0.2:2".parse()?, 132);
    /// assert_eq!(key.protocol_name().to_string(), "132");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn protocol_name(&self) -> protocol::Display {
        protocol::Display(self.protocol)
    }
}

impl fmt::Display for FlowKey {
    /// `tcp 10.0.0.1:40000 -> 10.0.0.2:80`; IPv6 addresses in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.protocol_name(),
            self.src(),
            self.dst()
        )
    }
}
