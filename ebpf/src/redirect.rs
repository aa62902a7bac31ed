//! The scope's DNS through flowtrack's resolver (enforce mode with name
//! rules): see `flow_ebpf_common::redirect`. With `RESOLVER_PORT` 0 (the
//! loader's default) nothing here changes anything. The flows to the
//! resolver are reported as the client made them by the loader, which
//! reads the clients' servers back from `DNS_CLIENTS`.

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::bpf_get_socket_cookie;
use aya_ebpf::macros::{cgroup_sock_addr, map};
use aya_ebpf::maps::LruHashMap;
use aya_ebpf::programs::{SkBuffContext, SockAddrContext};
use flow_ebpf_common::{
    DNS_PORT, DNS_REDIRECTS, FAMILY_V4, FAMILY_V6, LOOPBACK_V6, MAPPED_LOOPBACK, RawEndpoint,
    RawFlowKey, is_v4_mapped,
};

use crate::{PROTO_TCP, PROTO_UDP};

/// The resolver's port (host order); 0: no resolver.
#[unsafe(no_mangle)]
static RESOLVER_PORT: u16 = 0;

/// Socket cookie → the DNS server its `sockaddr` named.
#[map(name = "DNS_ORIGINS")]
static DNS_ORIGINS: LruHashMap<u64, RawEndpoint> = LruHashMap::with_max_entries(DNS_REDIRECTS, 0);

/// Client (as packets carry it) → its DNS server (as packets carry it).
#[map(name = "DNS_CLIENTS")]
static DNS_CLIENTS: LruHashMap<RawEndpoint, RawEndpoint> =
    LruHashMap::with_max_entries(DNS_REDIRECTS, 0);

/// The `RESOLVER_PORT` global (volatile: the loader rewrote it).
#[inline(always)]
fn resolver_port() -> u16 {
    // SAFETY: a static of the object's read-only data.
    unsafe { core::ptr::read_volatile(&RESOLVER_PORT) }
}

/// Whether a permitted connection or datagram to `user_port` (network
/// order in the low 16 bits) over `protocol` goes to the resolver.
#[inline(always)]
pub fn redirects(user_port: u32, protocol: u32) -> bool {
    resolver_port() != 0
        && u16::from_be(user_port as u16) == DNS_PORT
        && (protocol == u32::from(PROTO_TCP) || protocol == u32::from(PROTO_UDP))
}

/// Sends the hook's IPv4 `connect()` or `sendmsg()` to `server` (its
/// `user_ip4` as bytes) to the resolver, remembering the server.
#[inline(always)]
pub fn to_resolver_v4(ctx: &SockAddrContext, server: [u8; 4], protocol: u32) {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&server);
    remember(ctx, addr, FAMILY_V4, protocol);
    let addr = ctx.sock_addr;
    // SAFETY: the context's bpf_sock_addr; connect4 and sendmsg4 may write
    // user_ip4 and user_port.
    unsafe {
        (*addr).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
        (*addr).user_port = u32::from(resolver_port().to_be());
    }
}

/// [`to_resolver_v4`] for IPv6 (`server` the `user_ip6` bytes): an
/// IPv4-mapped server goes to `::ffff:127.0.0.1`, others to `::1`.
#[inline(always)]
pub fn to_resolver_v6(ctx: &SockAddrContext, server: [u8; 16], protocol: u32) {
    remember(ctx, server, FAMILY_V6, protocol);
    let resolver = if is_v4_mapped(&server) {
        MAPPED_LOOPBACK
    } else {
        LOOPBACK_V6
    };
    let addr = ctx.sock_addr;
    // SAFETY: as in to_resolver_v4; user_ip6 is written a word at a time.
    unsafe {
        (*addr).user_ip6[0] = word(&resolver, 0);
        (*addr).user_ip6[1] = word(&resolver, 1);
        (*addr).user_ip6[2] = word(&resolver, 2);
        (*addr).user_ip6[3] = word(&resolver, 3);
        (*addr).user_port = u32::from(resolver_port().to_be());
    }
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([
        bytes[i * 4],
        bytes[i * 4 + 1],
        bytes[i * 4 + 2],
        bytes[i * 4 + 3],
    ])
}

/// Files the server a socket asked for under its cookie.
#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u8; 16], family: u8, protocol: u32) {
    // SAFETY: a helper sock_addr programs may call with their context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let server = RawEndpoint {
        addr,
        port: DNS_PORT,
        family,
        protocol: protocol as u8,
    };
    let _ = DNS_ORIGINS.insert(cookie, server, 0);
}

#[cgroup_sock_addr(recvmsg4)]
pub fn flowtrack_recvmsg4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: the context's bpf_sock_addr; recvmsg4 may read and write
    // user_ip4 and user_port.
    let (ip, port) = unsafe { ((*addr).user_ip4, (*addr).user_port) };
    let port = u16::from_be(port as u16);
    if resolver_port() == 0 || port != resolver_port() || ip != u32::from_ne_bytes([127, 0, 0, 1]) {
        return 1;
    }
    if let Some(server) = server_of(addr)
        && server.family == FAMILY_V4
    {
        // SAFETY: as above.
        unsafe {
            (*addr).user_ip4 = u32::from_ne_bytes([
                server.addr[0],
                server.addr[1],
                server.addr[2],
                server.addr[3],
            ]);
            (*addr).user_port = u32::from(DNS_PORT.to_be());
        }
    }
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn flowtrack_recvmsg6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: as in recvmsg4, for user_ip6 (a word at a time).
    let (words, port) = unsafe {
        (
            [
                (*addr).user_ip6[0],
                (*addr).user_ip6[1],
                (*addr).user_ip6[2],
                (*addr).user_ip6[3],
            ],
            (*addr).user_port,
        )
    };
    let port = u16::from_be(port as u16);
    // Word by word: comparing arrays would call `memcmp` (a function of
    // its own, whose stack the verifier counts).
    let [a, b, c, d] = words;
    let is = |expected: [u32; 4]| {
        a == expected[0] && b == expected[1] && c == expected[2] && d == expected[3]
    };
    let from_resolver = is(resolver_words(&LOOPBACK_V6)) || is(resolver_words(&MAPPED_LOOPBACK));
    if resolver_port() == 0 || port != resolver_port() || !from_resolver {
        return 1;
    }
    if let Some(server) = server_of(addr)
        && server.family == FAMILY_V6
    {
        // SAFETY: as above.
        unsafe {
            (*addr).user_ip6[0] = word(&server.addr, 0);
            (*addr).user_ip6[1] = word(&server.addr, 1);
            (*addr).user_ip6[2] = word(&server.addr, 2);
            (*addr).user_ip6[3] = word(&server.addr, 3);
            (*addr).user_port = u32::from(DNS_PORT.to_be());
        }
    }
    1
}

#[inline(always)]
fn resolver_words(bytes: &[u8; 16]) -> [u32; 4] {
    [
        word(bytes, 0),
        word(bytes, 1),
        word(bytes, 2),
        word(bytes, 3),
    ]
}

/// The server the socket of `addr` asked for, copied.
#[inline(always)]
fn server_of(addr: *mut bpf_sock_addr) -> Option<RawEndpoint> {
    // SAFETY: a helper sock_addr programs may call with their context.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    // SAFETY: a copy out of the map's value.
    unsafe { DNS_ORIGINS.get(cookie).copied() }
}

/// Files the client of a packet the scope sends to the resolver (its
/// address and port, bound only after the socket-address hook ran) with
/// the server its socket asked for, for the resolver to read; before the
/// packet reaches it. Not inlined: its own stack frame.
#[inline(never)]
pub fn file_client(ctx: &SkBuffContext, key: &RawFlowKey) {
    let resolver = resolver_port();
    if resolver == 0 || !RawEndpoint::is_resolver(&key.dst_addr, key.family, key.dst_port, resolver)
    {
        return;
    }
    // SAFETY: a helper cgroup_skb programs may call with their context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: a copy out of the map's value.
    let Some(server) = (unsafe { DNS_ORIGINS.get(cookie).copied() }) else {
        return;
    };
    let client = RawEndpoint {
        addr: key.src_addr,
        port: key.src_port,
        family: key.family,
        protocol: key.protocol,
    };
    let _ = DNS_CLIENTS.insert(client, server.on_the_wire(), 0);
}
