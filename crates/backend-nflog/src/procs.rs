//! The scope's processes and the sockets they hold, read from /proc as
//! `ss -p` does: an index from socket inode to process id and descriptor.
//! A socket the index does not know is looked for where the last ones
//! were found (a process that connects again and again gets the same
//! descriptor back, the lowest free one, or one next to it), reading a
//! link or a few; only then is the index rebuilt, at most every
//! [`REBUILD_EVERY`], so that a storm of new sockets costs a bounded
//! amount of reading however many flows it makes, and still finds each
//! flow's process.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

/// The least time between two rebuilds of the index.
pub(crate) const REBUILD_EVERY: Duration = Duration::from_millis(50);

/// Descriptors where sockets were last found, tried first.
const RECENT: usize = 4;

/// How long a process's stat is taken as read (its start time never
/// changes; its name does when it executes a program).
const STAT_FRESH: Duration = Duration::from_secs(1);

/// Descriptor links a lookup reads at the most in the processes where the
/// last sockets were found, before it gives way to a rebuild: a process
/// with thousands of descriptors is not read through for each flow.
const SCAN_BUDGET: usize = 256;

/// Sockets the index holds at the most between rebuilds (those read in
/// the recent processes add to it): past it, it starts afresh.
const MAX_INDEXED: usize = 65_536;

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
fn socket_inode(link: &[u8]) -> Option<u64> {
    std::str::from_utf8(link)
        .ok()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A process's file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    pid: u32,
    fd: u32,
}

/// The descriptor numbers process `pid` has open (none once it is gone).
fn open_fds(pid: u32) -> impl Iterator<Item = u32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The descriptors of process `pid`, with the inode of each that is a
/// socket; `None` for another descriptor (its link was read all the same).
fn descriptors(pid: u32) -> impl Iterator<Item = (Descriptor, Option<u64>)> {
    open_fds(pid).filter_map(move |fd| {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        Some((
            Descriptor { pid, fd },
            socket_inode(link.as_os_str().as_bytes()),
        ))
    })
}

/// The process holding a flow's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Its process id.
    pub(crate) pid: u32,
    /// Its command name and start time, read while it held the socket.
    pub(crate) stat: Stat,
}

/// A process where sockets were found, held open: its /proc/PID/fd
/// directory and its stat. A descriptor read through the directory is
/// that process's: once it is gone the reads fail, even after its pid is
/// given to another (the directory belongs to the process, not to the
/// number), so the stat kept is the holder's; it is read again when
/// older than [`STAT_FRESH`] (a program the process executes renames it).
/// Reading through the open directory also spares the walk from /proc for
/// each link.
#[derive(Debug)]
struct Opened {
    dir: OwnedFd,
    stat: Stat,
    stat_read: Instant,
}

impl Opened {
    /// Process `pid`, if it is there.
    fn open(pid: u32) -> Option<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::open(format!("/proc/{pid}/fd"), flags, Mode::empty()).ok()?;
        let stat = read_stat(&dir)?;
        Some(Self {
            dir,
            stat,
            stat_read: Instant::now(),
        })
    }

    /// The inode of the socket its descriptor `fd` holds, if a socket.
    fn socket_at(&self, fd: u32) -> Option<u64> {
        let link = rustix::fs::readlinkat(&self.dir, fd.to_string(), Vec::new()).ok()?;
        socket_inode(link.to_bytes())
    }

    /// Its stat, read again when stale; `None` once it is gone.
    fn fresh_stat(&mut self) -> Option<Stat> {
        if self.stat_read.elapsed() >= STAT_FRESH {
            self.stat = read_stat(&self.dir)?;
            self.stat_read = Instant::now();
        }
        Some(self.stat.clone())
    }
}

/// Which process holds which socket, as last read.
#[derive(Debug)]
pub(crate) struct SocketIndex {
    members: Members,
    /// Where each socket was found, by inode: by the last rebuild, and by
    /// the reads of recent processes since.
    index: HashMap<u64, Descriptor>,
    built: Option<Instant>,
    /// The descriptors where the last sockets were found, the latest first.
    recent: VecDeque<Descriptor>,
    /// The processes read through lately (those of `recent`, mostly).
    opened: HashMap<u32, Opened>,
}

impl SocketIndex {
    /// An index of the sockets of `members`, read on first use.
    pub(crate) fn new(members: Members) -> Self {
        Self {
            members,
            index: HashMap::new(),
            built: None,
            recent: VecDeque::with_capacity(RECENT),
            opened: HashMap::new(),
        }
    }

    /// The process holding the first of `inodes` (the likeliest first)
    /// found where it is cheap to look: where the index says, or at the
    /// descriptors where the last sockets were found (one link read each).
    pub(crate) fn known(&mut self, inodes: &[u64]) -> Option<Holder> {
        if inodes.is_empty() {
            return None;
        }
        self.indexed(inodes)
            .or_else(|| self.at_recent_descriptors(inodes))
    }

    /// The process holding the first of `inodes` that is found where it
    /// is dearer to look, when none is [`known`](Self::known): among the
    /// rest of the descriptors of the processes where the last sockets
    /// were found (up to [`SCAN_BUDGET`] of them); else from a fresh index
    /// when the last is older than [`REBUILD_EVERY`]. One rebuild serves
    /// every inode of a flow: a flow whose first candidate missed must not
    /// find the others throttled by its own rebuild.
    pub(crate) fn search(&mut self, inodes: &[u64]) -> Option<Holder> {
        if inodes.is_empty() {
            return None;
        }
        if let Some(holder) = self.in_recent_processes(inodes) {
            return Some(holder);
        }
        if self
            .built
            .is_some_and(|built| built.elapsed() < REBUILD_EVERY)
        {
            return None;
        }
        self.rebuild();
        self.indexed(inodes)
    }

    /// The holder of the first of `inodes` that the index has and that
    /// is still where the index says.
    fn indexed(&mut self, inodes: &[u64]) -> Option<Holder> {
        for &inode in inodes {
            let Some(&descriptor) = self.index.get(&inode) else {
                continue;
            };
            if self.socket_at(descriptor) == Some(inode) {
                return self.holder(descriptor);
            }
        }
        None
    }

    /// The holder of one of `inodes` at a recent descriptor.
    fn at_recent_descriptors(&mut self, inodes: &[u64]) -> Option<Holder> {
        for at in 0..self.recent.len() {
            let descriptor = self.recent[at];
            if self
                .socket_at(descriptor)
                .is_some_and(|inode| inodes.contains(&inode))
            {
                return self.holder(descriptor);
            }
        }
        None
    }

    /// The holder of one of `inodes` among the descriptors of the
    /// processes of the recent descriptors, read until it is found (the
    /// sockets read on the way are indexed) or [`SCAN_BUDGET`] links were
    /// read.
    fn in_recent_processes(&mut self, inodes: &[u64]) -> Option<Holder> {
        let mut pids: Vec<u32> = Vec::with_capacity(RECENT);
        for descriptor in &self.recent {
            if !pids.contains(&descriptor.pid) {
                pids.push(descriptor.pid);
            }
        }
        if self.index.len() >= MAX_INDEXED {
            self.index.clear();
        }
        let mut budget = SCAN_BUDGET;
        for pid in pids {
            let fds: Vec<u32> = open_fds(pid).take(budget).collect();
            budget -= fds.len();
            for fd in fds {
                let descriptor = Descriptor { pid, fd };
                let Some(inode) = self.socket_at(descriptor) else {
                    continue;
                };
                self.index.entry(inode).or_insert(descriptor);
                if inodes.contains(&inode) {
                    return self.holder(descriptor);
                }
            }
        }
        None
    }

    /// The socket `descriptor` holds now, read through its process
    /// (opened first if need be).
    fn socket_at(&mut self, descriptor: Descriptor) -> Option<u64> {
        if self.opened.len() >= 2 * RECENT && !self.opened.contains_key(&descriptor.pid) {
            // Processes read through for lookups that found nothing.
            self.forget_all_but_recent();
        }
        let opened = match self.opened.entry(descriptor.pid) {
            Entry::Occupied(opened) => opened.into_mut(),
            Entry::Vacant(vacant) => vacant.insert(Opened::open(descriptor.pid)?),
        };
        opened.socket_at(descriptor.fd)
    }

    /// `descriptor` holds the socket looked for: it is remembered as the
    /// latest, and its process (read through when it was found) is the
    /// holder.
    fn holder(&mut self, descriptor: Descriptor) -> Option<Holder> {
        self.recent.retain(|&recent| recent != descriptor);
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        self.recent.push_front(descriptor);
        let stat = self.opened.get_mut(&descriptor.pid)?.fresh_stat()?;
        self.forget_all_but_recent();
        Some(Holder {
            pid: descriptor.pid,
            stat,
        })
    }

    /// Closes the processes held open that are not those of `recent`.
    fn forget_all_but_recent(&mut self) {
        let recent = &self.recent;
        self.opened
            .retain(|pid, _| recent.iter().any(|descriptor| descriptor.pid == *pid));
    }

    fn rebuild(&mut self) {
        self.index.clear();
        for pid in self.members.pids() {
            // A socket held by several processes (inherited, passed on)
            // goes to the first found.
            for (descriptor, inode) in descriptors(pid) {
                if let Some(inode) = inode {
                    self.index.entry(inode).or_insert(descriptor);
                }
            }
        }
        self.built = Some(Instant::now());
    }
}

/// What /proc/PID/stat says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Its command name.
    pub(crate) comm: Arc<str>,
    /// When it started, in ns since boot (clock-tick resolution).
    pub(crate) start_ns: u64,
}

/// The command name and start time of the process whose /proc/PID/fd
/// directory is `dir`, if it is there.
fn read_stat(dir: &OwnedFd) -> Option<Stat> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    let file = rustix::fs::openat(dir, "../stat", flags, Mode::empty()).ok()?;
    let mut line = String::new();
    std::fs::File::from(file).read_to_string(&mut line).ok()?;
    let (comm, start_ticks) = parse_stat(&line)?;
    let ticks_per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Stat {
        comm: comm.into(),
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
        assert_eq!(socket_inode(b"socket:[98765]"), Some(98_765));
        for other in ["pipe:[98765]", "/dev/null", "socket:[x]", "socket:[1"] {
            assert_eq!(socket_inode(other.as_bytes()), None, "{other}");
        }
    }

    /// The inode of `socket`, as /proc names it.
    fn inode_of(socket: &impl std::os::fd::AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).unwrap();
        socket_inode(link.as_os_str().as_bytes()).unwrap()
    }

    fn this_netns() -> SocketIndex {
        SocketIndex::new(Members::this_netns().unwrap())
    }

    /// Where `Owners` looks: where it is cheap, then further.
    fn find(index: &mut SocketIndex, inodes: &[u64]) -> Option<Holder> {
        index.known(inodes).or_else(|| index.search(inodes))
    }

    #[test]
    fn this_process_holds_its_sockets() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = inode_of(&socket);
        let mut index = this_netns();
        let holder = find(&mut index, &[1, inode]).unwrap();
        assert_eq!(holder.pid, std::process::id());
        assert!(holder.stat.start_ns > 0);
        assert_eq!(index.known(&[inode]), Some(holder));
    }

    #[test]
    fn sockets_made_one_after_another_are_found_between_rebuilds() {
        let mut index = this_netns();
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(find(&mut index, &[inode_of(&first)]).is_some());
        let built = index.built;
        // No rebuild is due from here on: each socket is found where the
        // last was, or beside it.
        index.built = Some(Instant::now());
        drop(first);
        let again = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let beside = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for socket in [&again, &beside] {
            let holder = find(&mut index, &[inode_of(socket)]);
            assert_eq!(holder.map(|holder| holder.pid), Some(std::process::id()));
        }
        assert!(built.is_some());
        assert_eq!(
            index.known(&[inode_of(&beside)]).map(|holder| holder.pid),
            Some(std::process::id()),
            "the latest is known"
        );
        assert!(
            index.opened.len() <= RECENT,
            "processes held: {:?}",
            index.opened.len()
        );
    }

    #[test]
    fn lookups_that_find_nothing_hold_few_processes_open() {
        let mut index = SocketIndex::new(Members::Cgroup("/nonexistent".into()));
        let alive: Vec<u32> = all_pids().take(4 * RECENT).collect();
        for (inode, pid) in (1..).zip(&alive) {
            index.index.insert(inode, Descriptor { pid: *pid, fd: 0 });
            assert_eq!(index.known(&[inode]), None, "no socket at descriptor 0");
            assert!(index.opened.len() <= 2 * RECENT, "{}", index.opened.len());
        }
    }

    #[test]
    fn a_socket_no_longer_held_is_not_attributed_from_the_index() {
        let mut index = this_netns();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (inode, listening) = (inode_of(&socket), inode_of(&listener));
        assert!(find(&mut index, &[inode]).is_some());
        assert!(index.index.contains_key(&listening), "indexed on the way");
        drop(socket);
        assert_eq!(index.known(&[inode]), None, "indexed, but gone");
        assert_eq!(index.known(&[]), None, "nothing to look for");
        let holder = index.known(&[inode, listening]).map(|holder| holder.pid);
        assert_eq!(holder, Some(std::process::id()), "the next candidate");
    }

    #[test]
    fn a_miss_right_after_a_rebuild_reads_nothing() {
        let mut index = SocketIndex::new(Members::Cgroup("/nonexistent".into()));
        assert_eq!(find(&mut index, &[]), None);
        assert!(index.built.is_none(), "nothing to look for: nothing read");
        assert_eq!(find(&mut index, &[1]), None);
        let built = index.built;
        assert!(built.is_some());
        assert_eq!(find(&mut index, &[2]), None);
        assert_eq!(index.built, built, "not rebuilt within {REBUILD_EVERY:?}");
    }

    proptest! {
        #[test]
        fn garbage_stat_lines_never_panic(line in ".{0,120}") {
            let _ = parse_stat(&line);
            let _ = socket_inode(line.as_bytes());
        }
    }
}
