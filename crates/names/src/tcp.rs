//! DNS over TCP: the responses in one direction of one connection,
//! reassembled from the segments a capture saw.
//!
//! Each message is preceded by its length (two bytes, RFC 1035 §4.2.2). A
//! server may put several messages in one segment or split one across
//! segments; the capture may see segments out of order, twice
//! (retransmissions), overlapping, or cut short. [`DnsOverTcp`] places each
//! segment by its sequence number, reads every message as soon as it is
//! whole, and keeps at most [`WINDOW`] bytes: the largest message and its
//! length. A gap that cannot fill (a segment copied only in part, a
//! segment more than a window ahead, or the caller's [`DnsOverTcp::flush`]
//! when the connection ends) is given up: the message it cuts is read as
//! far as it goes, and the bytes lost are counted in
//! [`Reassembled::dropped`] so the caller can report the loss.
//!
//! ```
//! use flow_names::tcp::DnsOverTcp;
//! // A response (NXDOMAIN for "A? b.test") after its length, in three
//! // segments, the last two swapped.
//! let stream = [
//!     0, 24, 0, 7, 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0, // length, header
//!     1, b'b', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1, // question
//! ];
//! let mut reassembler = DnsOverTcp::new();
//! assert!(reassembler.push(1000, &stream[..1]).messages.is_empty());
//! assert!(reassembler.push(1010, &stream[10..]).messages.is_empty());
//! let read = reassembler.push(1001, &stream[1..10]);
//! let answer = read.messages[0].as_ref().expect("a response");
//! assert_eq!(answer.lookup.rcode.to_string(), "NXDOMAIN");
//! assert_eq!((read.dropped, reassembler.buffered()), (0, 0));
//! ```

use std::ops::Range;

use crate::dns::{Answer, DnsError, parse_response};

/// The most bytes a reassembler holds: a message of the largest size DNS
/// over TCP allows, and its two-byte length.
pub const WINDOW: usize = 2 + u16::MAX as usize;

/// The most separate pieces (and known-missing stretches) a reassembler
/// keeps track of; more pieces give up the oldest gap.
const MAX_PIECES: usize = 64;

/// Below this, the buffer keeps its memory between messages.
const KEEP_CAPACITY: usize = 4096;

/// What a segment (or a flush) gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// The messages that ended, in stream order: whole, or read as far as
    /// they go when a gap cut them (the bytes after the gap are counted in
    /// `dropped`). Messages that are not DNS responses give their error.
    pub messages: Vec<Result<Answer, DnsError>>,
    /// Stream bytes given up: never seen, or seen but not read as part of
    /// a message because a gap before them will not fill.
    pub dropped: u64,
}

/// Where the stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// No segment yet: the first one starts a message.
    Start,
    /// The buffer's first byte has this sequence number and starts a
    /// message.
    At(u32),
    /// Bytes from this sequence number on were given up without knowing
    /// where the next message starts: the next segment that begins at or
    /// after it is taken to start one (servers write a message at a time).
    Lost(u32),
}

/// One direction of one DNS-over-TCP connection, reassembled; see the
/// [module](self) documentation.
#[derive(Debug, Clone)]
pub struct DnsOverTcp {
    sync: Sync,
    /// The stream from the message being assembled on, holes included.
    buffer: Vec<u8>,
    /// The stretches of `buffer` received, sorted, apart from each other.
    received: Vec<Range<usize>>,
    /// Stretches known never to come (the part of a segment the capture
    /// did not copy), relative to `buffer`'s start.
    missing: Vec<Range<usize>>,
}

impl Default for DnsOverTcp {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsOverTcp {
    /// A reassembler whose stream starts with the first segment pushed
    /// (the capture starts at the first response's first segment).
    #[must_use]
    pub fn new() -> Self {
        Self {
            sync: Sync::Start,
            buffer: Vec::new(),
            received: Vec::new(),
            missing: Vec::new(),
        }
    }

    /// Adds a segment whose payload starts at sequence number `seq`; the
    /// messages it completes.
    pub fn push(&mut self, seq: u32, bytes: &[u8]) -> Reassembled {
        self.push_cut(seq, bytes, bytes.len())
    }

    /// Adds a segment of which the capture copied only the first `bytes`
    /// of `original_len`: the rest is given up at once (a message it cuts
    /// is read as far as it goes when the stream reaches the cut).
    pub fn push_cut(&mut self, seq: u32, bytes: &[u8], original_len: usize) -> Reassembled {
        let mut read = Reassembled::default();
        let mut at = seq;
        for chunk in bytes.chunks(WINDOW) {
            self.insert(at, chunk, &mut read);
            at = at.wrapping_add(len_u32(chunk.len()));
        }
        if original_len > bytes.len() {
            self.mark_missing(at, original_len - bytes.len());
            self.read_messages(&mut read);
        }
        read
    }

    /// Gives up every gap (the connection ended, or waited too long): the
    /// messages they cut, read as far as they go, and the bytes lost.
    pub fn flush(&mut self) -> Reassembled {
        let mut read = Reassembled::default();
        while !self.received.is_empty() {
            self.give_up_front(&mut read);
            self.read_messages(&mut read);
        }
        read
    }

    /// The bytes held, holes included: at most [`WINDOW`].
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Places `chunk` (at most [`WINDOW`] bytes) at `seq`, making room by
    /// giving up the front gap when it lies more than a window ahead, then
    /// reads what it completes.
    fn insert(&mut self, seq: u32, chunk: &[u8], read: &mut Reassembled) {
        let (start, skip) = loop {
            let front = match self.sync {
                Sync::Start => seq,
                Sync::Lost(gap) => {
                    let ahead = distance(gap, seq);
                    let Ok(ahead) = u64::try_from(ahead) else {
                        return; // a retransmission of what was given up
                    };
                    read.dropped += ahead;
                    seq
                }
                Sync::At(front) => front,
            };
            self.sync = Sync::At(front);
            let offset = distance(front, seq);
            let skip = usize::try_from(-offset.min(0)).unwrap_or(usize::MAX);
            if skip >= chunk.len() {
                return; // already read
            }
            let start = usize::try_from(offset.max(0)).unwrap_or(usize::MAX);
            if start.saturating_add(chunk.len() - skip) <= WINDOW {
                break (start, skip);
            }
            self.give_up_front(read);
        };
        let bytes = &chunk[skip..];
        let end = start + bytes.len();
        if self.buffer.len() < end {
            // Grow within the window, never past it.
            let capacity = (self.buffer.capacity() * 2).clamp(end, WINDOW);
            self.buffer.reserve_exact(capacity - self.buffer.len());
            self.buffer.resize(end, 0);
        }
        self.buffer[start..end].copy_from_slice(bytes);
        add_range(&mut self.received, start..end);
        self.read_messages(read);
        while self.received.len() > MAX_PIECES {
            self.give_up_front(read);
            self.read_messages(read);
        }
    }

    /// Notes that `len` bytes from `seq` will never come.
    fn mark_missing(&mut self, seq: u32, len: usize) {
        let Sync::At(front) = self.sync else { return };
        let Ok(start) = usize::try_from(distance(front, seq)) else {
            return;
        };
        let end = start.saturating_add(len).min(WINDOW);
        if start < end {
            add_range(&mut self.missing, start..end);
            self.missing.truncate(MAX_PIECES);
        }
    }

    /// Reads every message that is whole at the front, and gives up the
    /// front gap when it is known never to fill.
    fn read_messages(&mut self, read: &mut Reassembled) {
        loop {
            let held = self.contiguous();
            if let Some(total) = self.message_length()
                && held >= total
            {
                read.messages.push(parse_response(&self.buffer[2..total]));
                self.advance(total);
                continue;
            }
            if !self.missing.iter().any(|range| range.contains(&held)) {
                break;
            }
            self.give_up_front(read);
        }
    }

    /// Gives up the gap after the bytes held at the front: the message
    /// they start is read as far as it goes and the stream goes on at its
    /// end; without its length, at the next piece received, or at the next
    /// segment.
    fn give_up_front(&mut self, read: &mut Reassembled) {
        let held = self.contiguous();
        if let Some(total) = self.message_length() {
            if let Ok(answer) = parse_response(&self.buffer[2..held.min(total)]) {
                read.messages.push(Ok(answer));
            }
            read.dropped += (total - held.min(total)) as u64;
            self.advance(total);
        } else if let Some(next) = self.received.iter().map(|r| r.start).find(|&s| s > held) {
            read.dropped += next as u64;
            self.advance(next);
        } else {
            read.dropped += held as u64;
            if let Sync::At(front) = self.sync {
                self.sync = Sync::Lost(front.wrapping_add(len_u32(held)));
            }
            self.buffer = Vec::new();
            self.received.clear();
            self.missing.clear();
        }
    }

    /// How many bytes from the front were received without a hole.
    fn contiguous(&self) -> usize {
        self.received
            .first()
            .filter(|range| range.start == 0)
            .map_or(0, |range| range.end)
    }

    /// The length of the message at the front, prefix included, once its
    /// prefix was received.
    fn message_length(&self) -> Option<usize> {
        (self.contiguous() >= 2)
            .then(|| 2 + usize::from(u16::from_be_bytes([self.buffer[0], self.buffer[1]])))
    }

    /// Moves the front `n` bytes on (past the buffer's end, possibly).
    fn advance(&mut self, n: usize) {
        let held = n.min(self.buffer.len());
        self.buffer.drain(..held);
        if self.buffer.is_empty() && self.buffer.capacity() > KEEP_CAPACITY {
            self.buffer = Vec::new();
        }
        for ranges in [&mut self.received, &mut self.missing] {
            ranges.retain_mut(|range| {
                *range = range.start.saturating_sub(n)..range.end.saturating_sub(n);
                range.start < range.end
            });
        }
        if let Sync::At(front) = self.sync {
            self.sync = Sync::At(front.wrapping_add(len_u32(n)));
        }
    }
}

/// How far `seq` is ahead of `from` (negative: behind), modulo 2³².
fn distance(from: u32, seq: u32) -> i64 {
    i64::from(seq.wrapping_sub(from).cast_signed())
}

/// A length within the window as a sequence-number distance.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Adds `new` to sorted, separate `ranges`, merging what it touches.
fn add_range(ranges: &mut Vec<Range<usize>>, new: Range<usize>) {
    let first = ranges.partition_point(|range| range.end < new.start);
    let last = ranges.partition_point(|range| range.start <= new.end);
    let merged = ranges[first..last].iter().fold(new, |all, range| {
        all.start.min(range.start)..all.end.max(range.end)
    });
    ranges.splice(first..last, [merged]);
}

#[cfg(test)]
mod tests;
