//! The subcommands: open sources, merge them, write what they observe.

use std::io::{self, Write};
use std::process::ExitCode;

use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use flow_core::{FlowError, FlowSource};
use flow_policy::{Matcher, Mode, Policy};
use flow_supervisor::audit::Audited;
use flow_supervisor::backend::{self, BackendChoice, Scope};
use flow_supervisor::dedup::{Correlated, DedupConfig};
use flow_supervisor::merge::{MergeConfig, MergedItem, MergedStream, Merger, ShutdownHandle};
use flow_supervisor::mock::Replay;
use flow_supervisor::output::RecordWriter;
use flow_supervisor::pipeline::{self, PipelineReport};

use crate::cli::{BackendArgs, Command, PolicyCommand, ReplayArgs, RunArgs, WatchArgs};
use crate::diag::{notice, say};
use crate::exports::Exports;
use crate::metrics::Metrics;
use crate::output::{DefaultStream, Output};
use crate::report;
use crate::scope::{self, Describe};
use crate::terminal::CommandTerminal;
use crate::workload::{RunAs, WorkloadCgroup};

/// Runs one subcommand; the exit code is the command's, errors are printed
/// by `main`.
pub(crate) async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run(args).await,
        Command::Watch(args) => watch(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Cleanup => crate::cleanup::cleanup(),
        Command::Policy(PolicyCommand::Suggest(args)) => crate::policy::suggest(args).await,
    }
}

/// Starts the backends `args` name on `scope`, merged. Under `auto`, one
/// line on stderr says which backend runs and why the other does not;
/// under `both`, their events are correlated unless `--no-dedup`. With a
/// policy in enforce mode, the backends put it in the kernel (one of them
/// under `both`: a line says which) and fail to start when they cannot;
/// in audit mode it is checked against the events as they pass.
/// What the backends are started for, beyond their flags.
#[derive(Debug, Clone, Copy)]
struct Watching {
    /// The whole host (`watch --all`): flows carry their workload.
    host_wide: bool,
    /// Flows are exported: interim updates by default.
    exporting: bool,
}

async fn start_backends(
    args: &BackendArgs,
    scope: &Scope,
    policy: Option<&Arc<Policy>>,
    how: Watching,
) -> Result<Backends> {
    let mut options = args.options(how.exporting);
    let host_wide = how.host_wide;
    if host_wide {
        options = options.workloads();
    }
    let audit = match policy {
        Some(policy) if policy.mode() == Mode::Enforce => {
            options = options.enforce(Arc::clone(policy));
            None
        }
        Some(policy) => Some(Matcher::new(Arc::clone(policy))),
        None => None,
    };
    if args.backend == BackendChoice::Auto {
        let mut auto = backend::preferred(scope, &options)?;
        let stream = auto.start().await?;
        if let Some(decision) = auto.decision() {
            notice!("flowtrack: {decision}");
        }
        let mut merger = Merger::new(MergeConfig::default());
        let name = auto.name().to_owned();
        merger.add_started(Box::new(auto), stream);
        return Ok(Backends::new(merger, vec![name], None, audit));
    }
    let sources = backend::open(args.backend, scope, &options)?;
    if args.backend == BackendChoice::Both && options.enforcing() {
        notice!(
            "flowtrack: the {} backend enforces the policy; both observe",
            backend::ENFORCING_BACKEND
        );
    }
    let dedup = if args.backend == BackendChoice::Both && !args.no_dedup {
        Some(DedupConfig::for_backends(["ebpf", "nflog"]).capacity(args.dedup_capacity as usize)?)
    } else {
        None
    };
    let names = sources
        .iter()
        .map(|source| source.name().to_owned())
        .collect();
    Ok(Backends::new(
        start_merger(sources).await?,
        names,
        dedup,
        audit,
    ))
}

async fn start_merger(sources: Vec<Box<dyn FlowSource>>) -> Result<Merger> {
    let mut merger = Merger::new(MergeConfig::default());
    for source in sources {
        let name = source.name().to_owned();
        match merger.add(source).await {
            Ok(()) => {}
            // Already names the backend: "nflog backend unavailable: …".
            Err(error @ FlowError::Unavailable { .. }) => return Err(error.into()),
            Err(error) => {
                return Err(
                    anyhow::Error::new(error).context(format!("cannot start the {name} backend"))
                );
            }
        }
    }
    Ok(merger)
}

/// Stops every source on the first Ctrl-C (SIGINT) or SIGTERM (a service
/// manager's stop); the pipeline then drains.
fn shutdown_on_stop_signal(handle: ShutdownHandle) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => if interrupted.is_err() { return },
            _ = terminate.recv() => {}
        }
        handle.shutdown();
    });
    Ok(())
}

/// The running backends' events: merged, or merged and correlated.
enum Events {
    Merged(MergedStream),
    Correlated(Box<Correlated<MergedStream>>),
}

/// The running backends.
struct Backends {
    events: Events,
    shutdown: ShutdownHandle,
    /// Their names.
    names: Vec<String>,
    /// A policy in audit mode, checked against their events.
    audit: Option<Matcher>,
}

impl Backends {
    /// The backends `names` merged by `merger`, correlated with `dedup`,
    /// audited by `audit`.
    fn new(
        merger: Merger,
        names: Vec<String>,
        dedup: Option<DedupConfig>,
        audit: Option<Matcher>,
    ) -> Self {
        let shutdown = merger.shutdown_handle();
        let stream = merger.into_stream();
        let events = match dedup {
            Some(config) => Events::Correlated(Box::new(Correlated::new(stream, config))),
            None => Events::Merged(stream),
        };
        Self {
            events,
            shutdown,
            names,
            audit,
        }
    }

    /// Counts the output in `metrics` from now on: each backend up, and
    /// the correlation table's size.
    fn report_to(&self, metrics: &Metrics) {
        for name in &self.names {
            metrics.backend_started(name);
        }
        if let Events::Correlated(correlated) = &self.events {
            metrics.watch_correlation(correlated.remembered_gauge());
        }
    }

    /// Flows opened and not reported closed that the correlation still
    /// holds (none without correlation).
    fn unsettled(&self) -> Option<Arc<AtomicUsize>> {
        match &self.events {
            Events::Correlated(correlated) => Some(correlated.unsettled()),
            Events::Merged(_) => None,
        }
    }
}

/// Writes the backends' events (audited, under a policy in audit mode),
/// publishing the number of open flows on `open_flows`. An output that
/// fails (a reader that went away, a full disk) stops taking events, and
/// the rest are counted as not written.
async fn write_events(
    backends: Backends,
    mut writer: RecordWriter<Box<dyn Write + Send>>,
    open_flows: tokio::sync::watch::Sender<usize>,
    metrics: Option<Metrics>,
    exports: Exports,
) -> PipelineReport {
    let count = move |item: &MergedItem| {
        if let Some(metrics) = &metrics {
            metrics.record(item);
        }
    };
    let audit = backends.audit;
    match backends.events {
        Events::Correlated(mut correlated) => {
            let stream = exports
                .feed(Audited::new(&mut *correlated, audit))
                .inspect(count);
            let mut report =
                pipeline::write_all_tracking_open(stream, &mut writer, open_flows).await;
            report.correlation_evictions = correlated.evictions();
            report
        }
        Events::Merged(stream) => {
            let stream = exports.feed(Audited::new(stream, audit)).inspect(count);
            pipeline::write_all_tracking_open(stream, &mut writer, open_flows).await
        }
    }
}

/// Binds the metrics address, when one is given, before anything else
/// starts (an address in use is an error with nothing left behind).
async fn serve_metrics(addr: Option<std::net::SocketAddr>) -> Result<Option<Metrics>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let metrics = Metrics::new();
    let bound = metrics.serve(addr).await?;
    say!("flowtrack: serving metrics on http://{bound}/metrics");
    Ok(Some(metrics))
}

async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    // Read and checked whole before anything is written: a broken file
    // replays nothing, and a pipe or a FIFO is read once.
    let replay = Replay::open(&args.file).await?;
    let sources = replay.backends().len();
    let Output { mut writer, name } = Output::open(&args.output, DefaultStream::Stdout)?;
    let exports = Exports::start(&args.output.exports)?;
    let items = flow_supervisor::replay::items(replay.into_records());
    let report = pipeline::write_all(exports.feed(items), &mut writer).await;
    report::print_incomplete_output(&report, &name);
    Ok(report::exit_code(&report, sources))
}

async fn watch(args: WatchArgs) -> Result<ExitCode> {
    let policy = args.policy.policy()?.map(Arc::new);
    let scope = scope::resolve(&args.scope)?;
    crate::cleanup::at_start(&scope).await;
    let metrics = serve_metrics(args.report.metrics_addr).await?;
    let output = Output::open(&args.output, DefaultStream::Stdout)?;
    let exports = Exports::start(&args.output.exports)?;
    let how = Watching {
        host_wide: args.scope.all,
        exporting: !args.output.exports.is_empty(),
    };
    let backends = start_backends(&args.backend, &scope, policy.as_ref(), how)
        .await
        .with_context(|| format!("cannot watch {}", Describe(&scope)))?;
    tracing::info!(scope = %Describe(&scope), "watching until Ctrl-C");
    shutdown_on_stop_signal(backends.shutdown.clone())?;
    let sources = backends.names.len();
    if let Some(metrics) = &metrics {
        backends.report_to(metrics);
    }
    let open_flows = tokio::sync::watch::channel(0).0;
    let report = write_events(backends, output.writer, open_flows, metrics, exports).await;
    let code = report::exit_code(&report, sources);
    report::print_summaries(
        &report,
        args.report.summary,
        args.report.group_by,
        &output.name,
    );
    Ok(code)
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let (program, program_args) = args
        .command
        .split_first()
        .context("run needs a command: flowtrack run -- CMD [ARGS...]")?;
    let user = args.user.as_deref().map(RunAs::resolve).transpose()?;
    // A bad policy stops everything before anything starts.
    let policy = args.policy.policy()?.map(Arc::new);
    // Handlers first: from here on SIGINT, SIGTERM and SIGHUP are the
    // command's (a signal that comes while the backends start is passed on
    // once the command runs, and flowtrack still cleans up); and a signal
    // flowtrack handles is reset to its default in the child at exec, even
    // if flowtrack's parent ignored it.
    let signals = ForwardedSignals::install()?;
    let metrics = serve_metrics(args.report.metrics_addr).await?;
    let cgroup = WorkloadCgroup::create()?;
    let scope = Scope::Cgroup(cgroup.path().to_path_buf());
    crate::cleanup::at_start(&scope).await;
    let output = Output::open(&args.output, DefaultStream::Stderr)?;
    let exports = Exports::start(&args.output.exports)?;
    // Every source is attached before the child starts, so its first
    // connection is seen.
    let how = Watching {
        host_wide: false,
        exporting: !args.output.exports.is_empty(),
    };
    let backends = start_backends(&args.backend, &scope, policy.as_ref(), how)
        .await
        .context(
            if policy.as_ref().is_some_and(|p| p.mode() == Mode::Enforce) {
                "cannot enforce the policy, so the command was not started"
            } else {
                "cannot observe the command"
            },
        )?;
    let shutdown = backends.shutdown.clone();
    let unsettled = backends.unsettled();
    let sources = backends.names.len();
    // A command run as another user gets a terminal of its own, never
    // flowtrack's (crate::terminal).
    let terminal = match &user {
        Some(user) => CommandTerminal::for_user(user.uid, user.gid)
            .context("cannot make a terminal for the command")?,
        None => None,
    };
    let mut child = cgroup
        .command(
            program,
            program_args,
            user.as_ref(),
            terminal.as_ref().map(CommandTerminal::child_side),
        )
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    // Dropped after the cgroup (declared before it is dropped below): the
    // relay copies the command's last output, then puts the terminal back.
    let relay = terminal
        .map(CommandTerminal::relay)
        .transpose()
        .context("cannot relay the command's terminal")?;
    let (open_flows, mut open_flows_now) = tokio::sync::watch::channel(0);
    if let Some(metrics) = &metrics {
        backends.report_to(metrics);
    }
    let written = write_events(backends, output.writer, open_flows, metrics, exports);
    let grace = Duration::from_secs_f64(args.grace);
    let supervise = async {
        let status = signals.wait_forwarding(&mut child).await;
        // Bounded grace for the command's flows to close (TCP's last ACK,
        // released sockets, the backend's sweep of the emptied cgroup).
        let settled = tokio::time::timeout(grace, async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = open_flows_now.wait_for(|open| *open == 0).await;
            // Under correlation, flows whose events are still held count too.
            while unsettled
                .as_ref()
                .is_some_and(|held| held.load(Ordering::Relaxed) > 0)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let _ = settled.await;
        shutdown.shutdown();
        status
    };
    let (report, status) = tokio::join!(written, supervise);
    let status = status.context("cannot wait for the command")?;
    // The command's status is the exit code, unless every backend failed,
    // the output could not take every event, a backend failed while
    // another went on, or (--fail-on-deny) the policy denied something.
    let fault =
        report::fault(&report, sources).or_else(|| report::denied(&report, args.fail_on_deny));
    report::print_summaries(
        &report,
        args.report.summary,
        args.report.group_by,
        &output.name,
    );
    let left = cgroup.processes_left();
    drop(cgroup);
    if left > 0 {
        let processes = if left == 1 { "process" } else { "processes" };
        say!("flowtrack: killed {left} {processes} left in the command's cgroup");
    }
    if fault.is_some() {
        say!(
            "flowtrack: the command exited with {}",
            report::describe_status(status)
        );
    }
    // After the cgroup: the relay copies the command's last output, then
    // puts the terminal back.
    drop(relay);
    Ok(fault.unwrap_or_else(|| report::child_exit_code(status)))
}

/// SIGINT, SIGTERM and SIGHUP sent to flowtrack, passed on to the child so that
/// flowtrack outlives it and cleans up.
struct ForwardedSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl ForwardedSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// Waits for the child, forwarding signals to it meanwhile.
    async fn wait_forwarding(
        mut self,
        child: &mut tokio::process::Child,
    ) -> io::Result<std::process::ExitStatus> {
        loop {
            let forward = tokio::select! {
                status = child.wait() => return status,
                _ = self.interrupt.recv() => rustix::process::Signal::INT,
                _ = self.terminate.recv() => rustix::process::Signal::TERM,
                _ = self.hangup.recv() => rustix::process::Signal::HUP,
            };
            if let Some(pid) = child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id.cast_signed()))
            {
                let _ = rustix::process::kill_process(pid, forward);
            }
        }
    }
}
