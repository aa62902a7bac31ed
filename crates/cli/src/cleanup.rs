//! `flowtrack cleanup`: removes what flowtrack processes that no longer
//! run left in the kernel, and lists it. Every start does the same for
//! what it touches ([`at_start`]); this does it everywhere, on demand.
//!
//! - cgroups `flowtrack-<pid>-<n>` whose lock no flowtrack holds (killing
//!   what still runs in them);
//! - with the nflog backend built in: flowtrack's nf_tables tables that no
//!   netlink socket owns, and the conntrack settings changed by sources
//!   whose record no flowtrack holds locked, in flowtrack's own network
//!   namespace and in every one named under /run/netns.
//!
//! What is left over is decided by what a live flowtrack holds (a lock, a
//! socket), never by pids: a flowtrack in another PID namespace has pids
//! this one does not see, and a dead one's pid may be reused.
//!
//! BPF programs, links and maps need nothing: flowtrack never pins them,
//! so they go with its process.

use std::process::ExitCode;

use anyhow::Result;
use flow_supervisor::backend::Scope;

use crate::diag::tell;
use crate::workload;

/// What every `run` and `watch` does first, whatever its backends: restore
/// the conntrack settings, and remove the nf_tables tables, that nflog
/// sources no longer running left in flowtrack's network namespace and in
/// the one watched. Quiet when it cannot (without root the backends say
/// what is missing).
pub(crate) async fn at_start(scope: &Scope) {
    #[cfg(feature = "nflog")]
    {
        let mut namespaces = vec![None];
        if let Scope::Netns(netns) = scope {
            namespaces.push(Some(netns.clone()));
        }
        let cleaned = tokio::task::spawn_blocking(move || {
            for netns in namespaces {
                match flow_backend_nflog::cleanup::remove_leftovers(netns.as_deref()) {
                    Ok(lines) => {
                        for line in lines {
                            tracing::info!("removed {line}");
                        }
                    }
                    Err(error) => tracing::debug!(%error, "no clean-up of nflog leftovers"),
                }
            }
        });
        let _ = cleaned.await;
    }
    #[cfg(not(feature = "nflog"))]
    let _ = scope;
}

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
    use anyhow::Context;
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
