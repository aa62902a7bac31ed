//! Who is behind a flow. `cgroup/sock_create` runs in the process that
//! calls `socket()`: it keeps that process (its tgid, user, command name
//! and start time) in the socket's storage, which an accepted socket
//! inherits from its listener (`BPF_F_CLONE`). A flow's opened record
//! carries its socket's owner, read once, when the flow opens: nothing is
//! read per packet (in `cgroup_skb` the current task is whoever runs).
//!
//! `tp_btf/sched_process_exec` and `sched_process_fork` record what the
//! scope's processes execute and which forked which, so that userspace
//! knows a process's program and command line even when it connected and
//! exited within a millisecond. Kernel structures are read at offsets the
//! loader finds in the kernel's BTF (`KERNEL_OFFSETS`): the Rust BPF
//! toolchain has no CO-RE relocations.

use core::ptr;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::{
    BPF_F_CLONE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_type,
};
use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_task, bpf_probe_read_user, bpf_sk_fullsock,
    bpf_sk_storage_get,
};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
    bpf_probe_read_kernel_str_bytes,
};
use aya_ebpf::macros::btf_map;
use aya_ebpf::programs::{BtfTracePointContext, SkBuffContext, SockContext};
use flow_ebpf_common::{
    ARGS_MAX, RECORD_EXEC, RECORD_FORK, RawExecRecord, RawForkRecord, RawOwner,
};

use crate::EVENTS;

/// Socket storage that an accepted socket inherits from its listener:
/// aya-ebpf's `SkStorage` cannot take `BPF_F_CLONE`, so the BTF map
/// definition is spelled out (the loader reads type and flags from it).
#[repr(C)]
pub struct CloneSkStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: placeholder pointers the loader patches; never dereferenced.
unsafe impl<T> Sync for CloneSkStorage<T> {}

/// Each socket's owner.
#[btf_map(name = "OWNERS")]
static OWNERS: CloneSkStorage<RawOwner> = CloneSkStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

fn owners() -> *mut core::ffi::c_void {
    ptr::from_ref(&OWNERS).cast_mut().cast()
}

/// Read-only data the loader sets: a global of each name in
/// `flow_ebpf_common::KERNEL_OFFSETS` and the scope.
macro_rules! globals {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            static $name: $ty = 0;
        )*
    };
}

globals!(
    SCOPE_CGROUP_ID: u64,
    SCOPE_CGROUP_LEVEL: u32,
    OFF_TASK_MM: u32,
    OFF_TASK_PID: u32,
    OFF_TASK_TGID: u32,
    OFF_TASK_REAL_PARENT: u32,
    OFF_TASK_GROUP_LEADER: u32,
    OFF_TASK_START_BOOTTIME: u32,
    OFF_MM_ARG_START: u32,
    OFF_MM_ARG_END: u32,
    OFF_BPRM_FILE: u32,
    OFF_BPRM_FILENAME: u32,
    OFF_FILE_PATH: u32,
    OFF_PATH_DENTRY: u32,
    OFF_DENTRY_NAME: u32,
    OFF_QSTR_NAME: u32,
);

/// A global's value (volatile: the loader rewrote it in the object).
#[inline(always)]
fn global<T: Copy>(value: &'static T) -> T {
    // SAFETY: a static of the object's read-only data.
    unsafe { ptr::read_volatile(value) }
}

/// A `T` at `offset` bytes into the kernel object at `base`; zero when it
/// cannot be read.
#[inline(always)]
fn kernel_field<T: Default>(base: u64, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base as *const u8).wrapping_add(offset as usize).cast()) }
        .unwrap_or_default()
}

/// When the thread group of `task` started (its leader's boot-time start).
#[inline(always)]
fn process_start(task: u64) -> u64 {
    let leader: u64 = kernel_field(task, global(&OFF_TASK_GROUP_LEADER));
    kernel_field(leader, global(&OFF_TASK_START_BOOTTIME))
}

/// `cgroup/sock_create`: keeps the calling process as the socket's owner.
#[inline(always)]
pub fn remember_owner(ctx: &SockContext) {
    // SAFETY: the context is the new socket; the helper creates its
    // storage, zeroed.
    let owner = unsafe {
        bpf_sk_storage_get(
            owners(),
            ctx.as_ptr(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<RawOwner>();
    if owner.is_null() {
        return;
    }
    current(owner);
}

/// Writes the current process into `owner` (programs that run in the
/// process's own context: `sock_create`, the socket-address hooks).
#[inline(always)]
pub fn current(owner: *mut RawOwner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: this CPU's task, read through the helper.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the caller's pointer to an owner (socket storage or a
    // reserved record), valid for this run.
    unsafe {
        (*owner).tgid = (pid_tgid >> 32) as u32;
        (*owner).uid = uid_gid as u32;
        (*owner).gid = (uid_gid >> 32) as u32;
        (*owner).start_ns = process_start(task);
        (*owner).comm = bpf_get_current_comm().unwrap_or_default();
    }
}

/// Copies the owner of the packet's socket into `owner` (its `tgid` is
/// left as it is, zero, when the socket has none: made before the
/// programs attached).
#[inline(always)]
pub fn owner_of_packet(ctx: &SkBuffContext, owner: *mut RawOwner) {
    // SAFETY: the context's __sk_buff; the helpers check what they get.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return;
    }
    let stored =
        unsafe { bpf_sk_storage_get(owners(), full.cast(), ptr::null_mut(), 0) }.cast::<RawOwner>();
    if !stored.is_null() {
        // SAFETY: both point to an owner: the storage, and the caller's
        // reserved record.
        unsafe { owner.write(stored.read()) };
    }
}

/// Whether the current task is in the scope (its cgroup or below).
#[inline(always)]
fn in_scope() -> bool {
    // SAFETY: the helper reads the current task's cgroup.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(global(&SCOPE_CGROUP_LEVEL) as i32) };
    id == global(&SCOPE_CGROUP_ID) && id != 0
}

/// `tp_btf/sched_process_exec(p, old_pid, bprm)`.
#[inline(always)]
pub fn executed(ctx: &BtfTracePointContext) {
    if !in_scope() {
        return;
    }
    let task: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    record_exec(task, bprm);
}

#[inline(never)]
fn record_exec(task: u64, bprm: u64) {
    let Some(mut entry) = EVENTS.reserve::<RawExecRecord>(0) else {
        crate::bump(flow_ebpf_common::COUNTER_PAYLOAD_LOST);
        return;
    };
    let record = entry.as_mut_ptr();
    let parent: u64 = kernel_field(task, global(&OFF_TASK_REAL_PARENT));
    let filename: u64 = kernel_field(bprm, global(&OFF_BPRM_FILENAME));
    let file: u64 = kernel_field(bprm, global(&OFF_BPRM_FILE));
    let dentry: u64 = kernel_field(file, global(&OFF_FILE_PATH) + global(&OFF_PATH_DENTRY));
    let name: u64 = kernel_field(dentry, global(&OFF_DENTRY_NAME) + global(&OFF_QSTR_NAME));
    let mm: u64 = kernel_field(task, global(&OFF_TASK_MM));
    let args_start: u64 = kernel_field(mm, global(&OFF_MM_ARG_START));
    let args_end: u64 = kernel_field(mm, global(&OFF_MM_ARG_END));
    let args_len = args_end.saturating_sub(args_start);
    // Bounded for the verifier on the register passed (as in capture.rs).
    let mut copy = args_len.min((ARGS_MAX - 1) as u64);
    // SAFETY: an operation on a register only.
    unsafe { core::arch::asm!("{0} &= {mask}", inout(reg) copy, mask = const ARGS_MAX - 1) };
    // SAFETY: `record` is the reserved entry, valid until submitted; the
    // helpers check the addresses they read.
    unsafe {
        (*record).kind = RECORD_EXEC;
        (*record).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*record).ppid = kernel_field(parent, global(&OFF_TASK_TGID));
        (*record).uid = bpf_get_current_uid_gid() as u32;
        (*record).start_ns = process_start(task);
        (*record).comm = bpf_get_current_comm().unwrap_or_default();
        (*record).args_len = args_len.min(u64::from(u32::MAX)) as u32;
        (*record).filename[0] = 0;
        (*record).basename[0] = 0;
        let _ = bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut (*record).filename);
        let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*record).basename);
        let read = if copy == 0 {
            -1
        } else {
            bpf_probe_read_user(
                (&raw mut (*record).args).cast(),
                copy as u32,
                args_start as *const core::ffi::c_void,
            )
        };
        (*record).args_copied = if read == 0 { copy as u32 } else { 0 };
    }
    entry.submit(0);
}

/// `tp_btf/sched_process_fork(parent, child)`: new processes (not threads)
/// of the scope.
#[inline(always)]
pub fn forked(ctx: &BtfTracePointContext) {
    if !in_scope() {
        return;
    }
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let child_pid: u32 = kernel_field(child, global(&OFF_TASK_PID));
    let child_tgid: u32 = kernel_field(child, global(&OFF_TASK_TGID));
    if child_pid != child_tgid {
        return; // a thread
    }
    let Some(mut entry) = EVENTS.reserve::<RawForkRecord>(0) else {
        crate::bump(flow_ebpf_common::COUNTER_PAYLOAD_LOST);
        return;
    };
    entry.write(RawForkRecord {
        kind: RECORD_FORK,
        parent_tgid: kernel_field(parent, global(&OFF_TASK_TGID)),
        child_tgid,
        pad: 0,
        parent_start_ns: process_start(parent),
        child_start_ns: kernel_field(child, global(&OFF_TASK_START_BOOTTIME)),
    });
    entry.submit(0);
}
