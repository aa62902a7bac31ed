//! Any bytes as the segments of a DNS-over-TCP connection a capture saw,
//! in any order: each is a sequence number (4 bytes), the bytes copied
//! (2), the bytes not copied (2), all big-endian, then the bytes copied
//! (fewer when the input ends). The reassembler never panics, never holds
//! more than its window, and holds nothing after a flush.
#![no_main]

use flow_names::tcp::{DnsOverTcp, WINDOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reassembler = DnsOverTcp::new();
    let mut rest = data;
    while let Some((header, after)) = rest.split_first_chunk::<8>() {
        let seq = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let copied = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let uncopied = usize::from(u16::from_be_bytes([header[6], header[7]]));
        let (bytes, next) = after.split_at(copied.min(after.len()));
        let _ = reassembler.push_cut(seq, bytes, bytes.len() + uncopied);
        assert!(reassembler.buffered() <= WINDOW);
        rest = next;
    }
    let _ = reassembler.flush();
    assert_eq!(reassembler.buffered(), 0);
});
