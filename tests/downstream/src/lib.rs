//! A downstream crate as a flowtrack user writes one: a sandbox's egress
//! audit built on `flow-supervisor` with `default-features = false,
//! features = ["ebpf"]`, unit-tested against the mock sources (the `mock`
//! feature, in its dev-dependencies only).
//!
//! [`audit`] answers "what did this workload talk to?": each destination
//! with its connections and bytes, and whether the answer is complete (no
//! observation lost, no backend failed).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use flow_supervisor::merge::{MergeConfig, MergedItem, Merger};
use flow_supervisor::{FlowError, FlowEventKind, FlowSource};
use futures::StreamExt;

/// What a workload talked to, per destination.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Connections opened to it.
    pub connections: u64,
    /// Bytes of the closed ones, both directions.
    pub bytes: u64,
}

/// The audit of one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Destinations by (IANA protocol, address).
    pub destinations: BTreeMap<(u8, SocketAddr), Destination>,
    /// Observations were lost or a backend failed: the list may be short.
    pub incomplete: bool,
}

/// Audits every flow the sources report until they all end.
///
/// # Errors
/// A source that cannot start.
pub async fn audit(sources: Vec<Box<dyn FlowSource>>) -> Result<Audit, FlowError> {
    let mut merger = Merger::new(MergeConfig::default());
    for source in sources {
        merger.add(source).await?;
    }
    let mut audit = Audit::default();
    let mut items = merger.into_stream();
    while let Some(item) = items.next().await {
        match item {
            MergedItem::Event { event, .. } => {
                let destination = audit
                    .destinations
                    .entry((event.key.protocol, event.key.dst()))
                    .or_default();
                match event.kind {
                    FlowEventKind::Opened => destination.connections += 1,
                    FlowEventKind::Closed { byte_count, .. } => destination.bytes += byte_count,
                    _ => {}
                }
            }
            MergedItem::Lost { .. } | MergedItem::SourceFailed { .. } => audit.incomplete = true,
            _ => {}
        }
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_supervisor::mock::{MockFlowSource, ScriptedSource};
    use flow_supervisor::{FlowEvent, FlowKey, LossPoint};
    use futures::stream;

    fn key(sport: u16, dst: &str) -> FlowKey {
        FlowKey::tcp(
            SocketAddr::from(([10, 0, 0, 1], sport)),
            dst.parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn counts_connections_and_bytes_per_destination() {
        let web = "10.0.0.2:443";
        let first = ScriptedSource::builder("ebpf")
            .opened(key(40000, web), 1)
            .closed(key(40000, web), 10, 1_000, 2)
            .build();
        let second = ScriptedSource::from_events(
            "nflog",
            vec![
                FlowEvent::opened(key(40001, web), 3),
                FlowEvent::closed(key(40001, web), 4, 500, 4),
            ],
        );
        let audit = audit(vec![Box::new(first), Box::new(second)])
            .await
            .unwrap();
        let expected = Destination {
            connections: 2,
            bytes: 1_500,
        };
        assert_eq!(audit.destinations[&(6, web.parse().unwrap())], expected);
        assert!(!audit.incomplete);
    }

    #[tokio::test]
    async fn a_loss_makes_the_audit_incomplete() {
        let source = ScriptedSource::builder("ebpf")
            .opened(key(40000, "10.0.0.2:80"), 1)
            .lost(LossPoint::RingBufferFull, Some(3))
            .build();
        let audit = audit(vec![Box::new(source)]).await.unwrap();
        assert!(audit.incomplete);
        assert_eq!(audit.destinations.len(), 1);
    }

    #[tokio::test]
    async fn a_source_that_cannot_start_is_an_error() {
        let mut source = MockFlowSource::new();
        source.expect_name().return_const("ebpf".to_owned());
        source
            .expect_start()
            .times(1)
            .returning(|| Err(FlowError::unavailable("ebpf", "needs CAP_BPF")));
        let error = audit(vec![Box::new(source)]).await.unwrap_err();
        assert_eq!(error.to_string(), "ebpf backend unavailable: needs CAP_BPF");
    }

    #[tokio::test]
    async fn a_failing_source_mid_stream_keeps_the_others() {
        let mut failing = MockFlowSource::new();
        failing.expect_name().return_const("nflog".to_owned());
        failing.expect_start().times(1).returning(|| {
            let items = vec![
                Ok(FlowEvent::opened(key(1, "10.0.0.3:53"), 1)),
                Err(FlowError::io(
                    "netlink socket",
                    std::io::ErrorKind::ConnectionReset.into(),
                )),
            ];
            Ok(stream::iter(items).boxed())
        });
        let healthy = ScriptedSource::builder("ebpf")
            .opened(key(2, "10.0.0.4:22"), 2)
            .build();
        let audit = audit(vec![Box::new(failing), Box::new(healthy)])
            .await
            .unwrap();
        assert!(audit.incomplete);
        assert_eq!(audit.destinations.len(), 2);
    }
}
