//! The processes behind flows: what the kernel says of a socket's owner
//! ([`Owner`]), what each process of the scope executed ([`Exec`]), and
//! which process forked which, joined into the contract's
//! [`Process`].
//!
//! A process is known by its pid and start time together, so a reused pid
//! never takes another process's program. When the kernel recorded no
//! exec for a process (it started before observation, or its record was
//! lost), its program and command line are read from /proc, if it is still
//! there and its start time matches; else they stay unknown: never a wrong
//! process.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use flow_core::process::{Attribution, Process};
use hashlink::LruCache;

/// How many forks back a process's program is looked for (a child runs
/// its parent's program until it executes one).
const FORK_DEPTH: usize = 8;

/// What the kernel said of the process that owns a socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Owner {
    /// The process id, when known.
    pub pid: Option<u32>,
    /// When it started (boot-time ns), when known: with `pid`, its
    /// identity.
    pub start_ns: Option<u64>,
    /// Its command name.
    pub comm: Option<Arc<str>>,
    /// Its user id.
    pub uid: Option<u32>,
    /// Its group id.
    pub gid: Option<u32>,
    /// How it was found.
    pub attribution: Attribution,
}

impl Owner {
    /// Process `pid`, as the kernel recorded it.
    #[must_use]
    pub fn new(pid: u32) -> Self {
        Self {
            pid: Some(pid),
            ..Self::unidentified()
        }
    }

    /// A socket whose process is not known: only what the packet said of
    /// its owner ([`Owner::with_ids`]).
    #[must_use]
    pub fn unidentified() -> Self {
        Self::default()
    }

    /// The same, started at `start_ns`.
    #[must_use]
    pub fn started(mut self, start_ns: u64) -> Self {
        self.start_ns = Some(start_ns);
        self
    }

    /// The same, with its command name.
    #[must_use]
    pub fn with_comm(mut self, comm: impl Into<Arc<str>>) -> Self {
        self.comm = Some(comm.into());
        self
    }

    /// The same, with its user and group.
    #[must_use]
    pub fn with_ids(mut self, uid: u32, gid: u32) -> Self {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }

    /// The same, attributed as `attribution` says.
    #[must_use]
    pub fn attributed(mut self, attribution: Attribution) -> Self {
        self.attribution = attribution;
        self
    }
}

/// A process of the scope executed a program.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exec {
    /// The process id.
    pub pid: u32,
    /// When it started (boot-time ns).
    pub start_ns: u64,
    /// The file as `execve` named it.
    pub filename: String,
    /// The name of the file the kernel executed (symlinks followed; for a
    /// script, its interpreter), when known.
    pub file_name: Option<String>,
    /// The command line, one string per argument.
    pub args: Vec<Arc<str>>,
}

impl Exec {
    /// Process `pid`, started at `start_ns`, executed `filename` with
    /// `args`.
    #[must_use]
    pub fn new(pid: u32, start_ns: u64, filename: String, args: Vec<Arc<str>>) -> Self {
        Self {
            pid,
            start_ns,
            filename,
            file_name: None,
            args,
        }
    }

    /// The same, the kernel having executed a file named `file_name`.
    #[must_use]
    pub fn executed_file(mut self, file_name: impl Into<String>) -> Self {
        let file_name = file_name.into();
        self.file_name = (!file_name.is_empty()).then_some(file_name);
        self
    }
}

/// A process's program and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Program {
    exe: Arc<str>,
    args: Arc<[Arc<str>]>,
}

/// Programs by process identity, forks by child, and the processes
/// resolved so far; all bounded.
#[derive(Debug)]
pub(crate) struct Processes {
    programs: LruCache<(u32, u64), Program>,
    parents: LruCache<(u32, u64), (u32, u64)>,
    resolved: LruCache<Owner, Arc<Process>>,
}

impl Processes {
    pub(crate) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            programs: LruCache::new(capacity.get()),
            parents: LruCache::new(capacity.get()),
            resolved: LruCache::new(capacity.get()),
        }
    }

    pub(crate) fn executed(&mut self, exec: Exec) {
        let exe = executable(&exec);
        let program = Program {
            exe: exe.into(),
            args: exec.args.into(),
        };
        self.programs.insert((exec.pid, exec.start_ns), program);
        // Owners resolved before this exec named its old program.
        self.resolved.retain(|owner, _| owner.pid != Some(exec.pid));
    }

    pub(crate) fn forked(&mut self, parent: (u32, u64), child: (u32, u64)) {
        self.parents.insert(child, parent);
    }

    /// The process `owner` names, with its program when known.
    pub(crate) fn resolve(&mut self, owner: &Owner) -> Arc<Process> {
        if let Some(process) = self.resolved.get(owner) {
            return Arc::clone(process);
        }
        let mut process = Process::unidentified().attributed(owner.attribution);
        process.pid = owner.pid;
        process.comm.clone_from(&owner.comm);
        process.uid = owner.uid;
        process.gid = owner.gid;
        if let Some(program) = self.program(owner) {
            process.exe = Some(program.exe);
            process.cmdline = Some(program.args);
        }
        let process = Arc::new(process);
        self.resolved.insert(owner.clone(), Arc::clone(&process));
        process
    }

    /// The program `owner` runs: recorded at its exec or its ancestors',
    /// else read from /proc when the process there is the same one.
    fn program(&mut self, owner: &Owner) -> Option<Program> {
        let pid = owner.pid?;
        if let Some(start) = owner.start_ns {
            let mut identity = (pid, start);
            for _ in 0..FORK_DEPTH {
                if let Some(program) = self.programs.get(&identity) {
                    return Some(program.clone());
                }
                match self.parents.get(&identity) {
                    Some(parent) => identity = *parent,
                    None => break,
                }
            }
        }
        from_proc(pid, owner.start_ns)
    }
}

/// The program of process `pid` from /proc, if it is there and (when
/// `start_ns` is known) started then.
fn from_proc(pid: u32, start_ns: Option<u64>) -> Option<Program> {
    let dir = Path::new("/proc").join(pid.to_string());
    if let Some(start_ns) = start_ns
        && !started_at(&dir, start_ns)
    {
        return None;
    }
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    Some(Program {
        exe: exe.to_string_lossy().into(),
        args: split_args(&cmdline).into(),
    })
}

/// The executable of a process that executed a program: its /proc/PID/exe
/// while it is there and the same process; else, for a process already
/// gone, the file `execve` named with its symbolic links resolved, if that
/// is the file the kernel executed (its name says so); else the file as
/// `execve` named it (absolute, or as the caller wrote it; a script's own
/// path).
fn executable(exec: &Exec) -> String {
    let dir = Path::new("/proc").join(exec.pid.to_string());
    if started_at(&dir, exec.start_ns)
        && let Ok(exe) = std::fs::read_link(dir.join("exe"))
    {
        return exe.to_string_lossy().into_owned();
    }
    let named = Path::new(&exec.filename);
    if named.is_absolute()
        && let Ok(resolved) = std::fs::canonicalize(named)
        && resolved.file_name().and_then(|name| name.to_str()) == exec.file_name.as_deref()
    {
        return resolved.to_string_lossy().into_owned();
    }
    exec.filename.clone()
}

/// Whether the process in `dir` (/proc/PID) started at `start_ns` (its
/// start time in /proc/PID/stat is in clock ticks since boot).
fn started_at(dir: &Path, start_ns: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
        return false;
    };
    let ticks_per_second = rustix::param::clock_ticks_per_second().max(1);
    start_ticks(&stat) == Some(start_ns / (1_000_000_000 / ticks_per_second))
}

/// Field 22 (`starttime`) of a /proc/PID/stat line: after the command
/// name, which ends at the last `)` (it may hold spaces and parentheses).
fn start_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// NUL-separated arguments (a command line as /proc and the kernel keep
/// it), as strings; invalid UTF-8 replaced.
#[must_use]
pub fn split_args(bytes: &[u8]) -> Vec<Arc<str>> {
    bytes
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_start_time_is_field_22() {
        let stat = "4711 (a (weird) name) S 1 4711 4711 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(start_ticks(stat), Some(123_456));
    }

    #[test]
    fn arguments_split_on_nul() {
        assert_eq!(
            split_args(b"python3\0-c\0print(1)\0"),
            ["python3", "-c", "print(1)"].map(Arc::<str>::from)
        );
    }

    proptest! {
        #[test]
        fn garbage_in_proc_reads_never_panic(stat in ".{0,80}", cmdline in any::<Vec<u8>>()) {
            let _ = start_ticks(&stat);
            let _ = split_args(&cmdline);
        }
    }

    #[test]
    fn a_forked_child_runs_its_parents_program_until_it_executes() {
        let mut processes = Processes::new(NonZeroUsize::new(8).unwrap());
        // Pids far beyond pid_max: /proc never answers for them.
        processes.executed(Exec::new(
            u32::MAX - 1,
            100,
            "/usr/bin/python3".into(),
            vec!["python3".into()],
        ));
        processes.forked((u32::MAX - 1, 100), (u32::MAX - 2, 200));
        let child = processes.resolve(&Owner::new(u32::MAX - 2).started(200).with_comm("python3"));
        assert_eq!(child.exe.as_deref(), Some("/usr/bin/python3"));
        // The same pid, started later: another process, nothing known.
        let reused = processes.resolve(&Owner::new(u32::MAX - 2).started(300));
        assert_eq!(reused.exe, None);
        processes.executed(Exec::new(
            u32::MAX - 2,
            200,
            "/bin/sh".into(),
            vec!["sh".into()],
        ));
        let child = processes.resolve(&Owner::new(u32::MAX - 2).started(200));
        assert_eq!(child.exe.as_deref(), Some("/bin/sh"));
    }
}
