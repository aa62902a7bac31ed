//! What one backend knows of a flow that another does not: its close
//! reason, its names, its process. The line sent for a flow several
//! backends saw carries the preferred backend's counters and time, and
//! whatever any of them knew of the rest.

use std::sync::Arc;

use flow_core::FlowEvent;
use flow_core::process::{Attribution, Process};

/// Fills what `kept` does not know from `other`, a view of the same flow
/// by another backend. A process the kernel attributed wins over one
/// looked up afterwards.
pub(super) fn fill(kept: &mut FlowEvent, other: &FlowEvent) {
    kept.close_reason = kept.close_reason.or(other.close_reason);
    if kept.host.is_none() {
        kept.host.clone_from(&other.host);
    }
    if kept.sni.is_none() {
        kept.sni.clone_from(&other.sni);
    }
    prefer_process(&mut kept.process, other.process.as_ref());
}

/// Takes `candidate` for `process` when it is the better attribution.
pub(super) fn prefer_process(process: &mut Option<Arc<Process>>, candidate: Option<&Arc<Process>>) {
    if better(candidate, process.as_ref()) {
        *process = candidate.cloned();
    }
}

/// Whether `candidate` is a better attribution than `current`.
fn better(candidate: Option<&Arc<Process>>, current: Option<&Arc<Process>>) -> bool {
    match (candidate, current) {
        (Some(_), None) => true,
        (Some(candidate), Some(current)) => {
            current.attribution == Attribution::BestEffort
                && candidate.attribution == Attribution::Kernel
        }
        _ => false,
    }
}

/// `replacement` takes the place of `held` in the line sent, keeping what
/// only `held` knew.
pub(super) fn replace(held: &mut FlowEvent, replacement: FlowEvent) {
    let previous = std::mem::replace(held, replacement);
    fill(held, &previous);
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::FlowKey;

    #[test]
    fn each_backend_fills_what_the_other_lacks() {
        let key = FlowKey::tcp(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:443".parse().unwrap(),
        );
        let guessed = Arc::new(Process::new(7).attributed(Attribution::BestEffort));
        let exact = Arc::new(Process::new(7).with_comm("curl"));
        let mut ebpf = FlowEvent::closed(key, 2, 80, 3)
            .with_sni("pypi.org")
            .by(Arc::clone(&exact));
        let nflog = FlowEvent::closed(key, 2, 80, 4)
            .named("pypi.org")
            .by(guessed.clone());
        fill(&mut ebpf, &nflog);
        assert_eq!(ebpf.host.as_deref(), Some("pypi.org"));
        assert_eq!(
            ebpf.process,
            Some(Arc::clone(&exact)),
            "the kernel's attribution stays"
        );
        let mut held = nflog;
        replace(
            &mut held,
            FlowEvent::closed(key, 2, 80, 3).by(exact.clone()),
        );
        assert_eq!(
            held.host.as_deref(),
            Some("pypi.org"),
            "kept from the replaced view"
        );
        assert_eq!(held.process, Some(exact));
    }
}
