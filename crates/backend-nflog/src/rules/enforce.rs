//! Enforce mode in the backend's own table: the policy's address rules as
//! nf_tables rules over interval sets, added to the table in one batch
//! after it is made (before the scope's command runs; a refused batch
//! fails the start).
//!
//! Rules that share an action, a protocol and ports form a group; a
//! group's prefixes are merged into disjoint ranges, one interval set per
//! family (an IPv4-mapped prefix is an IPv4 one: a dual-stack socket's
//! `::ffff:a.b.c.d` sends IPv4 packets). One rule per group and family
//! looks the destination up in its set, so a check costs one set lookup
//! per group, whatever the number of prefixes:
//!
//! ```text
//! chain output {                      # the table's, at its head:
//!   ct state new socket cgroupv2 level L == ID jump policy
//! }
//! chain policy {
//!   # deny groups, then allow groups:
//!   meta nfproto ipv4 meta l4proto tcp th dport 8000-8100 ip daddr @g0_4 goto reject
//!   meta l4proto udp th dport 9 return          # a rule for anywhere (*)
//!   goto reject                                 # with allow rules: the default
//! }
//! chain reject {
//!   log group G snaplen 160 prefix "flowtrack:policy"
//!   meta l4proto tcp reject with tcp reset
//!   reject with icmpx admin-prohibited
//! }
//! ```
//!
//! A refused TCP connection gets a reset (`connect()` fails with
//! `ECONNREFUSED` at once); anything else an ICMP administratively
//! prohibited, and its `send()` fails with `EPERM` (the packet is dropped
//! as it leaves). The log names the refused packet's flow; userspace finds
//! the deny rule that refused it (or the default) with the same policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use flow_core::FlowKey;
use flow_policy::{Action, Decision, Dest, Policy, PortRange, Proto};
use ipnet::IpNet;
use neli::consts::nl::NlmF;
use neli::genl::Nlattr;
use neli::types::Buffer;

use super::{
    BASE_TRANSPORT, CT_STATE, CT_STATE_NEW, NEWCHAIN, NEWRULE, REG_1, Table, attr as nft, batch,
    compare, compare_with, ct_has, expression, in_scope, l4proto_is, log, message, payload_load,
};
use crate::netlink::{attr, attr_be32, attr_str, nested};
use crate::nflog;

/// The chain that decides the scope's new outgoing flows.
const POLICY_CHAIN: &str = "policy";
/// The chain that logs and refuses a denied flow.
const REJECT_CHAIN: &str = "reject";

/// `NFT_MSG_NEWSET`, `NFT_MSG_NEWSETELEM`.
const NEWSET: u8 = 9;
const NEWSETELEM: u8 = 12;
/// `NFT_SET_INTERVAL`, and `NFT_SET_ELEM_INTERVAL_END`.
const SET_INTERVAL: u32 = 0x4;
const ELEM_INTERVAL_END: u32 = 0x1;
/// nft's data types of the set keys (how `nft list` shows them).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
/// `NFT_META_NFPROTO`; `NFPROTO_IPV4`, `NFPROTO_IPV6`.
const META_NFPROTO: u32 = 15;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
const BASE_NETWORK: u32 = 1;
/// `NFT_REG_VERDICT`; `NFT_GOTO`, `NFT_RETURN`, `NFT_JUMP`.
const REG_VERDICT: u32 = 0;
const VERDICT_JUMP: i32 = -3;
const VERDICT_GOTO: i32 = -4;
const VERDICT_RETURN: i32 = -5;
/// `NFT_CMP_LTE`, `NFT_CMP_GTE`.
const CMP_LTE: u32 = 3;
const CMP_GTE: u32 = 5;
/// `NFT_REJECT_TCP_RST`, `NFT_REJECT_ICMPX_UNREACH` with
/// `NFT_REJECT_ICMPX_ADMIN_PROHIBITED`.
const REJECT_TCP_RST: u32 = 1;
const REJECT_ICMPX: u32 = 2;
const ICMPX_ADMIN_PROHIBITED: u8 = 3;
/// Set elements per message: a message's element list is one netlink
/// attribute, at most 64 KiB (an IPv6 element takes about 40 bytes).
const ELEMENTS_PER_MESSAGE: usize = 1000;

/// The log prefix of a refused flow's packet.
pub(crate) const POLICY_PREFIX: &str = "flowtrack:policy";

/// Netlink attribute numbers this module adds to the table's.
mod attrs {
    /// `NFTA_SET_*`.
    pub(super) mod set {
        pub(in super::super) const TABLE: u16 = 1;
        pub(in super::super) const NAME: u16 = 2;
        pub(in super::super) const FLAGS: u16 = 3;
        pub(in super::super) const KEY_TYPE: u16 = 4;
        pub(in super::super) const KEY_LEN: u16 = 5;
        pub(in super::super) const ID: u16 = 10;
    }
    /// `NFTA_SET_ELEM_LIST_*`.
    pub(super) mod elements {
        pub(in super::super) const TABLE: u16 = 1;
        pub(in super::super) const SET: u16 = 2;
        pub(in super::super) const ELEMENTS: u16 = 3;
        pub(in super::super) const SET_ID: u16 = 4;
    }
    /// `NFTA_SET_ELEM_*`.
    pub(super) mod element {
        pub(in super::super) const KEY: u16 = 1;
        pub(in super::super) const FLAGS: u16 = 3;
    }
    /// `NFTA_LOOKUP_*`.
    pub(super) mod lookup {
        pub(in super::super) const SET: u16 = 1;
        pub(in super::super) const SREG: u16 = 2;
        pub(in super::super) const SET_ID: u16 = 4;
    }
    /// `NFTA_REJECT_*`.
    pub(super) mod reject {
        pub(in super::super) const TYPE: u16 = 1;
        pub(in super::super) const ICMP_CODE: u16 = 2;
    }
    /// `NFTA_DATA_VERDICT`, and `NFTA_VERDICT_*`.
    pub(super) mod verdict {
        pub(in super::super) const DATA: u16 = 2;
        pub(in super::super) const CODE: u16 = 1;
        pub(in super::super) const CHAIN: u16 = 2;
    }
}

/// An address family of the sets: its `nfproto`, where the destination
/// address lies in the network header, its size and nft's type for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn nfproto(self) -> u8 {
        match self {
            Self::V4 => NFPROTO_IPV4,
            Self::V6 => NFPROTO_IPV6,
        }
    }

    /// Offset and length of the destination address.
    fn daddr(self) -> (u32, u32) {
        match self {
            Self::V4 => (16, 4),
            Self::V6 => (24, 16),
        }
    }

    fn key_type(self) -> u32 {
        match self {
            Self::V4 => TYPE_IPADDR,
            Self::V6 => TYPE_IP6ADDR,
        }
    }

    fn max(self) -> u128 {
        match self {
            Self::V4 => u128::from(u32::MAX),
            Self::V6 => u128::MAX,
        }
    }

    /// `value` as a key: its last `len` bytes, network order.
    fn key(self, value: u128) -> Vec<u8> {
        let len = self.daddr().1 as usize;
        value.to_be_bytes()[16 - len..].to_vec()
    }

    /// Whether packets of the family can carry `protocol` (ICMP is IPv4's,
    /// ICMPv6 IPv6's).
    fn carries(self, protocol: u8) -> bool {
        match self {
            Self::V4 => protocol != libc::IPPROTO_ICMPV6 as u8,
            Self::V6 => protocol != libc::IPPROTO_ICMP as u8,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Self::V4 => "4",
            Self::V6 => "6",
        }
    }
}

/// What rules sharing an action, protocol and ports apply to: anywhere,
/// or address ranges (inclusive) per family.
#[derive(Debug, Default)]
struct Group {
    anywhere: bool,
    ranges: BTreeMap<Family, Vec<(u128, u128)>>,
}

/// The policy's address rules grouped, deny groups first.
fn groups(policy: &Policy) -> BTreeMap<(Action, Proto, Option<PortRange>), Group> {
    let mut groups: BTreeMap<_, Group> = BTreeMap::new();
    for rule in policy.rules() {
        let group = groups
            .entry((rule.action, rule.proto, rule.ports))
            .or_default();
        match &rule.dest {
            Dest::Anywhere => group.anywhere = true,
            Dest::Net(IpNet::V4(net)) => group.ranges.entry(Family::V4).or_default().push((
                u128::from(u32::from(net.network())),
                u128::from(u32::from(net.broadcast())),
            )),
            Dest::Net(IpNet::V6(net)) => group
                .ranges
                .entry(Family::V6)
                .or_default()
                .push((u128::from(net.network()), u128::from(net.broadcast()))),
            // Refused before the table is made (see `Policy::enforce_refusal`).
            Dest::Name(_) | Dest::Suffix(_) => {}
        }
    }
    for group in groups.values_mut() {
        for ranges in group.ranges.values_mut() {
            merge(ranges);
        }
    }
    groups
}

/// Sorts `ranges` and merges those that overlap or touch: an interval set
/// takes disjoint ranges only.
fn merge(ranges: &mut Vec<(u128, u128)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for &(first, last) in ranges.iter() {
        match merged.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    *ranges = merged;
}

/// The IP protocols a rule of `proto` with `ports` applies to (none: every
/// protocol).
fn protocols(proto: Proto, ports: Option<PortRange>) -> &'static [u8] {
    const TCP: u8 = libc::IPPROTO_TCP as u8;
    const UDP: u8 = libc::IPPROTO_UDP as u8;
    match (proto, ports) {
        (Proto::Tcp, _) => &[TCP],
        (Proto::Udp, _) => &[UDP],
        (Proto::Icmp, _) => &[libc::IPPROTO_ICMP as u8, libc::IPPROTO_ICMPV6 as u8],
        (Proto::Any, Some(_)) => &[TCP, UDP],
        (Proto::Any, None) => &[],
    }
}

/// The destination port is in `ports` (the protocol has ports).
fn port_in(ports: PortRange) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions = vec![payload_load(BASE_TRANSPORT, 2, 2)];
    if ports.first == ports.last {
        expressions.push(compare(true, &ports.first.to_be_bytes()));
    } else {
        expressions.push(compare_with(CMP_GTE, &ports.first.to_be_bytes()));
        expressions.push(compare_with(CMP_LTE, &ports.last.to_be_bytes()));
    }
    expressions
}

/// A verdict: `code`, to `chain` for a jump or goto.
fn verdict(code: i32, chain: Option<&str>) -> Nlattr<u16, Buffer> {
    let mut data = vec![attr_be32(attrs::verdict::CODE, code as u32)];
    if let Some(chain) = chain {
        data.push(attr_str(attrs::verdict::CHAIN, chain));
    }
    expression(
        "immediate",
        &[
            attr_be32(nft::immediate::DREG, REG_VERDICT),
            nested(nft::immediate::DATA, &[nested(attrs::verdict::DATA, &data)]),
        ],
    )
}

/// `goto reject` for deny rules, `return` (on to the table's rules) for
/// allow rules.
fn decision(action: Action) -> Nlattr<u16, Buffer> {
    match action {
        Action::Deny => verdict(VERDICT_GOTO, Some(REJECT_CHAIN)),
        Action::Allow => verdict(VERDICT_RETURN, None),
    }
}

fn reject(kind: u32, icmp_code: Option<u8>) -> Nlattr<u16, Buffer> {
    let mut data = vec![attr_be32(attrs::reject::TYPE, kind)];
    if let Some(code) = icmp_code {
        data.push(attr(attrs::reject::ICMP_CODE, [code]));
    }
    expression("reject", &data)
}

/// A set of the policy's, as its messages name it.
struct Set {
    name: String,
    id: u32,
    family: Family,
}

/// The set lookup of a family's destination address.
fn daddr_in(set: &Set) -> Vec<Nlattr<u16, Buffer>> {
    let (offset, len) = set.family.daddr();
    vec![
        payload_load(BASE_NETWORK, offset, len),
        expression(
            "lookup",
            &[
                attr_str(attrs::lookup::SET, &set.name),
                attr_be32(attrs::lookup::SET_ID, set.id),
                attr_be32(attrs::lookup::SREG, REG_1),
            ],
        ),
    ]
}

/// A rule of the policy chain: for a family's set (or anywhere), a
/// protocol (or any), the ports, then the verdict.
fn policy_rule(
    set: Option<&Set>,
    protocol: Option<u8>,
    ports: Option<PortRange>,
    action: Action,
) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions = Vec::new();
    if let Some(set) = set {
        expressions.extend([
            expression(
                "meta",
                &[
                    attr_be32(nft::meta::DREG, REG_1),
                    attr_be32(nft::meta::KEY, META_NFPROTO),
                ],
            ),
            compare(true, &[set.family.nfproto()]),
        ]);
    }
    if let Some(protocol) = protocol {
        expressions.extend(l4proto_is(protocol));
    }
    if let Some(ports) = ports {
        expressions.extend(port_in(ports));
    }
    if let Some(set) = set {
        expressions.extend(daddr_in(set));
    }
    expressions.push(decision(action));
    expressions
}

/// The messages that make a set of `ranges` and fill it.
fn set_messages(
    table: &Table,
    set: &Set,
    ranges: &[(u128, u128)],
    next: &mut dyn FnMut() -> u32,
) -> Vec<Vec<u8>> {
    let (_, key_len) = set.family.daddr();
    let mut messages = vec![message(
        NEWSET,
        NlmF::CREATE,
        next(),
        vec![
            attr_str(attrs::set::TABLE, &table.name),
            attr_str(attrs::set::NAME, &set.name),
            attr_be32(attrs::set::FLAGS, SET_INTERVAL),
            attr_be32(attrs::set::KEY_TYPE, set.family.key_type()),
            attr_be32(attrs::set::KEY_LEN, key_len),
            attr_be32(attrs::set::ID, set.id),
        ],
    )];
    // Each range: its first address, and the one after its last (the end
    // of the interval, left out at the top of the address space).
    let mut elements = Vec::with_capacity(ranges.len() * 2);
    for &(first, last) in ranges {
        elements.push(nested(
            super::attr::list::ELEM,
            &[nested(
                attrs::element::KEY,
                &[attr(nft::data::VALUE, set.family.key(first))],
            )],
        ));
        if last < set.family.max() {
            elements.push(nested(
                super::attr::list::ELEM,
                &[
                    nested(
                        attrs::element::KEY,
                        &[attr(nft::data::VALUE, set.family.key(last + 1))],
                    ),
                    attr_be32(attrs::element::FLAGS, ELEM_INTERVAL_END),
                ],
            ));
        }
    }
    for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
        messages.push(message(
            NEWSETELEM,
            NlmF::CREATE,
            next(),
            vec![
                attr_str(attrs::elements::TABLE, &table.name),
                attr_str(attrs::elements::SET, &set.name),
                attr_be32(attrs::elements::SET_ID, set.id),
                nested(attrs::elements::ELEMENTS, chunk),
            ],
        ));
    }
    messages
}

fn chain_message(table: &Table, chain: &str, seq: u32) -> Vec<u8> {
    message(
        NEWCHAIN,
        NlmF::CREATE,
        seq,
        vec![
            attr_str(nft::chain::TABLE, &table.name),
            attr_str(nft::chain::NAME, chain),
        ],
    )
}

/// `flags` with `NLM_F_APPEND`: at the end of the chain; without, at its
/// head.
fn rule_message(
    table: &Table,
    chain: &str,
    flags: NlmF,
    rule: &[Nlattr<u16, Buffer>],
    seq: u32,
) -> Vec<u8> {
    message(
        NEWRULE,
        NlmF::CREATE | flags,
        seq,
        vec![
            attr_str(nft::rule::TABLE, &table.name),
            attr_str(nft::rule::CHAIN, chain),
            nested(nft::rule::EXPRESSIONS, rule),
        ],
    )
}

/// The batch that adds `policy` to the made `table`: the reject and policy
/// chains, the sets, their rules, and the jump at the head of the output
/// chain (last, with the only ACK asked for: an error of any message
/// comes back anyway, and fails the whole batch). With `fail`, the reject
/// chain also holds an expression no kernel has (a test's way to see the
/// start fail). Returns the bytes and the sequence number of the last
/// message.
pub(crate) fn policy_batch(
    table: &Table,
    policy: &Policy,
    first_seq: u32,
    fail: bool,
) -> (Vec<u8>, u32) {
    batch(first_seq, |next| {
        let mut messages = vec![
            chain_message(table, REJECT_CHAIN, next()),
            chain_message(table, POLICY_CHAIN, next()),
        ];
        let mut reject_rules = vec![
            vec![log(table, POLICY_PREFIX, nflog::NEW_FLOW_SNAPLEN)],
            {
                let mut tcp: Vec<_> = l4proto_is(libc::IPPROTO_TCP as u8).into();
                tcp.push(reject(REJECT_TCP_RST, None));
                tcp
            },
            vec![reject(REJECT_ICMPX, Some(ICMPX_ADMIN_PROHIBITED))],
        ];
        if fail {
            reject_rules.insert(0, vec![expression("flowtrack_missing", &[])]);
        }
        for rule in &reject_rules {
            messages.push(rule_message(
                table,
                REJECT_CHAIN,
                NlmF::APPEND,
                rule,
                next(),
            ));
        }
        let mut rules = Vec::new();
        for (index, ((action, proto, ports), group)) in groups(policy).into_iter().enumerate() {
            let mut sets = Vec::new();
            if !group.anywhere {
                for (family, ranges) in &group.ranges {
                    let set = Set {
                        name: format!("g{index}_{}", family.suffix()),
                        id: u32::try_from(index * 2 + *family as usize).unwrap_or(u32::MAX),
                        family: *family,
                    };
                    messages.extend(set_messages(table, &set, ranges, next));
                    sets.push(Some(set));
                }
            } else {
                sets.push(None);
            }
            let protocols: Vec<Option<u8>> = match protocols(proto, ports) {
                [] => vec![None],
                some => some.iter().copied().map(Some).collect(),
            };
            for set in &sets {
                for &protocol in &protocols {
                    let carried = match (set, protocol) {
                        (Some(set), Some(protocol)) => set.family.carries(protocol),
                        _ => true,
                    };
                    if carried {
                        rules.push(policy_rule(set.as_ref(), protocol, ports, action));
                    }
                }
            }
        }
        if policy.default_deny() {
            rules.push(vec![verdict(VERDICT_GOTO, Some(REJECT_CHAIN))]);
        }
        for rule in &rules {
            messages.push(rule_message(
                table,
                POLICY_CHAIN,
                NlmF::APPEND,
                rule,
                next(),
            ));
        }
        // The scope's new flows, before the table's other output rules.
        let mut jump = Vec::from(ct_has(CT_STATE, CT_STATE_NEW));
        jump.extend(in_scope(table));
        jump.push(verdict(VERDICT_JUMP, Some(POLICY_CHAIN)));
        messages.push(rule_message(table, "output", NlmF::ACK, &jump, next()));
        messages
    })
}

/// The text of the rule that refused `key` (the default when no deny rule
/// applies: nothing allowed it).
pub(crate) fn refusing_rule(policy: &Policy, key: &FlowKey) -> Arc<str> {
    match policy.decide(key.protocol, key.dst_addr, key.dst_port, &[]) {
        Decision::Deny(rule) => policy.rule_text(rule),
        Decision::Allow => policy.rule_text(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{self, Received, split};
    use crate::rules::{MARK_BIT, RuleScope, SUBSYSTEM};

    /// A policy of `rules`: allow rules, and deny rules written `!RULE`.
    fn policy(rules: &[&str]) -> Policy {
        let builder = rules.iter().fold(Policy::builder(), |builder, rule| {
            match rule.strip_prefix('!') {
                Some(denied) => builder.deny(denied),
                None => builder.allow(rule),
            }
            .unwrap()
        });
        builder.build().unwrap().unwrap()
    }

    #[test]
    fn overlapping_and_touching_ranges_merge() {
        let mut ranges = vec![(10, 20), (0, 4), (5, 7), (15, 30), (40, 41)];
        merge(&mut ranges);
        assert_eq!(ranges, [(0, 7), (10, 30), (40, 41)]);
        let mut top = vec![(0, u128::MAX), (5, 6)];
        merge(&mut top);
        assert_eq!(top, [(0, u128::MAX)]);
    }

    #[test]
    fn rules_group_by_action_protocol_and_ports_with_a_set_per_family() {
        let policy = policy(&[
            "tcp://127.0.0.1:8000-8100",
            "tcp://10.0.0.0/8:8000-8100",
            "tcp://[::1]:8000",
            "udp://*:9",
            "icmp://127.0.0.5",
            "!tcp://127.0.0.1:8050",
            "!any://[::ffff:10.1.0.0]/112",
        ]);
        let groups = groups(&policy);
        let shown: Vec<_> = groups
            .iter()
            .map(|((action, proto, ports), group)| {
                (
                    *action,
                    *proto,
                    ports.map(|p| (p.first, p.last)),
                    group.anywhere,
                    group
                        .ranges
                        .iter()
                        .map(|(family, ranges)| (*family, ranges.len()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (
                    Action::Deny,
                    Proto::Tcp,
                    Some((8050, 8050)),
                    false,
                    vec![(Family::V4, 1)]
                ),
                // The IPv4-mapped prefix is an IPv4 one.
                (Action::Deny, Proto::Any, None, false, vec![(Family::V4, 1)]),
                (
                    Action::Allow,
                    Proto::Tcp,
                    Some((8000, 8000)),
                    false,
                    vec![(Family::V6, 1)]
                ),
                (
                    Action::Allow,
                    Proto::Tcp,
                    Some((8000, 8100)),
                    false,
                    vec![(Family::V4, 2)]
                ),
                (Action::Allow, Proto::Udp, Some((9, 9)), true, vec![]),
                (
                    Action::Allow,
                    Proto::Icmp,
                    None,
                    false,
                    vec![(Family::V4, 1)]
                ),
            ]
        );
        assert_eq!(
            groups[&(Action::Deny, Proto::Any, None)].ranges[&Family::V4],
            [(0x0a01_0000, 0x0a01_ffff)]
        );
    }

    /// The kinds of the batch's messages, and the expressions of each rule
    /// (chain, expression names).
    fn shape(bytes: &[u8]) -> (Vec<u8>, Vec<(String, Vec<String>)>) {
        let text = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .trim_end_matches('\0')
                .to_owned()
        };
        let (messages, malformed) = split(bytes);
        assert!(malformed.is_none());
        let mut kinds = Vec::new();
        let mut rules = Vec::new();
        for message in &messages {
            let Received::Message { kind, payload, .. } = message else {
                panic!("{message:?}")
            };
            if *kind >> 8 != u16::from(SUBSYSTEM) {
                continue;
            }
            let kind = (*kind & 0xff) as u8;
            kinds.push(kind);
            if kind == NEWRULE {
                let attrs = netlink::payload_attrs(payload).unwrap();
                let chain = text(attrs.get(nft::rule::CHAIN).unwrap().unwrap());
                let names = attrs
                    .nested(nft::rule::EXPRESSIONS)
                    .unwrap()
                    .unwrap()
                    .into_iter()
                    .map(|element| {
                        let element = netlink::Attrs::new(element.unwrap().1);
                        text(element.get(nft::expr::NAME).unwrap().unwrap())
                    })
                    .collect();
                rules.push((chain, names));
            }
        }
        (kinds, rules)
    }

    #[test]
    fn the_batch_makes_chains_sets_and_rules_then_the_jump() {
        let table = Table::new(MARK_BIT, RuleScope::Cgroup { id: 9, level: 1 }, 7);
        let policy = policy(&["tcp://127.0.0.1:8000-8100", "udp://*:9"]);
        let (bytes, last) = policy_batch(&table, &policy, 1, false);
        let (kinds, rules) = shape(&bytes);
        assert_eq!(
            kinds,
            [
                NEWCHAIN, NEWCHAIN, NEWRULE, NEWRULE, NEWRULE, NEWSET, NEWSETELEM, NEWRULE,
                NEWRULE, NEWRULE, NEWRULE
            ]
        );
        assert_eq!(last, 12);
        let names = |chain: &str, list: &[&str]| {
            (
                chain.to_owned(),
                list.iter()
                    .map(|name| (*name).to_owned())
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            rules,
            [
                names("reject", &["log"]),
                names("reject", &["meta", "cmp", "reject"]),
                names("reject", &["reject"]),
                names(
                    "policy",
                    &[
                        "meta",
                        "cmp",
                        "meta",
                        "cmp",
                        "payload",
                        "cmp",
                        "cmp",
                        "payload",
                        "lookup",
                        "immediate"
                    ]
                ),
                names("policy", &["meta", "cmp", "payload", "cmp", "immediate"]),
                names("policy", &["immediate"]),
                names(
                    "output",
                    &["ct", "bitwise", "cmp", "socket", "cmp", "immediate"]
                ),
            ]
        );
        // Deny rules alone: no default refusal at the end.
        let deny_only = self::policy(&["!tcp://*:25"]);
        let (_, rules) = shape(&policy_batch(&table, &deny_only, 1, false).0);
        let policy_rules: Vec<_> = rules
            .iter()
            .filter(|(chain, _)| chain == "policy")
            .collect();
        assert_eq!(policy_rules.len(), 1);
        // ICMP to an IPv4 set: ICMP's rule only, not ICMPv6's; to anywhere,
        // both.
        for (rule, icmp_rules) in [("icmp://127.0.0.5", 1), ("icmp://*", 2)] {
            let (_, rules) = shape(&policy_batch(&table, &self::policy(&[rule]), 1, false).0);
            let decided = rules.iter().filter(|(chain, _)| chain == "policy").count();
            assert_eq!(decided, icmp_rules + 1, "{rule}: and the default");
        }
        // The test knob: an expression no kernel has.
        let (_, rules) = shape(&policy_batch(&table, &deny_only, 1, true).0);
        assert_eq!(rules[0].1, ["flowtrack_missing"]);
    }

    #[test]
    fn a_large_set_is_filled_over_several_messages() {
        let table = Table::new(MARK_BIT, RuleScope::Netns, 7);
        let mut builder = Policy::builder();
        for n in 0..1500u32 {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + n * 4);
            builder = builder.allow(&format!("tcp://{address}:443")).unwrap();
        }
        let policy = builder.build().unwrap().unwrap();
        let (kinds, _) = shape(&policy_batch(&table, &policy, 1, false).0);
        let fills = kinds.iter().filter(|kind| **kind == NEWSETELEM).count();
        assert_eq!(fills, 3, "3,000 elements, 1,000 a message");
    }

    #[test]
    fn the_refusing_rule_is_the_first_deny_rule_or_the_default() {
        let policy = policy(&["tcp://127.0.0.1:8000-8100", "!tcp://127.0.0.1:8050"]);
        let key = |port| FlowKey::tcp("127.0.0.1:40000".parse().unwrap(), port);
        assert_eq!(
            &*refusing_rule(&policy, &key("127.0.0.1:8050".parse().unwrap())),
            "tcp://127.0.0.1:8050"
        );
        assert_eq!(
            &*refusing_rule(&policy, &key("127.0.0.1:8101".parse().unwrap())),
            "default"
        );
    }
}
