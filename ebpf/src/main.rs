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
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
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
    /// TCP sequence and acknowledgement numbers, and payload length.
    tcp_seq: u32,
    tcp_ack: u32,
    tcp_payload: u32,
    /// The packet's tuple as sent (ICMP echo replies pre-reversed, so that
    /// request and reply have reversed keys like TCP and UDP).
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
    let len = u64::from(ctx.len());
    // One lookup finds the flow from either direction: the table key is
    // canonical, and the flow's flags say which end initiated it.
    let source_first = packet.key.is_canonical();
    let key = if source_first {
        packet.key
    } else {
        packet.key.reversed()
    };
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer from a successful lookup, valid for this run.
        let original = unsafe { (*state).flags } & FLAG_KEY_IS_ORIGINAL != 0;
        update(&key, state, original == source_first, hook, len, &packet);
        return;
    }
    if packet.starts_flow && open(&key, source_first, hook, len) && packet.key.protocol == PROTO_UDP
    {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // Best effort: without it the flow still closes when idle.
        let _ = SOCKETS.insert(cookie, key, 0);
    }
}

fn is_icmp(protocol: u8) -> bool {
    protocol == PROTO_ICMP || protocol == PROTO_ICMPV6
}

/// Inserts a new flow under its canonical `key` and reports it; false if it
/// was not inserted.
fn open(key: &RawFlowKey, key_is_original: bool, hook: Hook, len: u64) -> bool {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = if hook == Hook::Egress {
        FLAG_ORIG_EGRESS
    } else {
        FLAG_ORIG_INGRESS
    };
    if key_is_original {
        flags |= FLAG_KEY_IS_ORIGINAL;
    }
    let state = RawFlowState {
        packets: 1,
        bytes: len,
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
    emit(RECORD_OPENED, 0, key, &state, now);
    true
}

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
        // Coarse time (jiffies) is enough for idle timeouts and cheaper.
        (&raw mut (*state).last_seen_ns).write_volatile(bpf_ktime_get_coarse_ns());
    }
    if key.protocol != PROTO_TCP {
        return;
    }
    if packet.tcp_flags & TCP_RST != 0 {
        close(key, state, CLOSE_RST);
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
        let acked_by = packet
            .tcp_seq
            .wrapping_add(packet.tcp_payload)
            .wrapping_add(1);
        unsafe {
            own_fin_ack.write_volatile(acked_by);
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(flags, fin_bit);
        }
        seen |= fin_bit;
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
    // Serial-number comparison: the ACK covers the peer's FIN.
    if seen & peer_fin != 0
        && seen & peer_acked == 0
        && packet.tcp_ack.wrapping_sub(peer_fin_ack) as i32 >= 0
    {
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(flags, peer_acked) };
        seen |= peer_acked;
    }
    let done = FLAG_FIN_ORIG_ACKED | FLAG_FIN_REPLY_ACKED;
    if seen & done == done {
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

/// Sends a record with the key oriented initiator → responder.
fn emit(kind: u32, close_reason: u32, key: &RawFlowKey, state: &RawFlowState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<RawFlowRecord>(0) else {
        bump(COUNTER_RING_FULL);
        return;
    };
    entry.write(RawFlowRecord {
        kind,
        close_reason,
        key: key.oriented(state.flags),
        packets: state.packets,
        bytes: state.bytes,
        first_seen_ns: state.first_seen_ns,
        timestamp_ns: now,
    });
    entry.submit(0);
}

/// Reads a `T` at `offset` from the packet: straight from the linear data
/// when it is there (no helper call), else with `bpf_skb_load_bytes`.
///
/// `T` is an array of 32-bit words, read with one load per word: the BPF
/// target has no misaligned loads, so a byte array would be read a byte at
/// a time (a load, a shift and an or per byte — most of the program's
/// instructions before this change). IP headers sit at least 4-byte aligned
/// in the skb, and the verifier allows packet loads at any offset on
/// architectures with efficient unaligned access.
#[inline(always)]
fn read<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Option<T> {
    // SAFETY: the context's __sk_buff, valid for this run; the verifier
    // turns these fields into the packet's bounds.
    let (start, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: the range lies within the packet's linear data (checked
        // above, and again by the verifier); see above for the alignment.
        return Some(unsafe { core::ptr::read((start + offset) as *const T) });
    }
    ctx.load(offset).ok()
}

/// `N` words of the packet at `offset` as their `B = 4 * N` bytes.
#[inline(always)]
fn read_bytes<const N: usize, const B: usize>(
    ctx: &SkBuffContext,
    offset: usize,
) -> Option<[u8; B]> {
    const { assert!(B == 4 * N) };
    let words: [u32; N] = read(ctx, offset)?;
    // SAFETY: same size (asserted above); any bytes are valid u8s.
    Some(unsafe { core::mem::transmute_copy(&words) })
}

fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let mut key = RawFlowKey::default();
    // One read per header, straight from the packet where possible: a
    // bpf_skb_load_bytes call costs more than the bytes it copies.
    let ipv4: [u8; 20] = read_bytes::<5, 20>(ctx, 0)?;
    let (protocol, l4) = match ipv4[0] >> 4 {
        4 => {
            let header_len = usize::from(ipv4[0] & 0x0f) * 4;
            if header_len < 20 {
                return None;
            }
            if u16::from_be_bytes([ipv4[6], ipv4[7]]) & 0x1fff != 0 {
                return None; // not the first fragment: no transport header
            }
            key.src_addr[..4].copy_from_slice(&ipv4[12..16]);
            key.dst_addr[..4].copy_from_slice(&ipv4[16..20]);
            key.family = FAMILY_V4;
            (ipv4[9], header_len)
        }
        6 => {
            let ipv6: [u8; 40] = read_bytes::<10, 40>(ctx, 0)?;
            key.src_addr.copy_from_slice(&ipv6[8..24]);
            key.dst_addr.copy_from_slice(&ipv6[24..40]);
            key.family = FAMILY_V6;
            ipv6_transport(ctx, ipv6[6])?
        }
        _ => return None,
    };
    key.protocol = protocol;
    let (mut tcp_flags, mut tcp_seq, mut tcp_ack, mut tcp_payload) = (0, 0, 0, 0);
    let starts_flow = match protocol {
        PROTO_TCP => {
            let tcp: [u8; 16] = read_bytes::<4, 16>(ctx, l4)?;
            key.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            key.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            tcp_ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            let headers = (l4 + usize::from(tcp[12] >> 4) * 4) as u32;
            tcp_payload = ctx.len().saturating_sub(headers);
            tcp_flags = tcp[13];
            tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0
        }
        PROTO_UDP => {
            let udp: [u8; 4] = read_bytes::<1, 4>(ctx, l4)?;
            key.src_port = u16::from_be_bytes([udp[0], udp[1]]);
            key.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
            true
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let icmp: [u8; 8] = read_bytes::<2, 8>(ctx, l4)?;
            let (icmp_type, code) = (icmp[0], icmp[1]);
            let identifier = u16::from_be_bytes([icmp[4], icmp[5]]);
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
                // Keyed as the reverse of its request, so that it finds the
                // request's flow.
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
        tcp_seq,
        tcp_ack,
        tcp_payload,
        key,
        tcp_flags,
        starts_flow,
    })
}

/// Walks IPv6 extension headers; returns the transport protocol and offset.
fn ipv6_transport(ctx: &SkBuffContext, first: u8) -> Option<(u8, usize)> {
    let mut next = first;
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
    let Some(key) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        return;
    };
    let _ = SOCKETS.remove(cookie);
    if let Some(state) = FLOWS.get_ptr(key) {
        close(&key, state, CLOSE_SOCK_RELEASE);
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
