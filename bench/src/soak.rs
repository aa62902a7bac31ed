//! `flowtrack-bench soak`: steady mixed traffic with connection churn
//! under `flowtrack run --backend both` for a while
//! ([`flowtrack_kernel_tests::soak`]): RSS, open file descriptors and the
//! correlation table's size along the way, whether every flow opened was
//! closed, loss, and how it exits.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, ensure};
use flowtrack_kernel_tests::soak::{Balance, soak as run_soak};

/// Runs the soak for `seconds`; returns the Markdown tables.
pub(crate) fn soak(seconds: u64) -> Result<String> {
    let me = std::env::current_exe()?;
    let (flowtrack, traffic) = (me.with_file_name("flowtrack"), me.with_file_name("traffic"));
    ensure!(
        traffic.exists(),
        "{} not found: build it beside the harness (cargo build --release -p flowtrack-kernel-tests)",
        traffic.display()
    );
    let run = run_soak(
        &flowtrack,
        &traffic,
        seconds,
        Duration::from_secs(10),
        Duration::from_secs(5),
    );
    let balance = Balance::of(&run.lines);
    let samples = &run.samples;
    let (first, last) = (
        samples.first().copied().unwrap_or_default(),
        samples.last().copied().unwrap_or_default(),
    );
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let mut table = format!(
        "| duration | flows opened | closed | keys not balanced | loss lines | RSS first → last (max) | fds first → last | exit |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {seconds} s | {} | {} | {} | {} | {:.1} → {:.1} MiB ({:.1}) | {} → {} | {} |\n\n\
         Along the run (every minute):\n\n\
         | time | RSS | fds | flows in the correlation table |\n\
         |---|---|---|---|\n",
        balance.opened,
        balance.closed,
        balance.unbalanced_keys,
        balance.lost,
        mib(first.rss_kib),
        mib(last.rss_kib),
        mib(max_rss),
        first.fds,
        last.fds,
        run.output.status,
    );
    let mut next_minute = Duration::ZERO;
    for (index, sample) in samples.iter().enumerate() {
        if sample.at >= next_minute || index + 1 == samples.len() {
            writeln!(
                table,
                "| {} s | {:.1} MiB | {} | {} |",
                sample.at.as_secs(),
                mib(sample.rss_kib),
                sample.fds,
                sample
                    .correlation_flows
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            )?;
            next_minute = sample.at + Duration::from_secs(60);
        }
    }
    Ok(table)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
