//! What the `run` tests of both backends share: the workload, and the check
//! of its one flow in the JSON output.

use std::path::Path;

use flow_core::record::{FlowRecord, RecordItem};

/// A UDP datagram of 100 bytes to 127.0.0.1:9 from a connected socket, then
/// exit status 7. Prints its source port.
pub(crate) const SEND_UDP: &str = "import socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.connect(('127.0.0.1',9))\n\
s.send(b'x'*100)\n\
print(s.getsockname()[1])\n\
s.close()\n\
sys.exit(7)";

/// `out` (JSON lines) holds exactly the opening and closing of SEND_UDP's
/// flow from `sport`, seen by `backend`, with its one datagram counted.
pub(crate) fn assert_one_udp_flow(out: &Path, backend: &str, sport: u16) {
    let lines = std::fs::read_to_string(out).unwrap();
    let records: Vec<FlowRecord<'static>> = lines
        .lines()
        .map(|l| FlowRecord::from_json_line(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records.iter().map(FlowRecord::kind_name).collect();
    assert_eq!(kinds, ["opened", "closed"], "{lines}");
    for record in &records {
        assert_eq!(record.backend, backend);
        let RecordItem::Event(event) = record.item else {
            panic!("{record:?}")
        };
        assert_eq!(
            event.key.to_string(),
            format!("udp 127.0.0.1:{sport} -> 127.0.0.1:9")
        );
    }
    let RecordItem::Event(closed) = records[1].item else {
        unreachable!()
    };
    assert_eq!(
        closed.kind,
        flow_core::FlowEventKind::Closed {
            pkt_count: 1,
            byte_count: 128
        },
        "one datagram: 100 + 8 + 20 bytes"
    );
}
