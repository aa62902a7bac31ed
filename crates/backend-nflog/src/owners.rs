//! Who owns a flow's socket, as well as the nflog backend can tell
//! (conntrack has no process): the user and group of a connection the
//! scope made come exactly from its new-flow log packet; the process is
//! the one holding the socket when the flow's NEW is read (found by the
//! socket's inode among the scope's processes), so it may be missing (the
//! socket already closed) or another holder of a socket passed on.

use std::num::NonZeroUsize;

use flow_core::FlowKey;
use flow_core::process::Attribution;
use flow_enrich::Owner;
use hashlink::LruCache;

use crate::nflog::HOOK_OUTPUT;
use crate::procs::{Holder, Members, SocketIndex};
use crate::sockdiag::{Local, SockDiag};

/// New-flow logs kept until their flow's NEW is read: far more than can
/// be in flight between the two sockets.
const LOGGED: usize = 4096;

/// What a new flow's log packet said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Logged {
    /// The hook that logged it: output for a connection the scope made.
    hook: Option<u8>,
    /// The local socket's user and group (locally made packets only).
    ids: Option<(u32, u32)>,
}

/// Finds the owners of new flows' sockets.
pub(crate) struct Owners {
    logged: LruCache<FlowKey, Logged>,
    diag: Option<SockDiag>,
    sockets: SocketIndex,
}

impl Owners {
    /// Owners among `members`, looked up with sock_diag in the calling
    /// thread's network namespace (without it, only users and groups are
    /// known).
    pub(crate) fn new(members: Members) -> Self {
        let diag = SockDiag::open()
            .inspect_err(|error| {
                tracing::warn!(%error, "no sock_diag socket: flows will have no process id");
            })
            .ok();
        Self {
            logged: LruCache::new(NonZeroUsize::new(LOGGED).map_or(1, NonZeroUsize::get)),
            diag,
            sockets: SocketIndex::new(members),
        }
    }

    /// A new flow's first packet was logged at `hook`, from a socket of
    /// user `uid` and group `gid` when locally made. The first log of a
    /// flow is kept (a connection over loopback is logged again on its way
    /// in, without an owner).
    pub(crate) fn new_flow_logged(
        &mut self,
        key: FlowKey,
        hook: Option<u8>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) {
        let ids = uid.zip(gid);
        if ids.is_some() || !self.logged.contains_key(&key) {
            self.logged.insert(key, Logged { hook, ids });
        }
    }

    /// The owner of the flow `key` (as conntrack opened it), attributed
    /// best effort (`None` when neither its socket's process nor its user
    /// is known), and whether the flow was started from outside the scope
    /// (its first packet was logged on its way in).
    pub(crate) fn owner(&mut self, key: &FlowKey) -> (Option<Owner>, bool) {
        let logged = self.logged.remove(key);
        let inbound = logged
            .and_then(|logged| logged.hook)
            .is_some_and(|hook| hook != HOOK_OUTPUT);
        (self.find(key, logged), inbound)
    }

    /// [`Owners::owner`]'s owner.
    fn find(&mut self, key: &FlowKey, logged: Option<Logged>) -> Option<Owner> {
        let ids = logged.and_then(|logged| logged.ids);
        let sides: &[Local] = match logged.and_then(|logged| logged.hook) {
            Some(HOOK_OUTPUT) => &[Local::Source],
            Some(_) => &[Local::Destination],
            None => &[Local::Source, Local::Destination],
        };
        let owner = match self.holder(key, sides) {
            Some(Holder { pid, stat }) => {
                Owner::new(pid).started(stat.start_ns).with_comm(stat.comm)
            }
            None if ids.is_some() => Owner::unidentified(),
            None => return None,
        };
        let owner = match ids {
            Some((uid, gid)) => owner.with_ids(uid, gid),
            None => owner,
        };
        Some(owner.attributed(Attribution::BestEffort))
    }

    /// The process holding the socket of `key` at one of its `sides`,
    /// else (a connection the scope accepted, not yet accepted or already
    /// closed) the socket it was accepted on.
    fn holder(&mut self, key: &FlowKey, sides: &[Local]) -> Option<Holder> {
        let diag = self.diag.as_mut()?;
        let mut inodes: Vec<u64> = sides
            .iter()
            .filter_map(|&local| diag.inode(key, local))
            .collect();
        if let Some(holder) = self.sockets.known(&inodes) {
            return Some(holder);
        }
        let listeners: Vec<u64> = sides
            .iter()
            .filter_map(|&local| diag.listener_inode(key, local))
            .collect();
        if let Some(holder) = self.sockets.known(&listeners) {
            return Some(holder);
        }
        // Not where it is cheap to look: each is looked for further, the
        // flow's own socket first.
        inodes.extend(listeners);
        self.sockets.search(&inodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        // Nothing listens or connects here: no socket is found.
        FlowKey::udp(
            "192.0.2.1:9".parse().unwrap(),
            "192.0.2.2:9".parse().unwrap(),
        )
    }

    fn owners() -> Owners {
        Owners::new(Members::Cgroup("/nonexistent".into()))
    }

    #[test]
    fn a_connection_made_keeps_its_user_without_a_process() {
        let mut owners = owners();
        owners.new_flow_logged(key(), Some(HOOK_OUTPUT), Some(65534), Some(65533));
        // Logged again on the way in, without an owner: the first stays.
        owners.new_flow_logged(key(), Some(0), None, None);
        let (owner, inbound) = owners.owner(&key());
        let owner = owner.unwrap();
        assert!(!inbound, "logged on its way out first");
        assert_eq!(owner.pid, None);
        assert_eq!((owner.uid, owner.gid), (Some(65534), Some(65533)));
        assert_eq!(owner.attribution, Attribution::BestEffort);
        assert_eq!(owners.owner(&key()), (None, false), "taken with its flow");
    }

    #[test]
    fn a_flow_without_user_or_socket_has_no_owner() {
        let mut owners = owners();
        owners.new_flow_logged(key(), Some(1), None, None);
        assert_eq!(owners.owner(&key()), (None, true), "logged on its way in");
    }
}
