//! `flowtrack`: report every network connection a workload makes.

// stderr and stdout may be closed or full: print through `diag`, which
// never panics.
#![deny(clippy::print_stderr, clippy::print_stdout)]

mod cleanup;
mod cli;
mod commands;
mod diag;
mod exports;
mod metrics;
mod output;
mod policy;
mod report;
mod safe_file;
mod scope;
mod scrape;
mod terminal;
mod workload;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    diag::set_quiet(cli.quiet);
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cli.log_level())),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Its own report of a failed write is an eprintln!, which panics
        // when stderr is closed or full.
        .log_internal_errors(false)
        .init();
    // One thread for the runtime: the sources, the merge and the output
    // hand items to each other without waking threads (the backends'
    // blocking reads have threads of their own). A profile of the storms
    // found a multi-threaded runtime's wake-ups were most of flowtrack's
    // CPU per flow; one thread halved the eBPF backend's.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            diag::say!("flowtrack: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs as a task, not as `block_on`'s own future: a task
    // woken by another (the merge's forwarder handing it a batch) runs in
    // the same turn, where a woken `block_on` future first costs the
    // runtime an extra poll of the kernel (`epoll_wait` with no timeout),
    // one per batch.
    let command = runtime.block_on(async { tokio::spawn(commands::dispatch(cli.command)).await });
    let outcome = match command {
        Ok(outcome) => outcome,
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            diag::say!("flowtrack: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
