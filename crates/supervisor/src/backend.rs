//! Choosing and opening backends by name.

use std::path::PathBuf;

mod preferred;

pub use preferred::Preferred;

use std::sync::Arc;

use flow_core::{FlowError, FlowSource};
use flow_policy::Policy;

/// The backend that enforces a policy under `--backend both` (both
/// observe): its socket hooks refuse a connection before it exists.
pub const ENFORCING_BACKEND: &str = "ebpf";

/// What the backends observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The processes of a cgroup v2 directory (and its descendants).
    Cgroup(PathBuf),
    /// Everything in a network namespace (the path of its nsfs file).
    Netns(PathBuf),
}

/// Which backend(s) observe the flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// eBPF when it can load and attach, else nflog.
    #[default]
    Auto,
    /// The eBPF `cgroup_skb` backend only.
    Ebpf,
    /// The conntrack + nfnetlink_log backend only.
    Nflog,
    /// Both at once.
    Both,
}

impl BackendChoice {
    /// Every choice, in declaration order.
    pub const ALL: [Self; 4] = [Self::Auto, Self::Ebpf, Self::Nflog, Self::Both];

    /// Its name on the command line: `auto`, `ebpf`, `nflog`, `both`.
    ///
    /// ```
    /// use flow_supervisor::backend::BackendChoice;
    /// assert_eq!(BackendChoice::Both.name(), "both");
    /// assert_eq!("nflog".parse(), Ok(BackendChoice::Nflog));
    /// assert!("ebfp".parse::<BackendChoice>().is_err());
    /// ```
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::Nflog => "nflog",
            Self::Both => "both",
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = crate::UnknownName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        crate::UnknownName::find(name, &Self::ALL, |choice| choice.name())
    }
}

/// Backend settings beyond the scope. The default is what flowtrack uses
/// when no flag says otherwise; each setter overrides one backend's
/// default, and the backend checks the value when it is opened ([`open`]).
///
/// ```
/// use flow_supervisor::backend::Options;
/// let options = Options::default().ring_bytes(1 << 20).nflog_group(7);
/// # drop(options);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    nflog_group: Option<u16>,
    netlink_buffer: Option<usize>,
    flow_table_entries: Option<u32>,
    ring_bytes: Option<u32>,
    name_cache_entries: Option<std::num::NonZeroUsize>,
    enforce: Option<Arc<Policy>>,
    without_names: bool,
    without_processes: bool,
    active_timeout: Option<std::time::Duration>,
    workloads: bool,
    /// The nflog backend reads on a thread of its own.
    #[cfg_attr(not(feature = "nflog"), allow(dead_code))]
    nflog_own_thread: bool,
}

impl Options {
    /// The nflog backend's nfnetlink_log group (default: the first free one).
    #[must_use]
    pub fn nflog_group(mut self, group: u16) -> Self {
        self.nflog_group = Some(group);
        self
    }

    /// The nflog backend's conntrack event buffer in bytes (default 4 MiB).
    #[must_use]
    pub fn netlink_buffer(mut self, bytes: usize) -> Self {
        self.netlink_buffer = Some(bytes);
        self
    }

    /// The eBPF backend's flow table size (default 65,536).
    #[must_use]
    pub fn flow_table_entries(mut self, flows: u32) -> Self {
        self.flow_table_entries = Some(flows);
        self
    }

    /// The eBPF backend's ring buffer size in bytes (default 4 MiB).
    #[must_use]
    pub fn ring_bytes(mut self, bytes: u32) -> Self {
        self.ring_bytes = Some(bytes);
        self
    }

    /// Addresses whose names each backend keeps at most (default 65,536).
    #[must_use]
    pub fn name_cache_entries(mut self, addresses: std::num::NonZeroUsize) -> Self {
        self.name_cache_entries = Some(addresses);
        self
    }

    /// Enforces `policy` in the kernel: the backend that runs (under
    /// `both`, [`ENFORCING_BACKEND`]) puts it in place before it reports
    /// itself started, or fails to start. The policy's mode is not looked
    /// at: this asks for enforcement.
    #[must_use]
    pub fn enforce(mut self, policy: Arc<Policy>) -> Self {
        self.enforce = Some(policy);
        self
    }

    /// Whether a policy is to be enforced.
    #[must_use]
    pub fn enforcing(&self) -> bool {
        self.enforce.is_some()
    }

    /// The nflog backend's options beside the eBPF backend (`--backend
    /// both`): it observes (the eBPF backend enforces), and it reads on a
    /// thread of its own, so that after a stall each backend drains its
    /// backlog on its own core.
    fn beside_ebpf(&self) -> Self {
        Self {
            enforce: None,
            nflog_own_thread: true,
            ..self.clone()
        }
    }

    /// Every backend leaves flows unnamed: it reads no DNS answer and no
    /// ClientHello (default: flows are named).
    #[must_use]
    pub fn without_names(mut self) -> Self {
        self.without_names = true;
        self
    }

    /// Every backend leaves flows unattributed to processes (default:
    /// they are attributed).
    #[must_use]
    pub fn without_processes(mut self) -> Self {
        self.without_processes = true;
        self
    }

    /// Every backend reports each flow open for `timeout` or longer with
    /// its counters so far (`update` events), every `timeout` (default:
    /// no updates; a zero timeout is refused when the backend opens).
    #[must_use]
    pub fn active_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.active_timeout = Some(timeout);
        self
    }
}

impl Options {
    /// Every flow carries its socket's cgroup and the container that
    /// cgroup is ([`flow_core::workload`]), for watching a whole host. Only
    /// the eBPF backend can tell a socket's cgroup: the nflog backend
    /// refuses to open (default: flows carry no workload).
    #[must_use]
    pub fn workloads(mut self) -> Self {
        self.workloads = true;
        self
    }
}

/// Opens the sources `choice` names for `scope`, ready for
/// [`crate::merge::Merger::add`] (which attaches them).
///
/// # Errors
/// [`FlowError::Unavailable`] naming each backend that cannot run and why:
/// not compiled into this build, not built yet, or not supported here;
/// [`FlowError::InvalidInput`] for an option the backend cannot take.
///
/// ```
/// use flow_supervisor::backend::{BackendChoice, Options, Scope, open};
/// let scope = Scope::Netns("/run/netns/x".into());
/// let error = open(BackendChoice::Ebpf, &scope, &Options::default()).err().unwrap();
/// assert!(error.to_string().starts_with("ebpf backend unavailable:"));
/// ```
pub fn open(
    choice: BackendChoice,
    scope: &Scope,
    options: &Options,
) -> Result<Vec<Box<dyn FlowSource>>, FlowError> {
    match choice {
        BackendChoice::Ebpf => Ok(vec![open_ebpf(scope, options)?]),
        BackendChoice::Nflog => Ok(vec![open_nflog(scope, options)?]),
        BackendChoice::Both => Ok(vec![
            open_ebpf(scope, options)?,
            open_nflog(scope, &options.beside_ebpf())?,
        ]),
        BackendChoice::Auto => Ok(vec![Box::new(preferred(scope, options)?)]),
    }
}

/// `--backend auto` for `scope`: eBPF when it can load and attach, else
/// nflog. [`Preferred::decision`] tells, once started, which one runs and
/// why the other does not.
///
/// # Errors
/// [`FlowError::InvalidInput`] for an option a backend cannot take: a bad
/// value is the caller's to fix, never a reason to fall back.
pub fn preferred(scope: &Scope, options: &Options) -> Result<Preferred, FlowError> {
    let mut candidates = Vec::new();
    let mut refused = Vec::new();
    for (name, opened) in [
        ("ebpf", open_ebpf(scope, options)),
        ("nflog", open_nflog(scope, options)),
    ] {
        match opened {
            Ok(source) => candidates.push(source),
            Err(error @ FlowError::InvalidInput { .. }) => return Err(error),
            Err(error) => refused.push((name.to_owned(), preferred::reason(&error))),
        }
    }
    Ok(Preferred::new(candidates, refused))
}

#[cfg(feature = "ebpf")]
fn open_ebpf(scope: &Scope, options: &Options) -> Result<Box<dyn FlowSource>, FlowError> {
    use flow_backend_ebpf::{BACKEND_NAME, EbpfConfig, EbpfSource};
    match scope {
        Scope::Cgroup(path) => {
            let mut config = EbpfConfig::new(path.clone());
            if let Some(policy) = &options.enforce {
                config = config.enforce(Arc::clone(policy));
            }
            if let Some(entries) = options.flow_table_entries {
                config = config.flow_table_entries(entries)?;
            }
            if let Some(bytes) = options.ring_bytes {
                config = config.ring_bytes(bytes)?;
            }
            if let Some(addresses) = options.name_cache_entries {
                config = config.name_cache_entries(addresses);
            }
            if let Some(timeout) = options.active_timeout {
                config = config.active_timeout(timeout)?;
            }
            config = config
                .names(!options.without_names)
                .processes(!options.without_processes)
                .workloads(options.workloads);
            Ok(Box::new(EbpfSource::new(config)))
        }
        Scope::Netns(_) => Err(FlowError::unavailable(
            BACKEND_NAME,
            "it observes cgroups, not network namespaces: use --cgroup, or --backend nflog",
        )),
    }
}

#[cfg(not(feature = "ebpf"))]
fn open_ebpf(_scope: &Scope, _options: &Options) -> Result<Box<dyn FlowSource>, FlowError> {
    Err(not_compiled_in("ebpf"))
}

#[cfg(feature = "nflog")]
fn open_nflog(scope: &Scope, options: &Options) -> Result<Box<dyn FlowSource>, FlowError> {
    use flow_backend_nflog::{NflogConfig, NflogSource};
    if options.workloads {
        return Err(FlowError::unavailable(
            "nflog",
            "it cannot tell which cgroup a flow's socket is in (watching the whole host needs the eBPF backend)",
        ));
    }
    let mut config = match scope {
        Scope::Cgroup(path) => NflogConfig::cgroup(path.clone()),
        Scope::Netns(path) => NflogConfig::netns(path.clone()),
    };
    if let Some(policy) = &options.enforce {
        config = config.enforce(Arc::clone(policy));
    }
    if let Some(group) = options.nflog_group {
        config = config.log_group(group);
    }
    if let Some(bytes) = options.netlink_buffer {
        config = config.receive_buffer(bytes)?;
    }
    if let Some(addresses) = options.name_cache_entries {
        config = config.name_cache_entries(addresses);
    }
    if let Some(timeout) = options.active_timeout {
        config = config.active_timeout(timeout)?;
    }
    config = config
        .names(!options.without_names)
        .processes(!options.without_processes)
        .own_thread(options.nflog_own_thread);
    Ok(Box::new(NflogSource::new(config)))
}

#[cfg(not(feature = "nflog"))]
fn open_nflog(_scope: &Scope, _options: &Options) -> Result<Box<dyn FlowSource>, FlowError> {
    Err(not_compiled_in("nflog"))
}

#[cfg(not(all(feature = "ebpf", feature = "nflog")))]
fn not_compiled_in(backend: &str) -> FlowError {
    FlowError::unavailable(
        backend,
        format!(
            "not compiled into this build: rebuild flow-supervisor with `--features {backend}`"
        ),
    )
}
