//! The scope's processes and the sockets they hold, read from /proc as
//! `ss -p` does: an index from socket inode to process id, rebuilt on a
//! miss at most every [`REBUILD_EVERY`], so that a storm of new sockets
//! costs a bounded amount of reading however many flows it makes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The least time between two rebuilds of the index.
pub(crate) const REBUILD_EVERY: Duration = Duration::from_millis(50);

/// Which processes are the scope's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Members {
    /// Those of a cgroup directory and its descendants.
    Cgroup(PathBuf),
    /// Those in a network namespace: the device and inode of its nsfs file.
    Netns { dev: u64, ino: u64 },
}

impl Members {
    /// The processes in the calling thread's network namespace.
    pub(crate) fn this_netns() -> std::io::Result<Self> {
        let metadata = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Self::Netns {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }

    /// Their process ids now (a process that ends meanwhile may be
    /// missing, one that starts may be too).
    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Cgroup(dir) => flow_cgroup::processes(dir),
            Self::Netns { dev, ino } => all_pids()
                .filter(|pid| {
                    std::fs::metadata(format!("/proc/{pid}/ns/net"))
                        .is_ok_and(|ns| (ns.dev(), ns.ino()) == (*dev, *ino))
                })
                .collect(),
        }
    }
}

/// Every process in /proc.
fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The inode a /proc/PID/fd link names, if it is a socket's
/// (`socket:[12345]`).
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> impl Iterator<Item = u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| socket_inode(&std::fs::read_link(entry.path()).ok()?))
}

/// Which process holds which socket, as last read.
#[derive(Debug)]
pub(crate) struct SocketIndex {
    members: Members,
    index: HashMap<u64, u32>,
    built: Option<Instant>,
}

impl SocketIndex {
    /// An index of the sockets of `members`, read on first use.
    pub(crate) fn new(members: Members) -> Self {
        Self {
            members,
            index: HashMap::new(),
            built: None,
        }
    }

    /// The process holding the first of `inodes` the index knows, without
    /// reading /proc.
    pub(crate) fn cached(&self, inodes: &[u64]) -> Option<u32> {
        inodes
            .iter()
            .find_map(|inode| self.index.get(inode).copied())
    }

    /// The process holding the first of `inodes` (the likeliest first)
    /// that is found: from the index, else from a fresh one when the last
    /// is older than [`REBUILD_EVERY`]. One rebuild serves every inode of
    /// a flow: a flow whose first candidate missed must not find the
    /// others throttled by its own rebuild.
    pub(crate) fn pid_of_any(&mut self, inodes: &[u64]) -> Option<u32> {
        if let Some(pid) = self.cached(inodes) {
            return Some(pid);
        }
        if inodes.is_empty()
            || self
                .built
                .is_some_and(|built| built.elapsed() < REBUILD_EVERY)
        {
            return None;
        }
        self.rebuild();
        self.cached(inodes)
    }

    fn rebuild(&mut self) {
        self.index.clear();
        for pid in self.members.pids() {
            // A socket held by several processes (inherited, passed on)
            // goes to the first found.
            for inode in socket_inodes(pid) {
                self.index.entry(inode).or_insert(pid);
            }
        }
        self.built = Some(Instant::now());
    }
}

/// What /proc/PID/stat says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Its command name.
    pub(crate) comm: String,
    /// When it started, in ns since boot (clock-tick resolution).
    pub(crate) start_ns: u64,
}

/// Process `pid`'s command name and start time, if it is there.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, start_ticks) = parse_stat(&line)?;
    let ticks_per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Stat {
        comm: comm.to_owned(),
        start_ns: start_ticks.saturating_mul(1_000_000_000 / ticks_per_second),
    })
}

/// The command name (between the first `(` and the last `)`: it may hold
/// either) and field 22, the start time in clock ticks, of a stat line.
fn parse_stat(line: &str) -> Option<(&str, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?;
    let start = line
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((comm, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stat_line_gives_the_name_and_start() {
        let line = "4711 (a (weird) name) S 1 4711 4711 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_stat(line), Some(("a (weird) name", 123_456)));
        assert_eq!(parse_stat("4711 (x) S 1"), None);
        assert_eq!(parse_stat(") 1 (("), None);
    }

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(socket_inode(Path::new("socket:[98765]")), Some(98_765));
        for other in ["pipe:[98765]", "/dev/null", "socket:[x]", "socket:[1"] {
            assert_eq!(socket_inode(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn this_process_holds_its_sockets() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&socket)
        ))
        .unwrap();
        let inode = socket_inode(&link).unwrap();
        let mut index = SocketIndex::new(Members::this_netns().unwrap());
        assert_eq!(index.pid_of_any(&[1, inode]), Some(std::process::id()));
        assert_eq!(index.cached(&[inode]), Some(std::process::id()));
        let own = stat(std::process::id()).unwrap();
        assert!(own.start_ns > 0);
    }

    #[test]
    fn a_miss_right_after_a_rebuild_reads_nothing() {
        let mut index = SocketIndex::new(Members::Cgroup("/nonexistent".into()));
        assert_eq!(index.pid_of_any(&[]), None);
        assert!(index.built.is_none(), "nothing to look for: nothing read");
        assert_eq!(index.pid_of_any(&[1]), None);
        let built = index.built;
        assert!(built.is_some());
        assert_eq!(index.pid_of_any(&[2]), None);
        assert_eq!(index.built, built, "not rebuilt within {REBUILD_EVERY:?}");
    }

    proptest! {
        #[test]
        fn garbage_stat_lines_never_panic(line in ".{0,120}") {
            let _ = parse_stat(&line);
            let _ = socket_inode(Path::new(&line));
        }
    }
}
