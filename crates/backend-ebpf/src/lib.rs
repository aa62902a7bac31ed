//! The `ebpf` backend of flowtrack: `cgroup_skb` programs (in `ebpf/`,
//! written in Rust with aya-ebpf) observe every packet of a cgroup v2
//! directory's sockets, keep per-flow state in the kernel, and emit a
//! ring-buffer record only when a flow opens or closes.
//!
//! - Flows are keyed initiator → responder: TCP by the SYN's direction,
//!   UDP and ICMP echo by the first packet's.
//! - `Closed` counts both directions: bytes are IP-level lengths and match
//!   the wire; packets are the kernel's socket buffers, which under GSO/GRO
//!   (common on loopback and veth) are fewer than wire packets.
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
mod decode;
mod reader;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use flow_core::{FlowError, FlowSource, FlowStream};

pub use decode::decode_record;

/// The backend's name, as the output's `backend` field shows it.
pub const BACKEND_NAME: &str = "ebpf";

/// What to observe and how big the kernel-side buffers are.
#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// The cgroup v2 directory whose sockets are observed.
    pub cgroup: PathBuf,
    /// Ring buffer size in bytes: a power of two, multiple of the page
    /// size ([`ring_bytes_problem`]). Each record is 80 bytes (plus an
    /// 8-byte header). Default 4 MiB.
    pub ring_bytes: u32,
    /// Flows the kernel table holds at once (LRU). Default 65,536; each
    /// entry costs about 80 bytes of key and value plus map overhead.
    pub flow_table_entries: u32,
    /// A UDP or ICMP flow with no packet for this long is closed. Default 30 s.
    pub datagram_idle: Duration,
    /// A TCP flow with no packet for this long is closed. Default 300 s.
    /// It applies to flows no established socket of the cgroup counts
    /// (half-open ones, or ones whose sockets went without a FIN or reset):
    /// an established connection closes with its socket, however idle.
    pub tcp_idle: Duration,
    /// After a FIN from both sides, a TCP flow waiting for its last ACK is
    /// closed after this long. Default 2 s.
    pub fin_linger: Duration,
    /// How often idle flows and loss counters are checked. Default 1 s.
    pub sweep_interval: Duration,
    /// For tests: how many CPUs count an established socket's packets in a
    /// counter slot of their own (plain adds); the others share those
    /// slots and add atomically. Default, and the most that has effect:
    /// `flow_ebpf_common::SOCKET_COUNTER_SLOTS`. A machine with fewer CPUs
    /// than that takes the shared path only when this is lowered.
    #[doc(hidden)]
    pub own_slot_cpus: u32,
}

impl EbpfConfig {
    /// Defaults for observing `cgroup`.
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
        }
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
}

impl EbpfSource {
    /// A source that will observe `config.cgroup` once started.
    #[must_use]
    pub fn new(config: EbpfConfig) -> Self {
        Self {
            config: Some(config),
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
        let attached = attach::Attached::load_and_attach(&config)?;
        reader::stream(attached, config)
    }
}
