//! Tests only: IPFIX messages decoded back into [`FlowRecord`]s by an
//! independent decoder (`netflow_parser`), so that the tests compare what
//! a collector reads with what was offered.

use std::net::IpAddr;

use flow_core::FlowKey;
use flow_core::counters::{Counters, DirectionCounters};
use netflow_parser::variable_versions::field_value::{DataNumber, DurationValue, FieldValue};
use netflow_parser::variable_versions::ipfix::FlowSetBody;
use netflow_parser::{NetflowPacket, NetflowParser};

use super::ipfix::{EndReason, FlowRecord};

/// A decoded stream: the data records in order, and for each message its
/// sequence number, data records and whether it held templates.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) records: Vec<FlowRecord>,
    pub(crate) messages: Vec<(u32, usize, bool)>,
}

/// Decodes `bytes`: IPFIX messages one after the other (a TCP stream, or
/// datagrams put together). Panics on anything it cannot decode.
pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    let mut parser = NetflowParser::default();
    let parsed = parser.parse_bytes(bytes);
    assert!(parsed.error.is_none(), "{:?}", parsed.error);
    let mut decoded = Decoded::default();
    for packet in parsed.packets {
        let NetflowPacket::IPFix(message) = packet else {
            panic!("not IPFIX: {packet:?}")
        };
        let mut templates = false;
        let mut data = 0;
        for set in &message.flowsets {
            match &set.body {
                FlowSetBody::Template(_) | FlowSetBody::Templates(_) => templates = true,
                FlowSetBody::Data(records) => {
                    data += records.fields.len();
                    decoded
                        .records
                        .extend(records.fields.iter().map(|r| record(r)));
                }
                other => panic!("unexpected set {other:?}"),
            }
        }
        decoded
            .messages
            .push((message.header.sequence_number, data, templates));
    }
    decoded
}

/// One data record's fields, by their names in `netflow_parser`.
fn record(
    fields: &[(
        netflow_parser::variable_versions::ipfix::lookup::IPFixField,
        FieldValue,
    )],
) -> FlowRecord {
    let value = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| format!("{field:?}") == name)
            .map(|(_, value)| value)
            .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
    };
    let address = |v4: &str, v6: &str| -> IpAddr {
        let found = fields
            .iter()
            .find(|(field, _)| [v4, v6].contains(&format!("{field:?}").as_str()));
        match found.map(|(_, value)| value) {
            Some(FieldValue::Ip4Addr(addr)) => IpAddr::V4(*addr),
            Some(FieldValue::Ip6Addr(addr)) => IpAddr::V6(*addr),
            other => panic!("{v4}/{v6}: {other:?}"),
        }
    };
    let counters =
        |bytes: &str, packets: &str| Counters::new(number(value(packets)), number(value(bytes)));
    let key = FlowKey {
        src_addr: address("IANA(SourceIpv4address)", "IANA(SourceIpv6address)"),
        dst_addr: address(
            "IANA(DestinationIpv4address)",
            "IANA(DestinationIpv6address)",
        ),
        src_port: u16::try_from(number(value("IANA(SourceTransportPort)"))).unwrap(),
        dst_port: u16::try_from(number(value("IANA(DestinationTransportPort)"))).unwrap(),
        protocol: u8::try_from(number(value("IANA(ProtocolIdentifier)"))).unwrap(),
    };
    let reason = match number(value("IANA(FlowEndReason)")) {
        1 => EndReason::Idle,
        2 => EndReason::Active,
        3 => EndReason::EndOfFlow,
        4 => EndReason::Forced,
        other => panic!("flowEndReason {other}"),
    };
    FlowRecord {
        key,
        counters: DirectionCounters::new(
            counters("IANA(OctetDeltaCount)", "IANA(PacketDeltaCount)"),
            counters(
                "ReverseInformationElement(ReverseOctetDeltaCount)",
                "ReverseInformationElement(ReversePacketDeltaCount)",
            ),
        ),
        start_ms: number(value("IANA(FlowStartMilliseconds)")),
        end_ms: number(value("IANA(FlowEndMilliseconds)")),
        reason,
    }
}

/// A field's value as a number, whatever type the decoder gave it.
fn number(value: &FieldValue) -> u64 {
    match value {
        FieldValue::DataNumber(DataNumber::U8(n)) => u64::from(*n),
        FieldValue::DataNumber(DataNumber::U16(n)) => u64::from(*n),
        FieldValue::DataNumber(DataNumber::U24(n) | DataNumber::U32(n)) => u64::from(*n),
        FieldValue::DataNumber(DataNumber::U64(n)) => *n,
        FieldValue::ProtocolType(protocol) => u64::from(u8::from(*protocol)),
        FieldValue::FlowEndReason(reason) => u64::from(u8::from(*reason)),
        FieldValue::Duration(DurationValue::Millis { value, .. }) => *value,
        other => panic!("not a number: {other:?}"),
    }
}
