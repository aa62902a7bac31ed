//! flowtrack's kernel-side programs: `cgroup_skb` egress and ingress observe
//! every packet of the cgroup's sockets, keep per-flow state in an LRU hash
//! (an established TCP socket counts its own packets in its socket storage
//! meanwhile: [`socket`]), and emit a ring-buffer record only when a flow
//! opens or closes; `cgroup/sock_release` hands a TCP socket's counts to
//! the table and closes connected UDP flows when their socket goes. The
//! programs let packets pass: they observe, and filter only in enforce
//! mode ([`policy`]).

#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in core::sync::atomic
// (atomic-cas is off); the intrinsics lower to BPF atomic add/or/and.
#![feature(core_intrinsics)]
// Inline assembly bounds a copy's length on the very register a helper
// takes (capture.rs).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_or, atomic_xadd};

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::generated::bpf_skb_cgroup_id;
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use aya_ebpf::macros::{btf_tracepoint, cgroup_skb, cgroup_sock, map};
use aya_ebpf::maps::{LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{BtfTracePointContext, SkBuffContext, SockContext};
use flow_ebpf_common::*;

use crate::parse::{Packet, parse};

mod capture;
mod parse;
mod policy;
mod process;
mod redirect;
mod socket;
mod wakeup;

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<RawFlowKey, RawFlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_ENTRIES, 0);

/// UDP flows by the socket that opened them (socket cookie), so that
/// `sock_release` can close them: it cannot read the socket's addresses.
#[map(name = "SOCKETS")]
static SOCKETS: LruHashMap<u64, RawFlowKey> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_ENTRIES, 0);

#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// `cgroup_skb` verdict: let the packet through.
const PASS: i32 = 1;
/// `cgroup_skb` verdict: drop the packet (enforce mode only: [`policy`]).
const DROP: i32 = 0;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Egress,
    Ingress,
}

#[cgroup_skb(egress)]
pub fn flowtrack_egress(ctx: SkBuffContext) -> i32 {
    // A denied echo request never leaves, and is not observed.
    if policy::drops_echo_request(&ctx) {
        return DROP;
    }
    observe(&ctx, Hook::Egress);
    PASS
}

#[cgroup_skb(ingress)]
pub fn flowtrack_ingress(ctx: SkBuffContext) -> i32 {
    observe(&ctx, Hook::Ingress);
    PASS
}

#[cgroup_sock(sock_release)]
pub fn flowtrack_sock_release(ctx: SockContext) -> i32 {
    release(&ctx);
    1
}

#[cgroup_sock(sock_create)]
pub fn flowtrack_sock_create(ctx: SockContext) -> i32 {
    process::remember_owner(&ctx);
    1
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn flowtrack_exec(ctx: BtfTracePointContext) -> i32 {
    process::executed(&ctx);
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn flowtrack_fork(ctx: BtfTracePointContext) -> i32 {
    process::forked(&ctx);
    0
}

/// `*target |= bits`, atomically (the flags of a flow or a socket); the
/// bits before.
fn or(target: *mut u64, bits: u64) -> u64 {
    // SAFETY: callers pass pointers into map values valid for this run.
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(target, bits) }
}

/// `*target &= bits`, atomically.
fn and(target: *mut u64, bits: u64) {
    // SAFETY: callers pass pointers into map values valid for this run.
    unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(target, bits) };
}

/// `*target += value` (wrapping), atomically. The result is never used:
/// the object is built for the generic BPF CPU, for which LLVM refuses a
/// fetching add.
fn add(target: *mut u64, value: u64) {
    // SAFETY: callers pass pointers into map values valid for this run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(target, value) };
}

/// `*target += value` (wrapping), for a counter with one writer at a time
/// (see `SocketCounts`): a load and a store, no locked instruction.
fn add_unshared(target: *mut u64, value: u64) {
    // SAFETY: callers pass pointers into map values valid for this run.
    unsafe { target.write_volatile(target.read_volatile().wrapping_add(value)) };
}

/// Whether, by a flow's flags, both its ends are in the cgroup (loopback):
/// every packet then passes egress at the sender and ingress at the
/// receiver, and is counted once, at egress.
fn both_ends_local(flow_flags: u64) -> bool {
    flow_flags & FLAG_ORIG_EGRESS != 0 && flow_flags & FLAG_ORIG_INGRESS != 0
}

fn bump(counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += 1 };
    }
}

/// Counts the packet: in its socket's storage when the socket is an
/// established TCP socket that counts its flow (inlined into each program,
/// which then needs no call), else in the flow table.
#[inline(always)]
fn observe(ctx: &SkBuffContext, hook: Hook) {
    let socket = socket::of_packet(ctx);
    if let Some(entry) = socket
        && socket::count(ctx, entry, hook)
    {
        return;
    }
    // A raw pointer, null for none: an `Option` of one is two registers,
    // one of them unset for `None`, which the verifier refuses to pass.
    observe_in_table(ctx, hook, socket.unwrap_or(core::ptr::null_mut()));
}

/// The flow-table path of [`observe`]. `socket`: the packet's socket
/// storage or null; a socket that takes this path does so for good (a
/// SYN, FIN or reset, or an odd packet) and moves its counts to the table
/// first.
#[inline(never)]
fn observe_in_table(ctx: &SkBuffContext, hook: Hook, socket: *mut RawSocketFlow) {
    if !socket.is_null() {
        socket::retire(socket);
    }
    let Some(packet) = parse(ctx) else { return };
    // A raw ICMP socket receives a copy of its own echo requests: counted
    // at egress already. (An echo request from elsewhere is answered by the
    // kernel, not by a socket of the cgroup.)
    if hook == Hook::Ingress && packet.starts_flow && is_icmp(packet.key.protocol) {
        return;
    }
    let len = u64::from(ctx.len());
    // One lookup finds the flow from either direction: the table key is
    // canonical, and the flow's flags say which end initiated it.
    let source_first = packet.key.is_canonical();
    let key = if source_first {
        packet.key
    } else {
        packet.key.reversed()
    };
    if hook == Hook::Ingress && capture::is_dns_answer(&packet.key, packet.payload) {
        capture::dns_answer(ctx, &key, packet.payload, packet.tcp_seq);
    }
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer from a successful lookup, valid for this run.
        let original = unsafe { (*state).flags } & FLAG_KEY_IS_ORIGINAL != 0;
        let from_initiator = original == source_first;
        // Until the initiator's first payload passes (copied: it may name
        // the server), no socket of the flow counts in its storage.
        let waiting = key.protocol == PROTO_TCP
            && capture::first_payload_pending(
                ctx,
                &key,
                state,
                if from_initiator { packet.payload } else { 0 },
                packet.tcp_seq,
            );
        if socket.is_null() && hook == Hook::Egress && !waiting {
            // This packet counts in the table; the socket's next ones, if
            // it starts counting, in its storage.
            socket::start_counting(ctx, &key, state, &packet, from_initiator);
        }
        update(&key, state, from_initiator, hook, len, &packet);
        return;
    }
    if packet.starts_flow
        && open(ctx, &key, source_first, hook, len)
        && packet.key.protocol == PROTO_UDP
    {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // Best effort: without it the flow still closes when idle.
        let _ = SOCKETS.insert(cookie, key, 0);
    }
}

fn is_icmp(protocol: u8) -> bool {
    protocol == PROTO_ICMP || protocol == PROTO_ICMPV6
}

/// Inserts a new flow under its canonical `key` and reports it, with the
/// owner of the packet's socket; false if it was not inserted. Not inlined:
/// its new state would otherwise take room in `observe_in_table`'s frame,
/// and the verifier's limit on the stack of a call chain (512 bytes) is
/// close.
#[inline(never)]
fn open(
    ctx: &SkBuffContext,
    key: &RawFlowKey,
    key_is_original: bool,
    hook: Hook,
    len: u64,
) -> bool {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = if hook == Hook::Egress {
        FLAG_ORIG_EGRESS
    } else {
        FLAG_ORIG_INGRESS
    };
    if key_is_original {
        flags |= FLAG_KEY_IS_ORIGINAL;
    }
    // The first packet is the initiator's: it makes the key.
    let state = RawFlowState {
        orig: PacketCounts {
            packets: 1,
            bytes: len,
        },
        reply: PacketCounts::default(),
        first_seen_ns: now,
        last_seen_ns: now,
        flags,
        fin_ack_orig: 0,
        fin_ack_reply: 0,
    };
    // NOEXIST: when two CPUs race on a flow's first packets, one opens it.
    if FLOWS.insert(key, state, u64::from(BPF_NOEXIST)).is_err() {
        bump(COUNTER_INSERT_FAILED);
        return false;
    }
    bump(COUNTER_FLOWS_INSERTED);
    emit_opened(ctx, key, &state, now);
    true
}

/// Sends an opened record, with the owner of the packet's socket. Inlined,
/// and every field written straight into the ring's memory: a record built
/// on the stack first would not fit the call chain's 512 bytes.
#[inline(always)]
fn emit_opened(ctx: &SkBuffContext, key: &RawFlowKey, state: &RawFlowState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<RawOpenedRecord>(0) else {
        bump(COUNTER_RING_FULL);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: the reserved entry, valid until it is submitted; the ring's
    // memory is not zeroed, so the owner is, before it is looked up.
    unsafe {
        let flow = &raw mut (*record).flow;
        (&raw mut (*flow).kind).write(RECORD_OPENED);
        (&raw mut (*flow).close_reason).write(0);
        (&raw mut (*flow).key).write(key.oriented(state.flags));
        (&raw mut (*flow).orig).write(state.orig);
        (&raw mut (*flow).reply).write(state.reply);
        (&raw mut (*flow).first_seen_ns).write(state.first_seen_ns);
        (&raw mut (*flow).timestamp_ns).write(now);
        (&raw mut (*record).cgroup_id).write(bpf_skb_cgroup_id(ctx.skb.skb));
        let owner = &raw mut (*record).owner;
        (&raw mut (*owner).tgid).write(0);
        process::owner_of_packet(ctx, owner);
    }
    entry.submit(wakeup::urgent(now));
}

/// Counts a packet of a known flow in the table and follows its TCP state.
fn update(
    key: &RawFlowKey,
    state: *mut RawFlowState,
    from_initiator: bool,
    hook: Hook,
    len: u64,
    packet: &Packet,
) {
    // SAFETY: the pointer comes from a successful map lookup and stays valid
    // for this program run; fields other CPUs may update are changed with
    // atomic instructions.
    let flags = unsafe { &raw mut (*state).flags };
    let mut seen = unsafe { flags.read_volatile() };
    if from_initiator {
        let bit = if hook == Hook::Egress {
            FLAG_ORIG_EGRESS
        } else {
            FLAG_ORIG_INGRESS
        };
        if seen & bit == 0 {
            seen = or(flags, bit) | bit;
        }
    }
    // Both ends local, a packet was counted as it left. Its TCP flags still
    // count here: an orphaned socket that turned timewait (closed first,
    // its FIN acknowledged on its own) sends its last ACK from the kernel's
    // control socket, outside the cgroup, which no egress program sees.
    let counted_at_egress = both_ends_local(seen) && hook == Hook::Ingress;
    if !counted_at_egress {
        let direction = if from_initiator {
            unsafe { &raw mut (*state).orig }
        } else {
            unsafe { &raw mut (*state).reply }
        };
        add(unsafe { &raw mut (*direction).packets }, 1);
        add(unsafe { &raw mut (*direction).bytes }, len);
        // Coarse time (jiffies) is enough for idle timeouts and cheaper.
        unsafe { (&raw mut (*state).last_seen_ns).write_volatile(bpf_ktime_get_coarse_ns()) };
    }
    if key.protocol != PROTO_TCP {
        return;
    }
    if packet.tcp_flags & TCP_RST != 0 {
        close_tcp(key, state, FLAG_CLOSING_RST);
        return;
    }
    track_fin_exchange(key, state, flags, seen, from_initiator, packet);
}

/// Closes a TCP flow when the ACK of the second FIN passes: each side's FIN
/// is remembered with the sequence number that acknowledges it.
fn track_fin_exchange(
    key: &RawFlowKey,
    state: *mut RawFlowState,
    flags: *mut u64,
    mut seen: u64,
    from_initiator: bool,
    packet: &Packet,
) {
    let (fin_bit, own_fin_ack) = if from_initiator {
        (FLAG_FIN_ORIG, unsafe { &raw mut (*state).fin_ack_orig })
    } else {
        (FLAG_FIN_REPLY, unsafe { &raw mut (*state).fin_ack_reply })
    };
    if packet.tcp_flags & TCP_FIN != 0 {
        let acked_by = packet.tcp_seq.wrapping_add(packet.payload).wrapping_add(1);
        unsafe { own_fin_ack.write_volatile(acked_by) };
        seen = or(flags, fin_bit) | fin_bit;
    }
    if packet.tcp_flags & TCP_ACK == 0 {
        return;
    }
    let (peer_fin, peer_acked, peer_fin_ack) = if from_initiator {
        (FLAG_FIN_REPLY, FLAG_FIN_REPLY_ACKED, unsafe {
            (*state).fin_ack_reply
        })
    } else {
        (FLAG_FIN_ORIG, FLAG_FIN_ORIG_ACKED, unsafe {
            (*state).fin_ack_orig
        })
    };
    // Serial-number comparison: the ACK covers the peer's FIN. The bits
    // come back from the `or` itself: in a simultaneous close the two last
    // ACKs may pass at once on two CPUs, and of two `or`s on one word the
    // second sees the first's bit (a read before them could miss it in
    // both, and leave the flow to `fin_linger`).
    if seen & peer_fin != 0
        && seen & peer_acked == 0
        && packet.tcp_ack.wrapping_sub(peer_fin_ack) as i32 >= 0
    {
        seen = or(flags, peer_acked) | peer_acked;
    }
    let done = FLAG_FIN_ORIG_ACKED | FLAG_FIN_REPLY_ACKED;
    if seen & done == done {
        close_tcp(key, state, FLAG_CLOSING_FIN);
    }
}

/// Closes a TCP flow (`closing`: [`FLAG_CLOSING_FIN`] or
/// [`FLAG_CLOSING_RST`]) now or, while a socket still holds counts the
/// table lacks, when the last one retires ([`socket::retire`]).
fn close_tcp(key: &RawFlowKey, state: *mut RawFlowState, closing: u64) {
    // Mark, then look. A retiring socket marks the same word, then looks:
    // whichever marks second sees both marks; the table's remove makes
    // sure only one reports.
    or(unsafe { &raw mut (*state).flags }, closing);
    close_if_pending(key, state);
}

/// Closes a TCP flow whose close was marked by [`close_tcp`], once no
/// socket holds counts for it.
fn close_if_pending(key: &RawFlowKey, state: *const RawFlowState) {
    let flags = unsafe { (&raw const (*state).flags).read_volatile() };
    if sockets_hold_counts(flags) {
        return;
    }
    if flags & FLAG_CLOSING_RST != 0 {
        close(key, state, CLOSE_RST);
    } else if flags & FLAG_CLOSING_FIN != 0 {
        close(key, state, CLOSE_FIN);
    }
}

fn close(key: &RawFlowKey, state: *const RawFlowState, reason: u32) {
    // Read the counters before removing: the slot may be reused at once.
    let snapshot = unsafe { *state };
    // Whoever removes the entry (this program or userspace's sweep) reports
    // the close, so it is reported once.
    if FLOWS.remove(key).is_ok() {
        bump(COUNTER_FLOWS_REMOVED);
        emit(RECORD_CLOSED, reason, key, &snapshot, unsafe {
            bpf_ktime_get_ns()
        });
    }
}

/// Sends a record with the key oriented initiator → responder (a close:
/// it can wait for the reader's next wakeup, [`wakeup::can_wait`]).
fn emit(kind: u32, close_reason: u32, key: &RawFlowKey, state: &RawFlowState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<RawFlowRecord>(0) else {
        bump(COUNTER_RING_FULL);
        return;
    };
    entry.write(flow_record(kind, close_reason, key, state, now));
    entry.submit(wakeup::can_wait(now));
}

/// A flow record with the key oriented initiator → responder.
#[inline(always)]
fn flow_record(
    kind: u32,
    close_reason: u32,
    key: &RawFlowKey,
    state: &RawFlowState,
    now: u64,
) -> RawFlowRecord {
    RawFlowRecord {
        kind,
        close_reason,
        key: key.oriented(state.flags),
        orig: state.orig,
        reply: state.reply,
        first_seen_ns: state.first_seen_ns,
        timestamp_ns: now,
    }
}

fn release(ctx: &SockContext) {
    // SAFETY: the context pointer is the kernel's bpf_sock for this call.
    let protocol = unsafe { (*ctx.sock).protocol };
    if protocol == u32::from(PROTO_TCP) {
        // The socket's counts go to the table; the flow closes on its
        // FIN or reset, which follow the release.
        if let Some(entry) = socket::of_released(ctx) {
            socket::retire(entry);
        }
        return;
    }
    if protocol != u32::from(PROTO_UDP) {
        return; // others idle out
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(key) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        return;
    };
    let _ = SOCKETS.remove(cookie);
    if let Some(state) = FLOWS.get_ptr(key) {
        close(&key, state, CLOSE_SOCK_RELEASE);
    }
}

/// `iter/tcp`: for every TCP socket of the network namespace the iterator
/// was made in that counts its flow in its storage, moves its counts so
/// far into the flow table ([`socket::checkpoint`]), so that userspace
/// reads the open flows' counters there. Userspace runs it (reading the
/// iterator's file) in each namespace of the scope's processes before it
/// reports long flows' counters so far; it writes nothing to the file.
/// (A `bpf_sk_storage_map` iterator would reach every socket of the
/// storage at once, but kernels such as this project's refuse map
/// iterators even to root: `EPERM`.) Its context is the kernel's `struct
/// bpf_iter__tcp`: the iterator's metadata, then the socket (null at the
/// end of the iteration), each a 64-bit pointer.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn flowtrack_checkpoint(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel's context for this program type.
    let sk = unsafe { ctx.cast::<*mut core::ffi::c_void>().add(1).read() };
    if let Some(entry) = socket::of_iterated(sk) {
        socket::checkpoint(entry);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
