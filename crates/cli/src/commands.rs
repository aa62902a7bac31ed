//! The subcommands: open sources, merge them, write what they observe.

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;

use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use flow_core::display::{Count, LossCount};
use flow_core::{FlowError, FlowSource, LossPoint};
use flow_supervisor::backend::{self, BackendChoice, Scope};
use flow_supervisor::dedup::{Correlated, DedupConfig};
use flow_supervisor::merge::{MergeConfig, MergedItem, MergedStream, Merger, ShutdownHandle};
use flow_supervisor::mock::Replay;
use flow_supervisor::output::RecordWriter;
use flow_supervisor::pipeline::{self, PipelineReport};

use crate::cli::{BackendArgs, Command, OutputArgs, ReplayArgs, RunArgs, SummaryFormat, WatchArgs};
use crate::metrics::Metrics;
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
    }
}

/// The stream a command writes events to when no `--output` is given.
#[derive(Clone, Copy)]
enum DefaultStream {
    Stdout,
    Stderr,
}

fn open_writer(
    args: &OutputArgs,
    default: DefaultStream,
) -> Result<RecordWriter<Box<dyn Write + Send>>> {
    let sink: Box<dyn Write + Send> = match (&args.output, default) {
        (Some(path), _) => Box::new(
            File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        (None, DefaultStream::Stdout) => Box::new(io::stdout()),
        (None, DefaultStream::Stderr) => Box::new(io::stderr()),
    };
    Ok(RecordWriter::new(args.format, sink))
}

/// Starts the backends `args` name on `scope`, merged. Under `auto`, one
/// line on stderr says which backend runs and why the other does not;
/// under `both`, their events are correlated unless `--no-dedup`.
async fn start_backends(args: &BackendArgs, scope: &Scope) -> Result<Backends> {
    let options = args.options();
    if args.backend == BackendChoice::Auto {
        let mut auto = backend::preferred(scope, &options)?;
        let stream = auto.start().await?;
        if let Some(decision) = auto.decision() {
            eprintln!("flowtrack: {decision}");
        }
        let mut merger = Merger::new(MergeConfig::default());
        merger.add_stream(auto.name().to_owned(), stream);
        return Ok(Backends::new(merger, vec![auto.name().to_owned()], None));
    }
    let sources = backend::open(args.backend, scope, &options)?;
    let dedup = if args.backend == BackendChoice::Both && !args.no_dedup {
        Some(DedupConfig::for_backends(["ebpf", "nflog"]).capacity(args.dedup_capacity as usize)?)
    } else {
        None
    };
    let names = sources
        .iter()
        .map(|source| source.name().to_owned())
        .collect();
    Ok(Backends::new(start_merger(sources).await?, names, dedup))
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

/// Stops every source on the first Ctrl-C; the pipeline then drains.
fn shutdown_on_ctrl_c(handle: ShutdownHandle) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            handle.shutdown();
        }
    });
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
}

impl Backends {
    /// The backends `names` merged by `merger`, correlated with `dedup`.
    fn new(merger: Merger, names: Vec<String>, dedup: Option<DedupConfig>) -> Self {
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

/// Writes the backends' events, publishing the number of open flows on
/// `open_flows`; a reader that went away (`| head`) ends the output
/// quietly.
async fn write_events(
    events: Events,
    mut writer: RecordWriter<Box<dyn Write + Send>>,
    open_flows: tokio::sync::watch::Sender<usize>,
    metrics: Option<Metrics>,
) -> Result<PipelineReport> {
    let count = move |item: &MergedItem| {
        if let Some(metrics) = &metrics {
            metrics.record(item);
        }
    };
    let written = match events {
        Events::Correlated(mut correlated) => {
            let stream = (&mut *correlated).inspect(count);
            let written = pipeline::write_all_tracking_open(stream, &mut writer, open_flows).await;
            written.map(|mut report| {
                report.correlation_evictions = correlated.evictions();
                report
            })
        }
        Events::Merged(stream) => {
            let stream = stream.inspect(count);
            pipeline::write_all_tracking_open(stream, &mut writer, open_flows).await
        }
    };
    match written {
        Ok(report) => Ok(report),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(PipelineReport::default()),
        Err(error) => Err(error).context("cannot write events"),
    }
}

/// Writes the stream until it ends (for commands that do not wait on open
/// flows).
async fn write_all_events(
    events: Events,
    writer: RecordWriter<Box<dyn Write + Send>>,
    metrics: Option<Metrics>,
) -> Result<PipelineReport> {
    write_events(events, writer, tokio::sync::watch::channel(0).0, metrics).await
}

/// Binds the metrics address, when one is given, before anything else
/// starts (an address in use is an error with nothing left behind).
async fn serve_metrics(addr: Option<std::net::SocketAddr>) -> Result<Option<Metrics>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let metrics = Metrics::new();
    let bound = metrics.serve(addr).await?;
    eprintln!("flowtrack: serving metrics on http://{bound}/metrics");
    Ok(Some(metrics))
}

/// Reports failed sources on stderr; whether any failed.
fn print_failures(report: &PipelineReport) -> bool {
    for failure in &report.failures {
        eprintln!(
            "flowtrack: error: the {} backend failed: {}",
            failure.backend, failure.error
        );
    }
    !report.failures.is_empty()
}

/// Exit status 3: a backend failed mid-run while another went on.
const EXIT_DEGRADED: u8 = 3;

/// Success; [`EXIT_DEGRADED`] when a backend failed while another went on;
/// failure when every backend failed (the failures are printed).
fn exit_code_of(report: &PipelineReport, sources: usize) -> ExitCode {
    match degradation(report, sources) {
        Some(code) => code,
        None => ExitCode::SUCCESS,
    }
}

/// The exit code a backend failure imposes, if any (printing the failures).
fn degradation(report: &PipelineReport, sources: usize) -> Option<ExitCode> {
    if !print_failures(report) {
        None
    } else if report.failures.len() < sources {
        Some(ExitCode::from(EXIT_DEGRADED))
    } else {
        Some(ExitCode::FAILURE)
    }
}

/// The end of `run` and `watch`: the one-line summary, then the
/// per-destination table in the chosen format.
fn print_summaries(report: &PipelineReport, format: SummaryFormat) {
    print_summary(report);
    match format {
        SummaryFormat::Text if !report.destinations.is_empty() => {
            eprint!("{}", report.destinations.to_text());
        }
        SummaryFormat::Json => eprintln!("{}", report.destinations.to_json()),
        SummaryFormat::Text | SummaryFormat::Off => {}
    }
}

async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let replay = Replay::open(&args.file).await?;
    let writer = open_writer(&args.output, DefaultStream::Stdout)?;
    let sources = replay
        .into_sources()
        .into_iter()
        .map(|source| Box::new(source) as Box<dyn FlowSource>);
    let sources: Vec<Box<dyn FlowSource>> = sources.collect();
    let names = sources
        .iter()
        .map(|source| source.name().to_owned())
        .collect();
    let backends = Backends::new(start_merger(sources).await?, names, None);
    shutdown_on_ctrl_c(backends.shutdown.clone());
    let sources = backends.names.len();
    let report = write_all_events(backends.events, writer, None).await?;
    Ok(exit_code_of(&report, sources))
}

async fn watch(args: WatchArgs) -> Result<ExitCode> {
    let scope = scope::resolve(&args.scope)?;
    let metrics = serve_metrics(args.report.metrics_addr).await?;
    let writer = open_writer(&args.output, DefaultStream::Stdout)?;
    let backends = start_backends(&args.backend, &scope)
        .await
        .with_context(|| format!("cannot watch {}", Describe(&scope)))?;
    tracing::info!(scope = %Describe(&scope), "watching until Ctrl-C");
    shutdown_on_ctrl_c(backends.shutdown.clone());
    let sources = backends.names.len();
    if let Some(metrics) = &metrics {
        backends.report_to(metrics);
    }
    let report = write_all_events(backends.events, writer, metrics).await?;
    let code = exit_code_of(&report, sources);
    print_summaries(&report, args.report.summary);
    Ok(code)
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let (program, program_args) = args
        .command
        .split_first()
        .context("run needs a command: flowtrack run -- CMD [ARGS...]")?;
    let user = args.user.as_deref().map(RunAs::resolve).transpose()?;
    let metrics = serve_metrics(args.report.metrics_addr).await?;
    let cgroup = WorkloadCgroup::create()?;
    let scope = Scope::Cgroup(cgroup.path().to_path_buf());
    let writer = open_writer(&args.output, DefaultStream::Stderr)?;
    // Every source is attached before the child starts, so its first
    // connection is seen.
    let backends = start_backends(&args.backend, &scope)
        .await
        .context("cannot observe the command")?;
    let shutdown = backends.shutdown.clone();
    let unsettled = backends.unsettled();
    let sources = backends.names.len();
    // Handlers first: a signal flowtrack handles is reset to its default in
    // the child at exec, even if flowtrack's parent ignored it.
    let signals = ForwardedSignals::install()?;
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
    let output = write_events(backends.events, writer, open_flows, metrics);
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
    let (report, status) = tokio::join!(output, supervise);
    let status = status.context("cannot wait for the command")?;
    let report = report?;
    // The command's status is the exit code, unless a backend failed while
    // another went on (degraded) or every one failed.
    let degraded = degradation(&report, sources);
    print_summaries(&report, args.report.summary);
    if degraded.is_some() {
        eprintln!(
            "flowtrack: the command exited with {}",
            describe_status(status)
        );
    }
    drop(cgroup);
    drop(relay);
    Ok(degraded.unwrap_or_else(|| child_exit_code(status)))
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

/// One line on stderr: what was observed, and what was not.
fn print_summary(report: &PipelineReport) {
    let still_open = report.open_flows();
    let mut line = format!(
        "flowtrack: {} opened, {} closed",
        Count(report.opened, "flow"),
        report.closed
    );
    if still_open > 0 {
        line.push_str(&format!(
            ", {still_open} still open when observation stopped"
        ));
    }
    if report.correlation_evictions > 0 {
        line.push_str(&format!(
            ", {} evicted from the correlation table (duplicates possible)",
            Count(report.correlation_evictions, "flow")
        ));
    }
    if report.denied > 0 {
        line.push_str(&format!(", {} denied", report.denied));
    }
    if report.loss_items > 0 {
        let points: Vec<String> = report
            .loss_points
            .iter()
            .map(|point| match remedy(*point) {
                Some(remedy) => format!("{point}: {remedy}"),
                None => point.to_string(),
            })
            .collect();
        let lost = match (report.lost_observations, report.losses_of_unknown_size) {
            (0, _) => LossCount(None).to_string(),
            (known, 0) => LossCount(Some(known)).to_string(),
            (known, _) => format!("{} and an unknown number more", LossCount(Some(known))),
        };
        line.push_str(&format!("; LOST {lost} ({})", points.join("; ")));
    } else {
        line.push_str("; nothing lost");
    }
    eprintln!("{line}");
}

/// The flag that makes room where observations were lost, if one does.
fn remedy(point: LossPoint) -> Option<&'static str> {
    match point {
        LossPoint::RingBufferFull => Some("raise --ring-bytes"),
        LossPoint::FlowTableEviction => Some("raise --flow-table-entries"),
        _ => None,
    }
}

/// `status 7`, or `signal 9 (SIGKILL)`.
fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "an unknown status".to_owned(),
    }
}

/// The child's exit code, or 128 + signal number as a shell reports it.
fn child_exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
