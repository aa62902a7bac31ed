//! The local socket of a flow, asked of the kernel with sock_diag
//! (`inet_diag`, as `ss` does): one request per flow, answered with the
//! socket's inode, which names it in /proc/PID/fd.

use std::io;
use std::net::IpAddr;

use flow_core::{FlowKey, protocol};
use neli::consts::nl::NlmF;

use crate::netlink::{self, Socket};

/// `SOCK_DIAG_BY_FAMILY`.
const BY_FAMILY: u16 = 20;
/// `INET_DIAG_NOCOOKIE`: any socket.
const NO_COOKIE: u32 = !0;
/// Every TCP state.
const ALL_STATES: u32 = !0;
/// `nlmsghdr` then `inet_diag_req_v2`.
const REQUEST_LEN: usize = 16 + 56;
/// Where `idiag_inode` is in an `inet_diag_msg`.
const INODE_AT: usize = 68;

/// Which end of a flow is the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// The initiator (a connection the scope made).
    Source,
    /// The responder (a connection the scope accepted, a datagram it
    /// received).
    Destination,
}

/// The `inet_diag_req_v2` request (numbered `seq`) for the socket at the
/// `local` end of `key`; `None` for a protocol without sockets to look up.
pub(crate) fn request(key: &FlowKey, local: Local, seq: u32) -> Option<Vec<u8>> {
    let protocol = key.protocol;
    if protocol != protocol::TCP && protocol != protocol::UDP {
        return None;
    }
    let (mut near, mut far) = match local {
        Local::Source => ((key.src_addr, key.src_port), (key.dst_addr, key.dst_port)),
        Local::Destination => ((key.dst_addr, key.dst_port), (key.src_addr, key.src_port)),
    };
    if protocol == protocol::UDP {
        // udp_diag looks up the socket a datagram from `src` to `dst`
        // would reach: the local end goes in `dst` (the kernel's comment:
        // "src and dst are swapped for historical reasons").
        std::mem::swap(&mut near, &mut far);
    }
    let family = match near.0 {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let mut bytes = Vec::with_capacity(REQUEST_LEN);
    // A request without `NLM_F_ACK`: answered by one message, the socket
    // or an error (one datagram fewer to read per lookup).
    netlink::append_netlink_message(&mut bytes, BY_FAMILY, NlmF::REQUEST, seq, |body| {
        body.extend_from_slice(&[family as u8, protocol, 0, 0]);
        body.extend_from_slice(&ALL_STATES.to_ne_bytes());
        body.extend_from_slice(&near.1.to_be_bytes());
        body.extend_from_slice(&far.1.to_be_bytes());
        body.extend_from_slice(&address_words(near.0));
        body.extend_from_slice(&address_words(far.0));
        body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
        body.extend_from_slice(&NO_COOKIE.to_ne_bytes());
        body.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    });
    Some(bytes)
}

/// An address as `inet_diag_sockid` holds it: 16 bytes, IPv4 in the first 4.
fn address_words(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => {
            let mut words = [0; 16];
            words[..4].copy_from_slice(&v4.octets());
            words
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inode of the socket in a reply message to a [`request`]: `None`
/// for another message, or a socket without an inode (a connection not
/// yet accepted, a socket being closed).
pub(crate) fn inode_in(kind: u16, payload: &[u8]) -> Option<u64> {
    if kind != BY_FAMILY {
        return None;
    }
    let bytes: [u8; 4] = payload.get(INODE_AT..INODE_AT + 4)?.try_into().ok()?;
    Some(u64::from(u32::from_ne_bytes(bytes))).filter(|&inode| inode != 0)
}

/// A sock_diag socket in the scope's network namespace.
pub(crate) struct SockDiag {
    socket: Socket,
}

impl SockDiag {
    /// Opens the socket (in the calling thread's network namespace).
    pub(crate) fn open() -> io::Result<Self> {
        let socket = Socket::sock_diag()?;
        socket.set_receive_timeout(std::time::Duration::from_secs(1))?;
        Ok(Self { socket })
    }

    /// The inode of the socket at the `local` end of `key`, if there is
    /// one with an inode (a TCP connection the scope accepted has none
    /// until the server accepts it, nor once it is closing).
    pub(crate) fn inode(&mut self, key: &FlowKey, local: Local) -> Option<u64> {
        self.ask(key, local)
    }

    /// The inode of the socket listening where `key` was accepted, when
    /// `local` is the destination of a TCP connection: its owner serves the
    /// connection before it is accepted, and after it closed.
    pub(crate) fn listener_inode(&mut self, key: &FlowKey, local: Local) -> Option<u64> {
        if local != Local::Destination || key.protocol != protocol::TCP {
            return None;
        }
        // Any peer: the lookup falls back to the listening socket.
        let listener = FlowKey {
            src_addr: match key.src_addr {
                IpAddr::V4(_) => IpAddr::from([0; 4]),
                IpAddr::V6(_) => IpAddr::from([0; 16]),
            },
            src_port: 0,
            ..*key
        };
        self.ask(&listener, local)
    }

    fn ask(&mut self, key: &FlowKey, local: Local) -> Option<u64> {
        let seq = self.socket.next_seq();
        let request = request(key, local, seq)?;
        // A socket that is not there is refused (ENOENT): no inode.
        let replies = self.socket.look_up(&request, seq).ok()?;
        replies
            .iter()
            .find_map(|reply| inode_in(reply.kind, &reply.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(protocol: u8) -> FlowKey {
        FlowKey {
            src_addr: "10.0.0.1".parse().unwrap(),
            src_port: 40000,
            dst_addr: "10.0.0.2".parse().unwrap(),
            dst_port: 443,
            protocol,
        }
    }

    #[test]
    fn a_tcp_request_puts_the_local_end_first() {
        let bytes = request(&key(protocol::TCP), Local::Source, 9).unwrap();
        assert_eq!(bytes.len(), REQUEST_LEN);
        assert_eq!(&bytes[16..18], &[libc::AF_INET as u8, 6]);
        let id = &bytes[24..];
        assert_eq!(&id[..4], &[0x9c, 0x40, 0x01, 0xbb], "ports 40000, 443");
        assert_eq!(&id[4..8], &[10, 0, 0, 1]);
        assert_eq!(&id[20..24], &[10, 0, 0, 2]);
    }

    #[test]
    fn the_inode_is_read_from_an_inet_diag_msg() {
        let mut message = vec![0; 72];
        message[INODE_AT..INODE_AT + 4].copy_from_slice(&4711u32.to_ne_bytes());
        assert_eq!(inode_in(BY_FAMILY, &message), Some(4711));
        assert_eq!(inode_in(BY_FAMILY, &message[..70]), None, "cut short");
        assert_eq!(inode_in(BY_FAMILY, &[0; 72]), None, "no inode yet");
        assert_eq!(inode_in(2, &message), None, "another message");
    }

    #[test]
    fn a_udp_request_puts_the_local_end_second() {
        let bytes = request(&key(protocol::UDP), Local::Source, 9).unwrap();
        let id = &bytes[24..];
        assert_eq!(&id[..4], &[0x01, 0xbb, 0x9c, 0x40]);
        assert_eq!(&id[4..8], &[10, 0, 0, 2]);
        assert!(request(&key(protocol::ICMP), Local::Source, 9).is_none());
    }

    proptest! {
        #[test]
        fn any_reply_bytes_are_safe(kind: u16, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = inode_in(kind, &bytes);
        }
    }
}
