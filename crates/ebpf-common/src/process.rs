//! Records about processes: who owns a socket (kept in its storage, sent
//! with the flow it opens), what a process of the scope executed, and which
//! process forked which. Userspace joins them by the process's identity:
//! its tgid and start time, which no other process shares even after the
//! pid is reused.

use crate::{DecodeError, Fields};

/// [`RawExecRecord::kind`]: a process of the scope executed a program.
pub const RECORD_EXEC: u32 = 5;
/// [`RawForkRecord::kind`]: a process of the scope forked a new process.
pub const RECORD_FORK: u32 = 6;

/// Bytes of the executed file's name as `execve` got it (with its NUL).
pub const FILENAME_MAX: usize = 256;
/// Bytes of the executed file's own name (symlinks followed; for a script,
/// the interpreter), with its NUL.
pub const BASENAME_MAX: usize = 64;
/// Bytes of the command line kept (NUL-separated arguments); longer ones
/// are cut, and [`RawExecRecord::args_len`] says how long it was.
pub const ARGS_MAX: usize = 1024;

/// Name of the global (a `u64`) holding the scope's cgroup id, and of the
/// one (a `u32`) holding its depth below the cgroup v2 root: the process
/// records are made for processes in that cgroup or below.
pub const SCOPE_CGROUP_ID_GLOBAL: &str = "SCOPE_CGROUP_ID";
/// See [`SCOPE_CGROUP_ID_GLOBAL`].
pub const SCOPE_CGROUP_LEVEL_GLOBAL: &str = "SCOPE_CGROUP_LEVEL";

/// The kernel structure members the process records read, by the name of
/// the global (a `u32` byte offset) the loader sets from the kernel's BTF:
/// `(global, struct, member path)`. A member path names nested members
/// with dots (anonymous ones are searched).
pub const KERNEL_OFFSETS: [(&str, &str, &str); 14] = [
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("OFF_TASK_GROUP_LEADER", "task_struct", "group_leader"),
    ("OFF_TASK_START_BOOTTIME", "task_struct", "start_boottime"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    ("OFF_BPRM_FILE", "linux_binprm", "file"),
    ("OFF_BPRM_FILENAME", "linux_binprm", "filename"),
    ("OFF_FILE_PATH", "file", "f_path"),
    ("OFF_PATH_DENTRY", "path", "dentry"),
    ("OFF_DENTRY_NAME", "dentry", "d_name"),
    ("OFF_QSTR_NAME", "qstr", "name"),
];

/// The process that created a socket, kept in the socket's storage from
/// `cgroup/sock_create` on (an accepted socket gets its listener's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawOwner {
    /// The process (thread group) id; 0 when there is no owner.
    pub tgid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Always zero.
    pub pad: u32,
    /// When the process started (its thread group leader's boot-time
    /// start, ns): with `tgid`, the process's identity.
    pub start_ns: u64,
    /// Its command name (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

/// Size of a [`RawOwner`].
pub const OWNER_SIZE: usize = core::mem::size_of::<RawOwner>();

impl RawOwner {
    /// Reads an owner from the bytes of one (zeros where they run short).
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        Self {
            tgid: f.u32(),
            uid: f.u32(),
            gid: f.u32(),
            pad: f.u32(),
            start_ns: f.u64(),
            comm: f.take(),
        }
    }
}

/// A process of the scope executed a program (`sched_process_exec`): what
/// it runs from now on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawExecRecord {
    /// [`RECORD_EXEC`].
    pub kind: u32,
    /// The process.
    pub tgid: u32,
    /// Its parent.
    pub ppid: u32,
    /// Its user id.
    pub uid: u32,
    /// When it started (see [`RawOwner::start_ns`]).
    pub start_ns: u64,
    /// The command line's full length in bytes.
    pub args_len: u32,
    /// Bytes of it copied into `args`.
    pub args_copied: u32,
    /// Its command name after the exec.
    pub comm: [u8; 16],
    /// The file as `execve` named it, NUL-terminated.
    pub filename: [u8; FILENAME_MAX],
    /// The name of the file actually executed, NUL-terminated.
    pub basename: [u8; BASENAME_MAX],
    /// The arguments, each NUL-terminated.
    pub args: [u8; ARGS_MAX],
}

/// Size of a [`RawExecRecord`].
pub const EXEC_RECORD_SIZE: usize = core::mem::size_of::<RawExecRecord>();

impl RawExecRecord {
    /// Decodes an exec record, checking its length and kind.
    ///
    /// # Errors
    /// [`DecodeError`] says what is wrong; nothing panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != EXEC_RECORD_SIZE {
            return Err(DecodeError::Length(bytes.len()));
        }
        let mut f = Fields::new(bytes);
        let kind = f.u32();
        if kind != RECORD_EXEC {
            return Err(DecodeError::Kind(kind));
        }
        Ok(Self {
            kind,
            tgid: f.u32(),
            ppid: f.u32(),
            uid: f.u32(),
            start_ns: f.u64(),
            args_len: f.u32(),
            args_copied: f.u32(),
            comm: f.take(),
            filename: f.take(),
            basename: f.take(),
            args: f.take(),
        })
    }
}

/// A process of the scope forked a new process (`sched_process_fork`,
/// threads excluded): the child runs the parent's program until it
/// executes one of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawForkRecord {
    /// [`RECORD_FORK`].
    pub kind: u32,
    /// The parent.
    pub parent_tgid: u32,
    /// The child.
    pub child_tgid: u32,
    /// Always zero.
    pub pad: u32,
    /// When the parent started.
    pub parent_start_ns: u64,
    /// When the child started.
    pub child_start_ns: u64,
}

/// Size of a [`RawForkRecord`].
pub const FORK_RECORD_SIZE: usize = core::mem::size_of::<RawForkRecord>();

impl RawForkRecord {
    /// Decodes a fork record, checking its length and kind.
    ///
    /// # Errors
    /// [`DecodeError`] says what is wrong; nothing panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != FORK_RECORD_SIZE {
            return Err(DecodeError::Length(bytes.len()));
        }
        let mut f = Fields::new(bytes);
        let kind = f.u32();
        if kind != RECORD_FORK {
            return Err(DecodeError::Kind(kind));
        }
        Ok(Self {
            kind,
            parent_tgid: f.u32(),
            child_tgid: f.u32(),
            pad: f.u32(),
            parent_start_ns: f.u64(),
            child_start_ns: f.u64(),
        })
    }
}
