//! The `nflog` backend of flowtrack: the kernel's connection tracker
//! reports flows over ctnetlink, and nfnetlink_log reports logged (denied)
//! packets, both read with neli.
//!
//! On [`FlowSource::start`] a dedicated thread enters the scope's network
//! namespace and:
//!
//! - subscribes to conntrack NEW, UPDATE and DESTROY events (receive buffer
//!   set with `SO_RCVBUFFORCE`);
//! - turns on `nf_conntrack_acct` and `nf_conntrack_timestamp` (restored
//!   when it stops; a record under [`STATE_DIR`], locked while it runs,
//!   lets the next start restore them after a crash);
//! - binds an nflog group (sequence numbers on, one packet per message);
//! - installs one nf_tables table of its own (built as netlink messages)
//!   that marks the scope's new connections with a ct mark, limits their
//!   events to new, destroy and TCP state changes, and logs them; and logs
//!   the DNS answers that reach the scope and the TLS ClientHellos it
//!   sends, with their payload. The table is named after its mark and
//!   owned by the thread's socket: no two instances in a namespace share a
//!   mark, and the kernel removes the table when the process ends, however
//!   it ends. In enforce mode the table also holds the policy's address
//!   rules (interval sets per family): the scope's new outgoing flows the
//!   policy denies are refused with a TCP reset (`connect()` fails with
//!   `ECONNREFUSED` at once) or ICMP administratively prohibited (the
//!   `send()` fails with `EPERM`), never silently dropped.
//!
//! The stream then reads the sockets on the task that polls it (one
//! thread wakes per batch of messages); the thread waits to undo all of
//! this in the namespace when the stream ends or is dropped.
//!
//! Events:
//!
//! - `Opened` on NEW; the key is conntrack's original tuple
//!   (initiator → responder).
//! - `Closed` when the TCP state reaches TIME_WAIT or CLOSE (counters read
//!   from the table at once, not 120 s later at DESTROY), on DESTROY for
//!   other flows, and for every open flow when a cgroup scope has no
//!   process left. Counters are conntrack's: packets and IP-level bytes of
//!   each direction (its original and reply counters).
//! - `Update`, with an active timeout ([`NflogConfig::active_timeout`]):
//!   every timeout, a listing of the scope's entries (filtered by its ct
//!   mark in the kernel) gives each flow open that long its counters so
//!   far.
//! - The end of the stream when the scope is gone: the cgroup removed, or
//!   the network namespace's name deleted (`ip netns delete`, or the end of
//!   the process of a `/proc/PID/ns/net` path). Open flows are closed
//!   first; the thread then leaves the namespace, so it does not keep a
//!   deleted namespace alive.
//! - `Denied` for packets logged by a drop rule whose log prefix starts
//!   with [`DENY_PREFIX`] to the backend's group (one per flow per minute);
//!   in enforce mode ([`NflogConfig::enforce`]), for each new flow of the
//!   scope its own rules refused, with the policy's rule that denied it.
//! - `Dns` for each answer a lookup of the scope got; flow events carry
//!   the destination's `host` (looked up before the flow opened: the
//!   stream reads the log queued before a conntrack event ahead of it) and
//!   the `sni` of a ClientHello.
//! - The process behind a flow, best effort: the socket's user and group
//!   exactly (from the new-flow log packet of a connection the scope
//!   made); its pid, command and program when the socket is still held by
//!   one of the scope's processes as the flow's NEW is read (its inode
//!   found with sock_diag, then in /proc/PID/fd).
//! - Loss: `ENOBUFS` on the event socket (a `netlink_overrun` item; the
//!   buffer grows up to a cap and the table is dumped to resync, so no
//!   flow is left without its `Opened` and `Closed`; a flow whose end fell
//!   into the overrun closes with zero counters), nflog sequence gaps,
//!   and undecodable messages.
//!
//! Only connections that start after the rules are in place are reported.
//!
//! ```no_run
//! use flow_backend_nflog::{NflogConfig, NflogSource};
//! use flow_core::FlowSource;
//! use futures::StreamExt;
//!
//! # async fn demo() -> Result<(), flow_core::FlowError> {
//! let mut source = NflogSource::new(NflogConfig::cgroup("/sys/fs/cgroup/unified/my-build"));
//! let mut events = source.start().await?; // rules installed from here on
//! while let Some(item) = events.next().await {
//!     println!("{item:?}");
//! }
//! # Ok(()) }
//! ```

mod annotate;
pub mod cleanup;
mod conntrack;
mod listener;
mod mark_filter;
mod netlink;
mod nflog;
mod owners;
mod packet;
mod procs;
mod rules;
mod sockdiag;
mod sysctl;
#[cfg(test)]
mod test_corpus;
mod threaded;
mod tracker;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use flow_core::{ConfigError, FlowError, FlowSource, FlowStream};
use flow_policy::Policy;
use futures::StreamExt;

pub use nflog::DENY_PREFIX;
pub use sysctl::STATE_DIR;

/// The backend's name, as the output's `backend` field shows it.
pub const BACKEND_NAME: &str = "nflog";

/// The smallest netlink receive buffer the backend takes, in bytes.
pub const MIN_RECEIVE_BUFFER: usize = 4096;

/// The largest netlink receive buffer the backend takes, in bytes (1 GiB):
/// the kernel doubles the value given to `SO_RCVBUFFORCE` and keeps it in
/// an `int`, so anything larger is refused (`EINVAL`).
pub const MAX_RECEIVE_BUFFER: usize = 1 << 30;

/// What to observe, and the sizes of the netlink buffers: built with
/// [`NflogConfig::netns`], [`NflogConfig::cgroup`] or the default, then
/// adjusted; a value a setting cannot take is refused there, with a
/// [`ConfigError`].
///
/// ```
/// use flow_backend_nflog::NflogConfig;
/// let config = NflogConfig::cgroup("/sys/fs/cgroup/unified/build")
///     .log_group(7)
///     .receive_buffer(8 << 20)?;
/// assert!(NflogConfig::default().receive_buffer(2 << 30).is_err());
/// # drop(config);
/// # Ok::<(), flow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NflogConfig {
    pub(crate) netns: Option<PathBuf>,
    pub(crate) cgroup: Option<PathBuf>,
    pub(crate) log_group: Option<u16>,
    pub(crate) receive_buffer: usize,
    pub(crate) max_receive_buffer: usize,
    pub(crate) owned_table: bool,
    pub(crate) labels: bool,
    pub(crate) name_cache_entries: NonZeroUsize,
    pub(crate) names: bool,
    pub(crate) processes: bool,
    pub(crate) active_timeout: Option<std::time::Duration>,
    pub(crate) policy: Option<Arc<Policy>>,
    pub(crate) fail_enforcement: bool,
    pub(crate) own_thread: bool,
}

impl NflogConfig {
    /// Every connection of the network namespace at `netns` (an nsfs path
    /// such as `/run/netns/NAME` or `/proc/PID/ns/net`).
    pub fn netns(netns: impl Into<PathBuf>) -> Self {
        Self {
            netns: Some(netns.into()),
            ..Self::default()
        }
    }

    /// The connections of the local sockets of `cgroup` (a cgroup v2
    /// directory) and its descendants, in flowtrack's own network
    /// namespace.
    pub fn cgroup(cgroup: impl Into<PathBuf>) -> Self {
        Self {
            cgroup: Some(cgroup.into()),
            ..Self::default()
        }
    }

    /// The same scope, observed in the network namespace at `netns`
    /// instead of flowtrack's own (a cgroup's sockets in that namespace).
    #[must_use]
    pub fn in_netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// The nflog group to bind (default: the first free one from a
    /// per-process starting point).
    #[must_use]
    pub fn log_group(mut self, group: u16) -> Self {
        self.log_group = Some(group);
        self
    }

    /// The event socket's receive buffer in bytes, set with
    /// `SO_RCVBUFFORCE` (default 4 MiB, about 20,000 events), from
    /// [`MIN_RECEIVE_BUFFER`] to [`MAX_RECEIVE_BUFFER`]. After an overrun
    /// it doubles, up to 64 MiB or this size, whichever is larger.
    ///
    /// # Errors
    /// When `bytes` is out of that range.
    pub fn receive_buffer(mut self, bytes: usize) -> Result<Self, ConfigError> {
        self.receive_buffer = checked_buffer(bytes)?;
        self.max_receive_buffer = self.max_receive_buffer.max(bytes);
        Ok(self)
    }

    /// Addresses whose names (from the scope's DNS answers) are kept at
    /// most (default 65,536): beyond that the least recently used loses
    /// them, and the loss is reported (`name_cache_eviction`).
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// let config = flow_backend_nflog::NflogConfig::default()
    ///     .name_cache_entries(NonZeroUsize::new(1024).unwrap());
    /// # drop(config);
    /// ```
    #[must_use]
    pub fn name_cache_entries(mut self, addresses: NonZeroUsize) -> Self {
        self.name_cache_entries = addresses;
        self
    }

    /// Whether flows are named (default yes): with `false` the table has no
    /// rule that logs DNS answers or ClientHellos, and events carry no
    /// `host`, `sni` or `dns` lookups.
    #[must_use]
    pub fn names(mut self, names: bool) -> Self {
        self.names = names;
        self
    }

    /// Whether flows are attributed to processes (default yes): with
    /// `false` no socket is looked up, and events carry no process.
    #[must_use]
    pub fn processes(mut self, processes: bool) -> Self {
        self.processes = processes;
        self
    }

    /// Reports every flow open for at least `timeout` with its counters so
    /// far (an `Update` event), once every `timeout`: a flow's first
    /// update comes `timeout` to twice that after it opened. Each round
    /// lists the scope's conntrack entries (the kernel filters them by the
    /// backend's ct mark); events meanwhile wait in the event socket's
    /// buffer. Off by default.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flow_backend_nflog::NflogConfig;
    /// assert!(NflogConfig::default().active_timeout(Duration::from_secs(60)).is_ok());
    /// assert!(NflogConfig::default().active_timeout(Duration::ZERO).is_err());
    /// ```
    ///
    /// # Errors
    /// When `timeout` is zero.
    pub fn active_timeout(mut self, timeout: std::time::Duration) -> Result<Self, ConfigError> {
        self.active_timeout = Some(ConfigError::nonzero("active timeout", timeout)?);
        Ok(self)
    }

    /// Enforces `policy`'s address rules in the backend's own table (see
    /// the crate documentation): the scope's new outgoing flows that it
    /// denies are refused — a TCP reset, ICMP administratively prohibited
    /// for the rest — and each refusal is a `denied` event with
    /// `"enforced": true` and the rule. The source fails to start when the
    /// policy cannot be put in place (a name rule, rules the kernel
    /// refuses). The policy's mode is not looked at.
    #[must_use]
    pub fn enforce(mut self, policy: Arc<Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// For tests (feature `testing`): the policy's rules hold an
    /// expression no kernel has, so the kernel refuses them as one without
    /// the reject expression would, and enforce mode's refusal to start
    /// can be seen.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn fail_enforcement(mut self) -> Self {
        self.fail_enforcement = true;
        self
    }

    /// Reads the sockets on a thread of their own (`true`), instead of on
    /// the task that polls the stream (`false`, the default). The default
    /// costs less: one thread wakes per batch of messages, not two. A
    /// thread of its own suits a runtime shared with another source that
    /// reads the kernel, such as the eBPF backend under `--backend both`:
    /// after a stall, each then drains its backlog on its own core, before
    /// ports reused meanwhile take the entries a resync would list.
    #[must_use]
    pub fn own_thread(mut self, own: bool) -> Self {
        self.own_thread = own;
        self
    }

    /// The most the buffer grows to after overruns (default 64 MiB).
    ///
    /// # Errors
    /// When `bytes` is out of the range of [`NflogConfig::receive_buffer`].
    pub fn max_receive_buffer(mut self, bytes: usize) -> Result<Self, ConfigError> {
        self.max_receive_buffer = checked_buffer(bytes)?;
        Ok(self)
    }

    /// For tests (feature `testing`): the table without the owner flag, as
    /// on a kernel without table owners, so that another process may
    /// delete it (the kernel tests break a running source so). Any start
    /// of the nflog backend in its namespace takes it for a leftover.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn unowned_table(mut self) -> Self {
        self.owned_table = false;
        self
    }

    /// For tests (feature `testing`): the rules of a kernel without
    /// conntrack labels, which ask for a connection's TCP state changes
    /// from its first FIN or RST on (the kernel tests run them on a kernel
    /// that has labels).
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn without_conntrack_labels(mut self) -> Self {
        self.labels = false;
        self
    }
}

/// `bytes`, if a netlink receive buffer can be that size.
fn checked_buffer(bytes: usize) -> Result<usize, ConfigError> {
    if (MIN_RECEIVE_BUFFER..=MAX_RECEIVE_BUFFER).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ConfigError::new(
            "netlink receive buffer",
            format!(
                "{bytes} bytes: give {MIN_RECEIVE_BUFFER} to {MAX_RECEIVE_BUFFER} (1 GiB; the kernel keeps twice the size in an int)"
            ),
        ))
    }
}

impl Default for NflogConfig {
    /// flowtrack's own namespace, every connection, default buffers.
    fn default() -> Self {
        Self {
            netns: None,
            cgroup: None,
            log_group: None,
            receive_buffer: 4 << 20,
            max_receive_buffer: 64 << 20,
            owned_table: true,
            labels: true,
            name_cache_entries: flow_enrich::DEFAULT_NAME_CACHE_ENTRIES,
            names: true,
            processes: true,
            active_timeout: None,
            policy: None,
            fail_enforcement: false,
            own_thread: false,
        }
    }
}

/// What a datagram of kernel messages decoded into: the entry points the
/// fuzz targets and property tests drive, doing what the listener does with
/// the bytes it receives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The flow key of each message that decoded.
    pub keys: Vec<flow_core::FlowKey>,
    /// Messages skipped as malformed (a truncated tail counts one).
    pub malformed: usize,
}

/// Decodes a datagram from a ctnetlink event socket.
///
/// ```
/// let decoded = flow_backend_nflog::decode_conntrack_datagram(&[1, 2, 3]);
/// assert_eq!((decoded.keys.len(), decoded.malformed), (0, 1));
/// ```
#[must_use]
pub fn decode_conntrack_datagram(datagram: &[u8]) -> Decoded {
    let (entries, malformed) = conntrack::decode_datagram(datagram);
    Decoded {
        keys: entries.into_iter().map(|entry| entry.key).collect(),
        malformed,
    }
}

/// Decodes a datagram from an nfnetlink_log socket (packets whose flow
/// cannot be told have no key).
///
/// ```
/// let decoded = flow_backend_nflog::decode_nflog_datagram(&[]);
/// assert_eq!(decoded, flow_backend_nflog::Decoded::default());
/// ```
#[must_use]
pub fn decode_nflog_datagram(datagram: &[u8]) -> Decoded {
    let (packets, malformed) = nflog::decode_datagram(datagram);
    Decoded {
        keys: packets
            .into_iter()
            .filter_map(|packet| packet.key)
            .collect(),
        malformed,
    }
}

/// The nflog [`FlowSource`]: installs its rules on [`FlowSource::start`];
/// dropping the stream hands its session back to the thread that opened
/// it, which removes them and restores the settings at once. Inside a tokio runtime the drop does not
/// wait for that (the runtime's shutdown does); outside one it does.
#[derive(Debug)]
pub struct NflogSource {
    config: Option<NflogConfig>,
    /// Once started: asks the stream to finish.
    finisher: Option<listener::Finisher>,
}

impl NflogSource {
    /// A source that will observe what `config` names once started.
    #[must_use]
    pub fn new(config: NflogConfig) -> Self {
        Self {
            config: Some(config),
            finisher: None,
        }
    }
}

#[async_trait]
impl FlowSource for NflogSource {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    async fn start(&mut self) -> Result<FlowStream, FlowError> {
        let config = self.config.take().ok_or_else(|| {
            FlowError::unavailable(BACKEND_NAME, "this source was already started")
        })?;
        if config.own_thread {
            let (stream, finisher) = threaded::spawn(config).await?;
            self.finisher = Some(finisher);
            return Ok(Box::pin(stream));
        }
        let reader = listener::spawn(config).await?;
        self.finisher = Some(reader.finisher());
        // Boxed: the reader moves with each item the stream yields.
        Ok(
            futures::stream::unfold(Box::new(reader), |mut reader| async move {
                let item = reader.next_item().await?;
                Some((item, reader))
            })
            .boxed(),
        )
    }

    /// The stream reads what the sockets hold, yields it, and ends once
    /// the thread that opened them has removed the rules and restored the
    /// settings.
    fn finish(&mut self) -> bool {
        self.finisher.as_ref().inspect(|f| f.finish()).is_some()
    }
}
