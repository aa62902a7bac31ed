//! What `watch` follows, checked before any backend starts.

use std::fmt;
use std::io;
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

/// Checks that `path` is there and flowtrack may look at it; `missing`
/// says what to do when it does not exist.
fn accessible(what: &str, path: &Path, missing: impl FnOnce() -> String) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => bail!(missing()),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            bail!("cannot access {what}: permission denied: watching it needs root")
        }
        Err(error) => bail!("cannot access {what} ({}): {error}", path.display()),
    }
}

/// Checks the scope the user named: the directory or namespace file exists
/// and flowtrack may look at it.
pub(crate) fn resolve(scope: &WatchScope) -> Result<Scope> {
    if let Some(path) = &scope.cgroup {
        let procs = path.join("cgroup.procs");
        let what = format!("cgroup {}", path.display());
        let not_a_cgroup = || {
            format!(
                "cgroup {} does not exist or is not a cgroup directory: give the full path of a cgroup v2 directory",
                path.display()
            )
        };
        accessible(&what, &procs, not_a_cgroup)?;
        if !procs.is_file() {
            bail!(not_a_cgroup());
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
        let what = if path.as_os_str() == name.as_str() {
            format!("network namespace {name}")
        } else {
            format!("network namespace {name} ({})", path.display())
        };
        accessible(&what, &path, || {
            format!(
                "network namespace {name} not found ({} does not exist): see `ip netns list`, or give a path or a pid",
                path.display()
            )
        })?;
        return Ok(Scope::Netns(path));
    }
    if scope.all {
        let root = flow_cgroup::cgroup2_mount().map_err(|error| {
            anyhow::anyhow!(
                "cannot watch the whole host: no cgroup v2 hierarchy is mounted ({error}): mount one (`mount -t cgroup2 none /sys/fs/cgroup`)"
            )
        })?;
        return Ok(Scope::Cgroup(root));
    }
    // clap's argument group requires exactly one of the three.
    bail!("watch needs --cgroup PATH, --netns NAME or --all")
}
