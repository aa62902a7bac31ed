use std::fmt;
use std::sync::Arc;

use crate::FlowKey;
use crate::counters::{Counters, DirectionCounters};
use crate::display::Seconds;
use crate::dns::DnsLookup;
use crate::process::Process;
use crate::workload::Workload;

/// What happened to a flow.
///
/// Non-exhaustive: backends that know more (a policy drop, a close reason)
/// add variants; match with a wildcard arm.
///
/// ```
/// use flow_core::FlowEventKind;
/// let kind = FlowEventKind::Closed { pkt_count: 4, byte_count: 240 };
/// let bytes = match kind {
///     FlowEventKind::Closed { byte_count, .. } => byte_count,
///     _ => 0,
/// };
/// assert_eq!(bytes, 240);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlowEventKind {
    /// The flow's first packet was seen.
    Opened,
    /// The flow ended. Counters cover both directions at the IP level
    /// (header included). A backend that cannot count documents it.
    Closed {
        /// Packets in both directions.
        pkt_count: u64,
        /// IP-level bytes in both directions.
        byte_count: u64,
    },
    /// The flow was denied: by flowtrack's own egress policy (`rule` names
    /// the deny rule that matched, or `default` for a destination no allow
    /// rule allowed), or by a firewall rule that reports drops (the nflog
    /// backend: a drop rule logging to its group with the prefix
    /// `flowtrack:deny`; no `rule`). The key is oriented as the packet
    /// travelled (a refused `connect()` has no source yet: the unspecified
    /// address and port 0, unless the socket was bound).
    Denied {
        /// The policy rule that denied it, as written canonically
        /// (`tcp://pypi.org:443`), or `default`; `None` for a drop rule
        /// flowtrack does not own.
        rule: Option<Arc<str>>,
        /// Whether the flow was stopped (`connect()` failed, the packet was
        /// dropped or answered with a reset), or only reported: a policy
        /// in audit mode lets it through.
        enforced: bool,
    },
    /// The scope made a DNS lookup and got this answer. The key is the
    /// lookup's own flow: the asking socket → the resolver (port 53).
    Dns(Arc<DnsLookup>),
    /// An interim report of a flow still open (`--active-timeout`): its
    /// counters so far, both directions, as `Closed` would count them.
    /// The flow's `Closed` comes later, with its final counters.
    Update {
        /// Packets so far, both directions.
        pkt_count: u64,
        /// IP-level bytes so far, both directions.
        byte_count: u64,
    },
}

impl FlowEventKind {
    /// The kind's name in the output: `opened`, `closed`, `denied`, `dns`,
    /// `update`.
    ///
    /// ```
    /// assert_eq!(flow_core::FlowEventKind::Opened.name(), "opened");
    /// ```
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Closed { .. } => "closed",
            Self::Denied { .. } => "denied",
            Self::Dns(_) => "dns",
            Self::Update { .. } => "update",
        }
    }

    /// The packets and bytes of both directions a `Closed` or an `Update`
    /// carries; `None` for other kinds.
    ///
    /// ```
    /// use flow_core::FlowEventKind;
    /// let kind = FlowEventKind::Update { pkt_count: 3, byte_count: 180 };
    /// assert_eq!(kind.counters().map(|c| c.bytes), Some(180));
    /// assert_eq!(FlowEventKind::Opened.counters(), None);
    /// ```
    #[must_use]
    pub fn counters(&self) -> Option<Counters> {
        match *self {
            Self::Closed {
                pkt_count,
                byte_count,
            }
            | Self::Update {
                pkt_count,
                byte_count,
            } => Some(Counters::new(pkt_count, byte_count)),
            _ => None,
        }
    }
}

/// Why a flow closed, for a backend that knows it
/// ([`FlowEvent::close_reason`]).
///
/// Non-exhaustive: match with a wildcard arm.
///
/// ```
/// use flow_core::CloseReason;
/// assert_eq!(CloseReason::Reset.name(), "reset");
/// assert_eq!(CloseReason::from_name("fin"), Some(CloseReason::Fin));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// TCP: both ends sent a FIN, and the last one was acknowledged.
    Fin,
    /// TCP: a reset (a refused connection, or one aborted).
    Reset,
    /// The socket that carried it was closed (the eBPF backend: a UDP
    /// socket, which has no end of its own on the wire).
    SocketReleased,
    /// No packet for the backend's idle timeout (UDP and ICMP, or TCP left
    /// half-open; for nflog, conntrack's own timeout).
    Idle,
    /// What was observed ended: no process was left in the cgroup, or the
    /// cgroup was removed; the flow's last packets had passed.
    ScopeEnded,
}

impl CloseReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::Fin,
        Self::Reset,
        Self::SocketReleased,
        Self::Idle,
        Self::ScopeEnded,
    ];

    /// Its name in the output: `fin`, `reset`, `released`, `idle`,
    /// `scope_ended`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Reset => "reset",
            Self::SocketReleased => "released",
            Self::Idle => "idle",
            Self::ScopeEnded => "scope_ended",
        }
    }

    /// The reason with this [`name`](Self::name), if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.name() == name)
    }
}

#[cfg(feature = "serde")]
crate::by_name::serde_by_name!(CloseReason, "a close reason");

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One thing that happened to one flow, at one time, with what is known of
/// the flow: its destination's names, and the process behind it.
///
/// Built with [`FlowEvent::opened`], [`FlowEvent::closed`] or
/// [`FlowEvent::new`], then [`FlowEvent::because`],
/// [`FlowEvent::named`], [`FlowEvent::with_sni`] and
/// [`FlowEvent::by`]; non-exhaustive so that fields can be added.
///
/// ```
/// use flow_core::{FlowEvent, FlowKey, clock};
/// let key = FlowKey::udp("[fd00::2]:5353".parse()?, "[fd00::1]:53".parse()?);
/// let event = FlowEvent::opened(key, clock::monotonic_now_ns());
/// assert_eq!(event.key.dst_port, 53);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FlowEvent {
    /// The flow, oriented initiator → responder.
    pub key: FlowKey,
    /// What happened.
    pub kind: FlowEventKind,
    /// When, in CLOCK_MONOTONIC nanoseconds ([`crate::clock`]).
    pub timestamp_ns: u64,
    /// Why a `Closed` flow closed, when the backend knows
    /// ([`FlowEvent::because`]); `None` for other kinds.
    pub close_reason: Option<CloseReason>,
    /// The name the scope looked up and got the destination address for
    /// before the flow opened (the query name, not a CNAME target; the
    /// latest when several names had that address); `None` when unknown.
    pub host: Option<Arc<str>>,
    /// TCP: the server name of the TLS ClientHello the initiator sent
    /// (SNI); known once that payload passed, so on a `closed` event rather
    /// than its `opened`.
    pub sni: Option<Arc<str>>,
    /// The process behind the flow, when the backend knows it.
    pub process: Option<Arc<Process>>,
    /// The cgroup (and container) the flow's socket belongs to, when the
    /// backend watches a whole host ([`crate::workload`]).
    pub workload: Option<Arc<Workload>>,
    /// The backend lost messages and rebuilt this event after the loss
    /// ([`FlowEvent::resynced`]): from a listing of its table, or from a
    /// message it read late, from the backlog behind the loss. The flow is
    /// real, but [`timestamp_ns`](Self::timestamp_ns) is when the listing
    /// was taken or the message read, not when the flow opened or closed
    /// (and a close's counters are those of that moment). `false` for
    /// events as they happened.
    pub resynced: bool,
    /// The flow was started from outside the scope: an accepted connection,
    /// or a datagram that arrived before any was sent
    /// ([`FlowEvent::inbound`]). `false` for flows the scope started, and
    /// where the backend cannot tell.
    pub inbound: bool,
    /// On `Closed` and `Update`: the counters of each direction, when the
    /// backend counts them apart ([`FlowEvent::closed_by_direction`]);
    /// they add up to the kind's totals.
    pub directions: Option<DirectionCounters>,
    /// On `Closed` and `Update`: when the flow opened (CLOCK_MONOTONIC
    /// ns), when the backend knows ([`FlowEvent::started`]).
    pub start_ns: Option<u64>,
}

impl FlowEvent {
    /// An event of any kind.
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowEventKind, FlowKey};
    /// let key = FlowKey::udp("10.0.0.1:5353".parse()?, "10.0.0.2:53".parse()?);
    /// let event = FlowEvent::new(key, FlowEventKind::Opened, 42);
    /// assert_eq!(event.timestamp_ns, 42);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn new(key: FlowKey, kind: FlowEventKind, timestamp_ns: u64) -> Self {
        Self {
            key,
            kind,
            timestamp_ns,
            close_reason: None,
            host: None,
            sni: None,
            process: None,
            workload: None,
            resynced: false,
            inbound: false,
            directions: None,
            start_ns: None,
        }
    }

    /// A DNS lookup the scope made, on the lookup's own flow `key`.
    ///
    /// ```
    /// use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::udp("10.0.0.1:40000".parse()?, "10.0.0.53:53".parse()?);
    /// let lookup = DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NO_ERROR);
    /// assert_eq!(FlowEvent::dns(key, lookup, 5).kind.name(), "dns");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn dns(key: FlowKey, lookup: DnsLookup, timestamp_ns: u64) -> Self {
        Self::new(key, FlowEventKind::Dns(Arc::new(lookup)), timestamp_ns)
    }

    /// The same event, its destination named `host` (or not, for `None`).
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "151.101.0.223:443".parse()?);
    /// let event = FlowEvent::opened(key, 1).named("pypi.org");
    /// assert_eq!(event.host.as_deref(), Some("pypi.org"));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn named(mut self, host: impl IntoName) -> Self {
        self.host = host.into_name();
        self
    }

    /// The same event with the server name of the flow's ClientHello (or
    /// none, for `None`).
    #[must_use]
    pub fn with_sni(mut self, sni: impl IntoName) -> Self {
        self.sni = sni.into_name();
        self
    }

    /// The same event, attributed to `process` (or to none).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use flow_core::process::Process;
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let event = FlowEvent::opened(key, 1).by(Arc::new(Process::new(4711).with_comm("curl")));
    /// assert_eq!(event.process.unwrap().pid, Some(4711));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn by(mut self, process: impl Into<Option<Arc<Process>>>) -> Self {
        self.process = process.into();
        self
    }

    /// The same event, in `workload` (or in none).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use flow_core::workload::Workload;
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let event = FlowEvent::opened(key, 1).within(Arc::new(Workload::new("/system.slice")));
    /// assert_eq!(event.workload.unwrap().cgroup.as_ref(), "/system.slice");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn within(mut self, workload: impl Into<Option<Arc<Workload>>>) -> Self {
        self.workload = workload.into();
        self
    }

    /// The DNS lookup this event reports, if it is one.
    #[must_use]
    pub fn lookup(&self) -> Option<&DnsLookup> {
        match &self.kind {
            FlowEventKind::Dns(lookup) => Some(lookup),
            _ => None,
        }
    }

    /// The same event, marked as rebuilt after the backend lost messages
    /// (from a listing of its table, or a message read late behind the
    /// loss: its time is the listing's or the read's), or not.
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let listed = FlowEvent::opened(key, 9).resynced(true);
    /// assert!(listed.resynced);
    /// assert!(!FlowEvent::opened(key, 9).resynced);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn resynced(mut self, resynced: bool) -> Self {
        self.resynced = resynced;
        self
    }

    /// The same event, marked as started from outside the scope (an
    /// accepted connection), or not.
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.9:40000".parse()?, "10.0.0.1:80".parse()?);
    /// assert!(FlowEvent::opened(key, 9).inbound(true).inbound);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn inbound(mut self, inbound: bool) -> Self {
        self.inbound = inbound;
        self
    }

    /// A flow denied by `rule` (`None`: a drop rule flowtrack does not
    /// own), `enforced` or only reported (audit).
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowEventKind, FlowKey};
    /// let key = FlowKey::tcp("0.0.0.0:0".parse()?, "192.0.2.7:443".parse()?);
    /// let event = FlowEvent::denied(key, "default", true, 5);
    /// assert_eq!(event.kind, FlowEventKind::Denied { rule: Some("default".into()), enforced: true });
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn denied(key: FlowKey, rule: impl IntoName, enforced: bool, timestamp_ns: u64) -> Self {
        Self::new(
            key,
            FlowEventKind::Denied {
                rule: rule.into_name(),
                enforced,
            },
            timestamp_ns,
        )
    }

    /// The same event, closed for `reason` (a [`CloseReason`], or an
    /// `Option` of one when the backend may not know).
    ///
    /// ```
    /// use flow_core::{CloseReason, FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let event = FlowEvent::closed(key, 10, 1_200, 9).because(CloseReason::Fin);
    /// assert_eq!(event.close_reason, Some(CloseReason::Fin));
    /// assert_eq!(event.because(None).close_reason, None);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn because(mut self, reason: impl Into<Option<CloseReason>>) -> Self {
        self.close_reason = reason.into();
        self
    }

    /// A flow's first packet was seen.
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowEventKind, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// assert_eq!(FlowEvent::opened(key, 7).kind, FlowEventKind::Opened);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn opened(key: FlowKey, timestamp_ns: u64) -> Self {
        Self::new(key, FlowEventKind::Opened, timestamp_ns)
    }

    /// A flow ended after `pkt_count` packets and `byte_count` bytes (both
    /// directions).
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowEventKind, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let event = FlowEvent::closed(key, 10, 1_200, 9);
    /// assert_eq!(event.kind, FlowEventKind::Closed { pkt_count: 10, byte_count: 1_200 });
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn closed(key: FlowKey, pkt_count: u64, byte_count: u64, timestamp_ns: u64) -> Self {
        Self::new(
            key,
            FlowEventKind::Closed {
                pkt_count,
                byte_count,
            },
            timestamp_ns,
        )
    }

    /// A flow ended after its initiator sent `directions.src` and its
    /// responder `directions.dst`; the totals are their sum.
    ///
    /// ```
    /// use flow_core::counters::{Counters, DirectionCounters};
    /// use flow_core::{FlowEvent, FlowEventKind, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// let both = DirectionCounters::new(Counters::new(6, 500), Counters::new(4, 700));
    /// let event = FlowEvent::closed_by_direction(key, both, 9);
    /// assert_eq!(event.kind, FlowEventKind::Closed { pkt_count: 10, byte_count: 1_200 });
    /// assert_eq!(event.directions, Some(both));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn closed_by_direction(
        key: FlowKey,
        directions: DirectionCounters,
        timestamp_ns: u64,
    ) -> Self {
        let total = directions.total();
        let mut event = Self::closed(key, total.packets, total.bytes, timestamp_ns);
        event.directions = Some(directions);
        event
    }

    /// An interim report of a flow still open: `pkt_count` packets and
    /// `byte_count` bytes so far (both directions).
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// assert_eq!(FlowEvent::update(key, 3, 180, 9).kind.name(), "update");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn update(key: FlowKey, pkt_count: u64, byte_count: u64, timestamp_ns: u64) -> Self {
        Self::new(
            key,
            FlowEventKind::Update {
                pkt_count,
                byte_count,
            },
            timestamp_ns,
        )
    }

    /// An interim report of a flow still open, by direction (see
    /// [`FlowEvent::closed_by_direction`]).
    #[must_use]
    pub fn update_by_direction(
        key: FlowKey,
        directions: DirectionCounters,
        timestamp_ns: u64,
    ) -> Self {
        let total = directions.total();
        let mut event = Self::update(key, total.packets, total.bytes, timestamp_ns);
        event.directions = Some(directions);
        event
    }

    /// The same event, of a flow that opened at `start_ns` (CLOCK_MONOTONIC
    /// ns), or at an unknown time for `None`.
    ///
    /// ```
    /// use flow_core::{FlowEvent, FlowKey};
    /// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
    /// assert_eq!(FlowEvent::closed(key, 1, 60, 9).started(4).start_ns, Some(4));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[must_use]
    pub fn started(mut self, start_ns: impl Into<Option<u64>>) -> Self {
        self.start_ns = start_ns.into();
        self
    }
}

/// A name for [`FlowEvent::named`] and [`FlowEvent::with_sni`]: a string,
/// or an `Option` of one for a name that may be unknown.
pub trait IntoName {
    /// The name, if any.
    fn into_name(self) -> Option<Arc<str>>;
}

impl IntoName for Arc<str> {
    fn into_name(self) -> Option<Arc<str>> {
        Some(self)
    }
}

impl IntoName for &str {
    fn into_name(self) -> Option<Arc<str>> {
        Some(self.into())
    }
}

impl IntoName for String {
    fn into_name(self) -> Option<Arc<str>> {
        Some(self.into())
    }
}

impl<T: IntoName> IntoName for Option<T> {
    fn into_name(self) -> Option<Arc<str>> {
        self.and_then(IntoName::into_name)
    }
}

impl fmt::Display for FlowEvent {
    /// `closed tcp 10.0.0.1:40000 -> 10.0.0.2:80 at 1.5s (10 packets, 1200 bytes, fin)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} at {}s",
            self.kind.name(),
            self.key,
            Seconds(self.timestamp_ns)
        )?;
        match &self.kind {
            FlowEventKind::Opened => {}
            FlowEventKind::Denied { rule, enforced } => {
                if let Some(rule) = rule {
                    write!(f, " by {rule}")?;
                }
                if !enforced {
                    f.write_str(" (audit)")?;
                }
            }
            FlowEventKind::Closed {
                pkt_count,
                byte_count,
            }
            | FlowEventKind::Update {
                pkt_count,
                byte_count,
            } => {
                write!(f, " ({pkt_count} packets, {byte_count} bytes")?;
                if let Some(reason) = self.close_reason {
                    write!(f, ", {reason}")?;
                }
                f.write_str(")")?;
            }
            FlowEventKind::Dns(lookup) => {
                write!(f, " ({} {} {})", lookup.query, lookup.qtype, lookup.rcode)?
            }
        }
        if let Some(host) = &self.host {
            write!(f, " host {host}")?;
        }
        if let Some(sni) = &self.sni {
            write!(f, " sni {sni}")?;
        }
        if let Some(process) = &self.process {
            write!(f, " by {process}")?;
        }
        if let Some(workload) = &self.workload {
            write!(f, " in {}", workload.cgroup)?;
        }
        Ok(())
    }
}
