//! nfnetlink plumbing shared by ctnetlink, nfnetlink_log and nf_tables: the
//! `nfgenmsg` header (neli has none), attribute building, a socket with the
//! options neli does not set (also for sock_diag requests), and splitting
//! a datagram into messages.

use std::collections::HashMap;
use std::io::{self, Cursor};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use neli::consts::nl::NlmF;
use neli::consts::socket::{Msg, NlFamily};
use neli::genl::{AttrTypeBuilder, Nlattr, NlattrBuilder};
use neli::nl::NlPayload;
use neli::socket::NlSocket;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use neli::{Size, ToBytes};

/// The `nfgenmsg` header every nfnetlink message starts with, followed by
/// its attributes: what flowtrack sends, serialised by neli.
#[derive(Debug, Clone, PartialEq, Eq, Size, ToBytes)]
#[neli(to_bytes_bound = "T: neli::consts::genl::NlAttrType")]
pub(crate) struct Nfgenmsg<T> {
    /// An address family (`AF_INET`, `AF_INET6`, `NFPROTO_INET`, or 0).
    pub(crate) family: u8,
    /// Always `NFNETLINK_V0`.
    pub(crate) version: u8,
    /// Resource id in network byte order: the nflog group, the nf_tables
    /// subsystem of a batch.
    pub(crate) res_id: u16,
    pub(crate) attrs: GenlBuffer<T, Buffer>,
}

impl<T> Nfgenmsg<T> {
    /// A header for `family` and resource `res_id` (host order) with `attrs`.
    pub(crate) fn new(family: u8, res_id: u16, attrs: Vec<Nlattr<T, Buffer>>) -> Self {
        Self {
            family,
            version: 0,
            res_id: res_id.to_be(),
            attrs: attrs.into_iter().collect(),
        }
    }
}

/// An nfnetlink message type: subsystem in the high byte.
pub(crate) const fn message_type(subsystem: u8, message: u8) -> u16 {
    ((subsystem as u16) << 8) | message as u16
}

/// The subsystem of an nfnetlink message type.
pub(crate) const fn subsystem(message_type: u16) -> u8 {
    (message_type >> 8) as u8
}

/// An attribute of type `kind` holding `payload` as is.
pub(crate) fn attr(kind: u16, payload: impl AsRef<[u8]>) -> Nlattr<u16, Buffer> {
    NlattrBuilder::default()
        .nla_type(
            AttrTypeBuilder::default()
                .nla_type(kind)
                .build()
                .expect("type is set"),
        )
        .nla_payload(Buffer::from(payload.as_ref()))
        .build()
        .expect("type and payload are set")
}

/// A big-endian 32-bit attribute.
pub(crate) fn attr_be32(kind: u16, value: u32) -> Nlattr<u16, Buffer> {
    attr(kind, value.to_be_bytes())
}

/// A NUL-terminated string attribute.
pub(crate) fn attr_str(kind: u16, value: &str) -> Nlattr<u16, Buffer> {
    let mut bytes = value.as_bytes().to_vec();
    bytes.push(0);
    attr(kind, bytes)
}

/// An attribute nesting `children`.
pub(crate) fn nested(kind: u16, children: &[Nlattr<u16, Buffer>]) -> Nlattr<u16, Buffer> {
    children
        .iter()
        .try_fold(attr(kind, []), |outer, child| outer.nest(child))
        .expect("attributes serialise into a Vec")
}

/// Serialises one nfnetlink request.
pub(crate) fn encode<T>(kind: u16, flags: NlmF, seq: u32, body: Nfgenmsg<T>) -> Vec<u8>
where
    T: neli::consts::genl::NlAttrType,
{
    let message = neli::nl::NlmsghdrBuilder::default()
        .nl_type(kind)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_payload(NlPayload::Payload(body))
        .build()
        .expect("every field is set");
    let mut bytes = Cursor::new(Vec::with_capacity(message.padded_size()));
    message
        .to_bytes(&mut bytes)
        .expect("a message serialises into a Vec");
    bytes.into_inner()
}

/// `NLA_F_NESTED`: the attribute holds attributes.
const NLA_F_NESTED: u16 = 0x8000;

/// Writes netlink attributes straight into a message's bytes. The
/// requests sent for each flow are built with it rather than with neli's
/// builders, which allocate for each attribute and each nesting: those
/// were 4.9% of the nflog backend's CPU in a storm of short connections
/// (perf, DWARF call graphs). Like neli and libmnl, it marks a nesting
/// attribute `NLA_F_NESTED`.
pub(crate) struct AttrWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl AttrWriter<'_> {
    /// An attribute of type `kind` holding `payload` as is, padded to 4 bytes.
    pub(crate) fn attr(&mut self, kind: u16, payload: &[u8]) {
        let length = u16::try_from(4 + payload.len()).expect("an attribute under 64 KiB");
        self.out.extend_from_slice(&length.to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(payload);
        self.pad();
    }

    /// An attribute of type `kind` holding the attributes `inner` writes.
    pub(crate) fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut AttrWriter<'_>)) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0, 0]);
        self.out
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut AttrWriter { out: self.out });
        let length = u16::try_from(self.out.len() - start).expect("an attribute under 64 KiB");
        self.out[start..start + 2].copy_from_slice(&length.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = self.out.len().next_multiple_of(4);
        self.out.resize(padded, 0);
    }
}

/// Appends one netlink message to `out`, written by hand: a header of type
/// `kind` with `flags` and `seq`, then the body `body` writes; the header's
/// length is filled in after it.
pub(crate) fn append_netlink_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: NlmF,
    seq: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.bits().to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    body(out);
    let length = u32::try_from(out.len() - start).expect("a message under 4 GiB");
    out[start..start + 4].copy_from_slice(&length.to_ne_bytes());
}

/// Appends one nfnetlink message to `out`, written by hand (see
/// [`AttrWriter`]): its header, an `nfgenmsg` for `family` and resource
/// `res_id` (host order), and the attributes `attrs` writes.
pub(crate) fn append_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: NlmF,
    seq: u32,
    (family, res_id): (u8, u16),
    attrs: impl FnOnce(&mut AttrWriter<'_>),
) {
    append_netlink_message(out, kind, flags, seq, |body| {
        body.extend_from_slice(&[family, 0]);
        body.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut AttrWriter { out: body });
    });
}

/// A message or attribute whose length does not fit: kernel bytes that
/// are not what they claim to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink data: {0}")]
pub(crate) struct Malformed(pub(crate) &'static str);

/// `NLMSG_NOOP`, `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// One message of a received datagram, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received<'a> {
    /// An nfnetlink message: its type, flags, and payload (`nfgenmsg`
    /// header and attributes), decoded by the subsystem.
    Message {
        kind: u16,
        flags: NlmF,
        seq: u32,
        payload: &'a [u8],
    },
    /// The kernel acknowledged request `seq` (errno 0) or refused it.
    Ack { seq: u32, errno: i32 },
    /// A dump ended.
    Done { seq: u32 },
}

/// Splits a datagram into messages. A message whose length is out of
/// bounds ends the datagram and is reported (the messages before it are
/// kept).
///
/// Hand-written rather than neli's `Nlmsghdr` parsing: that copies every
/// message and attribute into an allocation of its own (about half of the
/// listener's CPU in a connection storm), and it panics on some malformed
/// error messages (found by fuzzing: an overflowing length subtraction).
pub(crate) fn split(datagram: &[u8]) -> (Vec<Received<'_>>, Option<Malformed>) {
    const HEADER: usize = 16;
    let mut messages = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(header) = rest.get(..HEADER) else {
            return (messages, Some(Malformed("truncated message header")));
        };
        let word = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let half = |at: usize| u16::from_ne_bytes(header[at..at + 2].try_into().expect("2 bytes"));
        let length = word(0) as usize;
        if length < HEADER || length > rest.len() {
            return (messages, Some(Malformed("message length out of bounds")));
        }
        let (kind, flags, seq) = (half(4), half(6), word(8));
        let payload = &rest[HEADER..length];
        match kind {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let Some(errno) = payload.get(..4) else {
                    return (messages, Some(Malformed("error message without an errno")));
                };
                let errno = i32::from_ne_bytes(errno.try_into().expect("4 bytes"));
                messages.push(Received::Ack {
                    seq,
                    errno: errno.saturating_neg(),
                });
            }
            NLMSG_DONE => messages.push(Received::Done { seq }),
            _ => messages.push(Received::Message {
                kind,
                flags: NlmF::from_bits_truncate(flags),
                seq,
                payload,
            }),
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    (messages, None)
}

/// The attributes of an nfnetlink payload, after its 4-byte `nfgenmsg`.
pub(crate) fn payload_attrs(payload: &[u8]) -> Result<Attrs<'_>, Malformed> {
    payload
        .get(4..)
        .map(Attrs::new)
        .ok_or(Malformed("payload shorter than its nfgenmsg header"))
}

/// Netlink attributes, borrowed: (type without the nested and byte-order
/// flags, payload). An attribute whose length is out of bounds ends the
/// walk with [`Malformed`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Walks the attributes in `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The payload of the first attribute of type `kind`.
    pub(crate) fn get(self, kind: impl Into<u16>) -> Result<Option<&'a [u8]>, Malformed> {
        let kind = kind.into();
        for attr in self {
            let (found, payload) = attr?;
            if found == kind {
                return Ok(Some(payload));
            }
        }
        Ok(None)
    }

    /// The attributes nested in the first attribute of type `kind`.
    pub(crate) fn nested(self, kind: impl Into<u16>) -> Result<Option<Attrs<'a>>, Malformed> {
        Ok(self.get(kind)?.map(Attrs::new))
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        const HEADER: usize = 4;
        // Trailing padding shorter than a header ends the list.
        if self.rest.len() < HEADER {
            self.rest = &[];
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([self.rest[0], self.rest[1]]));
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & 0x3fff;
        if length < HEADER || length > self.rest.len() {
            self.rest = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let payload = &self.rest[HEADER..length];
        self.rest = &self.rest[length.next_multiple_of(4).min(self.rest.len())..];
        Some(Ok((kind, payload)))
    }
}

/// A reply to a request, copied out of the socket's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) kind: u16,
    pub(crate) flags: NlmF,
    pub(crate) seq: u32,
    pub(crate) payload: Vec<u8>,
}

impl Reply {
    fn copied(kind: u16, flags: NlmF, seq: u32, payload: &[u8]) -> Self {
        Self {
            kind,
            flags,
            seq,
            payload: payload.to_vec(),
        }
    }
}

/// A netfilter netlink socket, with a receive buffer for whole datagrams.
pub(crate) struct Socket {
    socket: NlSocket,
    buffer: Vec<u8>,
    next_seq: u32,
}

/// How the answer to a request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// With an ACK (a request that asks for one, or is refused) or a dump's
    /// end.
    ByAck,
    /// With its one message: the reply, or the error it was refused with
    /// (a lookup sent without `NLM_F_ACK`: the kernel then sends nothing
    /// after the reply, one datagram fewer to read per lookup).
    ByOneMessage,
}

impl Socket {
    /// A netfilter socket subscribed to the multicast `groups` (none for
    /// requests).
    pub(crate) fn open(groups: &[u32]) -> io::Result<Self> {
        Self::connect(NlFamily::Netfilter, groups)
    }

    /// A `NETLINK_SOCK_DIAG` socket, for requests about local sockets.
    pub(crate) fn sock_diag() -> io::Result<Self> {
        Self::connect(NlFamily::SockOrInetDiag, &[])
    }

    fn connect(family: NlFamily, groups: &[u32]) -> io::Result<Self> {
        let socket = NlSocket::connect(family, None, Groups::empty())?;
        if !groups.is_empty() {
            socket.add_mcast_membership(Groups::new_groups(groups))?;
        }
        Ok(Self {
            socket,
            // Large enough for the biggest datagram the kernel sends
            // (NLMSG_GOODSIZE is at most 8 KiB; dumps use up to 32 KiB).
            buffer: vec![0; 64 * 1024],
            next_seq: 1,
        })
    }

    /// Sets the receive buffer with `SO_RCVBUFFORCE` (not capped by
    /// `rmem_max`; needs CAP_NET_ADMIN) and returns the size the kernel
    /// granted. neli has no setter for it.
    pub(crate) fn force_receive_buffer(&self, bytes: usize) -> io::Result<usize> {
        let fd = self.fd();
        rustix::net::sockopt::set_socket_recv_buffer_size_force(fd, bytes)?;
        Ok(rustix::net::sockopt::socket_recv_buffer_size(fd)?)
    }

    /// Lets one datagram of `bytes` be sent: the send buffer set with
    /// `SO_SNDBUFFORCE` (needs CAP_NET_ADMIN) when the default is smaller
    /// (a large batch of nf_tables rules goes as one datagram).
    pub(crate) fn fit_send_buffer(&self, bytes: usize) -> io::Result<()> {
        let fd = self.fd();
        // The kernel refuses a datagram longer than the buffer less 32.
        let needed = bytes + 1024;
        if rustix::net::sockopt::socket_send_buffer_size(fd)? < needed {
            rustix::net::sockopt::set_socket_send_buffer_size_force(fd, needed)?;
        }
        Ok(())
    }

    /// Makes `recv` give up after `timeout` (requests must not hang).
    pub(crate) fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        rustix::net::sockopt::set_socket_timeout(
            self.fd(),
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )?;
        Ok(())
    }

    /// The file descriptor, to poll.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.socket`, which stays open
        // for as long as the borrow of `self` (neli's socket has no AsFd).
        #[allow(unsafe_code)]
        unsafe {
            BorrowedFd::borrow_raw(self.socket.as_raw_fd())
        }
    }

    /// A fresh sequence number for a request.
    pub(crate) fn next_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Sends one or more serialised messages in one datagram.
    pub(crate) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let sent = self.socket.send(bytes, Msg::empty())?;
        if sent == bytes.len() {
            Ok(())
        } else {
            Err(io::Error::other("netlink send was cut short"))
        }
    }

    /// Receives one datagram (blocking, or `WouldBlock` when `nonblocking`).
    /// `ENOBUFS` comes back as an error of that raw OS code.
    pub(crate) fn recv(&mut self, nonblocking: bool) -> io::Result<&[u8]> {
        let flags = if nonblocking {
            Msg::DONTWAIT
        } else {
            Msg::empty()
        };
        let (length, _) = self.socket.recv(&mut self.buffer[..], flags)?;
        Ok(&self.buffer[..length.min(self.buffer.len())])
    }

    /// Sends one request numbered `seq` (asking for an ACK, or a dump)
    /// and collects its replies until its ACK or the dump's end. A refused
    /// request is an error carrying its errno.
    pub(crate) fn transact(&mut self, bytes: &[u8], seq: u32) -> io::Result<Vec<Reply>> {
        self.transact_one(bytes, seq, Answered::ByAck)
    }

    /// Sends one lookup numbered `seq` (asking for no ACK) and returns its
    /// reply ([`Answered::ByOneMessage`]). A refused lookup is an error
    /// carrying its errno.
    pub(crate) fn look_up(&mut self, bytes: &[u8], seq: u32) -> io::Result<Vec<Reply>> {
        self.transact_one(bytes, seq, Answered::ByOneMessage)
    }

    fn transact_one(
        &mut self,
        bytes: &[u8],
        seq: u32,
        answered: Answered,
    ) -> io::Result<Vec<Reply>> {
        match self.transact_batch(bytes, seq, seq, answered)?.remove(&seq) {
            Some(Ok(replies)) => Ok(replies),
            Some(Err(errno)) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(Vec::new()),
        }
    }

    /// The messages of the next datagram (blocking), none malformed (else
    /// an `InvalidData` error).
    fn recv_whole(&mut self) -> io::Result<Vec<Received<'_>>> {
        let (messages, malformed) = split(self.recv(false)?);
        match malformed {
            Some(error) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                error.to_string(),
            )),
            None => Ok(messages),
        }
    }

    /// Sends the dump request `bytes` (sequence number `seq`) and hands
    /// each message of its answer to `each` as it arrives, in the socket's
    /// buffer, until the dump is done: a large table is never held whole.
    pub(crate) fn dump_each(
        &mut self,
        bytes: &[u8],
        seq: u32,
        mut each: impl FnMut(u16, NlmF, &[u8]),
    ) -> io::Result<()> {
        self.send(bytes)?;
        loop {
            let messages = self.recv_whole()?;
            for message in messages {
                match message {
                    Received::Done { seq: done } if done == seq => return Ok(()),
                    Received::Ack { seq: acked, errno } if acked == seq && errno != 0 => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Received::Message {
                        kind,
                        flags,
                        seq: of,
                        payload,
                    } if of == seq => each(kind, flags, payload),
                    _ => {}
                }
            }
        }
    }

    /// Sends requests numbered `first..=last` in one datagram, each asking
    /// for an ACK (or a dump), or each a lookup answered by one message
    /// (`answered`), and collects the replies to each until all are
    /// answered: per request, its reply messages, or the errno it was
    /// refused with. One round trip for them all.
    pub(crate) fn transact_batch(
        &mut self,
        bytes: &[u8],
        first: u32,
        last: u32,
        answered: Answered,
    ) -> io::Result<HashMap<u32, Result<Vec<Reply>, i32>>> {
        self.send(bytes)?;
        let mut answers: HashMap<u32, Result<Vec<Reply>, i32>> = HashMap::new();
        let mut pending = last.wrapping_sub(first) as usize + 1;
        let asked = |seq: u32| seq.wrapping_sub(first) <= last.wrapping_sub(first);
        while pending > 0 {
            let messages = self.recv_whole()?;
            for message in messages {
                match message {
                    // An earlier message of the same batch (nf_tables)
                    // refused: the whole request failed.
                    Received::Ack { seq, errno } if !asked(seq) && errno != 0 => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Received::Ack { seq, .. } | Received::Done { seq } if !asked(seq) => {}
                    Received::Ack { seq, errno } => {
                        let answer = answers.entry(seq).or_insert_with(|| Ok(Vec::new()));
                        if errno != 0 {
                            *answer = Err(errno);
                        }
                        pending = pending.saturating_sub(1);
                    }
                    Received::Done { seq } => {
                        answers.entry(seq).or_insert_with(|| Ok(Vec::new()));
                        pending = pending.saturating_sub(1);
                    }
                    Received::Message {
                        kind,
                        flags,
                        seq,
                        payload,
                    } => {
                        if let Ok(replies) = answers.entry(seq).or_insert_with(|| Ok(Vec::new())) {
                            replies.push(Reply::copied(kind, flags, seq, payload));
                        }
                        if answered == Answered::ByOneMessage && asked(seq) {
                            pending = pending.saturating_sub(1);
                        }
                    }
                }
            }
        }
        Ok(answers)
    }
}
