//! The subcommands: open sources, merge them, write what they observe.

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use flow_core::FlowSource;
use flow_supervisor::backend;
use flow_supervisor::merge::{MergeConfig, Merger, ShutdownHandle};
use flow_supervisor::mock::Replay;
use flow_supervisor::output::RecordWriter;
use flow_supervisor::pipeline::{self, PipelineReport};

use crate::cli::{Command, OutputArgs, ReplayArgs, RunArgs, WatchArgs};
use crate::scope::Scope;

/// Runs one subcommand; the exit code is the command's, errors are printed
/// by `main`.
pub(crate) async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run(args).await,
        Command::Watch(args) => watch(args).await,
        Command::Replay(args) => replay(args).await,
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

async fn start_merger(sources: Vec<Box<dyn FlowSource>>) -> Result<Merger> {
    let mut merger = Merger::new(MergeConfig::default());
    for source in sources {
        let name = source.name().to_owned();
        merger
            .add(source)
            .await
            .with_context(|| format!("cannot start the {name} backend"))?;
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

/// Writes the merged stream; a reader that went away (`| head`) ends the
/// output quietly.
async fn write_events(
    merger: Merger,
    mut writer: RecordWriter<Box<dyn Write + Send>>,
) -> Result<PipelineReport> {
    match pipeline::write_all(merger.into_stream(), &mut writer).await {
        Ok(report) => Ok(report),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(PipelineReport::default()),
        Err(error) => Err(error).context("cannot write events"),
    }
}

/// Reports failed sources on stderr: success only if none failed.
fn exit_code_of(report: &PipelineReport) -> ExitCode {
    for failure in &report.failures {
        eprintln!(
            "flowtrack: error: the {} backend failed: {}",
            failure.backend, failure.error
        );
    }
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let replay = Replay::open(&args.file).await?;
    let writer = open_writer(&args.output, DefaultStream::Stdout)?;
    let sources = replay
        .into_sources()
        .into_iter()
        .map(|source| Box::new(source) as Box<dyn FlowSource>);
    let merger = start_merger(sources.collect()).await?;
    shutdown_on_ctrl_c(merger.shutdown_handle());
    let report = write_events(merger, writer).await?;
    Ok(exit_code_of(&report))
}

async fn watch(args: WatchArgs) -> Result<ExitCode> {
    let scope = Scope::resolve(&args.scope)?;
    let sources =
        backend::open(args.backend.backend).with_context(|| format!("cannot watch {scope}"))?;
    let writer = open_writer(&args.output, DefaultStream::Stdout)?;
    let merger = start_merger(sources).await?;
    tracing::info!(%scope, "watching until Ctrl-C");
    shutdown_on_ctrl_c(merger.shutdown_handle());
    let report = write_events(merger, writer).await?;
    Ok(exit_code_of(&report))
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let (program, program_args) = args
        .command
        .split_first()
        .context("run needs a command: flowtrack run -- CMD [ARGS...]")?;
    let sources = backend::open(args.backend.backend).context("cannot observe the command")?;
    let writer = open_writer(&args.output, DefaultStream::Stderr)?;
    // Every source is attached before the child starts, so its first
    // connection is seen.
    let merger = start_merger(sources).await?;
    let shutdown = merger.shutdown_handle();
    let mut child = tokio::process::Command::new(program)
        .args(program_args)
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    let output = write_events(merger, writer);
    let waited = async {
        let status = child.wait().await;
        shutdown.shutdown();
        status
    };
    let (report, status) = tokio::join!(output, waited);
    let status = status.context("cannot wait for the command")?;
    exit_code_of(&report?);
    Ok(child_exit_code(status))
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
