//! The conntrack settings the backend turns on in its network namespace
//! (`nf_conntrack_acct`, `nf_conntrack_timestamp`) and puts back after.
//!
//! The old values are also written to a record file under
//! [`STATE_DIR`], one per source, named after the namespace, flowtrack's
//! pid and the source, so that a run killed before it could restore them
//! is undone by the next start in that namespace. When several sources (in
//! one flowtrack process or several) share a namespace, the last one to
//! leave restores the values the first one found.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// A record file: `<netns inode>.<pid>.<source>` (`<netns inode>.<pid>`
/// from earlier versions) holding `name=value` lines.
struct Record {
    path: PathBuf,
    pid: u32,
}

/// Numbers the sources of this process, for their record files.
static SOURCES: AtomicU64 = AtomicU64::new(0);

/// The records of the namespace `inode`.
fn records(inode: u64) -> Vec<Record> {
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

/// Restores the settings that flowtrack processes no longer running left
/// changed in the calling thread's namespace, and forgets their records;
/// returns what was restored (`name=value (left by pid N)`). While another
/// flowtrack still runs there, its record keeps the original values: the
/// dead ones' records are only forgotten.
pub(crate) fn restore_left_behind() -> io::Result<Vec<String>> {
    let inode = netns_inode()?;
    // This process's own records belong to sources still running.
    let (live, dead): (Vec<Record>, Vec<Record>) = records(inode)
        .into_iter()
        .partition(|record| pid_alive(record.pid));
    let mut restored = Vec::new();
    for record in dead {
        if live.is_empty() {
            let text = fs::read_to_string(&record.path).unwrap_or_default();
            for (name, value) in parse_record(&text) {
                write_setting(&name, &value)?;
                restored.push(format!(
                    "net.netfilter.{name}={value} (left by pid {})",
                    record.pid
                ));
            }
        }
        fs::remove_file(&record.path)?;
    }
    Ok(restored)
}

/// Settings changed for the lifetime of this value; restored on drop.
#[derive(Debug)]
pub(crate) struct ConntrackSettings {
    record: PathBuf,
    inode: u64,
    original: Vec<(String, String)>,
}

impl ConntrackSettings {
    /// Restores what dead flowtrack processes left changed in the calling
    /// thread's namespace, then turns accounting and timestamps on.
    pub(crate) fn enable() -> io::Result<Self> {
        let inode = netns_inode()?;
        restore_left_behind()?;
        // Another source still running here found the original values.
        let live_original = records(inode)
            .first()
            .map(|record| parse_record(&fs::read_to_string(&record.path).unwrap_or_default()));
        let original = match live_original {
            Some(original) => original,
            None => SETTINGS
                .iter()
                .map(|name| Ok(((*name).to_owned(), read_setting(name)?)))
                .collect::<io::Result<_>>()?,
        };
        fs::create_dir_all(STATE_DIR)?;
        let source = SOURCES.fetch_add(1, Ordering::Relaxed);
        let record = Path::new(STATE_DIR).join(format!("{inode}.{}.{source}", std::process::id()));
        let text: String = original.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        fs::write(&record, text)?;
        for name in SETTINGS {
            write_setting(name, "1")?;
        }
        Ok(Self {
            record,
            inode,
            original,
        })
    }
}

impl Drop for ConntrackSettings {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.record);
        let others_running = records(self.inode)
            .iter()
            .any(|record| pid_alive(record.pid));
        if !others_running {
            for (name, value) in &self.original {
                if let Err(error) = write_setting(name, value) {
                    tracing::warn!(%error, setting = %name, "could not restore a conntrack setting");
                }
            }
        }
    }
}
