//! The command line, as clap parses it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use flow_supervisor::backend::{self, BackendChoice};
use flow_supervisor::export::destination::Destination;
use flow_supervisor::output::OutputFormat;

/// Report every network connection a workload makes, straight from the Linux
/// kernel.
#[derive(Debug, Parser)]
#[command(
    name = "flowtrack",
    version,
    about = "Report every network connection a workload makes, straight from the Linux kernel."
)]
pub(crate) struct Cli {
    /// More diagnostics on stderr: -v info, -vv debug, -vvv trace
    /// (RUST_LOG, when set, takes precedence).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr (the run summary still prints).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The log filter -v/-q ask for, when RUST_LOG does not say.
    pub(crate) fn log_level(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            _ => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a command and report every connection it makes (events on stderr).
    Run(RunArgs),
    /// Follow an existing cgroup or network namespace until Ctrl-C (events on stdout).
    Watch(WatchArgs),
    /// Replay recorded JSON lines through the same pipeline (events on stdout).
    Replay(ReplayArgs),
    /// Remove what flowtrack processes that no longer run left in the
    /// kernel (cgroups, nf_tables tables, conntrack settings), and list it.
    Cleanup,
    /// Egress policies: suggest one from a recorded run.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `flowtrack policy …`.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Write a policy file that allows exactly what a recorded run
    /// connected to (names preferred over addresses, ports per
    /// destination, loopback as one rule, a comment per rule).
    Suggest(SuggestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SuggestArgs {
    /// JSON lines written by `--format json` (a file, or a pipe).
    pub(crate) events: PathBuf,
    /// Write the policy to FILE instead of stdout (created 0600, as -o
    /// elsewhere).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// An egress policy for `run` and `watch`: rules on the command line, a
/// policy file, and the mode.
#[derive(Debug, Args)]
#[group(skip)]
pub(crate) struct PolicyArgs {
    #[command(flatten)]
    pub(crate) rules: PolicyRules,
    /// audit (the default): report what the policy would deny, stop
    /// nothing; enforce: denied connections fail at once. Overrides the
    /// file's mode.
    #[arg(long, value_enum, requires = "policy_rules")]
    pub(crate) mode: Option<PolicyMode>,
}

/// Where a policy's rules come from (any of them, together).
#[derive(Debug, Args)]
#[group(id = "policy_rules", multiple = true)]
pub(crate) struct PolicyRules {
    /// Allow RULE: PROTO://DEST[:PORTS], e.g. tcp://pypi.org:443,
    /// udp://10.0.0.53:53, any://127.0.0.0/8 (repeatable). With any allow
    /// rule, whatever no rule allows is denied.
    #[arg(long, value_name = "RULE", value_parser = allow_rule)]
    pub(crate) allow: Vec<String>,
    /// Deny RULE (repeatable): deny rules win over allow rules.
    #[arg(long, value_name = "RULE", value_parser = deny_rule)]
    pub(crate) deny: Vec<String>,
    /// A policy file (TOML: mode, allow = [...], deny = [...]).
    #[arg(long, value_name = "FILE")]
    pub(crate) policy: Option<PathBuf>,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PolicyMode {
    /// Report what the policy would deny; stop nothing.
    Audit,
    /// Denied connections fail at once.
    Enforce,
}

impl PolicyArgs {
    /// The policy these flags give, if any.
    pub(crate) fn policy(&self) -> Result<Option<flow_policy::Policy>, flow_policy::PolicyError> {
        let mut builder = flow_policy::Policy::builder();
        for rule in &self.rules.deny {
            builder = builder.deny(rule)?;
        }
        for rule in &self.rules.allow {
            builder = builder.allow(rule)?;
        }
        if let Some(path) = &self.rules.policy {
            builder = builder.file(path)?;
        }
        if let Some(mode) = self.mode {
            builder = builder.mode(match mode {
                PolicyMode::Audit => flow_policy::Mode::Audit,
                PolicyMode::Enforce => flow_policy::Mode::Enforce,
            });
        }
        builder.build()
    }
}

/// Checks an `--allow` rule as clap parses it (a bad one is a usage error).
fn allow_rule(text: &str) -> Result<String, String> {
    flow_policy::Rule::parse(flow_policy::Action::Allow, text)
        .map(|_| text.to_owned())
        .map_err(|error| error.to_string())
}

/// Checks a `--deny` rule as clap parses it.
fn deny_rule(text: &str) -> Result<String, String> {
    flow_policy::Rule::parse(flow_policy::Action::Deny, text)
        .map(|_| text.to_owned())
        .map_err(|error| error.to_string())
}

/// Where and how events are written.
#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Output format.
    #[arg(long, default_value_t = OutputFormat::Text, value_parser = named(&OutputFormat::ALL, OutputFormat::name))]
    pub(crate) format: OutputFormat,
    /// Write events to FILE instead of the command's default stream.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// JSON: write each process's command line (`cmdline`). Off by
    /// default: command lines in CI often hold secrets.
    #[arg(long)]
    pub(crate) cmdline: bool,
    /// Also export closed flows and updates to a collector:
    /// `ipfix+udp://HOST:PORT` or `ipfix+tcp://HOST:PORT` (IPFIX, RFC 5103
    /// biflows), optionally `?queue=RECORDS`, or `otlp+grpc://HOST:PORT`
    /// (OpenTelemetry log records). Repeatable.
    #[arg(long = "export", value_name = "URL", value_parser = export_url)]
    pub(crate) exports: Vec<Destination>,
}

/// Parses `--export`.
fn export_url(value: &str) -> Result<Destination, String> {
    Destination::parse(value).map_err(|error| error.to_string())
}

/// What `run` and `watch` report besides the events: the
/// per-destination summary at the end, and live metrics.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The per-destination summary printed on stderr at the end: an
    /// aligned table, one JSON object, or none.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub(crate) summary: SummaryFormat,
    /// What the summary table's lines are: destinations (protocol, address,
    /// port, and the names they were reached under) or the programs that
    /// connected (executable and user).
    #[arg(long, value_enum, default_value_t = GroupBy::Destination)]
    pub(crate) group_by: GroupBy,
    /// Serve Prometheus metrics over HTTP on this address (e.g.
    /// 127.0.0.1:9464) while running.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

/// What the summary table's lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum GroupBy {
    /// One line per destination.
    Destination,
    /// One line per program (executable and user).
    Process,
}

/// How the per-destination summary is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SummaryFormat {
    /// An aligned table.
    Text,
    /// One JSON object on one line.
    Json,
    /// No summary table (the one-line summary stays).
    Off,
}

/// Which backend(s) observe the flows.
#[derive(Debug, Args)]
pub(crate) struct BackendArgs {
    /// Which backend observes the flows.
    #[arg(long, default_value_t = BackendChoice::Auto, value_parser = named(&BackendChoice::ALL, BackendChoice::name))]
    pub(crate) backend: BackendChoice,
    /// nflog backend: the nfnetlink_log group to bind (one listener per
    /// group). Default: the first free one.
    #[arg(long, value_name = "GROUP")]
    pub(crate) nflog_group: Option<u16>,
    /// nflog backend: the conntrack event socket's receive buffer in bytes
    /// (4096 to 1 GiB; it grows after an overrun). Default: 4 MiB.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(4096..=1 << 30))]
    pub(crate) netlink_buffer: Option<u32>,
    /// eBPF backend: flows its kernel table holds at once (LRU; a live
    /// flow evicted is reported lost), 64 to 8,388,608 (about 152 bytes of
    /// kernel memory each: 10 MB by default, 1.2 GiB at the most).
    /// Default: 65,536.
    #[arg(long, value_name = "FLOWS", value_parser = clap::value_parser!(u32).range(64..=1 << 23))]
    pub(crate) flow_table_entries: Option<u32>,
    /// eBPF backend: the ring buffer the kernel writes events to, in bytes
    /// (a power of two, at least the page size; a full ring is reported
    /// lost). Default: 4 MiB, about 47,000 events.
    #[arg(long, value_name = "BYTES", value_parser = ring_bytes)]
    pub(crate) ring_bytes: Option<u32>,
    /// Addresses whose names (from the scope's DNS answers) each backend
    /// keeps at most; beyond that the least recently used loses them
    /// (reported: name_cache_eviction). Default: 65,536.
    #[arg(long, value_name = "ADDRESSES", value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub(crate) name_cache_entries: Option<u32>,
    /// Do not name flows: no backend reads DNS answers or TLS ClientHellos
    /// (no `host`, `sni` or `dns` lines).
    #[arg(long, conflicts_with = "name_cache_entries")]
    pub(crate) no_names: bool,
    /// Do not attribute flows to processes (no pid, program or user).
    #[arg(long)]
    pub(crate) no_processes: bool,
    /// Report each flow open this long or longer with its counters so far
    /// (an `update` line), every SECONDS: a flow's first update comes one
    /// to two timeouts after it opened. Default: no updates; 60 with an
    /// --export (a collector's interim records, IPFIX's active timeout).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub(crate) active_timeout: Option<u32>,
    /// `both`: show each backend's events as they come, without
    /// correlating them into one event per flow.
    #[arg(long)]
    pub(crate) no_dedup: bool,
    /// `both`: flows the correlation remembers at most (beyond that the
    /// oldest is evicted and counted).
    #[arg(long, value_name = "FLOWS", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) dedup_capacity: u32,
}

/// `--active-timeout` when flows are exported and none is given: long
/// flows reach the collector while they last, as IPFIX exporters do.
pub(crate) const EXPORT_ACTIVE_TIMEOUT: u32 = 60;

impl BackendArgs {
    /// The backend settings these flags give (`exporting`: an `--export`
    /// was given, which turns interim updates on by default).
    pub(crate) fn options(&self, exporting: bool) -> backend::Options {
        let mut options = backend::Options::default();
        if let Some(group) = self.nflog_group {
            options = options.nflog_group(group);
        }
        if let Some(bytes) = self.netlink_buffer {
            options = options.netlink_buffer(bytes as usize);
        }
        if let Some(flows) = self.flow_table_entries {
            options = options.flow_table_entries(flows);
        }
        if let Some(bytes) = self.ring_bytes {
            options = options.ring_bytes(bytes);
        }
        if let Some(addresses) = self
            .name_cache_entries
            .and_then(|addresses| std::num::NonZeroUsize::new(addresses as usize))
        {
            options = options.name_cache_entries(addresses);
        }
        if self.no_names {
            options = options.without_names();
        }
        if self.no_processes {
            options = options.without_processes();
        }
        let active_timeout = self
            .active_timeout
            .or(exporting.then_some(EXPORT_ACTIVE_TIMEOUT));
        if let Some(seconds) = active_timeout {
            options = options.active_timeout(std::time::Duration::from_secs(seconds.into()));
        }
        options
    }
}

/// Parses `--ring-bytes`: a size the kernel takes for a ring buffer.
fn ring_bytes(value: &str) -> Result<u32, String> {
    let bytes: u32 = value
        .parse()
        .map_err(|error| format!("{value:?} is not a size in bytes: {error}"))?;
    #[cfg(feature = "ebpf")]
    if let Some(problem) = flow_backend_ebpf::ring_bytes_problem(bytes) {
        return Err(problem);
    }
    Ok(bytes)
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Exit with status 4 after the command ends if the policy denied
    /// anything (in either mode).
    #[arg(long)]
    pub(crate) fail_on_deny: bool,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) report: ReportArgs,
    /// After the command exits, wait at most this many seconds for its flows
    /// to close before observation stops.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = parse_grace)]
    pub(crate) grace: f64,
    /// Run the command as this user (a name or a numeric uid), with its
    /// groups; flowtrack keeps its own privileges.
    #[arg(long, value_name = "NAME|UID")]
    pub(crate) user: Option<String>,
    /// The command to run, and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    #[command(flatten)]
    pub(crate) scope: WatchScope,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) report: ReportArgs,
}

/// What `watch` follows: exactly one of a cgroup, a network namespace, or
/// the whole host.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct WatchScope {
    /// A cgroup v2 directory: report the connections of its processes.
    #[arg(long, value_name = "PATH")]
    pub(crate) cgroup: Option<PathBuf>,
    /// A network namespace (a name under /run/netns, a path, or a pid): report every
    /// connection in it.
    #[arg(long, value_name = "NAME|PATH|PID")]
    pub(crate) netns: Option<String>,
    /// Every process on the host (the cgroup v2 root; eBPF backend): each flow carries its
    /// cgroup, and its container when the cgroup is one.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// A JSON-lines file as written by `--format json`.
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// A parser for one of the library's named choices (`all`, each called
/// `name(value)`), listing the names in `--help` and in errors.
fn named<T>(all: &'static [T], name: fn(T) -> &'static str) -> impl TypedValueParser<Value = T>
where
    T: Copy + Send + Sync + 'static,
{
    PossibleValuesParser::new(all.iter().map(|value| name(*value))).try_map(move |given| {
        all.iter()
            .copied()
            .find(|value| name(*value) == given)
            .ok_or_else(|| format!("{given:?} is not one of the choices"))
    })
}

/// A grace period: a finite number of seconds, 0 to one hour.
fn parse_grace(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if (0.0..=3600.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("{seconds} is out of range: give 0 to 3600 seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The backend flags of `flowtrack watch --cgroup /x EXTRA...`.
    fn backend_args(extra: &[&str]) -> BackendArgs {
        let mut args = vec!["flowtrack", "watch", "--cgroup", "/x"];
        args.extend(extra);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Watch(watch) => watch.backend,
            _ => unreachable!("a watch"),
        }
    }

    #[test]
    fn exporting_reports_long_flows_every_minute_unless_told_otherwise() {
        let timeout = |extra: &[&str], exporting| {
            let options = format!("{:?}", backend_args(extra).options(exporting));
            options
                .split("active_timeout: ")
                .nth(1)
                .and_then(|rest| rest.split([',', ' ']).next())
                .map(str::to_owned)
        };
        assert_eq!(timeout(&[], false).as_deref(), Some("None"));
        assert_eq!(timeout(&[], true).as_deref(), Some("Some(60s)"));
        assert_eq!(
            timeout(&["--active-timeout", "5"], true).as_deref(),
            Some("Some(5s)")
        );
        assert_eq!(
            timeout(&["--active-timeout", "5"], false).as_deref(),
            Some("Some(5s)")
        );
    }
}
