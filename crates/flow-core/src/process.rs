//! The process behind a flow: who opened the socket that carried it.
//!
//! ```
//! use flow_core::process::{Attribution, Process};
//! let process = Process::new(4711)
//!     .with_comm("curl")
//!     .with_exe("/usr/bin/curl")
//!     .with_uid(1000);
//! assert_eq!(process.to_string(), "curl[4711]");
//! assert_eq!(process.attribution, Attribution::Kernel);
//! ```

use std::fmt;
use std::sync::Arc;

/// How a backend knows a flow's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Attribution {
    /// From the kernel, at the time the socket was made (the eBPF backend):
    /// exact.
    #[default]
    Kernel,
    /// Looked up afterwards (the nflog backend: the socket's inode found in
    /// /proc when the flow opened): pid, command and executable may be
    /// missing, or, if the socket was passed on, another holder's; the
    /// user and group come from the packet and are exact.
    BestEffort,
}

impl Attribution {
    /// Its name in the output: `kernel` or `best_effort`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::BestEffort => "best_effort",
        }
    }

    /// The attribution with this [`name`](Self::name), if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Kernel, Self::BestEffort]
            .into_iter()
            .find(|attribution| attribution.name() == name)
    }
}

/// A process, as much of it as the backend knows (the default: nothing).
///
/// `pid` is the process id (the thread group id: a thread's connection is
/// its process's). The other fields are absent when unknown: a process
/// that was gone before its program could be read keeps what the kernel
/// recorded. The pid itself may be unknown too: the nflog backend knows a
/// socket's user and group exactly (from the packet), and its process
/// only while the socket is still open when it looks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Process {
    /// The process id, when known.
    pub pid: Option<u32>,
    /// Its command name (the kernel's `comm`, 15 bytes at most).
    pub comm: Option<Arc<str>>,
    /// The program it runs, an absolute path when known.
    pub exe: Option<Arc<str>>,
    /// Its command line, one string per argument. Command lines hold
    /// secrets: flowtrack writes them only when asked (`--cmdline`).
    pub cmdline: Option<Arc<[Arc<str>]>>,
    /// Its user id.
    pub uid: Option<u32>,
    /// Its group id.
    pub gid: Option<u32>,
    /// How the backend knows.
    pub attribution: Attribution,
}

impl Process {
    /// Process `pid`, nothing else known, attributed by the kernel.
    #[must_use]
    pub fn new(pid: u32) -> Self {
        Self {
            pid: Some(pid),
            ..Self::unidentified()
        }
    }

    /// A process whose id is not known, nothing else known either (add its
    /// user with [`Process::with_uid`]), attributed by the kernel.
    ///
    /// ```
    /// use flow_core::process::Process;
    /// let process = Process::unidentified().with_uid(65534);
    /// assert_eq!(process.pid, None);
    /// assert_eq!(process.to_string(), "[uid 65534]");
    /// ```
    #[must_use]
    pub fn unidentified() -> Self {
        Self::default()
    }

    /// The same, with its command name.
    #[must_use]
    pub fn with_comm(mut self, comm: impl Into<Arc<str>>) -> Self {
        self.comm = Some(comm.into());
        self
    }

    /// The same, with its program.
    #[must_use]
    pub fn with_exe(mut self, exe: impl Into<Arc<str>>) -> Self {
        self.exe = Some(exe.into());
        self
    }

    /// The same, with its command line.
    #[must_use]
    pub fn with_cmdline<S: Into<Arc<str>>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmdline = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// The same, with its user id.
    #[must_use]
    pub fn with_uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// The same, with its group id.
    #[must_use]
    pub fn with_gid(mut self, gid: u32) -> Self {
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

impl fmt::Display for Process {
    /// `comm[pid]`, or `[pid]` without a command name; without a pid,
    /// `[uid N]` (`[?]` when the user is not known either).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let comm = self.comm.as_deref().unwrap_or("");
        match (self.pid, self.uid) {
            (Some(pid), _) => write!(f, "{comm}[{pid}]"),
            (None, Some(uid)) => write!(f, "{comm}[uid {uid}]"),
            (None, None) => write!(f, "{comm}[?]"),
        }
    }
}
