//! The `-o` file. flowtrack runs as root next to untrusted code, so it
//! opens the file as the kernel's `protected_symlinks` rule would, even
//! where that sysctl is off: a symbolic link in a sticky world-writable
//! directory (`/tmp`) is followed only when the link's owner is the
//! directory's owner or flowtrack's user, so that no one can plant a link
//! that makes flowtrack truncate a file they cannot write. A new file is
//! `0600` whatever the umask (a `--user` workload can neither read nor
//! forge its record); an existing file keeps its mode. And a regular file
//! is never left ending in part of a line: after a failed write (a full
//! disk) it is cut back to its last whole line.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Opening attempts when the name changes under us (removed, replaced).
const ATTEMPTS: usize = 8;

/// Creates or truncates the file at `path` for writing (see the module
/// documentation).
pub(crate) fn create(path: &Path) -> Result<File> {
    let name = path
        .file_name()
        .with_context(|| format!("cannot write to {}: it names no file", path.display()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("cannot open directory {}", parent.display()))?;
    let cannot = || format!("cannot create output file {}", path.display());
    for _ in 0..ATTEMPTS {
        // A new file: only its owner may read it, whatever the umask.
        match rustix::fs::openat(&dir, name, OFlags::CREATE | OFlags::EXCL | WRITE, PRIVATE) {
            Ok(fd) => {
                rustix::fs::fchmod(&fd, PRIVATE)
                    .map_err(io::Error::from)
                    .with_context(cannot)?;
                return Ok(File::from(fd));
            }
            Err(Errno::EXIST) => {}
            Err(error) => return Err(io::Error::from(error)).with_context(cannot),
        }
        // An existing one, not following a link the rule forbids.
        let follow = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(entry) if FileType::from_raw_mode(entry.st_mode) == FileType::Symlink => {
                if let Some(refusal) = refusal(&dir, &entry).with_context(cannot)? {
                    return Err(refusal.at(path, parent));
                }
                OFlags::empty()
            }
            Ok(_) => OFlags::NOFOLLOW,
            Err(Errno::NOENT) => continue,
            Err(error) => return Err(io::Error::from(error)).with_context(cannot),
        };
        match rustix::fs::openat(&dir, name, OFlags::TRUNC | WRITE | follow, Mode::empty()) {
            Ok(fd) => return Ok(File::from(fd)),
            // Removed, or replaced by a link, since we looked: look again.
            Err(Errno::NOENT | Errno::LOOP) => {}
            Err(error) => return Err(io::Error::from(error)).with_context(cannot),
        }
    }
    bail!(
        "cannot create output file {}: it keeps changing while flowtrack opens it",
        path.display()
    )
}

/// Open for writing, not inherited by the command.
const WRITE: OFlags = OFlags::WRONLY.union(OFlags::CLOEXEC);

/// `rw-------`.
const PRIVATE: Mode = Mode::RUSR.union(Mode::WUSR);

/// A symbolic link the `protected_symlinks` rule forbids following.
struct Refusal {
    link_owner: u32,
    dir_owner: u32,
}

impl Refusal {
    fn at(&self, path: &Path, dir: &Path) -> anyhow::Error {
        anyhow::anyhow!(
            "refusing to write to {}: it is a symbolic link owned by uid {} in {}, a \
             sticky world-writable directory owned by uid {} (another user's link could \
             aim the output at any file): remove the link or write elsewhere",
            path.display(),
            self.link_owner,
            dir.display(),
            self.dir_owner
        )
    }
}

/// Why the link `link` in `dir` may not be followed, if it may not:
/// it may outside a sticky world-writable directory, or when the link's
/// owner is the directory's or ours. Such a link cannot be swapped by
/// anyone else before we open it: the sticky bit lets only its owner or
/// the directory's remove it.
fn refusal(dir: &OwnedFd, link: &rustix::fs::Stat) -> io::Result<Option<Refusal>> {
    let directory = rustix::fs::fstat(dir)?;
    let mode = Mode::from_raw_mode(directory.st_mode);
    let shared = mode.contains(Mode::SVTX) && mode.contains(Mode::WOTH);
    let owner = link.st_uid;
    let allowed =
        !shared || owner == directory.st_uid || owner == rustix::process::geteuid().as_raw();
    Ok((!allowed).then_some(Refusal {
        link_owner: owner,
        dir_owner: directory.st_uid,
    }))
}

/// Whether `file` is a regular file (which [`WholeLines`] can cut back).
pub(crate) fn is_regular(file: &File) -> bool {
    file.metadata().is_ok_and(|metadata| metadata.is_file())
}

/// A regular file that never ends in part of a line: after a failed
/// write, it is cut back to the end of the last whole line written.
#[derive(Debug)]
pub(crate) struct WholeLines {
    file: File,
    /// Offset just after the last newline written.
    whole: u64,
    /// Offset after the last byte written.
    end: u64,
}

impl WholeLines {
    /// Writes to `file` from its current offset.
    pub(crate) fn new(mut file: File) -> io::Result<Self> {
        let end = file.stream_position()?;
        Ok(Self {
            file,
            whole: end,
            end,
        })
    }

    fn cut_back(&mut self) {
        if self.end > self.whole
            && self.file.set_len(self.whole).is_ok()
            && self.file.seek(SeekFrom::Start(self.whole)).is_ok()
        {
            self.end = self.whole;
        }
    }
}

impl Write for WholeLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write(buf) {
            Ok(n) => {
                if let Some(last) = buf[..n].iter().rposition(|&byte| byte == b'\n') {
                    self.whole = self.end + last as u64 + 1;
                }
                self.end += n as u64;
                Ok(n)
            }
            Err(error) => {
                if error.kind() != io::ErrorKind::Interrupted {
                    self.cut_back();
                }
                Err(error)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_file_is_private_and_an_existing_one_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.jsonl");
        create(&new).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&new), 0o600);
        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, "old\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
        create(&old).unwrap();
        assert_eq!(mode(&old), 0o640);
        assert_eq!(std::fs::read(&old).unwrap(), b"", "truncated");
    }

    #[test]
    fn a_link_outside_a_sticky_directory_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "old\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut file = create(&link).unwrap();
        file.write_all(b"new\n").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new\n");
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let error = create(Path::new("/")).unwrap_err();
        assert_eq!(error.to_string(), "cannot write to /: it names no file");
    }

    #[test]
    fn a_failed_write_cuts_the_file_back_to_its_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut lines = WholeLines::new(create(&path).unwrap()).unwrap();
        lines.write_all(b"one\ntwo\nthr").unwrap();
        lines.cut_back();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        lines.write_all(b"four\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\nfour\n");
    }
}
