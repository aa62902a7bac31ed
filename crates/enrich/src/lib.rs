//! What a backend adds to the flows it observes, the same way for every
//! backend: the destination's names, learnt from the scope's own DNS
//! answers and from the ClientHello a TLS client sends, and the process
//! behind each flow.
//!
//! A backend feeds an [`Enricher`] what it captures, in the order the
//! kernel gave it, and passes each flow event through it:
//!
//! - [`Enricher::dns_answer`]: a DNS answer that reached the scope (a UDP
//!   datagram, or a segment of a DNS-over-TCP stream). It names the
//!   answer's addresses and gives the `dns` event of the lookup.
//! - [`Enricher::first_payload`]: what a TCP flow's initiator sent first;
//!   a ClientHello's server name becomes the flow's `sni`.
//! - [`Enricher::executed`] and [`Enricher::forked`]: what the scope's
//!   processes run (eBPF), so that a process that connected and exited at
//!   once still has its program and command line.
//! - [`Enricher::opened`], [`Enricher::update`], [`Enricher::closed`],
//!   [`Enricher::denied`]:
//!   the flow's events, named (the host its destination address was
//!   looked up as before it opened) and attributed (its socket's owner).
//!
//! Because the kernel orders an answer before the connection that used it,
//! a flow to an address carries its name whenever the answer reached the
//! scope before the flow's first packet.
//!
//! ```
//! use flow_core::{FlowEvent, FlowKey};
//! use flow_enrich::{EnrichConfig, Enricher};
//!
//! let mut enricher = Enricher::new(EnrichConfig::default());
//! let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?);
//! let opened = enricher.opened(FlowEvent::opened(key, 1), None);
//! assert_eq!(opened.host, None, "no lookup named 10.0.0.2");
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

mod answers;
mod flows;
pub mod process;

use std::num::NonZeroUsize;
use std::sync::Arc;

use flow_core::{FlowError, FlowEvent, FlowKey, LossPoint};
use flow_names::cache::NameCache;
use flow_names::sni::{ServerName, server_name};

pub use process::{Exec, Owner};

use crate::answers::Answers;
use crate::flows::OpenFlows;
use crate::process::Processes;

/// What an [`Enricher`] yields besides the events it is given: `dns`
/// events and losses.
pub type Item = Result<FlowEvent, FlowError>;

/// Addresses whose names are kept by default.
pub const DEFAULT_NAME_CACHE_ENTRIES: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();

/// How much an [`Enricher`] remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnrichConfig {
    names: NonZeroUsize,
    flows: NonZeroUsize,
    processes: NonZeroUsize,
}

impl Default for EnrichConfig {
    /// 65,536 addresses named, 65,536 open flows, 16,384 processes.
    fn default() -> Self {
        Self {
            names: DEFAULT_NAME_CACHE_ENTRIES,
            flows: NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN),
            processes: NonZeroUsize::new(16_384).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

impl EnrichConfig {
    /// Addresses whose names are kept (a name cache eviction beyond them is
    /// a loss, `name_cache_eviction`).
    #[must_use]
    pub fn names(mut self, addresses: NonZeroUsize) -> Self {
        self.names = addresses;
        self
    }

    /// Open flows whose names and process are kept until they close (the
    /// backend's own flow table size is a good value).
    #[must_use]
    pub fn flows(mut self, flows: NonZeroUsize) -> Self {
        self.flows = flows;
        self
    }

    /// Processes whose program and command line are kept.
    #[must_use]
    pub fn processes(mut self, processes: NonZeroUsize) -> Self {
        self.processes = processes;
        self
    }
}

/// Names and attributes flows; see the [crate](self) documentation.
#[derive(Debug)]
pub struct Enricher {
    names: NameCache,
    answers: Answers,
    flows: OpenFlows,
    processes: Processes,
}

impl Enricher {
    /// An enricher that remembers what `config` says.
    #[must_use]
    pub fn new(config: EnrichConfig) -> Self {
        Self {
            names: NameCache::new(config.names),
            answers: Answers::default(),
            flows: OpenFlows::new(config.flows),
            processes: Processes::new(config.processes),
        }
    }

    /// A DNS answer reached the scope on the lookup's flow `flow` (the
    /// asking socket → the resolver). `payload` is what the backend copied
    /// of the UDP datagram or TCP segment (`tcp_seq`: the segment's
    /// sequence number), `original_len` its whole length. Pushes the
    /// lookups it completes as `dns` events, and losses: a copy cut short,
    /// undecodable messages, names evicted from the cache.
    pub fn dns_answer(
        &mut self,
        flow: FlowKey,
        tcp_seq: Option<u32>,
        payload: &[u8],
        original_len: usize,
        timestamp_ns: u64,
        out: &mut Vec<Item>,
    ) {
        let read = self
            .answers
            .read(flow, tcp_seq, payload, original_len, timestamp_ns);
        if read.cut > 0 {
            out.push(Err(FlowError::lost_at(
                LossPoint::PayloadCut,
                Some(read.cut),
                timestamp_ns,
            )));
        }
        if read.malformed > 0 {
            out.push(Err(FlowError::lost_at(
                LossPoint::Malformed,
                Some(read.malformed),
                timestamp_ns,
            )));
        }
        let (process, workload) = self.flows.owner(&flow);
        let mut evicted = 0;
        for lookup in read.lookups {
            evicted += self.names.learn(&lookup) as u64;
            out.push(Ok(FlowEvent::dns(flow, lookup, timestamp_ns)
                .by(process.clone())
                .within(workload.clone())));
        }
        if evicted > 0 {
            out.push(Err(FlowError::lost_at(
                LossPoint::NameCacheEviction,
                Some(evicted),
                timestamp_ns,
            )));
        }
    }

    /// What the initiator of the TCP flow `flow` (either orientation) sent
    /// first: a ClientHello names the flow's server.
    pub fn first_payload(&mut self, flow: FlowKey, payload: &[u8]) {
        if let ServerName::Name(name) = server_name(payload) {
            self.flows.set_sni(&flow, name);
        }
    }

    /// A process of the scope executed a program.
    pub fn executed(&mut self, exec: Exec) {
        self.processes.executed(exec);
    }

    /// A process of the scope forked: `child` runs `parent`'s program until
    /// it executes its own. Each is a (pid, start time in ns) pair.
    pub fn forked(&mut self, parent: (u32, u64), child: (u32, u64)) {
        self.processes.forked(parent, child);
    }

    /// A flow opened: named after its destination address, attributed to
    /// `owner` (its socket's), and remembered until it closes (with
    /// whether it was started from outside: [`FlowEvent::inbound`]).
    #[must_use]
    pub fn opened(&mut self, event: FlowEvent, owner: Option<Owner>) -> FlowEvent {
        let host = self.names.host(&event.key.dst_addr);
        let process = owner.map(|owner| self.processes.resolve(&owner));
        let event = event.named(host).by(process);
        self.flows.opened(
            event.key,
            flows::Known {
                host: event.host.clone(),
                sni: None,
                process: event.process.clone(),
                workload: event.workload.clone(),
                inbound: event.inbound,
            },
        );
        event
    }

    /// A flow closed: it carries what its opening had, and the server name
    /// its initiator sent meanwhile; then it is forgotten.
    #[must_use]
    pub fn closed(&mut self, event: FlowEvent) -> FlowEvent {
        let key = event.key;
        self.answers.forget(&key);
        let known = self.flows.closed(&key);
        self.with_known(event, known)
    }

    /// A flow still open was reported (an interim update): it carries
    /// what its opening had, and the server name its initiator sent so
    /// far; it stays remembered.
    #[must_use]
    pub fn update(&mut self, event: FlowEvent) -> FlowEvent {
        let known = self.flows.known(&event.key);
        self.with_known(event, known)
    }

    /// `event` with what is known of its flow, or its destination's name.
    fn with_known(&mut self, event: FlowEvent, known: Option<flows::Known>) -> FlowEvent {
        let key = event.key;
        match known {
            Some(known) => event
                .named(known.host.or_else(|| self.names.host(&key.dst_addr)))
                .with_sni(known.sni)
                .by(known.process)
                .within(known.workload)
                .inbound(known.inbound),
            None => {
                let host = self.names.host(&key.dst_addr);
                event.named(host)
            }
        }
    }

    /// A flow was denied: named after its destination, and attributed to
    /// `owner` when the backend knows it (a refused `connect()`), else as
    /// the flow was when it opened (so is its workload, when the denial
    /// has none of its own).
    #[must_use]
    pub fn denied(&mut self, event: FlowEvent, owner: Option<Owner>) -> FlowEvent {
        let host = self.names.host(&event.key.dst_addr);
        let (opened_by, opened_within) = self.flows.owner(&event.key);
        let process = match owner {
            Some(owner) => Some(self.processes.resolve(&owner)),
            None => opened_by,
        };
        let workload = event.workload.clone().or(opened_within);
        event.named(host).by(process).within(workload)
    }

    /// The names every address of `addresses` was looked up as, latest
    /// first (for summaries: a destination reached under several names).
    #[must_use]
    pub fn names_of(&self, address: &std::net::IpAddr) -> Vec<Arc<str>> {
        self.names.names(address)
    }
}
