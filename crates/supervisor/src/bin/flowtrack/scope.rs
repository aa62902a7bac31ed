//! What `watch` follows, checked before any backend starts.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::cli::WatchScope;

/// A checked scope: the directory or namespace file exists.
#[derive(Debug)]
pub(crate) enum Scope {
    /// A cgroup v2 directory.
    Cgroup(PathBuf),
    /// A network namespace file.
    Netns(PathBuf),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup(path) => write!(f, "cgroup {}", path.display()),
            Self::Netns(path) => write!(f, "network namespace {}", path.display()),
        }
    }
}

impl Scope {
    /// Checks the scope the user named.
    pub(crate) fn resolve(scope: &WatchScope) -> Result<Self> {
        if let Some(path) = &scope.cgroup {
            if !path.join("cgroup.procs").is_file() {
                bail!(
                    "cgroup {} does not exist or is not a cgroup directory: give the full path of a cgroup v2 directory",
                    path.display()
                );
            }
            return Ok(Self::Cgroup(path.clone()));
        }
        if let Some(name) = &scope.netns {
            let path = if name.contains('/') {
                PathBuf::from(name)
            } else {
                Path::new("/run/netns").join(name)
            };
            if !path.exists() {
                bail!(
                    "network namespace {name} not found ({} does not exist): see `ip netns list`",
                    path.display()
                );
            }
            return Ok(Self::Netns(path));
        }
        // clap's argument group requires exactly one of the two.
        bail!("watch needs --cgroup PATH or --netns NAME")
    }
}
