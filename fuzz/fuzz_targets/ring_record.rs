//! Any bytes as an eBPF ring-buffer record: decoded or rejected, never a
//! panic; a flow record that decodes has the family its addresses say.
#![no_main]

use flow_backend_ebpf::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match flow_backend_ebpf::decode_record(data) {
        Ok(Record::Opened(event, _, _) | Record::Closed(event)) => {
            assert_eq!(event.key.src_addr.is_ipv4(), event.key.dst_addr.is_ipv4());
        }
        Ok(Record::DnsAnswer {
            payload,
            original_len,
            ..
        }) => {
            assert!(payload.len() <= original_len);
        }
        _ => {}
    }
});
