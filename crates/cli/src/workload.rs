//! A fresh cgroup for `run`'s command: made before the command starts,
//! the command placed in it before it opens any socket, and removed after
//! (with whatever it left running), also after a crash, on the next start.
//!
//! flowtrack holds a lock (`flock`) on the cgroup's directory for as long
//! as the run lasts; a cgroup of flowtrack's whose lock can be taken was
//! left by a flowtrack that no longer runs. The pid in its name is for
//! people only: another PID namespace does not see it, and pids are reused.

use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flow_cgroup::{cgroup2_mount, kill_and_remove};

use crate::terminal::{self, ChildSide};

/// Names of flowtrack's cgroups: `flowtrack-<pid>-<n>`.
const PREFIX: &str = "flowtrack-";

/// A cgroup flowtrack made for one command; dropping it kills what is left
/// in it and removes it.
#[derive(Debug)]
pub(crate) struct WorkloadCgroup {
    path: PathBuf,
    procs: CString,
    /// The directory, held locked: the cgroup is in use.
    lock: File,
}

impl WorkloadCgroup {
    /// Makes `flowtrack-<pid>-<n>` under the cgroup v2 mount and locks it,
    /// after removing cgroups that earlier flowtrack processes (now dead)
    /// left behind.
    pub(crate) fn create() -> Result<Self> {
        let mount = cgroup2_mount().context(
            "flowtrack run needs cgroup v2 to scope the command's sockets: mount it \
             (`mount -t cgroup2 none /sys/fs/cgroup`); under `ip netns exec`, which \
             remounts /sys, run the namespace inside instead \
             (`flowtrack run -- ip netns exec NS CMD`)",
        )?;
        let _ = remove_leftovers(&mount);
        let pid = std::process::id();
        for n in 0..1000 {
            let path = mount.join(format!("{PREFIX}{pid}-{n}"));
            match fs::create_dir(&path) {
                Ok(()) => {}
                // Another run of this process, or a flowtrack of the same pid
                // in another PID namespace.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("cannot create cgroup {} (needs root)", path.display())
                    });
                }
            }
            // A clean-up may take the new cgroup for a leftover before it is
            // locked, and remove it (it is empty): then try another name.
            let Some(lock) = claim(&path) else { continue };
            let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
                .context("cgroup path contains a NUL byte")?;
            return Ok(Self { path, procs, lock });
        }
        anyhow::bail!("no free cgroup name under {}", mount.display())
    }

    /// The cgroup directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Processes still in the cgroup (dropping it kills them).
    pub(crate) fn processes_left(&self) -> usize {
        fs::read_to_string(self.path.join("cgroup.procs")).map_or(0, |procs| procs.lines().count())
    }

    /// A command that joins this cgroup before it executes, so that every
    /// socket it opens (their cgroup is fixed at creation) is observed; and
    /// then, given a `user`, starts a session of its own (with `terminal`
    /// as its controlling terminal, when it has one: [`crate::terminal`]),
    /// takes that user's environment (`HOME`, `USER`, `LOGNAME`) and drops
    /// to that user's identity.
    pub(crate) fn command(
        &self,
        program: &OsString,
        args: &[OsString],
        user: Option<&RunAs>,
        terminal: Option<ChildSide>,
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.args(args);
        if let Some(user) = user {
            command
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        let procs = self.procs.clone();
        let lock = self.lock.as_raw_fd();
        let user = user.cloned();
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes system calls through rustix (close, open, write, setsid,
        // ioctl, dup2, setgroups, setgid, setuid: per-thread calls, and the
        // child has one thread) with values prepared before the fork, and
        // allocates nothing. It joins the cgroup first, while still root:
        // std's own uid/gid switch would run before it and leave it unable
        // to write cgroup.procs. The lock's descriptor is the child's own
        // copy, closed once and never used after.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                // The lock is flowtrack's, not the command's. The child's copy
                // (until exec would close it) would hold it after flowtrack
                // died: joining the cgroup can take milliseconds, and a
                // `flowtrack cleanup` run then took the cgroup for a live
                // run's and left it.
                rustix::io::close(lock);
                let fd = rustix::fs::open(
                    procs.as_c_str(),
                    rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?;
                rustix::io::write(&fd, b"0")?;
                if let Some(user) = &user {
                    terminal::enter_own_session(terminal)?;
                    rustix::thread::set_thread_groups(&user.groups)?;
                    rustix::thread::set_thread_gid(user.gid)?;
                    rustix::thread::set_thread_uid(user.uid)?;
                }
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

/// The identity `run --user` gives the command: a user's uid, primary
/// group and supplementary groups, name and home, resolved before the
/// fork.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub(crate) uid: rustix::process::Uid,
    pub(crate) gid: rustix::process::Gid,
    groups: Vec<rustix::process::Gid>,
    name: OsString,
    home: PathBuf,
}

impl RunAs {
    /// Resolves a user name, or a numeric uid (with its passwd entry's
    /// group when it has one, else the group of the same number).
    pub(crate) fn resolve(user: &str) -> Result<Self> {
        use nix::unistd::{Uid, User, getgrouplist};
        let entry = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .with_context(|| format!("cannot look up user {user}"))?;
        let (uid, gid, groups, name, home) = match (entry, user.parse::<u32>()) {
            (Some(entry), _) => {
                let name =
                    CString::new(entry.name.as_bytes()).context("user name contains a NUL byte")?;
                let groups = getgrouplist(&name, entry.gid)
                    .with_context(|| format!("cannot list the groups of user {user}"))?;
                (
                    entry.uid.as_raw(),
                    entry.gid.as_raw(),
                    groups.iter().map(|g| g.as_raw()).collect(),
                    OsString::from(entry.name),
                    entry.dir,
                )
            }
            // A uid without a passwd entry: its number as its name, and
            // the root directory as its home (as sudo and su give).
            (None, Ok(uid)) => (uid, uid, vec![uid], uid.to_string().into(), "/".into()),
            (None, Err(_)) => anyhow::bail!(
                "user {user} does not exist: give a name from /etc/passwd (or NSS) or a numeric uid"
            ),
        };
        Ok(Self {
            uid: rustix::process::Uid::from_raw(uid),
            gid: rustix::process::Gid::from_raw(gid),
            groups: groups
                .into_iter()
                .map(rustix::process::Gid::from_raw)
                .collect(),
            name,
            home,
        })
    }
}

/// The lock on the cgroup directory at `path`, if it can be taken and the
/// path still names the directory locked.
fn claim(path: &Path) -> Option<File> {
    let dir = File::open(path).ok()?;
    dir.try_lock().ok()?;
    let locked = dir.metadata().ok()?.ino();
    (fs::metadata(path).ok()?.ino() == locked).then_some(dir)
}

/// Whether `name` is one of flowtrack's cgroups, `flowtrack-<pid>-<n>`.
fn is_workload_cgroup(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, n)| pid.parse::<u32>().is_ok() && n.parse::<u32>().is_ok())
}

/// Removes flowtrack's cgroups whose lock can be taken, that is whose
/// flowtrack no longer runs (with whatever still runs in them); returns the
/// ones removed.
pub(crate) fn remove_leftovers(mount: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(mount) else {
        return removed;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_workload_cgroup) {
            continue;
        }
        // Held while the cgroup is emptied and removed.
        let Some(_lock) = claim(&entry.path()) else {
            continue; // its flowtrack is still running
        };
        match kill_and_remove(&entry.path()) {
            Ok(()) => {
                tracing::info!(cgroup = %entry.path().display(), "removed a cgroup left by a crashed flowtrack");
                removed.push(entry.path());
            }
            Err(error) => {
                tracing::warn!(cgroup = %entry.path().display(), %error, "could not remove a leftover cgroup")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flowtracks_cgroups_are_candidates() {
        assert!(is_workload_cgroup("flowtrack-4242-0"));
        assert!(is_workload_cgroup("flowtrack-1-17"));
        for other in [
            "flowtrack-",
            "flowtrack-x-1",
            "flowtrack-1",
            "flowtrack-1-",
            "system.slice",
        ] {
            assert!(!is_workload_cgroup(other), "{other}");
        }
    }

    #[test]
    fn a_directory_held_by_another_is_not_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let held = claim(dir.path()).expect("a free directory is claimed");
        assert!(claim(dir.path()).is_none(), "held: in use");
        drop(held);
        assert!(claim(dir.path()).is_some(), "released: a leftover");
        assert!(claim(&dir.path().join("gone")).is_none());
    }
}
