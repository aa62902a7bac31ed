//! The nf_tables table flowtrack owns, built as netlink messages (the `nft`
//! binary cannot name a cgroup by id, nor a cgroup outside /sys/fs/cgroup).
//!
//! For a cgroup scope, in family `inet`:
//!
//! ```text
//! table inet flowtrack_<mark, 8 hex digits> {   # flags owner
//!   chain output { type filter hook output priority 0; }
//!   chain input  { type filter hook input  priority 0; }
//!   # in both chains:
//!   ct state new socket cgroupv2 level L == ID
//!     ct mark set MARK ct event set new,destroy
//!     log group G snaplen 160 prefix "flowtrack:new"
//!   # in input: a new connection from a local socket outside the scope,
//!   # already confirmed (and reported, unmarked) as it left its sender:
//!   # its state changes from the handshake on show it
//!   ct state new ct status confirmed socket cgroupv2 level L == ID
//!     ct event set new,destroy,protoinfo
//!   # in both chains: a marked TCP connection's FINs, noted by direction
//!   # in two ct label bits; its TCP state changes (and a label noting
//!   # the ask) asked for from a RST, and from the first packet after
//!   # FINs both ways (the last ACK, whose change to TIME_WAIT shows the
//!   # close)
//!   meta l4proto tcp ct mark == MARK tcp flags & fin != 0
//!     ct direction original ct label set FIN_ORIGINAL
//!   meta l4proto tcp ct mark == MARK tcp flags & fin != 0
//!     ct direction reply ct label set FIN_REPLY
//!   meta l4proto tcp ct mark == MARK tcp flags & rst != 0
//!     ct event set new,destroy,protoinfo,label ct label set CLOSE_ASKED
//!   meta l4proto tcp ct mark == MARK tcp flags & fin == 0
//!     ct label & (FIN_ORIGINAL|FIN_REPLY) == FIN_ORIGINAL|FIN_REPLY
//!     ct event set new,destroy,protoinfo,label ct label set CLOSE_ASKED
//!   # in input: the scope's DNS answers (TCP: segments with a payload)
//!   meta l4proto udp udp sport 53 socket cgroupv2 level L == ID
//!     log group G snaplen 2167 prefix "flowtrack:dns"
//!   meta l4proto tcp tcp sport 53 @ih,0,8 & 0 == 0 socket cgroupv2 level L == ID
//!     log group G snaplen 2167 prefix "flowtrack:dns"
//!   # in output: the ClientHello a TLS client of the scope sends
//!   meta l4proto tcp ct direction original @ih,0,8 0x16 @ih,40,8 0x01
//!     socket cgroupv2 level L == ID
//!     log group G snaplen 2167 prefix "flowtrack:hello"
//! }
//! ```
//!
//! (`@ih` is the payload after the transport header; loading from it
//! fails on a segment without payload, which ends the rule.) A
//! network-namespace scope hooks prerouting and output instead and
//! matches every new connection, DNS answer and ClientHello (in
//! prerouting, a new connection not yet confirmed: one the namespace
//! made over loopback was marked and logged in output). Each rule's
//! snaplen caps its copy (the group's copy range is the largest of them).
//! (A kernel without conntrack labels gets the one rule they replace:
//! state changes asked for from the first FIN or RST on, two or three
//! more events per connection.) The `owner` flag ties the table to the
//! netlink socket that made it: the kernel removes it when flowtrack's
//! process ends, however it ends; a flowtrack table without it is a
//! leftover (of a kernel without table owners).
//!
//! The table's name carries its ct mark, and the table is created with
//! `NLM_F_EXCL`: two instances in one network namespace can never hold
//! the same mark, the kernel refuses the second table of a name.

use std::io;

use neli::consts::nl::NlmF;
use neli::genl::Nlattr;
use neli::types::Buffer;

use crate::netlink::{self, Nfgenmsg, attr, attr_be32, attr_str, nested};
use crate::nflog;

pub(crate) mod enforce;

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYSTEM: u8 = 10;
/// `NFNL_MSG_BATCH_BEGIN`, `NFNL_MSG_BATCH_END`.
const BATCH_BEGIN: u16 = 16;
const BATCH_END: u16 = 17;
/// `NFT_MSG_*`.
const NEWTABLE: u8 = 0;
const GETTABLE: u8 = 1;
const DELTABLE: u8 = 2;
const NEWCHAIN: u8 = 3;
const NEWRULE: u8 = 6;
/// `NFPROTO_INET`.
const FAMILY_INET: u8 = 1;
/// `NFT_TABLE_F_OWNER`.
const TABLE_OWNER: u32 = 2;
/// `NF_INET_*` hooks.
const HOOK_PREROUTING: u32 = 0;
const HOOK_INPUT: u32 = 1;
const HOOK_OUTPUT: u32 = 3;
/// `NFT_REG_1` (a 16-byte register) and `NFT_REG_VERDICT`.
const REG_1: u32 = 1;

/// `ct state new`: `NF_CT_STATE_BIT(IP_CT_NEW)`.
const CT_STATE_NEW: u32 = 1 << 3;
/// `ct status confirmed`: `IPS_CONFIRMED`.
const CT_STATUS_CONFIRMED: u32 = 1 << 3;
/// `NFT_CT_*` keys.
const CT_STATE: u32 = 0;
const CT_DIRECTION: u32 = 1;
const CT_STATUS: u32 = 2;
const CT_MARK: u32 = 3;
const CT_LABELS: u32 = 13;
/// `IP_CT_DIR_ORIGINAL`: from the connection's initiator.
const DIRECTION_ORIGINAL: u8 = 0;
/// `NFT_META_L4PROTO`.
const META_L4PROTO: u32 = 16;
/// `NFT_PAYLOAD_TRANSPORT_HEADER`, `NFT_PAYLOAD_INNER_HEADER` (the
/// transport payload; kernel 6.2 and later).
const BASE_TRANSPORT: u32 = 2;
const BASE_INNER: u32 = 3;
/// The DNS port, and the bytes of a ClientHello that tell it: a TLS
/// handshake record (byte 0) holding a ClientHello (byte 5).
const DNS_PORT: u16 = 53;
const TLS_HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const CT_EVENTMASK: u32 = 18;
/// Events a new connection reports: `IPCT_NEW` and `IPCT_DESTROY`.
const EVENTS: u32 = 1 << 0 | 1 << 2;
/// Events once a TCP connection sends a FIN or a RST: also
/// `IPCT_PROTOINFO`, its TCP state changes, which show its close at once
/// (TIME_WAIT, CLOSE). Asked for only then: the handshake's state changes
/// (SYN_RECV, ESTABLISHED) would be two more events per connection that
/// say nothing flowtrack reports.
const EVENTS_CLOSING: u32 = EVENTS | 1 << 5;
/// [`EVENTS_CLOSING`] and `IPCT_LABEL`, asked for with [`CLOSE_ASKED`]:
/// that label's change is reported even when the asking packet's own
/// state change was not (see [`closing_rules`]).
const EVENTS_CLOSE_ASKED: u32 = EVENTS_CLOSING | 1 << 10;
/// TCP's FIN and RST flags (byte 13 of its header).
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_FIN_OR_RST: u8 = TCP_FIN | TCP_RST;
/// The ct label bits (the labels' 128-bit map, as the kernel stores it)
/// that note a FIN sent by the initiator and by the responder: bits 126
/// and 127, the last, far from the low bits people name in
/// connlabel.conf. The kernel sets label bits with an atomic OR, so FINs
/// that cross on two CPUs are both noted.
const FIN_ORIGINAL: [u8; 16] = label_bits(0x40);
const FIN_REPLY: [u8; 16] = label_bits(0x80);
const FIN_BOTH_WAYS: [u8; 16] = label_bits(0x40 | 0x80);
/// The ct label bit (125) set where a connection's close is asked for.
const CLOSE_ASKED: [u8; 16] = label_bits(0x20);
/// `IP_CT_DIR_REPLY`: from the connection's responder.
const DIRECTION_REPLY: u8 = 1;
/// The offset of the TCP header's flags byte.
const TCP_FLAGS_OFFSET: u32 = 13;
/// `NFT_SOCKET_CGROUPV2`.
const SOCKET_CGROUPV2: u32 = 3;

/// Table names flowtrack makes start with this.
const TABLE_PREFIX: &str = "flowtrack_";

/// The bit every flowtrack ct mark has set.
pub(crate) const MARK_BIT: u32 = 0x8000_0000;

/// Which connections the table marks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleScope {
    /// Every new connection of the network namespace.
    Netns,
    /// New connections of local sockets in a cgroup v2 directory (or its
    /// descendants): its id and depth below the cgroup root.
    Cgroup { id: u64, level: u32 },
}

/// The table's name, mark and log group, and what its rules may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) scope: RuleScope,
    pub(crate) mark: u32,
    pub(crate) log_group: u16,
    /// Whether rules may read the transport payload (the inner-header
    /// payload base, Linux 6.2): without it, no ClientHello is logged, and
    /// DNS-over-TCP segments are logged with or without a payload.
    pub(crate) inner_payload: bool,
    /// Whether DNS answers and ClientHellos are logged (flows named).
    pub(crate) names: bool,
    /// Whether rules may set conntrack labels (CONFIG_NF_CONNTRACK_LABELS):
    /// without them, a TCP connection's state changes are asked for from
    /// its first FIN on, not from its last ACK ([`closing_rules`]).
    pub(crate) labels: bool,
}

impl Table {
    /// The table for `mark`, named after it.
    pub(crate) fn new(mark: u32, scope: RuleScope, log_group: u16) -> Self {
        Self {
            name: format!("{TABLE_PREFIX}{mark:08x}"),
            scope,
            mark,
            log_group,
            inner_payload: true,
            names: true,
            labels: true,
        }
    }

    /// The same table, for a kernel without conntrack labels.
    pub(crate) fn without_labels(mut self) -> Self {
        self.labels = false;
        self
    }

    /// The same table, logging nothing that names flows.
    pub(crate) fn without_names(mut self) -> Self {
        self.names = false;
        self
    }

    /// The same table, for a kernel whose rules cannot read the transport
    /// payload.
    pub(crate) fn without_inner_payload(mut self) -> Self {
        self.inner_payload = false;
        self
    }
}

/// Creates, with `create`, the table (as `table` makes it for a mark) of
/// the first of `marks` that no table in the namespace holds: the kernel
/// refuses a second table of a name (`EEXIST`; `EPERM` when the other is
/// owned by another socket), and the next mark is tried. Any other error
/// ends the search, as does the end of `marks` (with the last refusal).
pub(crate) fn create_with_free_mark(
    marks: impl IntoIterator<Item = u32>,
    table: impl Fn(u32) -> Table,
    mut create: impl FnMut(&Table) -> io::Result<()>,
) -> io::Result<Table> {
    let mut refused = io::Error::from_raw_os_error(libc::EEXIST);
    for mark in marks {
        let table = table(MARK_BIT | mark);
        match create(&table) {
            Ok(()) => return Ok(table),
            Err(error) if matches!(error.raw_os_error(), Some(libc::EEXIST | libc::EPERM)) => {
                refused = error;
            }
            Err(error) => return Err(error),
        }
    }
    Err(refused)
}

fn message(kind: u8, flags: NlmF, seq: u32, attrs: Vec<Nlattr<u16, Buffer>>) -> Vec<u8> {
    netlink::encode(
        netlink::message_type(SUBSYSTEM, kind),
        NlmF::REQUEST | flags,
        seq,
        Nfgenmsg::new(FAMILY_INET, 0, attrs),
    )
}

fn batch_marker(kind: u16, seq: u32) -> Vec<u8> {
    netlink::encode(
        kind,
        NlmF::REQUEST,
        seq,
        Nfgenmsg::<u16>::new(0, u16::from(SUBSYSTEM), Vec::new()),
    )
}

/// Wraps messages (each with its sequence number) in a batch; returns the
/// bytes and the sequence number of the last message.
fn batch(
    first_seq: u32,
    build: impl FnOnce(&mut dyn FnMut() -> u32) -> Vec<Vec<u8>>,
) -> (Vec<u8>, u32) {
    let mut seq = first_seq;
    let mut next = || {
        seq += 1;
        seq
    };
    let begin = batch_marker(BATCH_BEGIN, first_seq);
    let messages = build(&mut next);
    let last = seq;
    let end = batch_marker(BATCH_END, last + 1);
    let mut bytes = begin;
    for message in messages {
        bytes.extend_from_slice(&message);
    }
    bytes.extend_from_slice(&end);
    (bytes, last)
}

/// Netlink attribute numbers of the nf_tables messages and expressions
/// flowtrack builds (`include/uapi/linux/netfilter/nf_tables.h`), one
/// module per attribute enum.
mod attr {
    /// `NFTA_LIST_*`.
    pub(super) mod list {
        pub(in super::super) const ELEM: u16 = 1;
    }
    /// `NFTA_EXPR_*`.
    pub(super) mod expr {
        pub(in super::super) const NAME: u16 = 1;
        pub(in super::super) const DATA: u16 = 2;
    }
    /// `NFTA_DATA_*`.
    pub(super) mod data {
        pub(in super::super) const VALUE: u16 = 1;
    }
    /// `NFTA_TABLE_*`.
    pub(super) mod table {
        pub(in super::super) const NAME: u16 = 1;
        pub(in super::super) const FLAGS: u16 = 2;
    }
    /// `NFTA_CHAIN_*`.
    pub(super) mod chain {
        pub(in super::super) const TABLE: u16 = 1;
        pub(in super::super) const NAME: u16 = 3;
        pub(in super::super) const HOOK: u16 = 4;
        pub(in super::super) const TYPE: u16 = 7;
    }
    /// `NFTA_HOOK_*`.
    pub(super) mod hook {
        pub(in super::super) const HOOKNUM: u16 = 1;
        pub(in super::super) const PRIORITY: u16 = 2;
    }
    /// `NFTA_RULE_*`.
    pub(super) mod rule {
        pub(in super::super) const TABLE: u16 = 1;
        pub(in super::super) const CHAIN: u16 = 2;
        pub(in super::super) const EXPRESSIONS: u16 = 4;
    }
    /// `NFTA_CT_*`.
    pub(super) mod ct {
        pub(in super::super) const DREG: u16 = 1;
        pub(in super::super) const KEY: u16 = 2;
        pub(in super::super) const SREG: u16 = 4;
    }
    /// `NFTA_IMMEDIATE_*`.
    pub(super) mod immediate {
        pub(in super::super) const DREG: u16 = 1;
        pub(in super::super) const DATA: u16 = 2;
    }
    /// `NFTA_CMP_*`.
    pub(super) mod cmp {
        pub(in super::super) const SREG: u16 = 1;
        pub(in super::super) const OP: u16 = 2;
        pub(in super::super) const DATA: u16 = 3;
    }
    /// `NFTA_BITWISE_*`.
    pub(super) mod bitwise {
        pub(in super::super) const SREG: u16 = 1;
        pub(in super::super) const DREG: u16 = 2;
        pub(in super::super) const LEN: u16 = 3;
        pub(in super::super) const MASK: u16 = 4;
        pub(in super::super) const XOR: u16 = 5;
    }
    /// `NFTA_SOCKET_*`.
    pub(super) mod socket {
        pub(in super::super) const KEY: u16 = 1;
        pub(in super::super) const DREG: u16 = 2;
        pub(in super::super) const LEVEL: u16 = 3;
    }
    /// `NFTA_META_*`.
    pub(super) mod meta {
        pub(in super::super) const DREG: u16 = 1;
        pub(in super::super) const KEY: u16 = 2;
    }
    /// `NFTA_PAYLOAD_*`.
    pub(super) mod payload {
        pub(in super::super) const DREG: u16 = 1;
        pub(in super::super) const BASE: u16 = 2;
        pub(in super::super) const OFFSET: u16 = 3;
        pub(in super::super) const LEN: u16 = 4;
    }
    /// `NFTA_LOG_*`.
    pub(super) mod log {
        pub(in super::super) const GROUP: u16 = 1;
        pub(in super::super) const PREFIX: u16 = 2;
        pub(in super::super) const SNAPLEN: u16 = 3;
    }
}

/// `NFT_CMP_EQ`, `NFT_CMP_NEQ`.
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;

fn expression(name: &str, data: &[Nlattr<u16, Buffer>]) -> Nlattr<u16, Buffer> {
    nested(
        attr::list::ELEM,
        &[
            attr_str(attr::expr::NAME, name),
            nested(attr::expr::DATA, data),
        ],
    )
}

fn data_value(kind: u16, bytes: &[u8]) -> Nlattr<u16, Buffer> {
    nested(kind, &[attr(attr::data::VALUE, bytes)])
}

/// `ct <key>` into register 1.
fn ct_load(key: u32) -> Nlattr<u16, Buffer> {
    expression(
        "ct",
        &[
            attr_be32(attr::ct::DREG, REG_1),
            attr_be32(attr::ct::KEY, key),
        ],
    )
}

/// `ct <key> set` from register 1.
fn ct_store(key: u32) -> Nlattr<u16, Buffer> {
    expression(
        "ct",
        &[
            attr_be32(attr::ct::KEY, key),
            attr_be32(attr::ct::SREG, REG_1),
        ],
    )
}

/// Register 1 = `bytes`.
fn immediate(bytes: &[u8]) -> Nlattr<u16, Buffer> {
    expression(
        "immediate",
        &[
            attr_be32(attr::immediate::DREG, REG_1),
            data_value(attr::immediate::DATA, bytes),
        ],
    )
}

/// Register 1 compared with `bytes`: `equal` or not equal.
fn compare(equal: bool, bytes: &[u8]) -> Nlattr<u16, Buffer> {
    compare_with(if equal { CMP_EQ } else { CMP_NEQ }, bytes)
}

/// Register 1 compared with `bytes` by `op` (`NFT_CMP_*`; bytes in order,
/// so big-endian numbers compare as numbers).
fn compare_with(op: u32, bytes: &[u8]) -> Nlattr<u16, Buffer> {
    expression(
        "cmp",
        &[
            attr_be32(attr::cmp::SREG, REG_1),
            attr_be32(attr::cmp::OP, op),
            data_value(attr::cmp::DATA, bytes),
        ],
    )
}

/// Register 1 = (register 1 & `mask`), as many bytes as `mask` has.
fn mask(mask: &[u8]) -> Nlattr<u16, Buffer> {
    expression(
        "bitwise",
        &[
            attr_be32(attr::bitwise::SREG, REG_1),
            attr_be32(attr::bitwise::DREG, REG_1),
            attr_be32(attr::bitwise::LEN, mask.len() as u32),
            data_value(attr::bitwise::MASK, mask),
            data_value(attr::bitwise::XOR, &vec![0; mask.len()]),
        ],
    )
}

/// `meta l4proto == protocol`.
fn l4proto_is(protocol: u8) -> [Nlattr<u16, Buffer>; 2] {
    [
        expression(
            "meta",
            &[
                attr_be32(attr::meta::DREG, REG_1),
                attr_be32(attr::meta::KEY, META_L4PROTO),
            ],
        ),
        compare(true, &[protocol]),
    ]
}

/// `len` bytes at `offset` from `base` into register 1 (a load past the
/// packet's end ends the rule).
fn payload_load(base: u32, offset: u32, len: u32) -> Nlattr<u16, Buffer> {
    expression(
        "payload",
        &[
            attr_be32(attr::payload::DREG, REG_1),
            attr_be32(attr::payload::BASE, base),
            attr_be32(attr::payload::OFFSET, offset),
            attr_be32(attr::payload::LEN, len),
        ],
    )
}

/// The byte at `offset` of the transport payload equals `value`.
fn payload_byte_is(offset: u32, value: u8) -> [Nlattr<u16, Buffer>; 2] {
    [payload_load(BASE_INNER, offset, 1), compare(true, &[value])]
}

/// The packet comes from port 53 (TCP and UDP both start with the source
/// port).
fn from_dns_port() -> [Nlattr<u16, Buffer>; 2] {
    [
        payload_load(BASE_TRANSPORT, 0, 2),
        compare(true, &DNS_PORT.to_be_bytes()),
    ]
}

/// The packet carries a transport payload: loading its first byte fails
/// otherwise; the byte is then masked away, so any value passes.
fn has_payload() -> [Nlattr<u16, Buffer>; 3] {
    [
        payload_load(BASE_INNER, 0, 1),
        mask(&[0]),
        compare(true, &[0]),
    ]
}

/// For a cgroup scope: the packet's local socket is in the cgroup (or a
/// descendant); nothing for a namespace scope.
fn in_scope(table: &Table) -> Vec<Nlattr<u16, Buffer>> {
    match table.scope {
        RuleScope::Netns => Vec::new(),
        // The socket's cgroup id at `level` (8 bytes, host order) into
        // register 1.
        RuleScope::Cgroup { id, level } => vec![
            expression(
                "socket",
                &[
                    attr_be32(attr::socket::KEY, SOCKET_CGROUPV2),
                    attr_be32(attr::socket::DREG, REG_1),
                    attr_be32(attr::socket::LEVEL, level),
                ],
            ),
            compare(true, &id.to_ne_bytes()),
        ],
    }
}

/// `log group G snaplen N prefix P`: the first `snaplen` bytes of the
/// packet, from its network header, to the backend's group.
fn log(table: &Table, prefix: &str, snaplen: u32) -> Nlattr<u16, Buffer> {
    expression(
        "log",
        &[
            // The group is big-endian on the wire.
            attr(attr::log::GROUP, table.log_group.to_be_bytes()),
            attr_str(attr::log::PREFIX, prefix),
            attr_be32(attr::log::SNAPLEN, snaplen),
        ],
    )
}

/// `ct KEY & bits != 0`: the conntrack field `key` (`ct state`, `ct
/// status`) has one of `bits` set.
fn ct_has(key: u32, bits: u32) -> [Nlattr<u16, Buffer>; 3] {
    [
        ct_load(key),
        mask(&bits.to_ne_bytes()),
        compare(false, &[0; 4]),
    ]
}

/// `ct event set EVENTS`: the events conntrack reports of the connection
/// from now on ([`EVENTS_CLOSING`], [`EVENTS_CLOSE_ASKED`]).
fn ask_events(events: u32) -> [Nlattr<u16, Buffer>; 2] {
    [immediate(&events.to_ne_bytes()), ct_store(CT_EVENTMASK)]
}

/// `ct label set LABEL`: sets the bits of `label` (the kernel ORs them in).
fn set_label(label: &[u8; 16]) -> [Nlattr<u16, Buffer>; 2] {
    [immediate(label), ct_store(CT_LABELS)]
}

/// `ct KEY & bits == 0`: the conntrack field `key` has none of `bits`.
fn ct_lacks(key: u32, bits: u32) -> [Nlattr<u16, Buffer>; 3] {
    [
        ct_load(key),
        mask(&bits.to_ne_bytes()),
        compare(true, &[0; 4]),
    ]
}

/// The rule that marks and logs the scope's new connections.
fn new_flow_rule(table: &Table) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions = Vec::from(ct_has(CT_STATE, CT_STATE_NEW));
    expressions.extend(in_scope(table));
    expressions.extend([
        immediate(&table.mark.to_ne_bytes()),
        ct_store(CT_MARK),
        immediate(&EVENTS.to_ne_bytes()),
        ct_store(CT_EVENTMASK),
        log(table, nflog::NEW_FLOW_PREFIX, nflog::NEW_FLOW_SNAPLEN),
    ]);
    expressions
}

/// [`new_flow_rule`] for a namespace scope's prerouting chain: it passes
/// over a connection conntrack confirmed already, one the namespace made
/// over loopback, which the output chain marked and logged as it left
/// (logged again on its way in, it cost a message per connection and
/// told nothing).
fn arriving_flow_rule(table: &Table) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions = Vec::from(ct_lacks(CT_STATUS, CT_STATUS_CONFIRMED));
    expressions.extend(new_flow_rule(table));
    expressions
}

/// The rule, after [`new_flow_rule`] in a cgroup scope's input chain, for
/// a connection into the scope from a local socket outside it (over
/// loopback): conntrack confirmed it as its SYN left the sender, and
/// reported it new then, before the input chain marked it, so that
/// report was unmarked. Its state changes are asked for from its
/// handshake on ([`EVENTS_CLOSING`]): the SYN-ACK's reports it, marked.
/// (A connection within the scope matches too, at the cost of its
/// handshake's two events.)
fn local_inbound_rule(table: &Table) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions = Vec::from(ct_has(CT_STATE, CT_STATE_NEW));
    expressions.extend(ct_has(CT_STATUS, CT_STATUS_CONFIRMED));
    expressions.extend(in_scope(table));
    expressions.extend(ask_events(EVENTS_CLOSING));
    expressions
}

/// The label map with only `last_byte` set in its last byte.
const fn label_bits(last_byte: u8) -> [u8; 16] {
    let mut bits = [0; 16];
    bits[15] = last_byte;
    bits
}

/// `meta l4proto tcp ct mark == MARK`: a packet of one of the table's TCP
/// connections.
fn marked_tcp(table: &Table) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions: Vec<_> = l4proto_is(libc::IPPROTO_TCP as u8).into();
    expressions.extend([ct_load(CT_MARK), compare(true, &table.mark.to_ne_bytes())]);
    expressions
}

/// `tcp flags & flags != 0` (`has`), or `== 0`.
fn tcp_flags(flags: u8, has: bool) -> [Nlattr<u16, Buffer>; 3] {
    [
        payload_load(BASE_TRANSPORT, TCP_FLAGS_OFFSET, 1),
        mask(&[flags]),
        compare(!has, &[0]),
    ]
}

/// The rules that ask for a marked TCP connection's state changes
/// ([`EVENTS_CLOSING`]) where its close shows. Conntrack caches a packet's
/// events before these chains and delivers them as the packet leaves the
/// hook, under the mask it then has: the asking packet's own state change
/// is reported.
///
/// With labels: from a RST (→ CLOSE), and from the first packet without a
/// FIN after FINs both ways (the last ACK, → TIME_WAIT). One state change
/// is reported per connection closed by FINs, where asking from the first
/// FIN on reported three or four (FIN_WAIT, CLOSE_WAIT, LAST_ACK and
/// TIME_WAIT), each a message to read. Without labels: from the first
/// FIN or RST on.
///
/// The cache is the connection's, not the packet's: a packet of the
/// other direction leaving on another CPU between a FIN's state change
/// and the rule noting it (a preempted sender) can make the change to
/// TIME_WAIT and take the cache away under the old mask. Asking therefore
/// also sets [`CLOSE_ASKED`], whose change is reported
/// ([`EVENTS_CLOSE_ASKED`]): an update without a TCP state, on which the
/// listener looks at the entry. Without it such a close waited for the
/// entry's end, two minutes later (6 of 40 runs of a two-connection
/// test with the CPUs kept busy).
fn closing_rules(table: &Table) -> Vec<Vec<Nlattr<u16, Buffer>>> {
    if !table.labels {
        let mut from_first_fin = marked_tcp(table);
        from_first_fin.extend(tcp_flags(TCP_FIN_OR_RST, true));
        from_first_fin.extend(ask_events(EVENTS_CLOSING));
        return vec![from_first_fin];
    }
    let note_fin = |direction: u8, label: &[u8; 16]| {
        let mut rule = marked_tcp(table);
        rule.extend(tcp_flags(TCP_FIN, true));
        rule.extend([ct_load(CT_DIRECTION), compare(true, &[direction])]);
        rule.extend(set_label(label));
        rule
    };
    // The mask first: a CPU that takes the label's event from the cache
    // delivers it under the new mask.
    let ask_close = [ask_events(EVENTS_CLOSE_ASKED), set_label(&CLOSE_ASKED)].concat();
    let mut reset = marked_tcp(table);
    reset.extend(tcp_flags(TCP_RST, true));
    reset.extend(ask_close.clone());
    let mut last_ack = marked_tcp(table);
    last_ack.extend(tcp_flags(TCP_FIN, false));
    last_ack.extend([
        ct_load(CT_LABELS),
        mask(&FIN_BOTH_WAYS),
        compare(true, &FIN_BOTH_WAYS),
    ]);
    last_ack.extend(ask_close);
    vec![
        note_fin(DIRECTION_ORIGINAL, &FIN_ORIGINAL),
        note_fin(DIRECTION_REPLY, &FIN_REPLY),
        reset,
        last_ack,
    ]
}

/// The rules that log the DNS answers reaching the scope: over UDP, and
/// the TCP segments that carry a payload.
fn dns_answer_rules(table: &Table) -> [Vec<Nlattr<u16, Buffer>>; 2] {
    let dns_log = || log(table, nflog::DNS_PREFIX, nflog::PAYLOAD_SNAPLEN);
    let mut udp: Vec<_> = l4proto_is(libc::IPPROTO_UDP as u8).into();
    udp.extend(from_dns_port());
    udp.extend(in_scope(table));
    udp.push(dns_log());
    let mut tcp: Vec<_> = l4proto_is(libc::IPPROTO_TCP as u8).into();
    tcp.extend(from_dns_port());
    if table.inner_payload {
        tcp.extend(has_payload());
    }
    tcp.extend(in_scope(table));
    tcp.push(dns_log());
    [udp, tcp]
}

/// The rule that logs the ClientHello the initiator of a TLS connection
/// sends (cheap tests first: most packets fail at the protocol or the
/// direction, or have no payload).
fn client_hello_rule(table: &Table) -> Vec<Nlattr<u16, Buffer>> {
    let mut expressions: Vec<_> = l4proto_is(libc::IPPROTO_TCP as u8).into();
    expressions.extend([ct_load(CT_DIRECTION), compare(true, &[DIRECTION_ORIGINAL])]);
    expressions.extend(payload_byte_is(0, TLS_HANDSHAKE));
    expressions.extend(payload_byte_is(5, CLIENT_HELLO));
    expressions.extend(in_scope(table));
    expressions.push(log(table, nflog::HELLO_PREFIX, nflog::PAYLOAD_SNAPLEN));
    expressions
}

/// The batch that creates `table` with its chains and rules, owned by the
/// socket that sends it when `owned`; and the sequence number whose ACK
/// ends it.
pub(crate) fn create_batch(table: &Table, first_seq: u32, owned: bool) -> (Vec<u8>, u32) {
    let inbound = match table.scope {
        RuleScope::Netns => ("prerouting", HOOK_PREROUTING),
        RuleScope::Cgroup { .. } => ("input", HOOK_INPUT),
    };
    let mut inbound_rules = match table.scope {
        RuleScope::Netns => vec![arriving_flow_rule(table)],
        RuleScope::Cgroup { .. } => vec![new_flow_rule(table), local_inbound_rule(table)],
    };
    inbound_rules.extend(closing_rules(table));
    let mut outbound = vec![new_flow_rule(table)];
    outbound.extend(closing_rules(table));
    if table.names {
        inbound_rules.extend(dns_answer_rules(table));
        if table.inner_payload {
            outbound.push(client_hello_rule(table));
        }
    }
    let chains = [
        (inbound, inbound_rules),
        (("output", HOOK_OUTPUT), outbound),
    ];
    batch(first_seq, |next| {
        let create = NlmF::CREATE | NlmF::ACK;
        let mut messages = vec![message(
            NEWTABLE,
            create | NlmF::EXCL,
            next(),
            vec![
                attr_str(attr::table::NAME, &table.name),
                attr_be32(attr::table::FLAGS, if owned { TABLE_OWNER } else { 0 }),
            ],
        )];
        for ((chain, hook), rules) in chains {
            // Priority 0: after conntrack (-200) made the entry, before it
            // is confirmed (so the event mask still applies).
            messages.push(message(
                NEWCHAIN,
                create,
                next(),
                vec![
                    attr_str(attr::chain::TABLE, &table.name),
                    attr_str(attr::chain::NAME, chain),
                    nested(
                        attr::chain::HOOK,
                        &[
                            attr_be32(attr::hook::HOOKNUM, hook),
                            attr_be32(attr::hook::PRIORITY, 0),
                        ],
                    ),
                    attr_str(attr::chain::TYPE, "filter"),
                ],
            ));
            for rule in rules {
                messages.push(message(
                    NEWRULE,
                    create | NlmF::APPEND,
                    next(),
                    vec![
                        attr_str(attr::rule::TABLE, &table.name),
                        attr_str(attr::rule::CHAIN, chain),
                        nested(attr::rule::EXPRESSIONS, &rule),
                    ],
                ));
            }
        }
        messages
    })
}

/// The batch that deletes the table `name`; and the sequence number whose
/// ACK ends it.
pub(crate) fn delete_batch(name: &str, first_seq: u32) -> (Vec<u8>, u32) {
    batch(first_seq, |next| {
        vec![message(
            DELTABLE,
            NlmF::ACK,
            next(),
            vec![attr_str(attr::table::NAME, name)],
        )]
    })
}

/// A request for the table `name` (refused with ENOENT once it is gone).
pub(crate) fn get_table_request(name: &str, seq: u32) -> Vec<u8> {
    message(
        GETTABLE,
        NlmF::ACK,
        seq,
        vec![attr_str(attr::table::NAME, name)],
    )
}

/// A request listing the `inet` tables.
pub(crate) fn list_tables_request(seq: u32) -> Vec<u8> {
    message(GETTABLE, NlmF::DUMP, seq, Vec::new())
}

/// The name of a table in a `GETTABLE` reply.
pub(crate) fn table_name(payload: &[u8]) -> Option<String> {
    let bytes = netlink::payload_attrs(payload)
        .ok()?
        .get(attr::table::NAME)
        .ok()??;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec()).ok()
}

/// Whether a table of this name is one flowtrack makes:
/// `flowtrack_<mark>` (8 hex digits), or `flowtrack_<pid>_<n>` from
/// earlier versions.
pub(crate) fn is_flowtrack_table(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TABLE_PREFIX) else {
        return false;
    };
    let digits = |part: &str, hex: bool| {
        !part.is_empty()
            && part.chars().all(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
    };
    match rest.split_once('_') {
        Some((pid, n)) => digits(pid, false) && digits(n, false),
        None => rest.len() == 8 && digits(rest, true),
    }
}

/// Whether a table in a `GETTABLE` reply is owned by a netlink socket (the
/// kernel removes it with that socket).
pub(crate) fn is_owned(payload: &[u8]) -> bool {
    netlink::payload_attrs(payload)
        .ok()
        .and_then(|attrs| attrs.get(attr::table::FLAGS).ok().flatten())
        .and_then(|flags| <[u8; 4]>::try_from(flags).ok())
        .is_some_and(|flags| u32::from_be_bytes(flags) & TABLE_OWNER != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{Received, split};

    #[test]
    fn a_cgroup_table_is_one_batch_of_table_chains_and_rules() {
        let table = Table::new(0x8000_0001, RuleScope::Cgroup { id: 1234, level: 2 }, 7);
        assert_eq!(table.name, "flowtrack_80000001");
        let (bytes, last) = create_batch(&table, 10, true);
        let (messages, malformed) = split(&bytes);
        assert!(malformed.is_none());
        let kinds: Vec<u16> = messages
            .iter()
            .map(|m| match m {
                Received::Message { kind, .. } => *kind,
                other => panic!("{other:?}"),
            })
            .collect();
        let nft = |m: u8| crate::netlink::message_type(SUBSYSTEM, m);
        assert_eq!(
            kinds,
            [
                BATCH_BEGIN,
                nft(NEWTABLE),
                nft(NEWCHAIN),
                // New flows, local inbound ones, closing (two FIN notes,
                // RST, last ACK), DNS (UDP, TCP).
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWCHAIN),
                // New flows, closing, ClientHello.
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                nft(NEWRULE),
                BATCH_END
            ]
        );
        assert_eq!(last, 27, "seventeen requests after the batch start");
        let Received::Message { payload, .. } = &messages[1] else {
            panic!()
        };
        assert_eq!(table_name(payload).as_deref(), Some("flowtrack_80000001"));
        assert!(
            is_owned(payload),
            "the table is created with the owner flag"
        );
        let (unowned, _) = create_batch(&table, 10, false);
        let (messages, _) = split(&unowned);
        let Received::Message { payload, .. } = &messages[1] else {
            panic!()
        };
        assert!(!is_owned(payload), "unless told otherwise");
    }

    /// [`rules_of`] that log (a prefix), in order.
    fn logging_rules_of(bytes: &[u8]) -> Vec<(String, Vec<String>, String, u32)> {
        rules_of(bytes)
            .into_iter()
            .filter(|(_, _, prefix, _)| !prefix.is_empty())
            .collect()
    }

    /// Each rule of a batch: its chain, its expressions' names, and its log
    /// expression's prefix and snaplen.
    fn rules_of(bytes: &[u8]) -> Vec<(String, Vec<String>, String, u32)> {
        let text = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .trim_end_matches('\0')
                .to_owned()
        };
        let (messages, _) = split(bytes);
        messages
            .iter()
            .filter_map(|message| match message {
                Received::Message { kind, payload, .. }
                    if *kind == crate::netlink::message_type(SUBSYSTEM, NEWRULE) =>
                {
                    let attrs = netlink::payload_attrs(payload).unwrap();
                    let chain = text(attrs.get(attr::rule::CHAIN).unwrap().unwrap());
                    let (mut names, mut prefix, mut snaplen) = (Vec::new(), String::new(), 0);
                    for element in attrs.nested(attr::rule::EXPRESSIONS).unwrap().unwrap() {
                        let element = netlink::Attrs::new(element.unwrap().1);
                        let name = text(element.get(attr::expr::NAME).unwrap().unwrap());
                        if name == "log" {
                            let data = element.nested(attr::expr::DATA).unwrap().unwrap();
                            prefix = text(data.get(attr::log::PREFIX).unwrap().unwrap());
                            let length = data.get(attr::log::SNAPLEN).unwrap().unwrap();
                            snaplen = u32::from_be_bytes(length.try_into().unwrap());
                        }
                        names.push(name);
                    }
                    Some((chain, names, prefix, snaplen))
                }
                _ => None,
            })
            .collect()
    }

    /// The rules of `table` that log nothing, by chain: their expressions.
    fn closing_rules_of(table: &Table) -> Vec<(String, Vec<String>)> {
        rules_of(&create_batch(table, 1, true).0)
            .into_iter()
            .filter(|(_, _, prefix, _)| prefix.is_empty())
            .map(|(chain, names, ..)| (chain, names))
            .collect()
    }

    #[test]
    fn fins_are_noted_by_direction_and_state_changes_asked_for_from_a_rst_or_the_last_ack() {
        let table = Table::new(MARK_BIT | 5, RuleScope::Netns, 7);
        let then = |rest: &[&str]| -> Vec<String> {
            ["meta", "cmp", "ct", "cmp", "payload", "bitwise", "cmp"]
                .iter()
                .chain(rest)
                .map(|name| name.to_string())
                .collect()
        };
        let note_fin = then(&["ct", "cmp", "immediate", "ct"]);
        let ask_close = ["immediate", "ct", "immediate", "ct"];
        let reset = then(&ask_close);
        let last_ack = then(&[&["ct", "bitwise", "cmp"][..], &ask_close].concat());
        for chain in ["prerouting", "output"] {
            let rules: Vec<Vec<String>> = closing_rules_of(&table)
                .into_iter()
                .filter(|(rule_chain, _)| rule_chain == chain)
                .map(|(_, names)| names)
                .collect();
            assert_eq!(
                rules,
                [&note_fin, &note_fin, &reset, &last_ack].map(Clone::clone),
                "{chain}"
            );
        }
        assert_eq!(EVENTS_CLOSING & !EVENTS, 1 << 5, "protoinfo, added");
    }

    #[test]
    fn the_fin_labels_are_two_bits_and_the_last_ack_rule_wants_both() {
        let bits = |label: [u8; 16]| label.iter().map(|byte| byte.count_ones()).sum::<u32>();
        assert_eq!(bits(FIN_ORIGINAL), 1);
        assert_eq!(bits(FIN_REPLY), 1);
        let either: Vec<u8> = FIN_ORIGINAL
            .iter()
            .zip(FIN_REPLY)
            .map(|(a, b)| a | b)
            .collect();
        assert_eq!(either, FIN_BOTH_WAYS);
        assert_ne!(FIN_ORIGINAL, FIN_REPLY);
        assert_eq!(bits(CLOSE_ASKED), 1);
        assert!(
            CLOSE_ASKED
                .iter()
                .zip(FIN_BOTH_WAYS)
                .all(|(a, b)| a & b == 0),
            "asking does not note a FIN"
        );
        assert_eq!(
            EVENTS_CLOSE_ASKED & !EVENTS_CLOSING,
            1 << 10,
            "label, added"
        );
    }

    #[test]
    fn without_labels_state_changes_are_asked_for_from_the_first_fin_or_rst() {
        let table = Table::new(MARK_BIT | 5, RuleScope::Netns, 7).without_labels();
        let expected = [
            "meta",
            "cmp",
            "ct",
            "cmp",
            "payload",
            "bitwise",
            "cmp",
            "immediate",
            "ct",
        ];
        let closing = closing_rules_of(&table);
        let chains: Vec<&str> = closing.iter().map(|(chain, _)| chain.as_str()).collect();
        assert_eq!(chains, ["prerouting", "output"]);
        for (_, names) in &closing {
            assert_eq!(names, &expected);
        }
    }

    #[test]
    fn dns_answers_and_client_hellos_are_logged_with_room_for_them() {
        use crate::nflog::{
            DNS_PREFIX, HELLO_PREFIX, NEW_FLOW_PREFIX, NEW_FLOW_SNAPLEN, PAYLOAD_SNAPLEN,
        };
        let cgroup = Table::new(MARK_BIT, RuleScope::Cgroup { id: 9, level: 1 }, 7);
        let netns = Table::new(MARK_BIT, RuleScope::Netns, 7);
        for (table, inbound) in [(cgroup, "input"), (netns, "prerouting")] {
            let rules = logging_rules_of(&create_batch(&table, 1, true).0);
            let logs: Vec<(&str, &str, u32)> = rules
                .iter()
                .map(|(chain, _, prefix, snaplen)| (chain.as_str(), prefix.as_str(), *snaplen))
                .collect();
            assert_eq!(
                logs,
                [
                    (inbound, NEW_FLOW_PREFIX, NEW_FLOW_SNAPLEN),
                    (inbound, DNS_PREFIX, PAYLOAD_SNAPLEN),
                    (inbound, DNS_PREFIX, PAYLOAD_SNAPLEN),
                    ("output", NEW_FLOW_PREFIX, NEW_FLOW_SNAPLEN),
                    ("output", HELLO_PREFIX, PAYLOAD_SNAPLEN),
                ]
            );
            let cgroup_scoped = rules
                .iter()
                .all(|(_, names, ..)| names.iter().any(|name| name == "socket"));
            assert_eq!(
                cgroup_scoped,
                matches!(table.scope, RuleScope::Cgroup { .. })
            );
            // The ClientHello rule reads the payload after the transport
            // header twice (bytes 0 and 5), after its cheap tests.
            let (_, hello, ..) = &rules[4];
            assert_eq!(&hello[..4], ["meta", "cmp", "ct", "cmp"]);
            assert_eq!(hello.iter().filter(|name| *name == "payload").count(), 2);
        }
    }

    #[test]
    fn in_a_namespace_a_connection_it_made_over_loopback_is_logged_once() {
        let table = Table::new(MARK_BIT, RuleScope::Netns, 7);
        let rules = logging_rules_of(&create_batch(&table, 1, true).0);
        let new_flow = |chain: &str| {
            let rule = rules.iter().find(|(rule_chain, _, prefix, _)| {
                rule_chain == chain && prefix == crate::nflog::NEW_FLOW_PREFIX
            });
            rule.unwrap().1.clone()
        };
        let (arriving, leaving) = (new_flow("prerouting"), new_flow("output"));
        // `ct status & confirmed == 0` first: confirmed, it left through
        // output, which logged it.
        assert_eq!(arriving[..3], ["ct", "bitwise", "cmp"]);
        assert_eq!(arriving[3..], leaving[..]);
    }

    #[test]
    fn without_names_only_new_flows_are_logged() {
        let scope = RuleScope::Cgroup { id: 9, level: 1 };
        let table = Table::new(MARK_BIT, scope, 7).without_names();
        let rules = logging_rules_of(&create_batch(&table, 1, true).0);
        let prefixes: Vec<&str> = rules.iter().map(|rule| rule.2.as_str()).collect();
        use crate::nflog::NEW_FLOW_PREFIX;
        assert_eq!(prefixes, [NEW_FLOW_PREFIX, NEW_FLOW_PREFIX]);
    }

    #[test]
    fn without_inner_payloads_no_client_hello_is_logged() {
        let scope = RuleScope::Cgroup { id: 9, level: 1 };
        let table = Table::new(MARK_BIT, scope, 7).without_inner_payload();
        let rules = logging_rules_of(&create_batch(&table, 1, true).0);
        let prefixes: Vec<&str> = rules.iter().map(|rule| rule.2.as_str()).collect();
        use crate::nflog::{DNS_PREFIX, NEW_FLOW_PREFIX};
        assert_eq!(
            prefixes,
            [NEW_FLOW_PREFIX, DNS_PREFIX, DNS_PREFIX, NEW_FLOW_PREFIX]
        );
        let payload_reads = |names: &Vec<String>| names.iter().filter(|n| *n == "payload").count();
        let reads: Vec<usize> = rules.iter().map(|rule| payload_reads(&rule.1)).collect();
        assert_eq!(reads, [0, 1, 1, 0], "DNS rules read the port only");
    }

    #[test]
    fn flowtrack_tables_are_told_from_others() {
        for name in [
            "flowtrack_80000001",
            "flowtrack_ffffffff",
            "flowtrack_4242_3",
        ] {
            assert!(is_flowtrack_table(name), "{name}");
        }
        for name in [
            "flowtrack_test",
            "flowtrack_port",
            "flowtrack_8000001",
            "flowtrack_4242_",
            "filter",
        ] {
            assert!(!is_flowtrack_table(name), "{name}");
        }
    }

    #[test]
    fn a_table_without_the_owner_flag_is_not_owned() {
        let bytes = message(
            NEWTABLE,
            NlmF::empty(),
            1,
            vec![attr_str(attr::table::NAME, "flowtrack_80000001")],
        );
        let (messages, _) = split(&bytes);
        let Received::Message { payload, .. } = &messages[0] else {
            panic!()
        };
        assert!(!is_owned(payload));
    }

    #[test]
    fn a_mark_another_table_holds_is_passed_over() {
        let make = |mark| Table::new(mark, RuleScope::Netns, 3);
        let mut taken = std::collections::HashSet::from(["flowtrack_80000005".to_owned()]);
        let mut tried = Vec::new();
        // The kernel's NLM_F_EXCL: a second table of one name is refused.
        let table = create_with_free_mark([5, 5, 9], make, |table| {
            tried.push(table.mark);
            if taken.insert(table.name.clone()) {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EEXIST))
            }
        })
        .unwrap();
        assert_eq!(table.mark, 0x8000_0009);
        assert_eq!(tried, [0x8000_0005, 0x8000_0005, 0x8000_0009]);
        // Owned by another socket: EPERM, also passed over.
        let table = create_with_free_mark([1, 2], make, |table| match table.mark {
            0x8000_0001 => Err(io::Error::from_raw_os_error(libc::EPERM)),
            _ => Ok(()),
        })
        .unwrap();
        assert_eq!(table.mark, 0x8000_0002);
        // Another refusal is the answer.
        let error = create_with_free_mark([1, 2], make, |_| {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        })
        .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
    }
}
