//! The records flowtrack's eBPF program (`ebpf/`) and its loader
//! (`flow-backend-ebpf`) share, defined once for both sides.
//!
//! Everything is `#[repr(C)]` with explicit padding fields, because the
//! kernel hashes map keys byte by byte: a key with uninitialised padding
//! would never match. Addresses are network-order bytes (IPv4 in the first
//! four bytes, the rest zero); ports are host order.

#![no_std]

mod payload;
mod policy;
mod process;
mod redirect;

pub use payload::*;
pub use policy::*;
pub use process::*;
pub use redirect::*;

/// Name of the flow table map (LRU hash: [`RawFlowKey`] → [`RawFlowState`]).
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the ring buffer of [`RawFlowRecord`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (indices `COUNTER_*`).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the read-only global (a `u32`) that says how many CPUs count in
/// a [`SocketCounts`] slot of their own; the loader may lower it from
/// [`SOCKET_COUNTER_SLOTS`].
pub const OWN_SLOT_CPUS_GLOBAL: &str = "OWN_SLOT_CPUS";
/// Name of the read-only global (a `u32`) that says whether the programs
/// copy what names flows (DNS answers, the initiator's first payload): 1
/// by default, 0 when the loader turns naming off.
pub const CAPTURE_NAMES_GLOBAL: &str = "CAPTURE_NAMES";
/// Name of the egress `cgroup_skb` program.
pub const EGRESS_PROGRAM: &str = "flowtrack_egress";
/// Name of the ingress `cgroup_skb` program.
pub const INGRESS_PROGRAM: &str = "flowtrack_ingress";
/// Name of the `cgroup/sock_release` program.
pub const SOCK_RELEASE_PROGRAM: &str = "flowtrack_sock_release";
/// Name of the `cgroup/sock_create` program (the socket's owner).
pub const SOCK_CREATE_PROGRAM: &str = "flowtrack_sock_create";
/// The programs attached to the observed cgroup (as links).
pub const CGROUP_PROGRAMS: [&str; 4] = [
    EGRESS_PROGRAM,
    INGRESS_PROGRAM,
    SOCK_RELEASE_PROGRAM,
    SOCK_CREATE_PROGRAM,
];
/// Name of the `iter/tcp` program that moves every counting socket's counts
/// into the flow table (for interim reports of long flows: see
/// `ebpf/src/socket.rs`). Not attached to the cgroup: userspace runs it
/// when it reports the open flows' counters so far.
pub const CHECKPOINT_PROGRAM: &str = "flowtrack_checkpoint";
/// Name of the socket storage map ([`RawSocketFlow`]).
pub const SOCKET_FLOWS_MAP: &str = "SOCKET_FLOWS";
/// Name of the `tp_btf/sched_process_exec` program.
pub const EXEC_PROGRAM: &str = "flowtrack_exec";
/// Name of the `tp_btf/sched_process_fork` program.
pub const FORK_PROGRAM: &str = "flowtrack_fork";

/// Flow table entries compiled into the object (the loader may resize).
pub const DEFAULT_FLOW_TABLE_ENTRIES: u32 = 65_536;
/// Ring buffer bytes compiled into the object (the loader may resize; a
/// power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;

/// Ring buffer reservations that failed: the record was lost.
pub const COUNTER_RING_FULL: u32 = 0;
/// Flows the kernel program inserted into the flow table.
pub const COUNTER_FLOWS_INSERTED: u32 = 1;
/// Flows the kernel program removed from the flow table (it closed them).
pub const COUNTER_FLOWS_REMOVED: u32 = 2;
/// Packets that would have started a flow but the insert failed.
pub const COUNTER_INSERT_FAILED: u32 = 3;
/// Payload and process records (DNS answers, first payloads, exec and
/// fork records) the ring buffer had no room for.
pub const COUNTER_PAYLOAD_LOST: u32 = 4;
/// Number of counters.
pub const COUNTERS_LEN: u32 = 5;

/// [`RawFlowRecord::kind`]: a flow was opened.
pub const RECORD_OPENED: u32 = 1;
/// [`RawFlowRecord::kind`]: a flow was closed.
pub const RECORD_CLOSED: u32 = 2;

/// Close reason: FIN in both directions (and the last ACK, or a linger).
pub const CLOSE_FIN: u32 = 1;
/// Close reason: a TCP reset.
pub const CLOSE_RST: u32 = 2;
/// Close reason: the socket was released (connected UDP).
pub const CLOSE_SOCK_RELEASE: u32 = 3;
/// Close reason: idle timeout, swept by userspace.
pub const CLOSE_IDLE: u32 = 4;
/// Close reason: the scope ended (no process left in the cgroup).
pub const CLOSE_SCOPE_ENDED: u32 = 5;

/// [`RawFlowState::flags`]: FIN seen from the initiator.
pub const FLAG_FIN_ORIG: u64 = 1;
/// [`RawFlowState::flags`]: FIN seen from the responder.
pub const FLAG_FIN_REPLY: u64 = 1 << 1;
/// [`RawFlowState::flags`]: an initiator packet was seen leaving (egress).
pub const FLAG_ORIG_EGRESS: u64 = 1 << 2;
/// [`RawFlowState::flags`]: an initiator packet was seen arriving (ingress).
pub const FLAG_ORIG_INGRESS: u64 = 1 << 3;
/// [`RawFlowState::flags`]: the flow table key is oriented initiator →
/// responder. Keys are stored canonically (the smaller endpoint first) so
/// that one lookup finds a flow from either direction; this bit says which
/// end initiated.
pub const FLAG_KEY_IS_ORIGINAL: u64 = 1 << 4;
/// [`RawFlowState::flags`]: the responder acknowledged the initiator's FIN.
pub const FLAG_FIN_ORIG_ACKED: u64 = 1 << 5;
/// [`RawFlowState::flags`]: the initiator acknowledged the responder's FIN.
pub const FLAG_FIN_REPLY_ACKED: u64 = 1 << 6;
/// [`RawFlowState::flags`]: the FIN exchange is complete, and the flow
/// closes once no socket holds counts for it
/// ([`sockets_hold_counts`]).
pub const FLAG_CLOSING_FIN: u64 = 1 << 7;
/// [`RawFlowState::flags`]: a reset passed, and the flow closes once no
/// socket holds counts for it ([`sockets_hold_counts`]).
pub const FLAG_CLOSING_RST: u64 = 1 << 8;
/// [`RawFlowState::flags`]: the initiator's socket counts the flow in its
/// storage ([`RawSocketFlow`]).
pub const FLAG_SOCKET_ORIG: u64 = 1 << 9;
/// [`RawFlowState::flags`]: the initiator's socket retired: its counts are
/// in the table.
pub const FLAG_SOCKET_ORIG_RETIRED: u64 = 1 << 10;
/// [`RawFlowState::flags`]: the responder's socket counts the flow in its
/// storage ([`RawSocketFlow`]).
pub const FLAG_SOCKET_REPLY: u64 = 1 << 11;
/// [`RawFlowState::flags`]: the responder's socket retired: its counts are
/// in the table.
pub const FLAG_SOCKET_REPLY_RETIRED: u64 = 1 << 12;
/// [`RawFlowState::flags`]: the initiator's first payload passed (and was
/// copied, [`RECORD_FIRST_PAYLOAD`]); until then its socket does not count
/// in its storage.
pub const FLAG_FIRST_PAYLOAD: u64 = 1 << 13;

/// [`RawSocketFlow::flags`]: the socket counts its flow's packets.
pub const SOCKET_ACTIVE: u64 = 1;
/// [`RawSocketFlow::flags`]: the socket's counts went to the flow table for
/// good (a SYN, FIN or RST passed, or the socket was released); it never
/// counts again.
pub const SOCKET_RETIRED: u64 = 1 << 1;
/// [`RawSocketFlow::flags`]: packets arriving at the socket are counted too
/// (the peer is not in the cgroup; when it is, its own socket counts them
/// as they leave).
pub const SOCKET_COUNTS_INGRESS: u64 = 1 << 2;
/// [`RawSocketFlow::flags`]: the socket is the responder's (else the
/// initiator's).
pub const SOCKET_IS_REPLY: u64 = 1 << 3;
/// [`RawSocketFlow::flags`]: a program is moving the socket's counts to the
/// flow table; no other may meanwhile (it would move them twice).
pub const SOCKET_MOVING: u64 = 1 << 4;
/// [`RawSocketFlow::flags`] bits 8–15: how many CPUs own a counter slot
/// ([`SocketCounts`]), set when the socket starts counting.
pub const SOCKET_OWNERS_SHIFT: u32 = 8;
/// The mask of [`SOCKET_OWNERS_SHIFT`]'s field, shifted down.
pub const SOCKET_OWNERS_MASK: u64 = 0xff;

/// IPv4 in [`RawFlowKey::family`].
pub const FAMILY_V4: u8 = 4;
/// IPv6 in [`RawFlowKey::family`].
pub const FAMILY_V6: u8 = 6;

/// A flow's 5-tuple: in ring-buffer records oriented initiator →
/// responder; in the flow table canonical (see [`FLAG_KEY_IS_ORIGINAL`]).
///
/// Aligned to 8 bytes (the layout is the same: 40 bytes, no padding) so
/// that the kernel program copies and compares it in 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawFlowKey {
    /// Initiator address, network order (IPv4: first four bytes).
    pub src_addr: [u8; 16],
    /// Responder address, network order.
    pub dst_addr: [u8; 16],
    /// Initiator port (ICMP: echo identifier), host order.
    pub src_port: u16,
    /// Responder port (ICMP: `type << 8 | code`), host order.
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: [u8; 2],
}

impl RawFlowKey {
    /// Whether the source endpoint sorts before the destination: the table
    /// stores keys in that (canonical) order. The order compares addresses
    /// as two native-endian 64-bit words, then ports: any total order does,
    /// and this one takes the kernel program a handful of instructions
    /// where comparing bytes called `memcmp`.
    #[must_use]
    pub fn is_canonical(&self) -> bool {
        (words(&self.src_addr), self.src_port) <= (words(&self.dst_addr), self.dst_port)
    }

    /// The flow table's canonical key turned initiator → responder, as the
    /// flow's `flags` ([`FLAG_KEY_IS_ORIGINAL`]) say.
    #[must_use]
    pub const fn oriented(&self, flags: u64) -> Self {
        if flags & FLAG_KEY_IS_ORIGINAL != 0 {
            *self
        } else {
            self.reversed()
        }
    }

    /// The same flow seen from the responder.
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            family: self.family,
            pad: [0; 2],
        }
    }
}

/// An address as two 64-bit words (in the key's 8-byte alignment, two
/// loads).
fn words(addr: &[u8; 16]) -> (u64, u64) {
    let (high, low) = addr.split_at(8);
    let word = |half: &[u8]| u64::from_ne_bytes(half.try_into().unwrap_or_default());
    (word(high), word(low))
}

/// Per-flow state kept in the kernel's flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawFlowState {
    /// What the initiator sent (its socket buffers and IP-level bytes).
    pub orig: PacketCounts,
    /// What the responder sent.
    pub reply: PacketCounts,
    /// CLOCK_MONOTONIC ns of the first packet.
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC ns of the latest packet (coarse: jiffies resolution).
    pub last_seen_ns: u64,
    /// `FLAG_*` bits (64-bit so that the program can update them with the
    /// BPF target's 64-bit atomics).
    pub flags: u64,
    /// TCP: the sequence number that acknowledges the initiator's FIN.
    pub fin_ack_orig: u32,
    /// TCP: the sequence number that acknowledges the responder's FIN.
    pub fin_ack_reply: u32,
}

/// Whether, by a flow's [`RawFlowState::flags`], a socket of the cgroup
/// counts the flow's packets in its own storage ([`RawSocketFlow`]) and
/// has not yet moved them to the table. While one does, the table's
/// counters lag behind, and the flow neither closes nor idles out: it
/// stays open as long as its socket is established.
#[must_use]
pub const fn sockets_hold_counts(flags: u64) -> bool {
    (flags & FLAG_SOCKET_ORIG != 0 && flags & FLAG_SOCKET_ORIG_RETIRED == 0)
        || (flags & FLAG_SOCKET_REPLY != 0 && flags & FLAG_SOCKET_REPLY_RETIRED == 0)
}

/// Counter slots in a [`RawSocketFlow`] (see [`SocketCounts`]).
pub const SOCKET_COUNTER_SLOTS: usize = 4;

/// An established TCP socket's share of its flow's counters, in the
/// socket's storage. The kernel program counts the socket's data packets
/// here with no flow-table lookup, and moves the counts to the flow table
/// (under [`RawSocketFlow::key`]) when a SYN, FIN or RST passes or the
/// socket is released. Userspace never reads it.
///
/// Laid out against false sharing: every packet reads the header (and the
/// kernel's storage header just before it), and each CPU writes its own
/// slot. x86 fetches cache lines in aligned pairs, so writes to one line
/// disturb readers of its neighbour; and where the kernel's allocator puts
/// the value in a line is its own business. 120 bytes separate the header
/// and each slot from the next: with 8-byte alignment, that keeps them in
/// different 128-byte pairs wherever the value starts. The cost is about a
/// kilobyte of storage per established socket (the kernel's 1 KiB slab).
/// One counter shared by all CPUs cost more than everything else a packet
/// costs: a socket's data leaves from its process's CPU and, clocked out by
/// ACKs, from the CPU that receives them, and the line bounced between the
/// two at every packet. Slots on 64-byte boundaries still cost half of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawSocketFlow {
    /// The flow's canonical flow-table key.
    pub key: RawFlowKey,
    /// `SOCKET_*` bits.
    pub flags: u64,
    /// Separates the header from the first slot.
    pub pad: [u64; 15],
    /// Counts by CPU (see [`SocketCounts`]).
    pub slots: [SocketCounts; SOCKET_COUNTER_SLOTS],
}

/// The storage's size: within the kernel's 1 KiB slab with the storage
/// element's own header (72 bytes), so that an established socket costs a
/// kilobyte, not two.
const _: () = assert!(core::mem::size_of::<RawSocketFlow>() <= 1024 - 72);

/// One CPU slot of a [`RawSocketFlow`]'s counts. The counters only grow;
/// the socket's counts not yet in the flow table are, for leaving packets,
/// `egress + shared_egress - moved_egress`, and for arriving ones the same
/// with `ingress`. Which direction of the flow each is follows from the
/// socket's side ([`SOCKET_IS_REPLY`]): the initiator's socket sends the
/// flow's `orig` direction, the responder's its `reply`.
///
/// The first CPUs own a slot each: CPU `n` owns slot `n` and counts there
/// with plain adds, one counter pair per hook, with no other writer: a
/// socket's packets leave one at a time (its lock serialises them),
/// packets arrive in softirq, which does not nest on a CPU, and the two
/// hooks, which may interrupt each other on a CPU, write different pairs.
/// Two atomic adds per packet were a fifth of a packet's cost. The other
/// CPUs share the slots (CPU `n`: slot `n % SOCKET_COUNTER_SLOTS`) and
/// count in `shared_egress` and `shared_ingress`, atomically. The owners are the first
/// [`SOCKET_COUNTER_SLOTS`] CPUs unless the loader lowers their number
/// ([`OWN_SLOT_CPUS_GLOBAL`]), so that a small machine's tests take the
/// shared path too.
///
/// One path sends a socket's packet outside its lock: a packet that
/// netfilter queued to userspace, or async IPsec held, after the socket
/// sent it. It could lose a count only by passing on the CPU where the
/// socket's own sender was preempted inside this program.
///
/// Only the first four pairs are written per packet; the `moved` pairs,
/// written when counts move to the table (rarely), and the padding after
/// them keep 120 bytes between this slot's packet counters and the next
/// slot's, as the header's padding does (see [`RawSocketFlow`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SocketCounts {
    /// Leaving packets, counted by the slot's own CPU.
    pub egress: PacketCounts,
    /// Arriving packets, counted by the slot's own CPU.
    pub ingress: PacketCounts,
    /// Leaving packets counted by CPUs that share the slot, atomically.
    pub shared_egress: PacketCounts,
    /// Arriving packets counted by CPUs that share the slot, atomically.
    pub shared_ingress: PacketCounts,
    /// What went to the flow table of `egress` and `shared_egress`.
    pub moved_egress: PacketCounts,
    /// What went to the flow table of `ingress` and `shared_ingress`.
    pub moved_ingress: PacketCounts,
    /// Separates this slot from the next.
    pub pad: [u64; 11],
}

/// A pair of counters: of a [`SocketCounts`], of one direction of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketCounts {
    /// Socket buffers.
    pub packets: u64,
    /// IP-level bytes.
    pub bytes: u64,
}

/// One ring-buffer record: a flow opened or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawFlowRecord {
    /// [`RECORD_OPENED`] or [`RECORD_CLOSED`].
    pub kind: u32,
    /// `CLOSE_*` on a closed record, else 0.
    pub close_reason: u32,
    /// The flow.
    pub key: RawFlowKey,
    /// What the initiator sent (closed records; the first packet on an
    /// opened one).
    pub orig: PacketCounts,
    /// What the responder sent.
    pub reply: PacketCounts,
    /// CLOCK_MONOTONIC ns of the first packet.
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC ns when the record was made.
    pub timestamp_ns: u64,
}

/// Size of a [`RawFlowRecord`] in the ring buffer.
pub const RECORD_SIZE: usize = core::mem::size_of::<RawFlowRecord>();

/// A flow's opening, with the process that owns the socket that opened it
/// (the connecting socket; for an accepted connection the listener); or
/// ([`RECORD_DENIED`]) a flow the policy refused, with the refused process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawOpenedRecord {
    /// The flow, `kind` [`RECORD_OPENED`].
    pub flow: RawFlowRecord,
    /// Its socket's owner; all zero when the socket has none (made before
    /// the programs attached).
    pub owner: RawOwner,
    /// The cgroup v2 id of the socket of the packet that opened it (0 when
    /// the packet had no socket).
    pub cgroup_id: u64,
}

/// Size of a [`RawOpenedRecord`] in the ring buffer.
pub const OPENED_RECORD_SIZE: usize = core::mem::size_of::<RawOpenedRecord>();

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record's length is not one its kind has.
    Length(usize),
    /// The kind is not one this version knows.
    Kind(u32),
    /// The address family is neither 4 nor 6.
    Family(u8),
    /// A payload record says it carries more bytes than it holds.
    PayloadLength(u32),
}

/// Little cursor over native-endian fields; safe, and never reads past the
/// slice (a field beyond its end reads as zeros: callers check the length
/// first).
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
    pub(crate) fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        if let Some(src) = self.bytes.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }
    /// The rest of the bytes, from the cursor on.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.take())
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }
    /// A key, its family checked.
    pub(crate) fn key(&mut self) -> Result<RawFlowKey, DecodeError> {
        let key = RawFlowKey {
            src_addr: self.take(),
            dst_addr: self.take(),
            src_port: self.u16(),
            dst_port: self.u16(),
            protocol: self.u8(),
            family: self.u8(),
            pad: self.take(),
        };
        if key.family != FAMILY_V4 && key.family != FAMILY_V6 {
            return Err(DecodeError::Family(key.family));
        }
        Ok(key)
    }
}

/// The kind of a ring-buffer record: its first field, whatever its type.
///
/// # Errors
/// [`DecodeError::Length`] when there are not even four bytes.
pub fn record_kind(bytes: &[u8]) -> Result<u32, DecodeError> {
    match bytes.get(..4) {
        Some(kind) => Ok(Fields::new(kind).u32()),
        None => Err(DecodeError::Length(bytes.len())),
    }
}

impl RawFlowRecord {
    /// Decodes a ring-buffer record of an opened or closed flow (an opened
    /// one without its owner), checking its length, kind and family.
    ///
    /// # Errors
    /// [`DecodeError`] says what is wrong; nothing panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != RECORD_SIZE && bytes.len() != OPENED_RECORD_SIZE {
            return Err(DecodeError::Length(bytes.len()));
        }
        let mut f = Fields::new(bytes);
        let kind = f.u32();
        let close_reason = f.u32();
        let key = f.key()?;
        let record = Self {
            kind,
            close_reason,
            key,
            orig: PacketCounts {
                packets: f.u64(),
                bytes: f.u64(),
            },
            reply: PacketCounts {
                packets: f.u64(),
                bytes: f.u64(),
            },
            first_seen_ns: f.u64(),
            timestamp_ns: f.u64(),
        };
        match (kind, bytes.len()) {
            (RECORD_OPENED | RECORD_DENIED, OPENED_RECORD_SIZE) | (RECORD_CLOSED, RECORD_SIZE) => {
                Ok(record)
            }
            (RECORD_OPENED | RECORD_DENIED | RECORD_CLOSED, length) => {
                Err(DecodeError::Length(length))
            }
            (other, _) => Err(DecodeError::Kind(other)),
        }
    }
}

impl RawOpenedRecord {
    /// Decodes a ring-buffer record of an opened (or denied) flow with its
    /// owner.
    ///
    /// # Errors
    /// [`DecodeError`] says what is wrong; nothing panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let flow = RawFlowRecord::decode(bytes)?;
        if flow.kind != RECORD_OPENED && flow.kind != RECORD_DENIED {
            return Err(DecodeError::Kind(flow.kind));
        }
        let owner = RawOwner::decode(bytes.get(RECORD_SIZE..).unwrap_or_default());
        let cgroup_id =
            Fields::new(bytes.get(RECORD_SIZE + OWNER_SIZE..).unwrap_or_default()).u64();
        Ok(Self {
            flow,
            owner,
            cgroup_id,
        })
    }
}
