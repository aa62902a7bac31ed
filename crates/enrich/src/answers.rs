//! DNS answers, read from what the backend copied: a UDP datagram is one
//! message; a DNS-over-TCP stream is reassembled from its segments first.

use std::num::NonZeroUsize;

use flow_core::FlowKey;
use flow_core::dns::DnsLookup;
use flow_names::dns::{Answer, DnsError, parse_response};
use flow_names::tcp::{DnsOverTcp, Reassembled};
use hashlink::LruCache;

/// DNS-over-TCP streams being reassembled at once (each holds at most
/// 64 KiB); the least recently used gives up what it holds.
const STREAMS: usize = 256;

/// What a copied answer gave.
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// The lookups it completed.
    pub(crate) lookups: Vec<DnsLookup>,
    /// Copies, messages or stream bytes cut short (names may be missing).
    pub(crate) cut: u64,
    /// Messages that were not DNS responses.
    pub(crate) malformed: u64,
}

/// The DNS-over-TCP streams in progress, by the lookup's flow.
#[derive(Debug)]
pub(crate) struct Answers {
    streams: LruCache<FlowKey, DnsOverTcp>,
}

impl Default for Answers {
    fn default() -> Self {
        Self {
            streams: LruCache::new(NonZeroUsize::new(STREAMS).map_or(1, NonZeroUsize::get)),
        }
    }
}

impl Answers {
    /// Reads an answer's copy: a datagram when `tcp_seq` is `None`, else a
    /// segment of `flow`'s stream.
    pub(crate) fn read(
        &mut self,
        flow: FlowKey,
        tcp_seq: Option<u32>,
        payload: &[u8],
        original_len: usize,
        _timestamp_ns: u64,
    ) -> Read {
        let mut read = Read::default();
        match tcp_seq {
            None => {
                if original_len > payload.len() {
                    read.cut += 1;
                }
                take(&mut read, [parse_response(payload)]);
            }
            Some(seq) => {
                let stream = match self.streams.get_mut(&flow) {
                    Some(stream) => stream,
                    None => {
                        if self.streams.len() == STREAMS
                            && let Some((_, mut oldest)) = self.streams.remove_lru()
                        {
                            absorb(&mut read, oldest.flush());
                        }
                        self.streams.insert(flow, DnsOverTcp::new());
                        self.streams
                            .get_mut(&flow)
                            .unwrap_or_else(|| unreachable!("just inserted"))
                    }
                };
                let reassembled = stream.push_cut(seq, payload, original_len);
                absorb(&mut read, reassembled);
            }
        }
        read
    }

    /// The lookup flow `flow` ended: its stream, if any, is dropped.
    pub(crate) fn forget(&mut self, flow: &FlowKey) {
        self.streams.remove(flow);
    }
}

/// Adds what a reassembler gave to `read`.
fn absorb(read: &mut Read, reassembled: Reassembled) {
    if reassembled.dropped > 0 {
        read.cut += 1;
    }
    take(read, reassembled.messages);
}

/// Adds parsed messages to `read`.
fn take(read: &mut Read, messages: impl IntoIterator<Item = Result<Answer, DnsError>>) {
    for message in messages {
        match message {
            Ok(answer) => {
                if !answer.complete {
                    read.cut += 1;
                }
                read.lookups.push(answer.lookup);
            }
            Err(_) => read.malformed += 1,
        }
    }
}
