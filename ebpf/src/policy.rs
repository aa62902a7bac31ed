//! Enforce mode: the egress policy checked in the kernel
//! (`flow_ebpf_common::policy`). The socket-address hooks `connect4`,
//! `connect6`, `sendmsg4` and `sendmsg6` refuse a denied destination
//! before any packet leaves (the call returns `EPERM` at once); the egress
//! `cgroup_skb` program drops the ICMP echo requests the hooks never see
//! (raw and ping sockets). Each refusal is reported as a
//! `RECORD_DENIED` record with the rule's id and the refused process.
//! With `ENFORCE` off (the loader's default) nothing is checked. A
//! permitted DNS query may go to flowtrack's resolver instead
//! ([`redirect`]).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::{cgroup_sock_addr, map};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, LpmTrie};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext};
use flow_ebpf_common::{
    COUNTER_RING_FULL, ENFORCE_OFF, FAMILY_V4, FAMILY_V6, POLICY_PREFIXES, RECORD_DENIED,
    RawFlowKey, RawOpenedRecord, RawPolicyRules, V4_PREFIX_OFFSET, Verdict, mapped_v4,
};

use crate::parse::parse;
use crate::redirect;
use crate::{EVENTS, bump, is_icmp, process};

/// Destination prefixes with the rules under them (IPv4 as IPv4-mapped).
#[map(name = "POLICY_PREFIXES")]
static POLICY_PREFIXES_MAP: LpmTrie<[u8; 16], RawPolicyRules> =
    LpmTrie::with_max_entries(POLICY_PREFIXES, 0);

/// The rules for anywhere (`*`), in entry 0.
#[map(name = "POLICY_ANYWHERE")]
static POLICY_ANYWHERE: Array<RawPolicyRules> = Array::with_max_entries(1, 0);

/// Whether (and how) a policy is enforced: `flow_ebpf_common::ENFORCE_*`.
#[unsafe(no_mangle)]
static ENFORCE: u32 = 0;

/// `cgroup/sock_addr` verdicts.
const REJECT: i32 = 0;
const ACCEPT: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn flowtrack_connect4(ctx: SockAddrContext) -> i32 {
    check_v4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn flowtrack_sendmsg4(ctx: SockAddrContext) -> i32 {
    check_v4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn flowtrack_connect6(ctx: SockAddrContext) -> i32 {
    check_v6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn flowtrack_sendmsg6(ctx: SockAddrContext) -> i32 {
    check_v6(&ctx)
}

/// The `ENFORCE` global (volatile: the loader rewrote it in the object).
#[inline(always)]
fn enforce() -> u32 {
    // SAFETY: a static of the object's read-only data.
    unsafe { core::ptr::read_volatile(&ENFORCE) }
}

/// A hook's verdict on an IPv4 destination.
#[inline(always)]
fn check_v4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context's bpf_sock_addr; the verifier checks each field
    // read (user_ip4 in the IPv4 hooks only).
    let (ip, port, protocol) = unsafe {
        let addr = ctx.sock_addr;
        ((*addr).user_ip4, (*addr).user_port, (*addr).protocol)
    };
    let mut dst = [0; 16];
    dst[..4].copy_from_slice(&ip.to_ne_bytes());
    let verdict = check_hook(dst, FAMILY_V4, port, protocol);
    if verdict == ACCEPT && redirect::redirects(port, protocol) {
        redirect::to_resolver_v4(ctx, ip.to_ne_bytes(), protocol);
    }
    verdict
}

/// A hook's verdict on an IPv6 destination (IPv4-mapped ones meet the
/// IPv4 rules).
#[inline(always)]
fn check_v6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as in check_v4; user_ip6 is read a word at a time, as the
    // verifier requires.
    let (words, port, protocol) = unsafe {
        let addr = ctx.sock_addr;
        (
            [
                (*addr).user_ip6[0],
                (*addr).user_ip6[1],
                (*addr).user_ip6[2],
                (*addr).user_ip6[3],
            ],
            (*addr).user_port,
            (*addr).protocol,
        )
    };
    let mut dst = [0; 16];
    for (i, word) in words.iter().enumerate() {
        dst[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let verdict = check_hook(dst, FAMILY_V6, port, protocol);
    if verdict == ACCEPT && redirect::redirects(port, protocol) {
        redirect::to_resolver_v6(ctx, dst, protocol);
    }
    verdict
}

/// The verdict on a connection or datagram to `dst` (in `family`'s
/// layout), port `user_port` (network order in its low 16 bits): a
/// refusal is reported with the calling process.
#[inline(always)]
fn check_hook(dst: [u8; 16], family: u8, user_port: u32, protocol: u32) -> i32 {
    let enforce = enforce();
    if enforce == ENFORCE_OFF {
        return ACCEPT;
    }
    let key = RawFlowKey {
        src_addr: [0; 16],
        dst_addr: dst,
        src_port: 0,
        dst_port: u16::from_be(user_port as u16),
        protocol: protocol as u8,
        family,
        pad: [0; 2],
    };
    let rule = denial(&key, enforce);
    if rule == ALLOWED {
        return ACCEPT;
    }
    report(&key, rule as u16, process::current);
    REJECT
}

/// Whether the egress program must drop this packet: an ICMP echo request
/// the policy denies; reported with its socket's owner. A query to
/// flowtrack's resolver has its client filed ([`redirect::file_client`]).
/// The packet is parsed here, apart from observing it (enforce mode only):
/// the two together would pass the verifier's limit on a call chain's
/// stack.
#[inline(always)]
pub fn drops_echo_request(ctx: &SkBuffContext) -> bool {
    let enforce = enforce();
    enforce != ENFORCE_OFF && denied_echo_request(ctx, enforce)
}

/// [`drops_echo_request`], once a policy is enforced.
#[inline(never)]
fn denied_echo_request(ctx: &SkBuffContext, enforce: u32) -> bool {
    let Some(packet) = parse(ctx) else {
        return false;
    };
    redirect::file_client(ctx, &packet.key);
    if !packet.starts_flow || !is_icmp(packet.key.protocol) {
        return false;
    }
    let key = &packet.key;
    let rule = denial(key, enforce);
    if rule == ALLOWED {
        return false;
    }
    report(key, rule as u16, |owner| {
        process::owner_of_packet(ctx, owner)
    });
    true
}

/// [`denial`]: the flow may go.
const ALLOWED: u32 = 1 << 16;

/// The id of the rule that denies the flow `flow` (its destination,
/// protocol and port; 0: the default), or [`ALLOWED`]: the rules of the
/// longest prefix holding the destination, then those for anywhere. Not
/// inlined: one copy for every program.
#[inline(never)]
fn denial(flow: &RawFlowKey, enforce: u32) -> u32 {
    let dst = &flow.dst_addr;
    let (protocol, port) = (flow.protocol, flow.dst_port);
    let key = if flow.family == FAMILY_V4 {
        Key::new(
            V4_PREFIX_OFFSET + 32,
            mapped_v4([dst[0], dst[1], dst[2], dst[3]]),
        )
    } else {
        Key::new(128, *dst)
    };
    let mut verdict = Verdict::default();
    if let Some(rules) = POLICY_PREFIXES_MAP.get(&key) {
        verdict.add(rules, protocol, port);
    }
    if let Some(rules) = POLICY_ANYWHERE.get(0) {
        verdict.add(rules, protocol, port);
    }
    verdict.denial(enforce).map_or(ALLOWED, u32::from)
}

/// Sends a denied record for `key` and `rule`, its owner written by
/// `owner` (into zeroed memory first).
#[inline(always)]
fn report(key: &RawFlowKey, rule: u16, owner: impl FnOnce(*mut flow_ebpf_common::RawOwner)) {
    let Some(mut entry) = EVENTS.reserve::<RawOpenedRecord>(0) else {
        bump(COUNTER_RING_FULL);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the reserved entry, valid until it is submitted.
    unsafe {
        record.write(RawOpenedRecord::default());
        let flow = &raw mut (*record).flow;
        (&raw mut (*flow).kind).write(RECORD_DENIED);
        (&raw mut (*flow).close_reason).write(u32::from(rule));
        (&raw mut (*flow).key).write(*key);
        (&raw mut (*flow).first_seen_ns).write(now);
        (&raw mut (*flow).timestamp_ns).write(now);
        owner(&raw mut (*record).owner);
    }
    entry.submit(crate::wakeup::urgent(now));
}
