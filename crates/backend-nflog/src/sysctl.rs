//! The conntrack settings the backend turns on in its network namespace
//! (`nf_conntrack_acct`, `nf_conntrack_timestamp`) and puts back after.
//!
//! The old values are also written to a record file under [`STATE_DIR`],
//! one per source, named after the namespace, flowtrack's pid and a
//! number, which the source holds locked (`flock`) while it runs. A record
//! whose lock can be taken belongs to a source that no longer runs,
//! whatever its pid says (the pid may be another PID namespace's, or
//! reused): the next start in that namespace restores its values, and so
//! does `flowtrack cleanup`. When several sources (in one flowtrack
//! process or several) share a namespace, the last one to leave restores
//! the values the first one found. Every step that reads or changes the
//! records holds a lock on [`STATE_DIR`] itself, so that two starts never
//! both take themselves for the first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the records of changed settings live.
pub const STATE_DIR: &str = "/run/flowtrack/sysctl";

/// The settings, under /proc/sys/net/netfilter.
const SETTINGS: [&str; 2] = ["nf_conntrack_acct", "nf_conntrack_timestamp"];

fn setting_path(name: &str) -> PathBuf {
    Path::new("/proc/sys/net/netfilter").join(name)
}

fn read_setting(name: &str) -> io::Result<String> {
    Ok(fs::read_to_string(setting_path(name))?.trim().to_owned())
}

fn write_setting(name: &str, value: &str) -> io::Result<()> {
    fs::write(setting_path(name), value)
}

/// The inode of the calling thread's network namespace.
fn netns_inode() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The lock on [`STATE_DIR`], held while records are read or changed.
struct DirLock {
    _dir: File,
}

impl DirLock {
    fn take() -> io::Result<Self> {
        fs::create_dir_all(STATE_DIR)?;
        let dir = File::open(STATE_DIR)?;
        dir.lock()?;
        Ok(Self { _dir: dir })
    }
}

/// A record file: `<netns inode>.<pid>.<n>` holding `name=value` lines.
struct Record {
    path: PathBuf,
    pid: u32,
}

impl Record {
    /// Its lock, when the source that wrote it no longer runs (`None`
    /// while it runs, or when the file is gone).
    fn abandoned(&self) -> Option<File> {
        let file = File::open(&self.path).ok()?;
        file.try_lock().ok()?;
        Some(file)
    }

    fn settings(&self) -> Vec<(String, String)> {
        parse_record(&fs::read_to_string(&self.path).unwrap_or_default())
    }
}

/// The records of the namespace `inode`.
fn records(_lock: &DirLock, inode: u64) -> Vec<Record> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let mut parts = name.split('.');
            let (ns, pid) = (parts.next()?, parts.next()?);
            (ns.parse::<u64>().ok()? == inode).then_some(Record {
                path: entry.path(),
                pid: pid.parse().ok()?,
            })
        })
        .collect()
}

fn parse_record(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| SETTINGS.contains(name))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The records of the namespace `inode` whose source still runs, after
/// forgetting those of sources that no longer run; when none runs, the
/// values the latter found are written back first (and listed in
/// `restored`).
fn settle(lock: &DirLock, inode: u64, restored: &mut Vec<String>) -> io::Result<Vec<Record>> {
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for record in records(lock, inode) {
        match record.abandoned() {
            Some(held) => dead.push((record, held)),
            None => live.push(record),
        }
    }
    for (record, _held) in dead {
        if live.is_empty() {
            for (name, value) in record.settings() {
                write_setting(&name, &value)?;
                restored.push(format!(
                    "net.netfilter.{name}={value} (left by pid {})",
                    record.pid
                ));
            }
        }
        fs::remove_file(&record.path)?;
    }
    Ok(live)
}

/// Restores the settings that flowtrack sources no longer running left
/// changed in the calling thread's namespace, and forgets their records;
/// returns what was restored (`name=value (left by pid N)`). While another
/// source still runs there, its record keeps the original values: the
/// dead ones' records are only forgotten.
pub(crate) fn restore_left_behind() -> io::Result<Vec<String>> {
    let inode = netns_inode()?;
    if !Path::new(STATE_DIR).exists() {
        return Ok(Vec::new());
    }
    let lock = DirLock::take()?;
    let mut restored = Vec::new();
    settle(&lock, inode, &mut restored)?;
    Ok(restored)
}

/// Makes a record file of its own for this source (locked, then written),
/// under `lock`; the file and its path.
fn new_record(
    _lock: &DirLock,
    inode: u64,
    original: &[(String, String)],
) -> io::Result<(File, PathBuf)> {
    let pid = std::process::id();
    for n in 0u32.. {
        let path = Path::new(STATE_DIR).join(format!("{inode}.{pid}.{n}"));
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            // A source of this process, or of a flowtrack with the same pid
            // in another PID namespace.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        };
        file.try_lock().map_err(io::Error::from)?;
        let text: String = original.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        file.write_all(text.as_bytes())?;
        return Ok((file, path));
    }
    Err(io::Error::other("no free record name"))
}

/// Settings changed for the lifetime of this value; restored on drop.
#[derive(Debug)]
pub(crate) struct ConntrackSettings {
    /// The record, held locked while this source runs.
    record: File,
    path: PathBuf,
    inode: u64,
    original: Vec<(String, String)>,
}

impl ConntrackSettings {
    /// Restores what dead flowtrack sources left changed in the calling
    /// thread's namespace, then turns accounting and timestamps on.
    pub(crate) fn enable() -> io::Result<Self> {
        let inode = netns_inode()?;
        let lock = DirLock::take()?;
        let live = settle(&lock, inode, &mut Vec::new())?;
        // Another source still running here found the original values.
        let original = match live.first() {
            Some(record) => record.settings(),
            None => SETTINGS
                .iter()
                .map(|name| Ok(((*name).to_owned(), read_setting(name)?)))
                .collect::<io::Result<_>>()?,
        };
        let (record, path) = new_record(&lock, inode, &original)?;
        for name in SETTINGS {
            write_setting(name, "1")?;
        }
        Ok(Self {
            record,
            path,
            inode,
            original,
        })
    }
}

impl Drop for ConntrackSettings {
    fn drop(&mut self) {
        let lock = match DirLock::take() {
            Ok(lock) => lock,
            Err(error) => {
                tracing::warn!(%error, "could not lock the conntrack settings records");
                return;
            }
        };
        let _ = fs::remove_file(&self.path);
        let _ = self.record.unlock();
        match settle(&lock, self.inode, &mut Vec::new()) {
            Ok(live) if live.is_empty() => {
                for (name, value) in &self.original {
                    if let Err(error) = write_setting(name, value) {
                        tracing::warn!(%error, setting = %name, "could not restore a conntrack setting");
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not settle the conntrack settings records"),
        }
    }
}
