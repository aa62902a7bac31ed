//! Any bytes as a datagram from a ctnetlink event socket: decoded or
//! skipped as malformed, never a panic; decoded keys are of one family.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = flow_backend_nflog::decode_conntrack_datagram(data);
    for key in decoded.keys {
        assert_eq!(key.src_addr.is_ipv4(), key.dst_addr.is_ipv4());
    }
});
