//! The per-socket counters: an established TCP socket of the cgroup counts
//! its flow's data packets in its own socket storage, with no flow-table
//! lookup. The table lookup (a jhash of the 40-byte key, then a key
//! compare) and two atomic adds on a line that both ends of a connection
//! write were most of a packet's cost; the storage lookup is a few loads,
//! and each CPU adds to a slot of its own (see `RawSocketFlow`).
//!
//! The counts move to the flow table when the socket leaves the fast path
//! for good ([`retire`]): a SYN, FIN or reset passes, or the socket is
//! released. A flow's close waits until each socket that counted it has
//! retired (`sockets_hold_counts`); the last to retire then closes it.
//!
//! Every shared update is atomic, and no atomic add's result is used
//! (see `add`): bits are or-ed, and counts move by adding what was read to
//! the table and its negation to the slot, so that a racing packet's count
//! is never lost.

use core::ptr;

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE;
use aya_ebpf::btf_maps::SkStorage;
use aya_ebpf::helpers::generated::{
    bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_sk_storage_get,
};
use aya_ebpf::macros::btf_map;
use aya_ebpf::programs::{SkBuffContext, SockContext};
use flow_ebpf_common::{
    FLAG_FIN_ORIG, FLAG_FIN_REPLY, FLAG_SOCKET_ORIG, FLAG_SOCKET_ORIG_RETIRED, FLAG_SOCKET_REPLY,
    FLAG_SOCKET_REPLY_RETIRED, PacketCounts, RawFlowKey, RawFlowState, RawSocketFlow,
    SOCKET_ACTIVE, SOCKET_COUNTER_SLOTS, SOCKET_COUNTS_INGRESS, SOCKET_IS_REPLY, SOCKET_MOVING,
    SOCKET_OWNERS_MASK, SOCKET_OWNERS_SHIFT, SOCKET_RETIRED, SocketCounts,
};

use crate::parse::{Packet, tcp_flags};
use crate::{
    FLOWS, Hook, PROTO_TCP, TCP_FIN, TCP_RST, TCP_SYN, add, add_unshared, and, both_ends_local,
    close_if_pending, or,
};

/// A BTF map: the kernel requires BTF key and value types for socket
/// storage.
#[btf_map(name = "SOCKET_FLOWS")]
static SOCKET_FLOWS: SkStorage<RawSocketFlow> = SkStorage::new();

/// How many CPUs own a counter slot (`SocketCounts`): read-only data the
/// loader may lower. Read once, when a socket starts counting, and kept in
/// its flags (`SOCKET_OWNERS_SHIFT`), which every packet loads anyway.
#[unsafe(no_mangle)]
static OWN_SLOT_CPUS: u32 = SOCKET_COUNTER_SLOTS as u32;

/// `bpf_sock::state` of an established TCP socket.
const TCP_ESTABLISHED: u32 = 1;

/// The map's address, as the helpers take it (aya-ebpf keeps its own
/// `as_ptr` private to the crate).
fn map() -> *mut core::ffi::c_void {
    ptr::from_ref(&SOCKET_FLOWS).cast_mut().cast()
}

/// The storage of the packet's socket, if the socket has one.
#[inline(always)]
pub fn of_packet(ctx: &SkBuffContext) -> Option<*mut RawSocketFlow> {
    // SAFETY: the context's __sk_buff, valid for this run.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket from the context; no value, no flags: a
    // lookup (the helper returns null for request and time-wait sockets).
    let entry = unsafe { bpf_sk_storage_get(map(), sk.cast(), ptr::null_mut(), 0) };
    (!entry.is_null()).then_some(entry.cast())
}

/// The storage of a socket a TCP iterator passed (a `sock_common`: null at
/// the end, and request or time-wait sockets, which have none), if it has
/// one.
#[inline(always)]
pub fn of_iterated(sk: *mut core::ffi::c_void) -> Option<*mut RawSocketFlow> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: the iterator's socket; the helper checks that it is a full
    // socket and only looks its storage up.
    let entry = unsafe { bpf_sk_storage_get(map(), sk.cast(), ptr::null_mut(), 0) };
    (!entry.is_null()).then_some(entry.cast())
}

/// The storage of the socket being released, if it has one.
pub fn of_released(ctx: &SockContext) -> Option<*mut RawSocketFlow> {
    // SAFETY: the context is the released socket.
    let entry = unsafe { bpf_sk_storage_get(map(), ctx.as_ptr(), ptr::null_mut(), 0) };
    (!entry.is_null()).then_some(entry.cast())
}

/// Counts the packet in the socket's storage if the socket is active and
/// the packet is neither a SYN, a FIN nor a reset; false if it must go
/// through the flow table instead.
///
/// Leaving, the socket's state says it: a socket sends its FIN and its
/// resets after it leaves ESTABLISHED (`tcp_close`, `tcp_shutdown`,
/// `tcp_disconnect`), and every later packet takes the table too. One
/// reset is sent from ESTABLISHED: `tcp_abort` (`ss -K`); that flow idles
/// out after its release instead of closing on the reset. Arriving, the
/// state changes only after this program, so the TCP flags are read; an
/// arriving packet the peer's socket already counted is not looked at.
#[inline(always)]
pub fn count(ctx: &SkBuffContext, entry: *mut RawSocketFlow, hook: Hook) -> bool {
    // SAFETY: a pointer from a successful storage lookup, valid for this run.
    let flags = unsafe { (&raw const (*entry).flags).read_volatile() };
    if flags & (SOCKET_ACTIVE | SOCKET_RETIRED) != SOCKET_ACTIVE {
        return false;
    }
    if hook == Hook::Egress {
        // SAFETY: the socket has storage, so the context's socket is set.
        let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
        if sk.is_null() || unsafe { (*sk).state } != TCP_ESTABLISHED {
            return false;
        }
    } else if flags & SOCKET_COUNTS_INGRESS == 0 {
        // The peer's socket counted it as it left, and the flow table
        // would not look at it either.
        return true;
    } else {
        match tcp_flags(ctx) {
            Some(tcp) if tcp & (TCP_SYN | TCP_FIN | TCP_RST) == 0 => {}
            _ => return false,
        }
    }
    let len = u64::from(ctx.len());
    // SAFETY: the helper only reads this CPU's number.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let owners =
        ((flags >> SOCKET_OWNERS_SHIFT) & SOCKET_OWNERS_MASK).min(SOCKET_COUNTER_SLOTS as u64);
    // SAFETY: a storage pointer, valid for this run (see `SocketCounts`
    // for who writes what).
    unsafe {
        let slot = &raw mut (*entry).slots[cpu as usize % SOCKET_COUNTER_SLOTS];
        if cpu < owners {
            let own = if hook == Hook::Egress {
                &raw mut (*slot).egress
            } else {
                &raw mut (*slot).ingress
            };
            add_unshared(&raw mut (*own).packets, 1);
            add_unshared(&raw mut (*own).bytes, len);
        } else {
            let shared = if hook == Hook::Egress {
                &raw mut (*slot).shared_egress
            } else {
                &raw mut (*slot).shared_ingress
            };
            add(&raw mut (*shared).packets, 1);
            add(&raw mut (*shared).bytes, len);
        }
    }
    true
}

/// Makes the socket that sent `packet` count its flow from now on, if the
/// packet is a TCP data or ACK segment of a flow with no FIN yet, and the
/// socket is established and has no storage yet (the caller checked that).
/// Called at egress only: a socket's egress is serialised by its lock, and
/// the updates are idempotent or-s anyway. `from_initiator`: the socket is
/// the initiator's.
pub fn start_counting(
    ctx: &SkBuffContext,
    key: &RawFlowKey,
    state: *mut RawFlowState,
    packet: &Packet,
    from_initiator: bool,
) {
    if key.protocol != PROTO_TCP || packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return;
    }
    // A DNS-over-TCP stream stays on the table path, where its answers are
    // copied.
    if crate::capture::is_dns_stream(key) {
        return;
    }
    // SAFETY: a pointer from a successful table lookup, valid for this run.
    let flow_flags = unsafe { (&raw const (*state).flags).read_volatile() };
    if flow_flags & (FLAG_FIN_ORIG | FLAG_FIN_REPLY) != 0 {
        return;
    }
    // SAFETY: the context's __sk_buff; the helpers check what they get.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() || unsafe { (*full).state } != TCP_ESTABLISHED {
        return; // listeners, request and time-wait sockets, closing ones
    }
    // Created zeroed: the helper takes an initial value only from a map.
    let entry = unsafe {
        bpf_sk_storage_get(
            map(),
            full.cast(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<RawSocketFlow>();
    if entry.is_null() {
        return; // no memory: the flow table keeps counting
    }
    // SAFETY: a storage pointer, valid for this run; a socket has one flow
    // for its whole life, so any racing writer writes the same key.
    unsafe { (&raw mut (*entry).key).write_volatile(*key) };
    // The flow learns that a socket holds counts before the socket counts
    // any, so that it cannot close with them outstanding.
    let (holding, side) = if from_initiator {
        (FLAG_SOCKET_ORIG, 0)
    } else {
        (FLAG_SOCKET_REPLY, SOCKET_IS_REPLY)
    };
    or(unsafe { &raw mut (*state).flags }, holding);
    // With both ends in the cgroup, the peer's socket counts what arrives
    // here, as it leaves.
    let ingress = if both_ends_local(flow_flags) {
        0
    } else {
        SOCKET_COUNTS_INGRESS
    };
    // SAFETY: the global is read-only.
    let owners = unsafe { ptr::read_volatile(&raw const OWN_SLOT_CPUS) }
        .clamp(1, SOCKET_COUNTER_SLOTS as u32);
    let before = or(
        unsafe { &raw mut (*entry).flags },
        SOCKET_ACTIVE | side | ingress | u64::from(owners) << SOCKET_OWNERS_SHIFT,
    );
    // A retire between the storage's creation and that `or` saw a socket
    // that never counted, and left the flow's mark to be taken here.
    if before & SOCKET_RETIRED != 0 {
        or(unsafe { &raw mut (*state).flags }, retired_mark(side));
        close_if_pending(key, state);
    }
}

/// The flow's mark that a socket retired, by the socket's flags (its side:
/// `SOCKET_IS_REPLY`).
fn retired_mark(socket_flags: u64) -> u64 {
    if socket_flags & SOCKET_IS_REPLY != 0 {
        FLAG_SOCKET_REPLY_RETIRED
    } else {
        FLAG_SOCKET_ORIG_RETIRED
    }
}

/// Stops the socket's counting for good and moves its counts into the
/// flow table; closes the flow if its close came meanwhile and no other
/// socket holds counts. Every later packet of the socket takes the table
/// path and calls it again: then it only moves what a packet racing an
/// earlier call counted, if anything, with no table lookup otherwise.
pub fn retire(entry: *mut RawSocketFlow) {
    // SAFETY: a storage pointer, valid for this run; see `SocketCounts`
    // for who writes which counter.
    let flags_of_socket = unsafe { &raw mut (*entry).flags };
    let mut before = unsafe { flags_of_socket.read_volatile() };
    if before & SOCKET_RETIRED == 0 {
        // Whoever sets the bit first is the first to retire the socket.
        before = or(flags_of_socket, SOCKET_RETIRED);
    }
    if before & SOCKET_ACTIVE == 0 {
        return; // never counted (see `start_counting`)
    }
    if before & SOCKET_RETIRED != 0 && !holds_counts(entry) {
        return;
    }
    move_counts(entry);
}

/// Moves what a counting socket counted so far into the flow table,
/// leaving it counting (the checkpoint iterator, `flowtrack_checkpoint`,
/// calls it for every socket before userspace reads the open flows'
/// counters).
pub fn checkpoint(entry: *mut RawSocketFlow) {
    // SAFETY: a storage pointer, valid for this run.
    let flags = unsafe { (&raw const (*entry).flags).read_volatile() };
    if flags & SOCKET_ACTIVE == 0 || !holds_counts(entry) {
        return;
    }
    move_counts(entry);
}

/// Moves the socket's counts not yet in the flow table there, each to its
/// direction of the flow; then, if the socket is retired, marks the flow
/// so and closes it if its close came meanwhile and no other socket holds
/// counts.
///
/// One mover at a time: two would move the same counts twice. A call that
/// finds another at work leaves the move to it; a count either misses,
/// the next call moves. The mover that finishes after the socket retired
/// marks the flow (a retire that found a checkpoint at work relies on
/// it): the retire's `SOCKET_RETIRED` comes before its failed claim of
/// `SOCKET_MOVING`, which comes before the checkpoint's release of it, so
/// the checkpoint's read after its release sees it.
fn move_counts(entry: *mut RawSocketFlow) {
    let flags_of_socket = unsafe { &raw mut (*entry).flags };
    let claimed = or(flags_of_socket, SOCKET_MOVING);
    if claimed & SOCKET_MOVING != 0 {
        return;
    }
    // The key straight from the storage: a copy would cost stack, which
    // the verifier limits to 512 bytes across calls.
    let key = unsafe { &(*entry).key };
    // None: the flow was evicted; these counts are lost, and the eviction
    // is reported.
    let state = FLOWS.get_ptr_mut(key);
    // The initiator's socket sends the flow's `orig` direction and
    // receives its `reply`; the responder's the other way round.
    let is_reply = claimed & SOCKET_IS_REPLY != 0;
    for index in 0..SOCKET_COUNTER_SLOTS {
        let slot = unsafe { &raw mut (*entry).slots[index] };
        let (sent, received) = unmoved(slot);
        // Only the mover writes these (see `SocketCounts`).
        unsafe {
            let moved = &raw mut (*slot).moved_egress;
            add_unshared(&raw mut (*moved).packets, sent.packets);
            add_unshared(&raw mut (*moved).bytes, sent.bytes);
            let moved = &raw mut (*slot).moved_ingress;
            add_unshared(&raw mut (*moved).packets, received.packets);
            add_unshared(&raw mut (*moved).bytes, received.bytes);
        }
        if let Some(state) = state {
            let (orig, reply) = if is_reply {
                (received, sent)
            } else {
                (sent, received)
            };
            // SAFETY: a pointer from a successful table lookup.
            unsafe {
                add(&raw mut (*state).orig.packets, orig.packets);
                add(&raw mut (*state).orig.bytes, orig.bytes);
                add(&raw mut (*state).reply.packets, reply.packets);
                add(&raw mut (*state).reply.bytes, reply.bytes);
            }
        }
    }
    and(flags_of_socket, !SOCKET_MOVING);
    let Some(state) = state else { return };
    let after = unsafe { flags_of_socket.read_volatile() };
    if after & SOCKET_RETIRED == 0 {
        return; // a checkpoint: the socket goes on counting
    }
    // The precise clock: the coarse one is not allowed in the checkpoint
    // iterator, which shares this code (and this runs once per socket).
    unsafe { (&raw mut (*state).last_seen_ns).write_volatile(bpf_ktime_get_ns()) };
    // The flow's flags are one word: this or and the closer's or are
    // ordered, so whichever comes second sees both and closes.
    or(unsafe { &raw mut (*state).flags }, retired_mark(after));
    close_if_pending(key, state);
}

/// Whether any slot of the socket holds counts not yet in the table.
fn holds_counts(entry: *mut RawSocketFlow) -> bool {
    (0..SOCKET_COUNTER_SLOTS).any(|index| {
        // SAFETY: a storage pointer, valid for this run.
        let (sent, received) = unmoved(unsafe { &raw mut (*entry).slots[index] });
        sent.packets | sent.bytes | received.packets | received.bytes != 0
    })
}

/// A slot's counts not yet in the flow table: of the packets the socket
/// sent, and of those it received.
fn unmoved(slot: *mut SocketCounts) -> (PacketCounts, PacketCounts) {
    let read = |counts: *const PacketCounts| {
        // SAFETY: a pointer into a storage value, valid for this run.
        unsafe {
            PacketCounts {
                packets: (&raw const (*counts).packets).read_volatile(),
                bytes: (&raw const (*counts).bytes).read_volatile(),
            }
        }
    };
    let unmoved = |own: PacketCounts, shared: PacketCounts, moved: PacketCounts| PacketCounts {
        packets: own
            .packets
            .wrapping_add(shared.packets)
            .wrapping_sub(moved.packets),
        bytes: own
            .bytes
            .wrapping_add(shared.bytes)
            .wrapping_sub(moved.bytes),
    };
    // SAFETY: as above.
    unsafe {
        (
            unmoved(
                read(&raw const (*slot).egress),
                read(&raw const (*slot).shared_egress),
                read(&raw const (*slot).moved_egress),
            ),
            unmoved(
                read(&raw const (*slot).ingress),
                read(&raw const (*slot).shared_ingress),
                read(&raw const (*slot).moved_ingress),
            ),
        )
    }
}
