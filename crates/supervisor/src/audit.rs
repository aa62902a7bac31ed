//! A policy in audit mode, on any backend: every flow goes through, and
//! each one the policy would deny is reported as a `denied` event with
//! `"enforced": false`, right after its `opened` event.
//!
//! The stream's own `dns` events teach the policy which addresses the
//! scope's lookups returned (name rules), so a flow is decided as an
//! enforcing backend would decide it when it opens. Flows started from
//! outside the scope (accepted connections: [`FlowEvent::inbound`]) are not
//! the policy's: it is an egress policy, as enforcement is.
//!
//! ```
//! use std::sync::Arc;
//! use flow_core::{FlowEvent, FlowEventKind, FlowKey};
//! use flow_policy::{Matcher, Policy};
//! use flow_supervisor::audit::Audited;
//! use flow_supervisor::merge::MergedItem;
//! use futures::StreamExt;
//!
//! # futures::executor::block_on(async {
//! let policy = Policy::builder().deny("tcp://*:25").unwrap().build().unwrap().unwrap();
//! let key = FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), "192.0.2.1:25".parse().unwrap());
//! let opened = MergedItem::Event { backend: "ebpf".into(), event: FlowEvent::opened(key, 1), also_seen_by: vec![] };
//! let audited = Audited::new(futures::stream::iter([opened]), Matcher::new(Arc::new(policy)));
//! let items: Vec<MergedItem> = audited.collect().await;
//! let MergedItem::Event { event, .. } = &items[1] else { panic!() };
//! assert_eq!(event.kind, FlowEventKind::Denied { rule: Some("tcp://*:25".into()), enforced: false });
//! # });
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use flow_core::{FlowEvent, FlowEventKind};
use flow_policy::{Decision, Matcher};
use futures::{Stream, StreamExt};

use crate::merge::MergedItem;

/// A merged stream with audit-mode denials added (see the
/// [module](self) documentation).
#[derive(Debug)]
pub struct Audited<S> {
    inner: S,
    /// `None`: no policy in audit mode; everything passes as it is.
    matcher: Option<Matcher>,
    /// The denial of the opened event just passed on.
    queued: Option<MergedItem>,
    /// Addresses lookups could not teach (the memory is full).
    dropped: usize,
}

impl<S> Audited<S> {
    /// Audits `inner` against `matcher`'s policy (with `None`, passes
    /// `inner` on as it is).
    pub fn new(inner: S, matcher: impl Into<Option<Matcher>>) -> Self {
        Self {
            inner,
            matcher: matcher.into(),
            queued: None,
            dropped: 0,
        }
    }

    /// What `item` teaches or calls for: a denial to pass on after it.
    fn check(&mut self, item: &MergedItem) -> Option<MergedItem> {
        let matcher = self.matcher.as_mut()?;
        let MergedItem::Event {
            backend,
            event,
            also_seen_by,
        } = item
        else {
            return None;
        };
        match &event.kind {
            FlowEventKind::Dns(lookup) => {
                let learned = matcher.learn(lookup);
                if learned.dropped > 0 && self.dropped == 0 {
                    tracing::warn!(
                        "the policy's memory of looked-up addresses is full ({} addresses): \
                         names looked up from now on allow nothing",
                        flow_policy::MAX_LEARNED_ADDRESSES
                    );
                }
                self.dropped += learned.dropped;
                None
            }
            FlowEventKind::Opened if !event.inbound => match matcher.decide(&event.key) {
                Decision::Allow => None,
                Decision::Deny(rule) => Some(MergedItem::Event {
                    backend: backend.clone(),
                    event: denial(event, matcher.rule_text(rule)),
                    also_seen_by: also_seen_by.clone(),
                }),
            },
            _ => None,
        }
    }
}

/// The audit-mode denial of the flow `opened` opened.
fn denial(opened: &FlowEvent, rule: std::sync::Arc<str>) -> FlowEvent {
    FlowEvent::denied(opened.key, rule, false, opened.timestamp_ns)
        .named(opened.host.clone())
        .with_sni(opened.sni.clone())
        .by(opened.process.clone())
        .within(opened.workload.clone())
}

impl<S: Stream<Item = MergedItem> + Unpin> Stream for Audited<S> {
    type Item = MergedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MergedItem>> {
        let this = &mut *self;
        if let Some(queued) = this.queued.take() {
            return Poll::Ready(Some(queued));
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                this.queued = this.check(&item);
                Poll::Ready(Some(item))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::FlowKey;
    use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
    use flow_policy::Policy;
    use std::sync::Arc;

    fn event(event: FlowEvent) -> MergedItem {
        MergedItem::Event {
            backend: "mock".into(),
            event,
            also_seen_by: Vec::new(),
        }
    }

    fn audit(policy: Policy, items: Vec<MergedItem>) -> Vec<FlowEvent> {
        let audited = Audited::new(futures::stream::iter(items), Matcher::new(Arc::new(policy)));
        futures::executor::block_on(audited.collect::<Vec<_>>())
            .into_iter()
            .filter_map(|item| match item {
                MergedItem::Event { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn exactly_the_flows_the_policy_would_deny_are_reported() {
        let policy = Policy::builder()
            .allow("udp://10.0.0.53:53")
            .unwrap()
            .allow("tcp://pypi.org:443")
            .unwrap()
            .build()
            .unwrap()
            .unwrap();
        let client = "10.0.0.1:40000".parse().unwrap();
        let dns = FlowKey::udp(
            "10.0.0.1:5353".parse().unwrap(),
            "10.0.0.53:53".parse().unwrap(),
        );
        let lookup = DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NO_ERROR)
            .with_answers(["151.101.0.223".parse().unwrap()]);
        let pypi = FlowKey::tcp(client, "151.101.0.223:443".parse().unwrap());
        let other = FlowKey::tcp(client, "151.101.0.224:443".parse().unwrap());
        let inbound = FlowKey::tcp(
            "192.0.2.7:50000".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        let events = audit(
            policy,
            vec![
                event(FlowEvent::opened(dns, 1)),
                event(FlowEvent::dns(dns, lookup, 2)),
                event(FlowEvent::opened(pypi, 3).named("pypi.org")),
                event(FlowEvent::opened(other, 4).named("elsewhere.org")),
                event(FlowEvent::closed(other, 2, 120, 5)),
                event(FlowEvent::opened(inbound, 6).inbound(true)),
            ],
        );
        let denied: Vec<&FlowEvent> = events
            .iter()
            .filter(|e| matches!(e.kind, FlowEventKind::Denied { .. }))
            .collect();
        assert_eq!(denied.len(), 1, "{events:#?}");
        assert_eq!(denied[0].key, other);
        assert_eq!(denied[0].host.as_deref(), Some("elsewhere.org"));
        assert_eq!(
            denied[0].kind,
            FlowEventKind::Denied {
                rule: Some("default".into()),
                enforced: false
            }
        );
        assert_eq!(
            events.len(),
            7,
            "every event passes, the denial after its opening"
        );
        assert_eq!(events[4].kind, denied[0].kind);
    }
}
