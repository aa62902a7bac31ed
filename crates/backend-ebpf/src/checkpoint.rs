//! The checkpoint iterator: a TCP iterator (`iter/tcp`) that, for every
//! socket counting its flow in its own storage, moves its counts so far
//! into the flow table (`ebpf/src/socket.rs`, `checkpoint`). Reading the
//! table after a run gives every open flow's counters so far: what interim
//! updates (`--active-timeout`) report.
//!
//! Userspace cannot read socket storage itself (a lookup takes the
//! socket's file descriptor, which belongs to the workload), and a check
//! in the per-packet path would cost every packet. The iterator costs
//! nothing until it runs, and then well under a microsecond per TCP
//! socket of the namespaces it walks.
//!
//! A TCP iterator walks the sockets of the network namespace of the thread
//! that makes it (`BPF_ITER_CREATE`), and the scope's sockets may live in
//! several: flowtrack's own, and those of the scope's processes, which a
//! thread of its own enters (`setns`) to walk each. A socket in a
//! namespace none of the scope's processes is in any more is not reached:
//! its counts move at its close, and its updates meanwhile carry what the
//! table counted (the handshake). A map iterator over the socket storage
//! would reach every socket at once, but this project's kernels refuse map
//! iterators even to root (`EPERM` at load).
//!
//! aya 0.14 attaches an iterator and makes its file only once (the link is
//! consumed): the link and each run's iterator are made here with the
//! `bpf()` system call (Linux 5.10 and later; the program itself needs the
//! kernel's BTF).

#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::programs::Iter;
use aya::{Btf, Ebpf};
use flow_ebpf_common::CHECKPOINT_PROGRAM;

/// `BPF_LINK_CREATE`, `BPF_ITER_CREATE` (`enum bpf_cmd`).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `BPF_TRACE_ITER` (`enum bpf_attach_type`).
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it for an iterator with no
/// target.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `union bpf_attr` as `BPF_ITER_CREATE` reads it.
#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// `bpf(cmd, attr)`: a new descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for
    // `cmd`, valid for its size; the kernel reads no further than that.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf() returned no descriptor"))?;
    // SAFETY: a descriptor the kernel just made for this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor's number, as the kernel's `u32` fields take it.
fn fd_number(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("a negative descriptor"))
}

/// The loaded checkpoint iterator and its link.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    link: OwnedFd,
}

impl Checkpoint {
    /// Loads the iterator program of `ebpf` and links it; why not, when it
    /// cannot (no kernel BTF, a kernel before 5.10).
    pub(crate) fn load(ebpf: &mut Ebpf) -> Result<Self, String> {
        let btf = Btf::from_sys_fs().map_err(|error| format!("the kernel's BTF: {error}"))?;
        let program: &mut Iter = ebpf
            .program_mut(CHECKPOINT_PROGRAM)
            .ok_or_else(|| format!("the eBPF object has no program {CHECKPOINT_PROGRAM}"))?
            .try_into()
            .map_err(|error| format!("{CHECKPOINT_PROGRAM}: {error}"))?;
        program
            .load("tcp", &btf)
            .map_err(|error| format!("loading {CHECKPOINT_PROGRAM}: {error}"))?;
        let program = program
            .fd()
            .map_err(|error| format!("{CHECKPOINT_PROGRAM}: {error}"))?;
        let mut attr = LinkCreateAttr {
            prog_fd: fd_number(program.as_fd()).map_err(|error| error.to_string())?,
            attach_type: BPF_TRACE_ITER,
            ..LinkCreateAttr::default()
        };
        let link = bpf(BPF_LINK_CREATE, &mut attr)
            .map_err(|error| format!("linking {CHECKPOINT_PROGRAM}: {error}"))?;
        Ok(Self { link })
    }

    /// Runs the iterator in flowtrack's network namespace and in every
    /// other one a process of `cgroup` (or below) is in: when it returns,
    /// the counts of every counting socket it reached are in the flow
    /// table. A namespace that cannot be entered (its last process gone
    /// meanwhile) is passed over.
    pub(crate) fn run(&self, cgroup: &Path) -> io::Result<()> {
        self.walk()?;
        let own = namespace_of("thread-self");
        let mut seen = HashSet::from([own]);
        for pid in flow_cgroup::processes(cgroup) {
            let path = format!("/proc/{pid}/ns/net");
            let Ok(namespace) = File::open(&path) else {
                continue;
            };
            let Ok(metadata) = namespace.metadata() else {
                continue;
            };
            if seen.insert(Some((metadata.dev(), metadata.ino()))) {
                self.walk_in(namespace)?;
            }
        }
        Ok(())
    }

    /// Runs the iterator in the network namespace `namespace` (an nsfs
    /// file), from a thread that enters it and ends.
    fn walk_in(&self, namespace: File) -> io::Result<()> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    match rustix::thread::move_into_link_name_space(
                        namespace.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    ) {
                        Ok(()) => self.walk(),
                        // Not a namespace any more, or gone: nothing to walk.
                        Err(error) => {
                            tracing::debug!(%error, "cannot enter a namespace of the scope");
                            Ok(())
                        }
                    }
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the checkpoint thread panicked")))
        })
    }

    /// Runs the iterator once over the TCP sockets of this thread's
    /// network namespace.
    fn walk(&self) -> io::Result<()> {
        let mut attr = IterCreateAttr {
            link_fd: fd_number(self.link.as_fd())?,
            flags: 0,
        };
        let mut iterator = File::from(bpf(BPF_ITER_CREATE, &mut attr)?);
        // The program writes nothing: a read walks the sockets and returns
        // 0 at the end. The kernel stops a read after a million sockets
        // with nothing written (EAGAIN); the next one goes on from there.
        let mut buffer = [0_u8; 64];
        loop {
            match iterator.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// The network namespace of `task` (a pid under /proc, or `thread-self`),
/// by the device and inode of its nsfs file.
fn namespace_of(task: &str) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(format!("/proc/{task}/ns/net")).ok()?;
    Some((metadata.dev(), metadata.ino()))
}
