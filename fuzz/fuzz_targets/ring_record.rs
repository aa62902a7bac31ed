//! Any bytes as an eBPF ring-buffer record: decoded or rejected, never a
//! panic; a record that decodes has the family its addresses say.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = flow_backend_ebpf::decode_record(data) {
        assert_eq!(event.key.src_addr.is_ipv4(), event.key.dst_addr.is_ipv4());
    }
});
