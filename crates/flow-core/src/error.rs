use std::fmt;
use std::io;

use crate::clock;
use crate::display::{LossCount, Seconds};

/// Where along the way observations were dropped.
///
/// Every loss point is counted separately, so that an operator can tell a
/// kernel buffer overrun from a slow consumer.
///
/// ```
/// use flow_core::LossPoint;
/// assert_eq!(LossPoint::NetlinkOverrun.to_string(), "netlink receive queue overrun");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LossPoint {
    /// The eBPF ring buffer was full when the kernel program reserved a
    /// record.
    RingBufferFull,
    /// The kernel's flow table evicted a live flow to make room.
    FlowTableEviction,
    /// A netlink receive queue overflowed (`ENOBUFS`).
    NetlinkOverrun,
    /// nfnetlink_log sequence numbers skipped.
    SequenceGap,
    /// A bounded queue inside flowtrack was full.
    QueueOverflow,
    /// A record or message from the kernel could not be decoded and was
    /// skipped.
    Malformed,
    /// The name cache was full: the least recently used address lost its
    /// names (flows to it may go unnamed).
    NameCacheEviction,
    /// A payload (a DNS answer, a ClientHello) was longer than the copy
    /// the backend keeps, or a DNS-over-TCP stream lost bytes: the names in
    /// its tail may be missing.
    PayloadCut,
    /// A captured payload or process record (a DNS answer, a ClientHello,
    /// an exec) found the ring buffer full: names or processes may be
    /// missing, flows are not.
    PayloadLost,
    /// The loss was recorded elsewhere and replayed, and the record did not
    /// say where it happened (a JSON line without a `point` this version
    /// knows).
    Recorded,
    /// Records of flows did not reach an export (IPFIX, OpenTelemetry):
    /// its bounded queue was full (a slow or stopped collector), or the
    /// collector could not be reached or refused them. The flows are all
    /// in flowtrack's own output; the collector misses these records.
    ExportDropped,
    /// Observation stopped before the backend had handed over all it had
    /// taken from the kernel: asked to finish
    /// ([`FlowSource::finish`](crate::FlowSource::finish)), it did not
    /// within the bound a stop allows.
    Unfinished,
}

impl LossPoint {
    /// A short, stable, snake_case name for logs and metrics labels.
    ///
    /// ```
    /// assert_eq!(flow_core::LossPoint::RingBufferFull.name(), "ring_buffer_full");
    /// ```
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::RingBufferFull => "ring_buffer_full",
            Self::FlowTableEviction => "flow_table_eviction",
            Self::NetlinkOverrun => "netlink_overrun",
            Self::SequenceGap => "sequence_gap",
            Self::QueueOverflow => "queue_overflow",
            Self::Malformed => "malformed",
            Self::NameCacheEviction => "name_cache_eviction",
            Self::PayloadCut => "payload_cut",
            Self::PayloadLost => "payload_lost",
            Self::Recorded => "recorded",
            Self::ExportDropped => "export_dropped",
            Self::Unfinished => "unfinished",
        }
    }

    /// Every loss point, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::RingBufferFull,
        Self::FlowTableEviction,
        Self::NetlinkOverrun,
        Self::SequenceGap,
        Self::QueueOverflow,
        Self::Malformed,
        Self::NameCacheEviction,
        Self::PayloadCut,
        Self::PayloadLost,
        Self::Recorded,
        Self::ExportDropped,
        Self::Unfinished,
    ];

    /// Whether observations of flows were lost here (else what was lost
    /// are names or processes — the flows are all reported, some of them
    /// unnamed or unattributed — or records an export did not deliver,
    /// [`LossPoint::ExportDropped`]: the flows are all in the output).
    ///
    /// ```
    /// use flow_core::LossPoint;
    /// assert!(LossPoint::RingBufferFull.loses_flows());
    /// assert!(!LossPoint::NameCacheEviction.loses_flows());
    /// ```
    #[must_use]
    pub fn loses_flows(&self) -> bool {
        !matches!(
            self,
            Self::NameCacheEviction | Self::PayloadCut | Self::PayloadLost | Self::ExportDropped
        )
    }

    /// The loss point with this [`name`](Self::name), if any.
    ///
    /// ```
    /// use flow_core::LossPoint;
    /// assert_eq!(LossPoint::from_name("ring_buffer_full"), Some(LossPoint::RingBufferFull));
    /// assert_eq!(LossPoint::from_name("elsewhere"), None);
    /// ```
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|point| point.name() == name)
    }
}

#[cfg(feature = "serde")]
crate::by_name::serde_by_name!(LossPoint, "a loss point");

impl fmt::Display for LossPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::RingBufferFull => "ring buffer full",
            Self::FlowTableEviction => "flow table eviction",
            Self::NetlinkOverrun => "netlink receive queue overrun",
            Self::SequenceGap => "sequence gap",
            Self::QueueOverflow => "flowtrack queue full",
            Self::Malformed => "undecodable kernel record",
            Self::NameCacheEviction => "name cache full",
            Self::PayloadCut => "payload copied in part",
            Self::PayloadLost => "payload record lost",
            Self::Recorded => "recorded loss",
            Self::ExportDropped => "export dropped",
            Self::Unfinished => "stopped before the backend handed everything over",
        })
    }
}

/// What a [`FlowSource`](crate::FlowSource) yields instead of an event.
///
/// [`FlowError::Lost`] is recoverable: the source reports it in-band where
/// the loss happened and keeps going, so that consumers can tell "no flows"
/// from "flows lost". Every other variant is fatal: the source yields nothing
/// after it. [`FlowError::is_recoverable`] tells which.
///
/// ```
/// use flow_core::{FlowError, LossPoint};
/// fn describe(item: &FlowError) -> &'static str {
///     match item {
///         FlowError::Lost { .. } => "observations lost, stream goes on",
///         _ => "source failed",
///     }
/// }
/// assert_eq!(describe(&FlowError::lost(LossPoint::RingBufferFull, Some(1))), "observations lost, stream goes on");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// Observations were dropped at `point`; the stream goes on.
    #[error("{} lost ({point}) at {}s", LossCount(*count), Seconds(*timestamp_ns))]
    Lost {
        /// Where they were dropped.
        point: LossPoint,
        /// How many, when the backend knows.
        count: Option<u64>,
        /// When the loss was noticed, CLOCK_MONOTONIC nanoseconds.
        timestamp_ns: u64,
    },
    /// The process lacks a privilege the backend needs.
    #[error("{action} needs {needs}: run as root or grant it")]
    PermissionDenied {
        /// What was attempted, e.g. "loading the eBPF program".
        action: String,
        /// The privilege, e.g. "CAP_BPF".
        needs: String,
    },
    /// The backend cannot run here: not built in, kernel support missing, or
    /// already started.
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// Input the source reads (a file, a kernel message) is malformed.
    #[error("{context}: {message}")]
    InvalidInput {
        /// Where: a file and line, a message type.
        context: String,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O operation failed. The message includes the underlying error
    /// (it is not repeated as `source()`, so error chains print it once).
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
}

impl FlowError {
    /// A loss at `point`, stamped with the current monotonic time.
    ///
    /// ```
    /// use flow_core::{FlowError, LossPoint};
    /// let loss = FlowError::lost(LossPoint::NetlinkOverrun, None);
    /// assert!(loss.is_recoverable());
    /// assert!(loss.to_string().starts_with("an unknown number of observations lost"));
    /// ```
    #[must_use]
    pub fn lost(point: LossPoint, count: Option<u64>) -> Self {
        Self::lost_at(point, count, clock::monotonic_now_ns())
    }

    /// A loss at `point`, noticed at `timestamp_ns`.
    ///
    /// ```
    /// use flow_core::{FlowError, LossPoint};
    /// let loss = FlowError::lost_at(LossPoint::RingBufferFull, Some(3), 1_000_000_000);
    /// assert_eq!(loss.to_string(), "3 observations lost (ring buffer full) at 1.000000000s");
    /// ```
    #[must_use]
    pub fn lost_at(point: LossPoint, count: Option<u64>, timestamp_ns: u64) -> Self {
        Self::Lost {
            point,
            count,
            timestamp_ns,
        }
    }

    /// An I/O error with what was being done.
    ///
    /// ```
    /// use flow_core::FlowError;
    /// let err = FlowError::io("reading flows.jsonl", std::io::ErrorKind::NotFound.into());
    /// assert!(!err.is_recoverable());
    /// assert!(err.to_string().starts_with("reading flows.jsonl: "));
    /// ```
    #[must_use]
    pub fn io(context: impl Into<String>, error: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            error,
        }
    }

    /// Malformed input at `context`.
    ///
    /// ```
    /// use flow_core::FlowError;
    /// let err = FlowError::invalid_input("flows.jsonl line 3", "missing field `dport`");
    /// assert_eq!(err.to_string(), "flows.jsonl line 3: missing field `dport`");
    /// ```
    #[must_use]
    pub fn invalid_input(context: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            context: context.into(),
            message: message.into(),
        }
    }

    /// The backend cannot run here, and why.
    ///
    /// ```
    /// use flow_core::FlowError;
    /// let err = FlowError::unavailable("ebpf", "kernel lacks BTF");
    /// assert_eq!(err.to_string(), "ebpf backend unavailable: kernel lacks BTF");
    /// ```
    #[must_use]
    pub fn unavailable(backend: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unavailable {
            backend: backend.into(),
            reason: reason.into(),
        }
    }

    /// Whether the source goes on after this item (only losses do).
    ///
    /// ```
    /// use flow_core::{FlowError, LossPoint};
    /// assert!(FlowError::lost(LossPoint::SequenceGap, Some(1)).is_recoverable());
    /// assert!(!FlowError::unavailable("nflog", "needs CAP_NET_ADMIN").is_recoverable());
    /// ```
    #[must_use]
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::Lost { .. })
    }
}

/// A configuration setting given a value it cannot take: what a
/// configuration builder of a backend or of the supervisor refuses, before
/// anything starts.
///
/// ```
/// use flow_core::ConfigError;
/// let error = ConfigError::new("sweep interval", "must be longer than zero");
/// assert_eq!(error.to_string(), "sweep interval: must be longer than zero");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The setting, as its documentation names it.
    pub setting: &'static str,
    /// What is wrong with the value, and what would do.
    pub problem: String,
}

impl ConfigError {
    /// `setting` cannot take the value given, because of `problem`.
    #[must_use]
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }

    /// Refuses a zero `duration` for `setting` (a timer of zero would spin).
    ///
    /// # Errors
    /// When `duration` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flow_core::ConfigError;
    /// assert!(ConfigError::nonzero("window", Duration::ZERO).is_err());
    /// assert_eq!(ConfigError::nonzero("window", Duration::from_millis(5)), Ok(Duration::from_millis(5)));
    /// ```
    pub fn nonzero(
        setting: &'static str,
        duration: std::time::Duration,
    ) -> Result<std::time::Duration, Self> {
        if duration.is_zero() {
            Err(Self::new(setting, "must be longer than zero"))
        } else {
            Ok(duration)
        }
    }
}

impl From<ConfigError> for FlowError {
    fn from(error: ConfigError) -> Self {
        Self::invalid_input(error.setting, error.problem)
    }
}
