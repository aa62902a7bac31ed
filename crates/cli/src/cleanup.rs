//! `flowtrack cleanup`: removes what flowtrack processes that no longer
//! run left in the kernel, and lists it. Every start does the same for
//! what it touches; this does it everywhere, on demand.
//!
//! - cgroups `flowtrack-<pid>-*` (killing what still runs in them);
//! - with the nflog backend built in: nf_tables tables `flowtrack_<pid>_*`
//!   and the conntrack settings they changed, in flowtrack's own network
//!   namespace and in every one named under /run/netns.
//!
//! BPF programs, links and maps need nothing: flowtrack never pins them,
//! so they go with its process.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::diag::tell;
use crate::workload;

/// Removes the leftovers and prints one line per object.
pub(crate) fn cleanup() -> Result<ExitCode> {
    let mut removed: Vec<String> = Vec::new();
    if let Ok(mount) = flow_cgroup::cgroup2_mount() {
        removed.extend(
            workload::remove_leftovers(&mount)
                .into_iter()
                .map(|cgroup| format!("cgroup {}", cgroup.display())),
        );
    }
    #[cfg(feature = "nflog")]
    removed.extend(nflog_leftovers()?);
    if removed.is_empty() {
        tell!("flowtrack: nothing left behind");
    }
    for line in removed {
        tell!("removed {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The nflog backend's leftovers in flowtrack's namespace (an error there
/// is the command's error) and in the named ones (an error there is a
/// warning: a namespace may vanish meanwhile).
#[cfg(feature = "nflog")]
fn nflog_leftovers() -> Result<Vec<String>> {
    use flow_backend_nflog::cleanup::remove_leftovers;
    let mut removed = remove_leftovers(None)
        .context("cannot clean up the nflog backend's leftovers (needs root)")?;
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    for netns in named {
        match remove_leftovers(Some(&netns)) {
            Ok(lines) => removed.extend(
                lines
                    .into_iter()
                    .map(|line| format!("{line} in network namespace {}", netns.display())),
            ),
            Err(error) => tracing::warn!(netns = %netns.display(), %error, "could not clean up"),
        }
    }
    Ok(removed)
}
