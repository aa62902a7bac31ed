//! flowtrack's kernel-side programs: `cgroup_skb` egress and ingress observe
//! every packet of the cgroup's sockets, keep per-flow state in an LRU hash,
//! and emit a ring-buffer record only when a flow opens or closes;
//! `cgroup/sock_release` closes connected UDP flows when their socket goes.
//! The programs always let packets pass: they observe, never filter.

#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in core::sync::atomic
// (atomic-cas is off); the intrinsics lower to BPF atomic add/or.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns};
use aya_ebpf::macros::{cgroup_skb, cgroup_sock, map};
use aya_ebpf::maps::{LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{SkBuffContext, SockContext};
use flow_ebpf_common::*;

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<RawFlowKey, RawFlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_ENTRIES, 0);

/// UDP flows by the socket that opened them (socket cookie), so that
/// `sock_release` can close them: it cannot read the socket's addresses.
#[map(name = "SOCKETS")]
static SOCKETS: LruHashMap<u64, RawFlowKey> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_ENTRIES, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// `cgroup_skb` verdict: let the packet through.
const PASS: i32 = 1;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers skipped before the transport header.
const MAX_IPV6_EXTENSIONS: usize = 6;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Egress,
    Ingress,
}

/// What the parser learned from one packet.
struct Packet {
    /// The packet's tuple, oriented as the flow it belongs to would be if
    /// this packet came from the initiator (ICMP replies are pre-reversed).
    key: RawFlowKey,
    /// TCP flags, 0 for other protocols.
    tcp_flags: u8,
    /// This packet may start a flow (TCP SYN, UDP, ICMP echo request).
    starts_flow: bool,
}

#[cgroup_skb(egress)]
pub fn flowtrack_egress(ctx: SkBuffContext) -> i32 {
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

fn bump(counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += 1 };
    }
}

fn observe(ctx: &SkBuffContext, hook: Hook) {
    let Some(packet) = parse(ctx) else { return };
    // A raw ICMP socket receives a copy of its own echo requests: counted
    // at egress already. (An echo request from elsewhere is answered by the
    // kernel, not by a socket of the cgroup.)
    if hook == Hook::Ingress && packet.starts_flow && is_icmp(packet.key.protocol) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let len = u64::from(ctx.len());
    if let Some(state) = FLOWS.get_ptr_mut(&packet.key) {
        update(&packet.key, state, true, hook, len, packet.tcp_flags, now);
        return;
    }
    let reversed = packet.key.reversed();
    if let Some(state) = FLOWS.get_ptr_mut(&reversed) {
        update(&reversed, state, false, hook, len, packet.tcp_flags, now);
        return;
    }
    if packet.starts_flow && open(&packet.key, hook, len, now) && packet.key.protocol == PROTO_UDP {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // Best effort: without it the flow still closes when idle.
        let _ = SOCKETS.insert(&cookie, &packet.key, 0);
    }
}

fn is_icmp(protocol: u8) -> bool {
    protocol == PROTO_ICMP || protocol == PROTO_ICMPV6
}

/// Inserts a new flow and reports it; false if it was not inserted.
fn open(key: &RawFlowKey, hook: Hook, len: u64, now: u64) -> bool {
    let state = RawFlowState {
        packets: 1,
        bytes: len,
        first_seen_ns: now,
        last_seen_ns: now,
        flags: if hook == Hook::Egress {
            FLAG_ORIG_EGRESS
        } else {
            FLAG_ORIG_INGRESS
        },
    };
    // NOEXIST: when two CPUs race on a flow's first packets, one opens it.
    if FLOWS.insert(key, &state, u64::from(BPF_NOEXIST)).is_err() {
        bump(COUNTER_INSERT_FAILED);
        return false;
    }
    bump(COUNTER_FLOWS_INSERTED);
    emit(RECORD_OPENED, 0, key, &state, now);
    true
}

fn update(
    key: &RawFlowKey,
    state: *mut RawFlowState,
    from_initiator: bool,
    hook: Hook,
    len: u64,
    tcp_flags: u8,
    now: u64,
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
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(flags, bit) };
            seen |= bit;
        }
    }
    // Both ends inside the cgroup (loopback): every packet passes egress at
    // the sender and ingress at the receiver; count it once, at egress.
    let both_local = seen & FLAG_ORIG_EGRESS != 0 && seen & FLAG_ORIG_INGRESS != 0;
    if both_local && hook == Hook::Ingress {
        return;
    }
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).bytes, len);
        (&raw mut (*state).last_seen_ns).write_volatile(now);
    }
    if key.protocol != PROTO_TCP {
        return;
    }
    if tcp_flags & TCP_RST != 0 {
        close(key, state, CLOSE_RST, now);
        return;
    }
    let fins = FLAG_FIN_ORIG | FLAG_FIN_REPLY;
    if tcp_flags & TCP_FIN != 0 {
        let bit = if from_initiator {
            FLAG_FIN_ORIG
        } else {
            FLAG_FIN_REPLY
        };
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(flags, bit) };
    } else if seen & fins == fins && tcp_flags & TCP_ACK != 0 {
        // The ACK of the second FIN: the exchange is complete.
        close(key, state, CLOSE_FIN, now);
    }
}

fn close(key: &RawFlowKey, state: *const RawFlowState, reason: u32, now: u64) {
    // Read the counters before removing: the slot may be reused at once.
    let snapshot = unsafe { *state };
    // Whoever removes the entry (this program or userspace's sweep) reports
    // the close, so it is reported once.
    if FLOWS.remove(key).is_ok() {
        bump(COUNTER_FLOWS_REMOVED);
        emit(RECORD_CLOSED, reason, key, &snapshot, now);
    }
}

fn emit(kind: u32, close_reason: u32, key: &RawFlowKey, state: &RawFlowState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<RawFlowRecord>(0) else {
        bump(COUNTER_RING_FULL);
        return;
    };
    entry.write(RawFlowRecord {
        kind,
        close_reason,
        key: *key,
        packets: state.packets,
        bytes: state.bytes,
        first_seen_ns: state.first_seen_ns,
        timestamp_ns: now,
    });
    entry.submit(0);
}

fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let first: u8 = ctx.load(0).ok()?;
    let mut key = RawFlowKey::default();
    let (protocol, l4) = match first >> 4 {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            if header_len < 20 {
                return None;
            }
            let fragment: u16 = u16::from_be(ctx.load(6).ok()?);
            if fragment & 0x1fff != 0 {
                return None; // not the first fragment: no transport header
            }
            let src: [u8; 4] = ctx.load(12).ok()?;
            let dst: [u8; 4] = ctx.load(16).ok()?;
            key.src_addr[..4].copy_from_slice(&src);
            key.dst_addr[..4].copy_from_slice(&dst);
            key.family = FAMILY_V4;
            (ctx.load::<u8>(9).ok()?, header_len)
        }
        6 => {
            key.src_addr = ctx.load(8).ok()?;
            key.dst_addr = ctx.load(24).ok()?;
            key.family = FAMILY_V6;
            ipv6_transport(ctx)?
        }
        _ => return None,
    };
    key.protocol = protocol;
    let mut tcp_flags = 0;
    let starts_flow = match protocol {
        PROTO_TCP => {
            key.src_port = u16::from_be(ctx.load(l4).ok()?);
            key.dst_port = u16::from_be(ctx.load(l4 + 2).ok()?);
            tcp_flags = ctx.load(l4 + 13).ok()?;
            tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0
        }
        PROTO_UDP => {
            key.src_port = u16::from_be(ctx.load(l4).ok()?);
            key.dst_port = u16::from_be(ctx.load(l4 + 2).ok()?);
            true
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let icmp_type: u8 = ctx.load(l4).ok()?;
            let code: u8 = ctx.load(l4 + 1).ok()?;
            let identifier = u16::from_be(ctx.load(l4 + 4).ok()?);
            let (request, reply) = if protocol == PROTO_ICMP {
                (8, 0)
            } else {
                (128, 129)
            };
            if icmp_type == request {
                key.src_port = identifier;
                key.dst_port = u16::from(icmp_type) << 8 | u16::from(code);
                true
            } else if icmp_type == reply {
                // Keyed as the reverse of its request, so the lookup of the
                // reversed key finds the request's flow.
                key.src_port = u16::from(request) << 8;
                key.dst_port = identifier;
                false
            } else {
                return None; // errors and other messages are not flows
            }
        }
        _ => return None,
    };
    Some(Packet {
        key,
        tcp_flags,
        starts_flow,
    })
}

/// Walks IPv6 extension headers; returns the transport protocol and offset.
fn ipv6_transport(ctx: &SkBuffContext) -> Option<(u8, usize)> {
    let mut next: u8 = ctx.load(6).ok()?;
    let mut offset = 40_usize;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let header: [u8; 2] = ctx.load(offset).ok()?;
                next = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            // Fragment: 8 bytes; only the first fragment has the transport.
            44 => {
                let header: [u8; 4] = ctx.load(offset).ok()?;
                if u16::from_be_bytes([header[2], header[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = header[0];
                offset += 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let header: [u8; 2] = ctx.load(offset).ok()?;
                next = header[0];
                offset += (usize::from(header[1]) + 2) * 4;
            }
            _ => return Some((next, offset)),
        }
    }
    None
}

fn release(ctx: &SockContext) {
    // SAFETY: the context pointer is the kernel's bpf_sock for this call.
    let protocol = unsafe { (*ctx.sock).protocol };
    if protocol != u32::from(PROTO_UDP) {
        return; // TCP closes on FIN/RST after release; others idle out
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(key) = (unsafe { SOCKETS.get(&cookie) }).copied() else {
        return;
    };
    let _ = SOCKETS.remove(&cookie);
    if let Some(state) = FLOWS.get_ptr(&key) {
        close(&key, state, CLOSE_SOCK_RELEASE, unsafe {
            bpf_ktime_get_ns()
        });
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
