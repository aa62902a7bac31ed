//! Records that carry packet payload: the DNS answers arriving at the
//! scope's sockets, and the first payload the initiator of a TCP flow sends
//! (a TLS ClientHello names its server). Userspace parses them; the kernel
//! program only copies.
//!
//! The ring buffer reserves constant sizes only, so a payload record has
//! one of two fixed sizes ([`PAYLOAD_SMALL`], [`PAYLOAD_LARGE`] bytes of
//! data), the smaller when the payload fits, and says how many of its bytes
//! are the payload's.

use crate::{DecodeError, Fields, RawFlowKey};

/// [`RawPayloadHeader::kind`]: a DNS message that arrived from port 53
/// (UDP, or a TCP segment of a DNS-over-TCP stream).
pub const RECORD_DNS: u32 = 3;
/// [`RawPayloadHeader::kind`]: the first payload the initiator of a TCP
/// flow sent.
pub const RECORD_FIRST_PAYLOAD: u32 = 4;

/// Data bytes of a small payload record (a power of two: the kernel side
/// bounds the copy with a mask, to `PAYLOAD_SMALL - 1` bytes).
pub const PAYLOAD_SMALL: usize = 512;
/// Data bytes of a large payload record: room for an EDNS answer of 1232
/// bytes and a ClientHello with a post-quantum key share (about 1.8 KB);
/// longer payloads are copied in part (`orig_len` says how long they
/// were).
pub const PAYLOAD_LARGE: usize = 2048;

/// What precedes the data of a payload record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawPayloadHeader {
    /// [`RECORD_DNS`] or [`RECORD_FIRST_PAYLOAD`].
    pub kind: u32,
    /// Payload bytes copied into the record's data.
    pub len: u32,
    /// The payload's length in the packet (socket buffer): more than `len`
    /// when the copy was cut.
    pub orig_len: u32,
    /// TCP: the sequence number of the payload's first byte; else 0.
    pub tcp_seq: u32,
    /// The flow's key, canonical (as in the flow table): userspace orients
    /// it (the port-53 end is the server of a DNS answer).
    pub key: RawFlowKey,
    /// CLOCK_MONOTONIC ns when the packet passed.
    pub timestamp_ns: u64,
}

/// Size of a [`RawPayloadHeader`].
pub const PAYLOAD_HEADER_SIZE: usize = core::mem::size_of::<RawPayloadHeader>();

/// A payload record with `N` bytes of data.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawPayloadRecord<const N: usize> {
    /// Kind, lengths, key, time.
    pub header: RawPayloadHeader,
    /// The payload; `header.len` bytes of it are valid.
    pub data: [u8; N],
}

/// A payload record as userspace reads it: its header, and the payload
/// bytes it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRecord<'a> {
    /// Kind, lengths, key, time.
    pub header: RawPayloadHeader,
    /// The copied payload (`header.len` bytes).
    pub data: &'a [u8],
}

impl<'a> PayloadRecord<'a> {
    /// Decodes a payload record of either size, checking its length, kind,
    /// family and copied length.
    ///
    /// # Errors
    /// [`DecodeError`] says what is wrong; nothing panics on any input.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let capacity = bytes.len().wrapping_sub(PAYLOAD_HEADER_SIZE);
        if capacity != PAYLOAD_SMALL && capacity != PAYLOAD_LARGE {
            return Err(DecodeError::Length(bytes.len()));
        }
        let mut f = Fields::new(bytes);
        let kind = f.u32();
        if kind != RECORD_DNS && kind != RECORD_FIRST_PAYLOAD {
            return Err(DecodeError::Kind(kind));
        }
        let len = f.u32();
        let orig_len = f.u32();
        let tcp_seq = f.u32();
        let key = f.key()?;
        let timestamp_ns = f.u64();
        let data = f
            .rest()
            .get(..len as usize)
            .filter(|_| len <= orig_len)
            .ok_or(DecodeError::PayloadLength(len))?;
        Ok(Self {
            header: RawPayloadHeader {
                kind,
                len,
                orig_len,
                tcp_seq,
                key,
                timestamp_ns,
            },
            data,
        })
    }

    /// Whether the payload was copied whole.
    #[must_use]
    pub fn is_whole(&self) -> bool {
        self.header.len == self.header.orig_len
    }
}
