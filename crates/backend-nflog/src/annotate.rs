//! What the listener adds to its flow events from what its rules log
//! besides new flows: the names learnt from the scope's DNS answers and
//! ClientHellos, and the owner of each new flow's socket; all through an
//! [`Enricher`], as every backend does.
//!
//! Ordering: the listener reads the log messages that were queued before
//! a conntrack event ahead of that event, so a DNS answer the scope got
//! before connecting names the connection. A ClientHello comes after its
//! flow's NEW was queued, but may be read before the NEW is processed: it
//! waits here until the flow is reported opened.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use flow_core::{FlowEvent, FlowEventKind, FlowKey, protocol};
use flow_enrich::{EnrichConfig, Enricher, Item};
use hashlink::LruCache;

use crate::nflog::{DNS_PREFIX, HELLO_PREFIX, LoggedPacket, NEW_FLOW_PREFIX};
use crate::owners::Owners;
use crate::procs::Members;

/// ClientHellos kept while their flow's NEW is unread; more are of flows
/// that opened before the rules (never reported), the oldest dropped.
const WAITING_HELLOS: usize = 256;

/// Names and attributes the listener's flow events.
pub(crate) struct Annotator {
    enricher: Enricher,
    /// Finds the owners of flows, unless processes are not attributed.
    owners: Option<Owners>,
    /// TCP flows reported opened and not yet closed.
    open: HashSet<FlowKey>,
    /// ClientHellos read before their flow was reported opened.
    hellos: LruCache<FlowKey, Vec<u8>>,
}

impl Annotator {
    /// An annotator for the flows of `members`' sockets (none: flows are
    /// not attributed to processes), keeping the names of `names`
    /// addresses at most.
    pub(crate) fn new(members: Option<Members>, names: NonZeroUsize) -> Self {
        Self {
            enricher: Enricher::new(EnrichConfig::default().names(names)),
            owners: members.map(Owners::new),
            open: HashSet::new(),
            hellos: LruCache::new(NonZeroUsize::new(WAITING_HELLOS).map_or(1, NonZeroUsize::get)),
        }
    }

    /// Takes in a packet logged by a new-flow, DNS or ClientHello rule
    /// (others are passed over); pushes the `dns` events and losses it
    /// gives.
    pub(crate) fn logged(&mut self, packet: LoggedPacket, now_ns: u64, out: &mut Vec<Item>) {
        let Some(key) = packet.key else { return };
        match (packet.prefix.as_str(), packet.payload) {
            (NEW_FLOW_PREFIX, _) => {
                if let Some(owners) = &mut self.owners {
                    owners.new_flow_logged(key, packet.hook, packet.uid, packet.gid);
                }
            }
            // The answer travels resolver → asker; the lookup's flow is
            // the other way. (A kernel whose rules cannot test for a
            // payload logs every segment: those without one are skipped.)
            (DNS_PREFIX, Some(payload)) if payload.original_len > 0 => self.enricher.dns_answer(
                key.reversed(),
                payload.tcp_seq,
                &payload.bytes,
                payload.original_len,
                now_ns,
                out,
            ),
            // Logged on its way out: oriented as the flow opened.
            (HELLO_PREFIX, Some(payload)) => {
                if self.open.contains(&key) {
                    self.enricher.first_payload(key, &payload.bytes);
                } else {
                    self.hellos.insert(key, payload.bytes);
                }
            }
            _ => {}
        }
    }

    /// The event, named and attributed.
    pub(crate) fn event(&mut self, event: FlowEvent) -> FlowEvent {
        let key = event.key;
        match event.kind {
            FlowEventKind::Opened => {
                let (owner, inbound) = self
                    .owners
                    .as_mut()
                    .map_or((None, false), |owners| owners.owner(&key));
                let event = self.enricher.opened(event.inbound(inbound), owner);
                if key.protocol == protocol::TCP {
                    self.open.insert(key);
                    if let Some(hello) = self.hellos.remove(&key) {
                        self.enricher.first_payload(key, &hello);
                    }
                }
                event
            }
            FlowEventKind::Closed { .. } => {
                self.open.remove(&key);
                self.enricher.closed(event)
            }
            FlowEventKind::Denied { .. } => self.enricher.denied(event, None),
            FlowEventKind::Update { .. } => self.enricher.update(event),
            _ => event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Payload;

    /// A ClientHello that Python's `ssl` sent to `pypi.org`.
    const PYTHON_HELLO: &[u8] = include_bytes!("../../names/testdata/client-hello-python.bin");

    fn hello_packet(key: FlowKey) -> LoggedPacket {
        let bytes = PYTHON_HELLO.to_vec();
        LoggedPacket {
            seq: None,
            prefix: HELLO_PREFIX.into(),
            hook: Some(crate::nflog::HOOK_OUTPUT),
            uid: None,
            gid: None,
            key: Some(key),
            payload: Some(Payload {
                tcp_seq: Some(1),
                original_len: bytes.len(),
                bytes,
            }),
        }
    }

    fn annotator() -> Annotator {
        Annotator::new(
            Some(Members::Cgroup("/nonexistent".into())),
            flow_enrich::DEFAULT_NAME_CACHE_ENTRIES,
        )
    }

    fn key() -> FlowKey {
        FlowKey::tcp(
            "192.0.2.1:40000".parse().unwrap(),
            "192.0.2.2:443".parse().unwrap(),
        )
    }

    /// `a.test A 10.0.0.1`, answered by 10.0.0.53 to 10.0.0.9:40000.
    fn dns_answer_packet() -> LoggedPacket {
        let mut answer = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        answer.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 0, 0, 1]);
        LoggedPacket {
            seq: None,
            prefix: DNS_PREFIX.into(),
            hook: Some(1),
            uid: None,
            gid: None,
            key: Some(FlowKey::udp(
                "10.0.0.53:53".parse().unwrap(),
                "10.0.0.9:40000".parse().unwrap(),
            )),
            payload: Some(Payload {
                tcp_seq: None,
                original_len: answer.len(),
                bytes: answer,
            }),
        }
    }

    #[test]
    fn a_dns_answer_is_a_dns_event_and_names_the_flows_after_it() {
        let mut annotator = annotator();
        let mut out = Vec::new();
        annotator.logged(dns_answer_packet(), 1, &mut out);
        let [Ok(dns)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            dns.key.src().to_string(),
            "10.0.0.9:40000",
            "the asker's side"
        );
        assert_eq!(dns.lookup().unwrap().query.as_ref(), "a.test");
        let key = FlowKey::tcp(
            "10.0.0.9:40002".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        let opened = annotator.event(FlowEvent::opened(key, 2));
        assert_eq!(opened.host.as_deref(), Some("a.test"));
    }

    #[test]
    fn a_client_hello_read_before_its_flow_opened_names_it() {
        let mut annotator = annotator();
        let mut out = Vec::new();
        annotator.logged(hello_packet(key()), 1, &mut out);
        let _ = annotator.event(FlowEvent::opened(key(), 2));
        let closed = annotator.event(FlowEvent::closed(key(), 4, 300, 3));
        assert_eq!(closed.sni.as_deref(), Some("pypi.org"));
        assert!(out.is_empty());
    }

    #[test]
    fn a_client_hello_of_an_open_flow_names_it_at_once() {
        let mut annotator = annotator();
        let _ = annotator.event(FlowEvent::opened(key(), 1));
        annotator.logged(hello_packet(key()), 2, &mut Vec::new());
        let closed = annotator.event(FlowEvent::closed(key(), 4, 300, 3));
        assert_eq!(closed.sni.as_deref(), Some("pypi.org"));
        // Closed: a later flow of the same key starts unnamed.
        let _ = annotator.event(FlowEvent::opened(key(), 4));
        let closed = annotator.event(FlowEvent::closed(key(), 4, 300, 5));
        assert_eq!(closed.sni, None);
    }
}
