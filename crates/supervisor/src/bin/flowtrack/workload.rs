//! A fresh cgroup for `run`'s command: made before the command starts,
//! the command placed in it before it opens any socket, and removed after
//! (with whatever it left running), also after a crash, on the next start.

use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flow_core::cgroup::{cgroup2_mount, kill_and_remove};

/// Names of flowtrack's cgroups: `flowtrack-<pid>-<n>`.
const PREFIX: &str = "flowtrack-";

/// A cgroup flowtrack made for one command; dropping it kills what is left
/// in it and removes it.
#[derive(Debug)]
pub(crate) struct WorkloadCgroup {
    path: PathBuf,
    procs: CString,
}

impl WorkloadCgroup {
    /// Makes `flowtrack-<pid>-<n>` under the cgroup v2 mount, after removing
    /// cgroups that earlier flowtrack processes (now dead) left behind.
    pub(crate) fn create() -> Result<Self> {
        let mount = cgroup2_mount().context(
            "cgroup v2 is not mounted: flowtrack run needs it to scope the command's sockets",
        )?;
        remove_leftovers(&mount);
        let pid = std::process::id();
        let path = (0..)
            .map(|n| mount.join(format!("{PREFIX}{pid}-{n}")))
            .find(|path| !path.exists())
            .context("no free cgroup name")?;
        fs::create_dir(&path)
            .with_context(|| format!("cannot create cgroup {} (needs root)", path.display()))?;
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path contains a NUL byte")?;
        Ok(Self { path, procs })
    }

    /// The cgroup directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A command that joins this cgroup before it executes, so that every
    /// socket it opens (their cgroup is fixed at creation) is observed.
    pub(crate) fn command(&self, program: &OsString, args: &[OsString]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.args(args);
        let procs = self.procs.clone();
        // SAFETY: the closure runs in the forked child before exec; it only
        // calls open(2) and write(2) through rustix on a path prepared before
        // the fork, and allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                let fd = rustix::fs::open(
                    procs.as_c_str(),
                    rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?;
                rustix::io::write(&fd, b"0")?;
                Ok(())
            });
        }
        command
    }
}

impl Drop for WorkloadCgroup {
    fn drop(&mut self) {
        if let Err(error) = kill_and_remove(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), %error, "could not remove the command's cgroup");
        }
    }
}

/// Removes `flowtrack-<pid>-*` cgroups whose flowtrack process is gone.
fn remove_leftovers(mount: &Path) {
    let Ok(entries) = fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue; // its flowtrack is still running
        }
        match kill_and_remove(&entry.path()) {
            Ok(()) => {
                tracing::info!(cgroup = %entry.path().display(), "removed a cgroup left by a crashed flowtrack")
            }
            Err(error) => {
                tracing::warn!(cgroup = %entry.path().display(), %error, "could not remove a leftover cgroup")
            }
        }
    }
}
