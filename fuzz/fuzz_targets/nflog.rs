//! Any bytes as a datagram from an nfnetlink_log socket (messages, their
//! attributes, and the logged packet's IP and transport headers): decoded
//! or skipped, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = flow_backend_nflog::decode_nflog_datagram(data);
    for key in decoded.keys {
        assert_eq!(key.src_addr.is_ipv4(), key.dst_addr.is_ipv4());
    }
});
