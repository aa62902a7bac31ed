//! Copies of payload for userspace to parse: the DNS answers that arrive at
//! the scope's sockets, and the first payload the initiator of a TCP flow
//! sends (a TLS ClientHello names the server). Nothing here parses:
//! parsing stays in userspace.
//!
//! What other packets pay: a port compare (DNS), and on the flow-table path
//! a flag test (first payload). A TCP flow's sockets count in their
//! storage only once the first payload has passed (see `first_payload`),
//! so the per-socket fast path pays nothing.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes};
use aya_ebpf::programs::SkBuffContext;
use flow_ebpf_common::{
    COUNTER_PAYLOAD_LOST, FLAG_FIRST_PAYLOAD, PAYLOAD_LARGE, PAYLOAD_SMALL, RECORD_DNS,
    RECORD_FIRST_PAYLOAD, RawFlowKey, RawFlowState, RawPayloadRecord,
};

use crate::{EVENTS, bump, or};

/// The DNS port: answers come from it.
const DNS_PORT: u16 = 53;

/// A flow whose initiator has sent nothing after this many packets (a
/// server that speaks first, a client that only listens) gives up on its
/// first payload, so that its sockets may count in their storage.
const FIRST_PAYLOAD_PATIENCE: u64 = 16;

/// Whether the programs copy what names flows (the loader sets it; see
/// `flow_ebpf_common::CAPTURE_NAMES_GLOBAL`).
#[unsafe(no_mangle)]
static CAPTURE_NAMES: u32 = 1;

/// Whether flows are named: when not, nothing is copied, and a packet
/// pays this load and branch only.
#[inline(always)]
pub fn names_on() -> bool {
    // SAFETY: a static of the object's read-only data, which the loader
    // may have rewritten (hence volatile).
    unsafe { core::ptr::read_volatile(&raw const CAPTURE_NAMES) != 0 }
}

/// Whether a packet of `key` (as it travelled) arriving at the scope is a
/// DNS answer to copy.
#[inline(always)]
pub fn is_dns_answer(key: &RawFlowKey, payload: u32) -> bool {
    key.src_port == DNS_PORT && payload != 0 && names_on()
}

/// Whether a TCP flow is a DNS-over-TCP stream whose answers are copied:
/// its sockets never count in their storage, so that every answer segment
/// passes here.
#[inline(always)]
pub fn is_dns_stream(key: &RawFlowKey) -> bool {
    (key.src_port == DNS_PORT || key.dst_port == DNS_PORT) && names_on()
}

/// Copies a DNS answer (the packet's last `payload` bytes); `canonical` is
/// the flow's table key.
#[inline(never)]
pub fn dns_answer(ctx: &SkBuffContext, canonical: &RawFlowKey, payload: u32, seq: u32) {
    copy(ctx, canonical, payload, seq, RECORD_DNS);
}

/// Whether the TCP flow `state` still waits for its initiator's first
/// payload; copies that payload when this packet carries it
/// (`initiator_payload`: its payload length if the initiator sent it, else
/// 0; BPF functions take five arguments at most). Until it passes, the
/// flow's sockets do not start counting in their storage.
#[inline(never)]
pub fn first_payload_pending(
    ctx: &SkBuffContext,
    canonical: &RawFlowKey,
    state: *mut RawFlowState,
    initiator_payload: u32,
    seq: u32,
) -> bool {
    let payload = initiator_payload;
    // SAFETY: a pointer from a successful table lookup, valid for this run.
    let flags = unsafe { (&raw const (*state).flags).read_volatile() };
    if flags & FLAG_FIRST_PAYLOAD != 0 || !names_on() {
        return false;
    }
    if payload == 0 {
        let packets = unsafe {
            (&raw const (*state).orig.packets)
                .read_volatile()
                .wrapping_add((&raw const (*state).reply.packets).read_volatile())
        };
        if packets < FIRST_PAYLOAD_PATIENCE {
            return true;
        }
        or(unsafe { &raw mut (*state).flags }, FLAG_FIRST_PAYLOAD);
        return false;
    }
    // Two CPUs may both see the bit clear; the `or`'s old bits tell which
    // one was first, and only that one copies.
    if or(unsafe { &raw mut (*state).flags }, FLAG_FIRST_PAYLOAD) & FLAG_FIRST_PAYLOAD == 0 {
        copy(ctx, canonical, payload, seq, RECORD_FIRST_PAYLOAD);
    }
    false
}

/// Copies the packet's last `payload` bytes into a payload record of the
/// smaller size that holds them (or the larger, cut).
#[inline(always)]
fn copy(ctx: &SkBuffContext, canonical: &RawFlowKey, payload: u32, seq: u32, kind: u32) {
    if payload < PAYLOAD_SMALL as u32 {
        copy_into::<PAYLOAD_SMALL>(ctx, canonical, payload, seq, kind);
    } else {
        copy_into::<PAYLOAD_LARGE>(ctx, canonical, payload, seq, kind);
    }
}

/// Copies up to `N - 1` payload bytes (`N` a power of two) into a record
/// reserved at its fixed size (the ring buffer takes constant sizes only).
/// The copy's length is a bounded variable, which `bpf_skb_load_bytes`
/// takes if the verifier sees the very register passed bounded to
/// `[1, N - 1]`: the mask is applied in inline assembly, so that LLVM can
/// neither drop it nor bound a copy of the register instead (a plain
/// `min` was refused: "invalid zero-sized read").
#[inline(never)]
fn copy_into<const N: usize>(
    ctx: &SkBuffContext,
    canonical: &RawFlowKey,
    payload: u32,
    seq: u32,
    kind: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<RawPayloadRecord<N>>(0) else {
        bump(COUNTER_PAYLOAD_LOST);
        return;
    };
    let record = entry.as_mut_ptr();
    // A longer payload is copied in part; `orig_len` tells userspace.
    let mut len = u64::from(payload).min((N - 1) as u64);
    // SAFETY: an operation on a register only.
    unsafe { core::arch::asm!("{0} &= {mask}", inout(reg) len, mask = const N - 1) };
    if len == 0 {
        entry.discard(0);
        return;
    }
    // SAFETY: `record` is the reserved entry, valid until it is submitted
    // or discarded; `len` <= N - 1 < the size of `data`.
    let copied = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            ctx.len() - payload,
            (&raw mut (*record).data).cast(),
            len as u32,
        )
    };
    if copied != 0 {
        entry.discard(0);
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    unsafe {
        let header = &raw mut (*record).header;
        (&raw mut (*header).kind).write(kind);
        (&raw mut (*header).len).write(len as u32);
        (&raw mut (*header).orig_len).write(payload);
        (&raw mut (*header).tcp_seq).write(seq);
        (&raw mut (*header).key).write(*canonical);
        (&raw mut (*header).timestamp_ns).write(now);
    }
    entry.submit(crate::wakeup::can_wait(now));
}
