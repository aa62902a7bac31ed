//! What `watch` follows, checked before any backend starts.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use flow_supervisor::backend::Scope;

use crate::cli::WatchScope;

/// A scope, for messages.
pub(crate) struct Describe<'a>(pub(crate) &'a Scope);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Scope::Cgroup(path) => write!(f, "cgroup {}", path.display()),
            Scope::Netns(path) => write!(f, "network namespace {}", path.display()),
        }
    }
}

/// Checks the scope the user named: the directory or namespace file exists.
pub(crate) fn resolve(scope: &WatchScope) -> Result<Scope> {
    if let Some(path) = &scope.cgroup {
        if !path.join("cgroup.procs").is_file() {
            bail!(
                "cgroup {} does not exist or is not a cgroup directory: give the full path of a cgroup v2 directory",
                path.display()
            );
        }
        return Ok(Scope::Cgroup(path.clone()));
    }
    if let Some(name) = &scope.netns {
        let path = if name.contains('/') {
            PathBuf::from(name)
        } else if name.bytes().all(|b| b.is_ascii_digit()) {
            Path::new("/proc").join(name).join("ns/net")
        } else {
            Path::new("/run/netns").join(name)
        };
        if !path.exists() {
            bail!(
                "network namespace {name} not found ({} does not exist): see `ip netns list`, or give a path or a pid",
                path.display()
            );
        }
        return Ok(Scope::Netns(path));
    }
    // clap's argument group requires exactly one of the two.
    bail!("watch needs --cgroup PATH or --netns NAME")
}
