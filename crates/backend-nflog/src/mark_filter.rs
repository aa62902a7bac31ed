//! A classic BPF socket filter for the conntrack event socket: the kernel
//! drops, before they are queued, the events of connections that do not
//! carry the backend's ct mark. The reader would only read and pass them
//! over (`Tracker::on_message` compares the mark); with a cgroup scope
//! they are every other connection on the host. Watching an idle cgroup
//! while 20,000 connections were made outside it cost 0.37–0.40 CPU s per
//! 10,000 of them, and 1.3 wakeups per connection, without the filter;
//! nothing measurable with it (BENCHMARKS.md, the storm section).
//!
//! Written by hand, as libnetfilter_conntrack does in C (its `bsf.c`): no
//! Rust crate builds a filter for netlink attributes. The program walks the
//! message's top-level attributes (classic BPF has no loops: the walk is
//! unrolled [`STEPS`] times) to `CTA_MARK`, whose value is big-endian on
//! the wire as classic BPF loads it. Attribute headers are in the host's
//! byte order, so their lengths are put together byte by byte. Anything it
//! cannot judge passes (user space filters again): a message of another
//! subsystem, and one whose mark is further than [`STEPS`] attributes in.
//! A message without a mark (an unmarked connection: the kernel writes a
//! mark only when it is not zero), or with another, is dropped.

use std::io;
use std::os::fd::AsFd;

use socket2::{SockFilter, SockRef};

/// Attributes walked at the most before the message passes: an event
/// holds about a dozen before its mark (tuples, id, status, timeout,
/// protoinfo, counters, timestamps, labels, helper).
const STEPS: usize = 32;

/// `NFNL_SUBSYS_CTNETLINK`: the high byte of a conntrack message's type.
const SUBSYS_CTNETLINK: u32 = 1;

/// `CTA_MARK`.
const CTA_MARK: u16 = 8;

/// The type bits of an attribute's type (without `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Where the attributes start: after the netlink header (16 bytes) and
/// nfnetlink's (4).
const FIRST_ATTRIBUTE: u32 = 20;

/// What the filter returns to keep a message whole, and to drop it.
const KEEP: u32 = u32::MAX;
const DROP: u32 = 0;

/// Attaches the filter for `mark` to `socket`.
///
/// # Errors
/// When the kernel refuses the filter.
pub(crate) fn attach(socket: impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(&socket).attach_filter(&program(mark))
}

/// The offset of byte `index` (0: least significant) of a host-order
/// 16-bit field.
const fn host_byte(index: u32) -> u32 {
    if cfg!(target_endian = "little") {
        index
    } else {
        1 - index
    }
}

/// `value`'s bytes in the host's order, read as classic BPF reads a
/// half-word (big-endian).
const fn as_loaded(value: u16) -> u32 {
    u16::from_be_bytes(value.to_ne_bytes()) as u32
}

// Classic BPF opcodes (linux/filter.h), as u16 instruction codes.
fn code(parts: u32) -> u16 {
    u16::try_from(parts).unwrap_or(u16::MAX)
}

fn statement(parts: u32, k: u32) -> SockFilter {
    SockFilter::new(code(parts), 0, 0, k)
}

fn jump(parts: u32, k: u32, if_true: u8, if_false: u8) -> SockFilter {
    SockFilter::new(code(parts), if_true, if_false, k)
}

/// The program: see the module's documentation.
fn program(mark: u32) -> Vec<SockFilter> {
    use libc::{
        BPF_ABS, BPF_ADD, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IMM, BPF_IND, BPF_JEQ, BPF_JGE,
        BPF_JMP, BPF_K, BPF_LD, BPF_LDX, BPF_LEN, BPF_LSH, BPF_MEM, BPF_MISC, BPF_OR, BPF_RET,
        BPF_ST, BPF_SUB, BPF_TAX, BPF_TXA, BPF_W, BPF_X,
    };
    let mut program = vec![
        // A message of another subsystem passes.
        statement(BPF_LD | BPF_B | BPF_ABS, 4 + host_byte(1)),
        jump(BPF_JMP | BPF_JEQ | BPF_K, SUBSYS_CTNETLINK, 1, 0),
        statement(BPF_RET | BPF_K, KEEP),
        statement(BPF_LDX | BPF_IMM, FIRST_ATTRIBUTE),
    ];
    for _ in 0..STEPS {
        program.extend([
            // X: this attribute's offset. Fewer than 4 bytes left: the
            // message ended without a mark.
            statement(BPF_LD | BPF_W | BPF_LEN, 0),
            statement(BPF_ALU | BPF_SUB | BPF_X, 0),
            jump(BPF_JMP | BPF_JGE | BPF_K, 4, 1, 0),
            statement(BPF_RET | BPF_K, DROP),
            // The mark: kept if it is ours.
            statement(BPF_LD | BPF_H | BPF_IND, 2),
            statement(BPF_ALU | BPF_AND | BPF_K, as_loaded(NLA_TYPE_MASK)),
            jump(BPF_JMP | BPF_JEQ | BPF_K, as_loaded(CTA_MARK), 0, 4),
            statement(BPF_LD | BPF_W | BPF_IND, 4),
            jump(BPF_JMP | BPF_JEQ | BPF_K, mark, 0, 1),
            statement(BPF_RET | BPF_K, KEEP),
            statement(BPF_RET | BPF_K, DROP),
            // Another attribute: X += its length, aligned to 4. M[0]: the
            // high byte shifted, M[1]: the low byte, M[2]: X.
            statement(BPF_LD | BPF_B | BPF_IND, host_byte(1)),
            statement(BPF_ALU | BPF_LSH | BPF_K, 8),
            statement(BPF_ST, 0),
            statement(BPF_LD | BPF_B | BPF_IND, host_byte(0)),
            statement(BPF_ST, 1),
            statement(BPF_MISC | BPF_TXA, 0),
            statement(BPF_ST, 2),
            statement(BPF_LDX | BPF_MEM, 1),
            statement(BPF_LD | BPF_MEM, 0),
            statement(BPF_ALU | BPF_OR | BPF_X, 0),
            statement(BPF_LDX | BPF_MEM, 2),
            statement(BPF_ALU | BPF_ADD | BPF_X, 0),
            statement(BPF_ALU | BPF_ADD | BPF_K, 3),
            statement(BPF_ALU | BPF_AND | BPF_K, !3),
            statement(BPF_MISC | BPF_TAX, 0),
        ]);
    }
    // Too far in to tell: user space decides.
    program.push(statement(BPF_RET | BPF_K, KEEP));
    program
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    const MARK: u32 = 0x8000_1234;

    /// A netlink attribute: header in host order, payload padded to 4.
    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let length = u16::try_from(4 + payload.len()).unwrap();
        let mut bytes = [length.to_ne_bytes(), kind.to_ne_bytes()].concat();
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    /// A conntrack event (subsystem `subsys`) holding `attributes`.
    fn message(subsys: u8, attributes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attributes.concat();
        let length = u32::try_from(20 + body.len()).unwrap();
        let kind = u16::from_be_bytes([subsys, 0]);
        let mut bytes = length.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes()); // flags
        bytes.extend_from_slice(&[0; 8]); // sequence, port id
        bytes.extend_from_slice(&[2, 0, 0, 0]); // nfgenmsg
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Attributes before a mark, as an UPDATE carries them: nested
    /// tuples, id, status, timeout, protoinfo.
    fn leading() -> Vec<Vec<u8>> {
        let tuple = attribute(0x8001, &[7; 36]);
        vec![
            tuple.clone(),
            tuple,
            attribute(12, &7u32.to_be_bytes()),
            attribute(3, &0x18eu32.to_be_bytes()),
            attribute(7, &120u32.to_be_bytes()),
            attribute(0x8004, &[1; 29]),
        ]
    }

    fn with_mark(mark: u32) -> Vec<Vec<u8>> {
        let mut attributes = leading();
        attributes.push(attribute(CTA_MARK, &mark.to_be_bytes()));
        attributes.push(attribute(9, &[0; 4]));
        attributes
    }

    /// Which of `messages` come through a socket with the filter.
    fn passed(messages: &[Vec<u8>]) -> Vec<usize> {
        let (sender, receiver) = UnixDatagram::pair().unwrap();
        attach(&receiver, MARK).unwrap();
        receiver.set_nonblocking(true).unwrap();
        for (index, message) in messages.iter().enumerate() {
            let mut tagged = message.clone();
            tagged.push(u8::try_from(index).unwrap());
            sender.send(&tagged).unwrap();
        }
        let mut buffer = [0; 4096];
        let mut seen = Vec::new();
        while let Ok(length) = receiver.recv(&mut buffer) {
            seen.push(usize::from(buffer[length - 1]));
        }
        seen
    }

    #[test]
    fn only_events_of_the_backends_mark_pass() {
        let mut far = leading();
        far.extend((0..STEPS).map(|_| attribute(3, &[0; 4])));
        far.push(attribute(CTA_MARK, &0x0bad_0bad_u32.to_be_bytes()));
        let messages = [
            message(1, &with_mark(MARK)),
            message(1, &with_mark(MARK ^ 1)),
            message(1, &leading()),
            // An expectation's or another subsystem's message: not judged.
            message(2, &leading()),
            // A mark further in than the walk goes: user space decides.
            message(1, &far),
            // The mark first, then nothing.
            message(1, &[attribute(CTA_MARK, &MARK.to_be_bytes())]),
            // Nested-flag bits on the mark's type are ignored.
            message(1, &[attribute(CTA_MARK | 0x4000, &MARK.to_be_bytes())]),
        ];
        assert_eq!(passed(&messages), [0, 3, 4, 5, 6]);
    }

    #[test]
    fn a_message_cut_short_is_dropped_and_one_the_walk_cannot_cross_passes() {
        let mut cut = message(1, &with_mark(MARK));
        cut.truncate(30);
        // An attribute of length 0: the walk stays on it, and gives up.
        let mut zero_length = message(1, &[attribute(3, &[0; 4])]);
        zero_length[20] = 0;
        zero_length[21] = 0;
        assert_eq!(passed(&[cut, zero_length]), [1]);
    }
}
