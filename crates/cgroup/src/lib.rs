//! Finding cgroup v2 and the state of a cgroup directory: the kernel facts
//! every backend that scopes to a cgroup, and the `flowtrack` command,
//! share. Blocking filesystem work: call it from a thread that may block.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The processes of the cgroup `dir` and of every cgroup below it (their
/// `cgroup.procs`); those of a cgroup that cannot be read are left out.
///
/// ```
/// if let Ok(mount) = flow_cgroup::cgroup2_mount() {
///     assert!(flow_cgroup::processes(&mount).contains(&std::process::id()));
/// }
/// ```
#[must_use]
pub fn processes(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .lines()
                    .filter_map(|line| line.trim().parse::<u32>().ok()),
            );
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        dirs.extend(
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.path()),
        );
    }
    pids
}

/// Where cgroup v2 is mounted, read from `/proc/mounts` (hybrid hosts mount
/// it at `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`).
///
/// # Errors
/// `NotFound` when no cgroup2 filesystem is mounted.
///
/// ```
/// if let Ok(mount) = flow_cgroup::cgroup2_mount() {
///     assert!(mount.join("cgroup.procs").exists());
/// }
/// ```
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 filesystem in /proc/mounts",
            )
        })
}

/// `/proc/mounts` escapes spaces, tabs, newlines and backslashes as octal.
fn unescape_mount_path(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether any process is in `cgroup` or its descendants
/// (`populated` in `cgroup.events`); `None` if it cannot be read.
///
/// ```
/// assert_eq!(flow_cgroup::is_populated("/nonexistent".as_ref()), None);
/// ```
#[must_use]
pub fn is_populated(cgroup: &Path) -> Option<bool> {
    let events = fs::read_to_string(cgroup.join("cgroup.events")).ok()?;
    events
        .lines()
        .find_map(|line| line.strip_prefix("populated "))
        .map(|value| value.trim() == "1")
}

/// Kills every process left in `cgroup` (`cgroup.kill`, Linux 5.14+), waits
/// up to two seconds for it to empty, and removes the directory.
///
/// A process may still be joining when this looks (its write to
/// `cgroup.procs` can take milliseconds, and a dead flowtrack's command
/// may be half-way through it): the removal is then refused as busy, and
/// the newcomer is killed in another round, within the same two seconds.
///
/// # Errors
/// The `rmdir` error (`NotFound`, or `EBUSY` when processes remain).
///
/// ```
/// assert!(flow_cgroup::kill_and_remove("/nonexistent".as_ref()).is_err());
/// ```
pub fn kill_and_remove(cgroup: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if is_populated(cgroup) == Some(true) {
            let _ = fs::write(cgroup.join("cgroup.kill"), "1");
            while is_populated(cgroup) == Some(true) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match fs::remove_dir(cgroup) {
            Err(error)
                if error.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            removed => return removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape_mount_path("/a\\040b\\134c"), "/a b\\c");
    }
}

/// A cgroup v2 directory's identity, as BPF helpers and nf_tables see it:
/// its id (the directory's inode number) and its depth below the cgroup v2
/// root (the root is level 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The cgroup id.
    pub id: u64,
    /// Its level below the root.
    pub level: u32,
}

/// The [`Identity`] of the cgroup v2 directory `cgroup`.
///
/// # Errors
/// `NotFound` when it does not exist; `InvalidInput` when it is not below
/// the cgroup v2 mount.
///
/// ```
/// assert!(flow_cgroup::identity("/nonexistent".as_ref()).is_err());
/// ```
pub fn identity(cgroup: &Path) -> io::Result<Identity> {
    use std::os::unix::fs::MetadataExt;
    let mount = cgroup2_mount()?;
    let path = cgroup.canonicalize()?;
    let relative = path.strip_prefix(&mount).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not under the cgroup v2 mount {}", mount.display()),
        )
    })?;
    let level = u32::try_from(relative.components().count())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nested too deep"))?;
    Ok(Identity {
        id: fs::metadata(&path)?.ino(),
        level,
    })
}
