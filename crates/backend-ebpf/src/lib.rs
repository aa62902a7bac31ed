//! The `ebpf` backend of flowtrack: `cgroup_skb` programs (in `ebpf/`,
//! written in Rust with aya-ebpf) observe every packet of a cgroup v2
//! directory's sockets, keep per-flow state in the kernel, and emit a
//! ring-buffer record only when a flow opens or closes.
//!
//! - Flows are keyed initiator → responder: TCP by the SYN's direction,
//!   UDP and ICMP echo by the first packet's.
//! - `Closed` counts each direction apart (what the initiator sent, what
//!   the responder sent): bytes are IP-level lengths and match the wire;
//!   packets are the kernel's socket buffers, which under GSO/GRO (common
//!   on loopback and veth) are fewer than wire packets.
//! - With an active timeout ([`EbpfConfig::active_timeout`]), flows open
//!   that long are reported with their counters so far (`Update`), every
//!   timeout: a checkpoint iterator first moves the counting sockets'
//!   counts into the flow table, which is then read.
//! - A TCP flow closes after the FIN exchange or a reset; a connected UDP
//!   flow when its socket is released; everything else after an idle
//!   timeout, or when the cgroup has no process left. An established TCP
//!   connection is counted by its socket (in socket storage, with no
//!   flow-table lookup) and does not idle out while it is.
//! - Loss is reported in-band: ring-buffer reservation failures, flow-table
//!   evictions or insert failures, and undecodable records.
//!
//! A TCP flow is only tracked from its SYN: connections that existed before
//! the programs attached are not reported.
//!
//! ```no_run
//! use flow_backend_ebpf::{EbpfConfig, EbpfSource};
//! use flow_core::FlowSource;
//! use futures::StreamExt;
//!
//! # async fn demo() -> Result<(), flow_core::FlowError> {
//! let mut source = EbpfSource::new(EbpfConfig::new("/sys/fs/cgroup/unified/my-build"));
//! let mut events = source.start().await?; // attached from here on
//! while let Some(item) = events.next().await {
//!     println!("{item:?}");
//! }
//! # Ok(()) }
//! ```

mod attach;
mod checkpoint;
mod decode;
mod enforce;
mod kernel_offsets;
mod reader;
mod resolver;
mod workloads;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flow_core::{ConfigError, FlowError, FlowSource, FlowStream};

pub use decode::{Record, decode_record};
pub use flow_ebpf_common::CGROUP_PROGRAMS;

/// The backend's name, as the output's `backend` field shows it.
pub const BACKEND_NAME: &str = "ebpf";

/// The fewest flows the kernel table can be given.
pub const MIN_FLOW_TABLE_ENTRIES: u32 = 64;

/// The most flows the kernel table can be given: 8,388,608, about 1.2 GiB
/// of kernel memory (an entry costs about 152 bytes: its 40-byte key, its
/// 48-byte value and the LRU map's own bookkeeping, as the kernel accounts
/// a map of a million entries), allocated when the backend starts.
pub const MAX_FLOW_TABLE_ENTRIES: u32 = 1 << 23;

/// What to observe and how big the kernel-side buffers are: built with
/// [`EbpfConfig::new`], then adjusted; a value a setting cannot take is
/// refused there, with a [`ConfigError`].
///
/// ```
/// use std::time::Duration;
/// use flow_backend_ebpf::EbpfConfig;
/// let config = EbpfConfig::new("/sys/fs/cgroup/unified/build")
///     .ring_bytes(1 << 20)?
///     .datagram_idle(Duration::from_secs(10))?;
/// assert!(EbpfConfig::new("/x").sweep_interval(Duration::ZERO).is_err());
/// assert!(EbpfConfig::new("/x").ring_bytes(5_000).is_err());
/// # drop(config);
/// # Ok::<(), flow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EbpfConfig {
    pub(crate) cgroup: PathBuf,
    pub(crate) ring_bytes: u32,
    pub(crate) flow_table_entries: u32,
    pub(crate) datagram_idle: Duration,
    pub(crate) tcp_idle: Duration,
    pub(crate) fin_linger: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) own_slot_cpus: u32,
    pub(crate) name_cache_entries: NonZeroUsize,
    pub(crate) names: bool,
    pub(crate) processes: bool,
    pub(crate) policy: Option<Arc<flow_policy::Policy>>,
    pub(crate) fail_enforcement: bool,
    pub(crate) active_timeout: Option<Duration>,
    pub(crate) workloads: bool,
}

impl EbpfConfig {
    /// Defaults for observing `cgroup`: a 4 MiB ring, 65,536 flows, idle
    /// limits of 30 s (UDP, ICMP) and 300 s (TCP), a FIN linger of 2 s,
    /// and a sweep every second.
    pub fn new(cgroup: impl Into<PathBuf>) -> Self {
        Self {
            cgroup: cgroup.into(),
            ring_bytes: flow_ebpf_common::DEFAULT_RING_BYTES,
            flow_table_entries: flow_ebpf_common::DEFAULT_FLOW_TABLE_ENTRIES,
            datagram_idle: Duration::from_secs(30),
            tcp_idle: Duration::from_secs(300),
            fin_linger: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(1),
            own_slot_cpus: flow_ebpf_common::SOCKET_COUNTER_SLOTS as u32,
            name_cache_entries: flow_enrich::DEFAULT_NAME_CACHE_ENTRIES,
            names: true,
            processes: true,
            policy: None,
            fail_enforcement: false,
            active_timeout: None,
            workloads: false,
        }
    }

    /// Whether each flow carries its socket's cgroup, as a path below the
    /// cgroup v2 root, and the container that path names
    /// ([`flow_core::workload`]): for watching a whole host (`watch --all`),
    /// where the cgroup says which workload made the flow. Off by default.
    #[must_use]
    pub fn workloads(mut self, workloads: bool) -> Self {
        self.workloads = workloads;
        self
    }

    /// Enforces `policy`: denied connections and datagrams fail with
    /// `EPERM` in the `connect()` or `sendmsg()` call (the cgroup's
    /// socket-address hooks), denied ICMP echo requests are dropped as they
    /// leave, and each refusal is a `denied` event with `"enforced": true`.
    /// With name rules, the scope's DNS (port 53, TCP and UDP) goes through
    /// flowtrack's own resolver, which allows a name's answered addresses
    /// before the answer reaches the workload; it runs in flowtrack's
    /// network namespace, which the scope's processes must share. The
    /// source fails to start when the policy cannot be put in place (too
    /// many rules on one prefix, a hook the kernel refuses). The policy's
    /// mode is not looked at.
    #[must_use]
    pub fn enforce(mut self, policy: Arc<flow_policy::Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// For tests (feature `testing`): attaching the socket-address hooks
    /// fails (they are pointed at a directory that is no cgroup), as a
    /// kernel that cannot take them would, so that enforce mode's refusal
    /// to start can be seen.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn fail_enforcement(mut self) -> Self {
        self.fail_enforcement = true;
        self
    }

    /// Whether flows are named (default yes): with `false` the programs
    /// copy no DNS answer or first payload, and events carry no `host`,
    /// `sni` or `dns` lookups.
    #[must_use]
    pub fn names(mut self, names: bool) -> Self {
        self.names = names;
        self
    }

    /// Whether flows are attributed to processes (default yes): with
    /// `false` neither the `sock_create` program nor the exec and fork
    /// tracing programs are loaded, and events carry no process.
    #[must_use]
    pub fn processes(mut self, processes: bool) -> Self {
        self.processes = processes;
        self
    }

    /// Reports every flow open for at least `timeout` with its counters so
    /// far (an `Update` event), once every `timeout`: a flow's first
    /// update comes `timeout` to twice that after it opened. Off by
    /// default. Needs the kernel's BTF (the checkpoint iterator that reads
    /// the counting sockets' counts): without it the source does not
    /// start.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flow_backend_ebpf::EbpfConfig;
    /// assert!(EbpfConfig::new("/x").active_timeout(Duration::from_secs(60)).is_ok());
    /// assert!(EbpfConfig::new("/x").active_timeout(Duration::ZERO).is_err());
    /// ```
    ///
    /// # Errors
    /// When `timeout` is zero.
    pub fn active_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.active_timeout = Some(ConfigError::nonzero("active timeout", timeout)?);
        Ok(self)
    }

    /// Addresses whose names (from the scope's DNS answers) are kept at
    /// most (default 65,536): beyond that the least recently used loses
    /// them, and the loss is reported (`name_cache_eviction`).
    #[must_use]
    pub fn name_cache_entries(mut self, addresses: NonZeroUsize) -> Self {
        self.name_cache_entries = addresses;
        self
    }

    /// The cgroup v2 directory whose sockets are observed.
    #[must_use]
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Ring buffer size in bytes: a power of two, a multiple of the page
    /// size. Each record is 80 bytes (plus an 8-byte header).
    ///
    /// # Errors
    /// When the kernel cannot take `bytes` ([`ring_bytes_problem`]).
    pub fn ring_bytes(mut self, bytes: u32) -> Result<Self, ConfigError> {
        if let Some(problem) = ring_bytes_problem(bytes) {
            return Err(ConfigError::new("ring buffer size", problem));
        }
        self.ring_bytes = bytes;
        Ok(self)
    }

    /// Flows the kernel table holds at once (LRU), from
    /// [`MIN_FLOW_TABLE_ENTRIES`] to [`MAX_FLOW_TABLE_ENTRIES`].
    ///
    /// # Errors
    /// When `flows` is out of that range.
    pub fn flow_table_entries(mut self, flows: u32) -> Result<Self, ConfigError> {
        if let Some(problem) = flow_table_entries_problem(flows) {
            return Err(ConfigError::new("flow table entries", problem));
        }
        self.flow_table_entries = flows;
        Ok(self)
    }

    /// A UDP or ICMP flow with no packet for this long is closed.
    ///
    /// # Errors
    /// When `idle` is zero.
    pub fn datagram_idle(mut self, idle: Duration) -> Result<Self, ConfigError> {
        self.datagram_idle = ConfigError::nonzero("datagram idle timeout", idle)?;
        Ok(self)
    }

    /// A TCP flow with no packet for this long is closed. It applies to
    /// flows no established socket of the cgroup counts (half-open ones,
    /// or ones whose sockets went without a FIN or reset): an established
    /// connection closes with its socket, however idle.
    ///
    /// # Errors
    /// When `idle` is zero.
    pub fn tcp_idle(mut self, idle: Duration) -> Result<Self, ConfigError> {
        self.tcp_idle = ConfigError::nonzero("TCP idle timeout", idle)?;
        Ok(self)
    }

    /// After a FIN from both sides, a TCP flow waiting for its last ACK is
    /// closed after this long.
    ///
    /// # Errors
    /// When `linger` is zero.
    pub fn fin_linger(mut self, linger: Duration) -> Result<Self, ConfigError> {
        self.fin_linger = ConfigError::nonzero("FIN linger", linger)?;
        Ok(self)
    }

    /// How often idle flows and loss counters are checked.
    ///
    /// # Errors
    /// When `interval` is zero.
    pub fn sweep_interval(mut self, interval: Duration) -> Result<Self, ConfigError> {
        self.sweep_interval = ConfigError::nonzero("sweep interval", interval)?;
        Ok(self)
    }

    /// For tests (feature `testing`): how many CPUs count an established
    /// socket's packets in a counter slot of their own (plain adds); the
    /// others share those slots and add atomically. Default, and the most
    /// that has effect: `flow_ebpf_common::SOCKET_COUNTER_SLOTS`. A machine
    /// with fewer CPUs than that takes the shared path only when this is
    /// lowered.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn own_slot_cpus(mut self, cpus: u32) -> Self {
        self.own_slot_cpus = cpus;
        self
    }
}

/// Why the kernel table cannot hold `flows` ([`EbpfConfig::flow_table_entries`]),
/// if it cannot.
///
/// ```
/// use flow_backend_ebpf::flow_table_entries_problem;
/// assert_eq!(flow_table_entries_problem(65_536), None);
/// assert!(flow_table_entries_problem(100_000_000).unwrap().contains("at most 8388608"));
/// ```
#[must_use]
pub fn flow_table_entries_problem(flows: u32) -> Option<String> {
    if flows < MIN_FLOW_TABLE_ENTRIES {
        Some(format!(
            "{flows} flows: the table holds at least {MIN_FLOW_TABLE_ENTRIES}"
        ))
    } else if flows > MAX_FLOW_TABLE_ENTRIES {
        Some(format!(
            "{flows} flows: the table holds at most {MAX_FLOW_TABLE_ENTRIES} \
             (about 152 bytes of kernel memory a flow, 1.2 GiB at the most)"
        ))
    } else {
        None
    }
}

/// Why `bytes` cannot be the ring buffer's size ([`EbpfConfig::ring_bytes`]),
/// if it cannot: the kernel takes a power of two that is a multiple of the
/// page size.
///
/// ```
/// use flow_backend_ebpf::ring_bytes_problem;
/// assert_eq!(ring_bytes_problem(1 << 22), None);
/// assert!(ring_bytes_problem(5_000).unwrap().contains("power of two"));
/// ```
#[must_use]
pub fn ring_bytes_problem(bytes: u32) -> Option<String> {
    let page = rustix::param::page_size();
    let fits = bytes.is_power_of_two() && (bytes as usize).is_multiple_of(page);
    (!fits).then(|| {
        format!("a ring buffer of {bytes} bytes: the kernel takes a power of two, at least the page size ({page})")
    })
}

/// The eBPF [`FlowSource`]: attaches on [`FlowSource::start`]; dropping the
/// stream detaches everything.
#[derive(Debug)]
pub struct EbpfSource {
    config: Option<EbpfConfig>,
    /// Once started: asks the stream to finish.
    finish: Option<Arc<tokio::sync::Notify>>,
}

impl EbpfSource {
    /// A source that will observe `config.cgroup` once started.
    #[must_use]
    pub fn new(config: EbpfConfig) -> Self {
        Self {
            config: Some(config),
            finish: None,
        }
    }
}

#[async_trait]
impl FlowSource for EbpfSource {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    async fn start(&mut self) -> Result<FlowStream, FlowError> {
        let config = self.config.take().ok_or_else(|| {
            FlowError::unavailable(BACKEND_NAME, "this source was already started")
        })?;
        // Name rules enforced: the scope's DNS goes through flowtrack's
        // resolver, bound before the programs that redirect to it.
        let resolver = match &config.policy {
            Some(policy) if policy.has_name_rules() => Some(resolver::Sockets::bind()?),
            _ => None,
        };
        let port = resolver.as_ref().map_or(0, resolver::Sockets::port);
        let attached = attach::Attached::load_and_attach(&config, port)?;
        let finish = Arc::new(tokio::sync::Notify::new());
        let stream = reader::stream(attached, config, resolver, Arc::clone(&finish))?;
        self.finish = Some(finish);
        Ok(stream)
    }

    /// The stream reads the ring to its end, reports the losses the
    /// kernel counted by then, and ends.
    fn finish(&mut self) -> bool {
        self.finish.as_ref().inspect(|f| f.notify_one()).is_some()
    }
}
