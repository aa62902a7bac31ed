//! Enforce mode with name rules: the scope's DNS goes through flowtrack's
//! own resolver, which allows an allowed name's answered addresses in the
//! kernel before it relays the answer, so that no connection to them can
//! come first (passive copies read afterwards would race the workload).
//!
//! The socket-address hooks rewrite a permitted `connect()` or `sendmsg()`
//! to port 53 (TCP or UDP) to the resolver (`127.0.0.1:PORT`, `[::1]:PORT`,
//! or `::ffff:127.0.0.1:PORT` for an IPv4-mapped server) and remember the
//! original server by socket cookie ([`DNS_ORIGINS_MAP`]); the egress
//! program, which sees the socket's source port (bound only after the
//! hook), files the original server under the client's address and port
//! ([`DNS_CLIENTS_MAP`]) for the resolver to read, and reports the flow as
//! the client made it (to the server, port 53); the ingress program
//! reports the answers as coming from the server; the `recvmsg` hooks give
//! the client the server's address as the answer's source.

/// Name of the read-only global (a `u16`, host order) that holds the
/// resolver's port on `127.0.0.1` and `[::1]` (TCP and UDP alike); 0 when
/// there is no resolver (nothing is redirected).
pub const RESOLVER_PORT_GLOBAL: &str = "RESOLVER_PORT";
/// Name of the map (LRU hash: socket cookie → [`RawEndpoint`]) of the DNS
/// servers the scope's redirected sockets asked for, as their `sockaddr`
/// named them (the hook's family; IPv4 in the first four bytes).
pub const DNS_ORIGINS_MAP: &str = "DNS_ORIGINS";
/// Name of the map (LRU hash: the client [`RawEndpoint`] → the server's
/// [`RawEndpoint`], both as packets carry them) the resolver reads.
pub const DNS_CLIENTS_MAP: &str = "DNS_CLIENTS";
/// Redirected sockets and clients remembered at most.
pub const DNS_REDIRECTS: u32 = 16_384;
/// The `cgroup/recvmsg4` program.
pub const RECVMSG4_PROGRAM: &str = "flowtrack_recvmsg4";
/// The `cgroup/recvmsg6` program.
pub const RECVMSG6_PROGRAM: &str = "flowtrack_recvmsg6";
/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// An address and port of one transport protocol (20 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RawEndpoint {
    /// Network order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// IANA protocol number (6 or 17).
    pub protocol: u8,
}

/// `::ffff:127.0.0.1`.
pub const MAPPED_LOOPBACK: [u8; 16] = crate::mapped_v4([127, 0, 0, 1]);
/// `::1`.
pub const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

impl RawEndpoint {
    /// The server as a packet names it: an IPv4-mapped IPv6 server (a
    /// dual-stack socket's) is an IPv4 one on the wire.
    #[must_use]
    pub fn on_the_wire(&self) -> Self {
        if self.family == crate::FAMILY_V6 && is_v4_mapped(&self.addr) {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&self.addr[12..]);
            Self {
                addr,
                family: crate::FAMILY_V4,
                ..*self
            }
        } else {
            *self
        }
    }

    /// Whether this is the resolver at `port` (`127.0.0.1`, `::1`), as a
    /// packet names it.
    #[must_use]
    pub fn is_resolver(addr: &[u8; 16], family: u8, port: u16, resolver_port: u16) -> bool {
        port == resolver_port
            && if family == crate::FAMILY_V4 {
                addr[0] == 127 && addr[1] == 0 && addr[2] == 0 && addr[3] == 1
            } else {
                words(addr) == (0, 1u64.to_be())
            }
    }
}

/// Whether `addr` is IPv4-mapped (`::ffff:a.b.c.d`). Compared as words:
/// comparing slices would call `memcmp`, a function of its own in the
/// kernel program, whose stack frame the verifier's limit counts.
#[must_use]
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    let (high, low) = words(addr);
    let low = low.to_ne_bytes();
    high == 0 && low[0] == 0 && low[1] == 0 && low[2] == 0xff && low[3] == 0xff
}

/// An address as two native-endian words.
#[inline(always)]
fn words(addr: &[u8; 16]) -> (u64, u64) {
    let mut high = [0; 8];
    let mut low = [0; 8];
    high.copy_from_slice(&addr[..8]);
    low.copy_from_slice(&addr[8..]);
    (u64::from_ne_bytes(high), u64::from_ne_bytes(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<RawEndpoint>(), 20);
    }

    #[test]
    fn a_mapped_server_is_ipv4_on_the_wire() {
        let server = RawEndpoint {
            addr: crate::mapped_v4([10, 0, 0, 53]),
            port: DNS_PORT,
            family: crate::FAMILY_V6,
            protocol: 17,
        };
        let wire = server.on_the_wire();
        assert_eq!(wire.family, crate::FAMILY_V4);
        assert_eq!(&wire.addr[..4], &[10, 0, 0, 53]);
        assert_eq!(&wire.addr[4..], &[0; 12]);
        let v6 = RawEndpoint {
            addr: LOOPBACK_V6,
            ..server
        };
        assert_eq!(v6.on_the_wire(), v6);
    }

    #[test]
    fn the_resolver_is_loopback_at_its_port() {
        let mut v4 = [0; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert!(RawEndpoint::is_resolver(&v4, crate::FAMILY_V4, 5300, 5300));
        assert!(!RawEndpoint::is_resolver(&v4, crate::FAMILY_V4, 53, 5300));
        assert!(RawEndpoint::is_resolver(
            &LOOPBACK_V6,
            crate::FAMILY_V6,
            5300,
            5300
        ));
        assert!(!RawEndpoint::is_resolver(
            &MAPPED_LOOPBACK,
            crate::FAMILY_V6,
            5300,
            5300
        ));
    }
}
