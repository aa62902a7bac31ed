//! Ring-buffer records into flow events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flow_core::{CloseReason, FlowEvent, FlowKey};
use flow_ebpf_common::{
    CLOSE_FIN, CLOSE_IDLE, CLOSE_RST, CLOSE_SCOPE_ENDED, CLOSE_SOCK_RELEASE, DecodeError,
    FAMILY_V4, RECORD_OPENED, RawFlowKey, RawFlowRecord,
};

/// Decodes one ring-buffer record into the event it reports.
///
/// Records are length-checked; bytes that are not a record give an error,
/// never a panic.
///
/// # Errors
/// [`DecodeError`]: wrong length, unknown kind or address family.
///
/// ```
/// use flow_backend_ebpf::decode_record;
/// assert!(decode_record(&[0_u8; 3]).is_err());
/// ```
pub fn decode_record(bytes: &[u8]) -> Result<FlowEvent, DecodeError> {
    let record = RawFlowRecord::decode(bytes)?;
    let key = flow_key(&record.key);
    Ok(if record.kind == RECORD_OPENED {
        FlowEvent::opened(key, record.first_seen_ns)
    } else {
        FlowEvent::closed(key, record.packets, record.bytes, record.timestamp_ns)
            .because(close_reason(record.close_reason))
    })
}

/// The contract's close reason for a record's `CLOSE_*`; `None` for a
/// number this version does not know.
fn close_reason(raw: u32) -> Option<CloseReason> {
    match raw {
        CLOSE_FIN => Some(CloseReason::Fin),
        CLOSE_RST => Some(CloseReason::Reset),
        CLOSE_SOCK_RELEASE => Some(CloseReason::SocketReleased),
        CLOSE_IDLE => Some(CloseReason::Idle),
        CLOSE_SCOPE_ENDED => Some(CloseReason::ScopeEnded),
        _ => None,
    }
}

/// The contract's key for a kernel key.
pub(crate) fn flow_key(raw: &RawFlowKey) -> FlowKey {
    FlowKey {
        src_addr: address(raw.family, &raw.src_addr),
        src_port: raw.src_port,
        dst_addr: address(raw.family, &raw.dst_addr),
        dst_port: raw.dst_port,
        protocol: raw.protocol,
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::FlowEventKind;
    use flow_ebpf_common::{RECORD_CLOSED, RECORD_SIZE};
    use proptest::prelude::*;

    /// A record's bytes as the kernel lays them out (native endian).
    fn encode(record: &RawFlowRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_SIZE);
        out.extend(record.kind.to_ne_bytes());
        out.extend(record.close_reason.to_ne_bytes());
        out.extend(record.key.src_addr);
        out.extend(record.key.dst_addr);
        out.extend(record.key.src_port.to_ne_bytes());
        out.extend(record.key.dst_port.to_ne_bytes());
        out.push(record.key.protocol);
        out.push(record.key.family);
        out.extend(record.key.pad);
        for value in [
            record.packets,
            record.bytes,
            record.first_seen_ns,
            record.timestamp_ns,
        ] {
            out.extend(value.to_ne_bytes());
        }
        out
    }

    fn any_record() -> impl Strategy<Value = RawFlowRecord> {
        (
            prop_oneof![Just(RECORD_OPENED), Just(RECORD_CLOSED)],
            prop_oneof![Just(4_u8), Just(6_u8)],
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<(u16, u16, u8)>(),
            any::<(u64, u64, u64, u64)>(),
            0_u32..8,
        )
            .prop_map(
                |(kind, family, src, dst, (sport, dport, protocol), (p, b, f, t), reason)| {
                    let mut key = RawFlowKey {
                        src_addr: src,
                        dst_addr: dst,
                        src_port: sport,
                        dst_port: dport,
                        protocol,
                        family,
                        pad: [0; 2],
                    };
                    if family == 4 {
                        key.src_addr[4..].fill(0);
                        key.dst_addr[4..].fill(0);
                    }
                    RawFlowRecord {
                        kind,
                        close_reason: reason,
                        key,
                        packets: p,
                        bytes: b,
                        first_seen_ns: f,
                        timestamp_ns: t,
                    }
                },
            )
    }

    #[test]
    fn the_fuzz_corpus_decodes() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ring_record");
        let mut seeds = 0;
        for entry in std::fs::read_dir(corpus).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            decode_record(&bytes).unwrap();
            seeds += 1;
        }
        assert_eq!(seeds, 10);
    }

    #[test]
    fn the_layout_is_what_the_kernel_writes() {
        assert_eq!(RECORD_SIZE, 80);
        assert_eq!(std::mem::size_of::<RawFlowKey>(), 40);
        assert_eq!(encode(&RawFlowRecord::default()).len(), RECORD_SIZE);
    }

    proptest! {
        #[test]
        fn valid_records_decode_to_their_event(record in any_record()) {
            let event = decode_record(&encode(&record)).unwrap();
            prop_assert_eq!(event.key.src_port, record.key.src_port);
            prop_assert_eq!(event.key.protocol, record.key.protocol);
            prop_assert_eq!(event.key.src_addr.is_ipv4(), record.key.family == 4);
            match event.kind {
                FlowEventKind::Opened => prop_assert_eq!(event.timestamp_ns, record.first_seen_ns),
                FlowEventKind::Closed { pkt_count, byte_count } => {
                    prop_assert_eq!((pkt_count, byte_count), (record.packets, record.bytes));
                    prop_assert_eq!(event.close_reason, close_reason(record.close_reason));
                    prop_assert_eq!(event.close_reason.is_some(), (1..=5).contains(&record.close_reason));
                }
                _ => prop_assert!(false),
            }
        }

        #[test]
        fn garbage_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let result = decode_record(&bytes);
            if bytes.len() != RECORD_SIZE {
                prop_assert_eq!(result.err(), Some(DecodeError::Length(bytes.len())));
            }
        }

        #[test]
        fn mutated_records_never_panic(record in any_record(), at in 0..RECORD_SIZE, byte in any::<u8>()) {
            let mut bytes = encode(&record);
            bytes[at] = byte;
            let _ = decode_record(&bytes);
        }
    }
}
