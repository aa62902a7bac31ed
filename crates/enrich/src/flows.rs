//! What is known of each open flow until it closes: the host it was named
//! after when it opened, the server name its initiator sent, its process
//! and workload.

use std::num::NonZeroUsize;
use std::sync::Arc;

use flow_core::FlowKey;
use flow_core::process::Process;
use flow_core::workload::Workload;
use hashlink::LruCache;

/// What is known of one open flow.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    pub(crate) host: Option<Arc<str>>,
    pub(crate) sni: Option<Arc<str>>,
    pub(crate) process: Option<Arc<Process>>,
    pub(crate) workload: Option<Arc<Workload>>,
    /// Started from outside the scope.
    pub(crate) inbound: bool,
}

/// Open flows by key, bounded: the least recently opened or touched is
/// forgotten when more are open (its close then carries only its host).
#[derive(Debug)]
pub(crate) struct OpenFlows {
    flows: LruCache<FlowKey, Known>,
}

impl OpenFlows {
    pub(crate) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            flows: LruCache::new(capacity.get()),
        }
    }

    pub(crate) fn opened(&mut self, key: FlowKey, known: Known) {
        self.flows.insert(key, known);
    }

    /// The flow `key` names, in either orientation.
    fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Known> {
        if self.flows.contains_key(key) {
            return self.flows.get_mut(key);
        }
        self.flows.get_mut(&key.reversed())
    }

    pub(crate) fn set_sni(&mut self, key: &FlowKey, sni: Arc<str>) {
        if let Some(known) = self.get_mut(key) {
            known.sni = Some(sni);
        }
    }

    /// The process and the workload of the open flow `key`.
    pub(crate) fn owner(&mut self, key: &FlowKey) -> (Option<Arc<Process>>, Option<Arc<Workload>>) {
        self.get_mut(key).map_or((None, None), |known| {
            (known.process.clone(), known.workload.clone())
        })
    }

    /// What is known of the open flow `key`, kept.
    pub(crate) fn known(&mut self, key: &FlowKey) -> Option<Known> {
        self.flows.get(key).cloned()
    }

    pub(crate) fn closed(&mut self, key: &FlowKey) -> Option<Known> {
        self.flows.remove(key)
    }
}
