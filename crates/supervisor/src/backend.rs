//! Choosing and opening backends by name.

use std::path::PathBuf;

mod preferred;

pub use preferred::Preferred;

use flow_core::{FlowError, FlowSource};

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
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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

/// Backend settings beyond the scope. The default is what flowtrack uses
/// when no flag says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The nflog backend's nfnetlink_log group; `None`: the first free one.
    pub nflog_group: Option<u16>,
    /// The nflog backend's conntrack event buffer in bytes; `None`: its
    /// default (4 MiB).
    pub netlink_buffer: Option<usize>,
    /// The eBPF backend's flow table size; `None`: its default (65,536).
    pub flow_table_entries: Option<u32>,
    /// The eBPF backend's ring buffer size in bytes; `None`: its default
    /// (4 MiB).
    pub ring_bytes: Option<u32>,
}

/// Opens the sources `choice` names for `scope`, ready for
/// [`crate::merge::Merger::add`] (which attaches them).
///
/// # Errors
/// [`FlowError::Unavailable`] naming each backend that cannot run and why:
/// not compiled into this build, not built yet, or not supported here.
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
            open_nflog(scope, options)?,
        ]),
        BackendChoice::Auto => Ok(vec![Box::new(preferred(scope, options))]),
    }
}

/// `--backend auto` for `scope`: eBPF when it can load and attach, else
/// nflog. [`Preferred::decision`] tells, once started, which one runs and
/// why the other does not.
#[must_use]
pub fn preferred(scope: &Scope, options: &Options) -> Preferred {
    let mut candidates = Vec::new();
    let mut refused = Vec::new();
    for (name, opened) in [
        ("ebpf", open_ebpf(scope, options)),
        ("nflog", open_nflog(scope, options)),
    ] {
        match opened {
            Ok(source) => candidates.push(source),
            Err(error) => refused.push((name.to_owned(), preferred::reason(&error))),
        }
    }
    Preferred::new(candidates, refused)
}

#[cfg(feature = "ebpf")]
fn open_ebpf(scope: &Scope, options: &Options) -> Result<Box<dyn FlowSource>, FlowError> {
    use flow_backend_ebpf::{BACKEND_NAME, EbpfConfig, EbpfSource};
    match scope {
        Scope::Cgroup(path) => {
            let mut config = EbpfConfig::new(path.clone());
            if let Some(entries) = options.flow_table_entries {
                config.flow_table_entries = entries;
            }
            if let Some(bytes) = options.ring_bytes {
                config.ring_bytes = bytes;
            }
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
    let mut config = match scope {
        Scope::Cgroup(path) => NflogConfig::cgroup(path.clone()),
        Scope::Netns(path) => NflogConfig::netns(path.clone()),
    };
    config.log_group = options.nflog_group;
    if let Some(bytes) = options.netlink_buffer {
        config.receive_buffer = bytes;
        config.max_receive_buffer = config.max_receive_buffer.max(bytes);
    }
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
