//! The packet parser: the flow key and TCP state of a packet, read from
//! its headers.

use aya_ebpf::programs::SkBuffContext;
use flow_ebpf_common::{FAMILY_V4, FAMILY_V6, RawFlowKey};

use crate::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};

/// IPv6 extension headers skipped before the transport header.
const MAX_IPV6_EXTENSIONS: usize = 6;

/// What the parser learned from one packet.
pub struct Packet {
    /// TCP sequence and acknowledgement numbers.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// TCP or UDP payload length: the payload is the packet's last
    /// `payload` bytes.
    pub payload: u32,
    /// The packet's tuple as sent (ICMP echo replies pre-reversed, so that
    /// request and reply have reversed keys like TCP and UDP).
    pub key: RawFlowKey,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// This packet may start a flow (TCP SYN, UDP, ICMP echo request).
    pub starts_flow: bool,
}

/// Reads a `T` at `offset` from the packet: straight from the linear data
/// when it is there (no helper call), else with `bpf_skb_load_bytes`.
///
/// `T` is an array of 32-bit words, read with one load per word: the BPF
/// target has no misaligned loads, so a byte array would be read a byte at
/// a time (a load, a shift and an or per byte, which once made most of the
/// program's instructions). IP headers sit at least 4-byte aligned
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

/// The packet's key and TCP state; `None` for what is not a flow's packet
/// (other protocols, later fragments, ICMP errors) or is truncated. Always
/// inlined: a function returning it would take a BTF type the kernel
/// refuses (an `Option` of it).
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Option<Packet> {
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
            if !first_fragment([ipv4[6], ipv4[7]]) {
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
    let (mut tcp_flags, mut tcp_seq, mut tcp_ack, mut payload) = (0, 0, 0, 0);
    let starts_flow = match protocol {
        PROTO_TCP => {
            let tcp: [u8; 16] = read_bytes::<4, 16>(ctx, l4)?;
            key.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            key.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            tcp_ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            let headers = (l4 + usize::from(tcp[12] >> 4) * 4) as u32;
            payload = ctx.len().saturating_sub(headers);
            tcp_flags = tcp[13];
            tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0
        }
        PROTO_UDP => {
            let udp: [u8; 4] = read_bytes::<1, 4>(ctx, l4)?;
            key.src_port = u16::from_be_bytes([udp[0], udp[1]]);
            key.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
            payload = ctx.len().saturating_sub((l4 + 8) as u32);
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
        payload,
        key,
        tcp_flags,
        starts_flow,
    })
}

/// Whether an IPv4 packet, by bytes 6 and 7 of its header (flags and
/// fragment offset), is whole or a first fragment: the only ones with a
/// transport header.
fn first_fragment(flags_and_offset: [u8; 2]) -> bool {
    u16::from_be_bytes(flags_and_offset) & 0x1fff == 0
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

/// The TCP flags of a plain TCP packet (IPv4, or IPv6 with no extension
/// headers), in three loads: what the per-socket fast path needs to know
/// that a packet is neither a SYN, a FIN nor a reset. `None` for anything
/// else, which takes the full parse.
#[inline(always)]
pub fn tcp_flags(ctx: &SkBuffContext) -> Option<u8> {
    let ip = read_bytes::<3, 12>(ctx, 0)?;
    let transport = match ip[0] >> 4 {
        4 if ip[9] == PROTO_TCP && first_fragment([ip[6], ip[7]]) => usize::from(ip[0] & 0x0f) * 4,
        6 if ip[6] == PROTO_TCP => 40,
        _ => return None,
    };
    // Bytes 12 and 13 of the TCP header: data offset, then the flags.
    let offset_and_flags = read_bytes::<1, 4>(ctx, transport + 12)?;
    Some(offset_and_flags[1])
}
