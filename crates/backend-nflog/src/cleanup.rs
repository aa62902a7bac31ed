//! `flowtrack cleanup`'s part for this backend, also run by every start:
//! what flowtrack processes that no longer run left in a network namespace
//! — nf_tables tables no netlink socket owns (only possible on kernels
//! without table owners) and conntrack settings whose record no running
//! source holds locked — removed and listed. Never decided by pids, which
//! another PID namespace does not see and which are reused.

use std::io;
use std::path::{Path, PathBuf};

use flow_core::FlowError;

use crate::listener::{enter_netns, remove_leftover_tables};
use crate::netlink::Socket;
use crate::sysctl::restore_left_behind;

/// Removes what dead flowtrack processes left in the network namespace at
/// `netns` (`None`: the caller's), on a thread of its own; returns one line
/// per object removed or setting restored.
///
/// # Errors
/// The namespace cannot be entered, or netlink or /proc/sys refuse
/// (not root).
///
/// ```no_run
/// for removed in flow_backend_nflog::cleanup::remove_leftovers(None)? {
///     println!("removed {removed}");
/// }
/// # Ok::<(), flow_core::FlowError>(())
/// ```
pub fn remove_leftovers(netns: Option<&Path>) -> Result<Vec<String>, FlowError> {
    let netns: Option<PathBuf> = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(netns) = &netns {
            enter_netns(netns)?;
        }
        in_this_namespace().map_err(|e| FlowError::io("cleaning up nflog leftovers", e))
    })
    .join()
    .map_err(|_| FlowError::unavailable(crate::BACKEND_NAME, "the clean-up thread panicked"))?
}

fn in_this_namespace() -> io::Result<Vec<String>> {
    let mut nft = Socket::open(&[])?;
    nft.set_receive_timeout(std::time::Duration::from_secs(5))?;
    let mut removed = remove_leftover_tables(&mut nft);
    removed.extend(
        restore_left_behind()?
            .into_iter()
            .map(|setting| format!("setting {setting}")),
    );
    Ok(removed)
}
