//! `flowtrack-bench soak`: steady mixed traffic with connection churn
//! under `flowtrack run --backend both` for a while: RSS, open file
//! descriptors and the correlation table's size sampled along the way,
//! whether every flow opened was closed, loss, and how it exits.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flow_core::record::{FlowRecord, RecordItem};
use flow_core::{FlowEventKind, FlowKey};
use flowtrack_kernel_tests::{Netns, churn_workload, metric_sample, rss_and_fds};

/// Where flowtrack serves its metrics inside the soak's namespace.
const METRICS_PORT: u16 = 9464;

/// One sample along the run.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    correlation_flows: Option<u64>,
}

/// Runs the soak for `seconds`; returns the Markdown tables.
pub(crate) fn soak(seconds: u64) -> Result<String> {
    let me = std::env::current_exe()?;
    let (flowtrack, traffic) = (me.with_file_name("flowtrack"), me.with_file_name("traffic"));
    ensure!(
        traffic.exists(),
        "{} not found: build it beside the harness (cargo build --release -p flowtrack-kernel-tests)",
        traffic.display()
    );
    let netns = Netns::new();
    let (tcp, udp) = (
        netns.serve(&traffic, &["serve-tcp", "127.0.0.1:0"]),
        netns.serve(&traffic, &["serve-udp", "[::1]:0"]),
    );
    let out = tempfile_path("soak.jsonl");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg(&flowtrack)
        .args(["run", "--backend", "both", "--format", "json"])
        .args(["--summary", "off", "--metrics-addr"])
        .arg(format!("127.0.0.1:{METRICS_PORT}"))
        .arg("-o")
        .arg(&out)
        .args([
            "--",
            "sh",
            "-c",
            &churn_workload(&traffic, tcp.port, udp.port, seconds),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting flowtrack")?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_secs(5));
        let (rss_kib, fds) = rss_and_fds(child.id());
        if rss_kib > 0 && started.elapsed() > Duration::from_secs(10) {
            let correlation_flows = scrape_correlation_flows(&netns);
            samples.push(Sample {
                at: started.elapsed(),
                rss_kib,
                fds,
                correlation_flows,
            });
        }
    }
    let output = child.wait_with_output()?;
    let lines = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let balance = Balance::of(&lines);
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
        output.status,
    );
    let mut next_minute = Duration::ZERO;
    for sample in &samples {
        if sample.at >= next_minute || std::ptr::eq(sample, samples.last().expect("not empty")) {
            table.push_str(&format!(
                "| {} s | {:.1} MiB | {} | {} |\n",
                sample.at.as_secs(),
                mib(sample.rss_kib),
                sample.fds,
                sample
                    .correlation_flows
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            ));
            next_minute = sample.at + Duration::from_secs(60);
        }
    }
    Ok(table)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The correlation table's size from flowtrack's metrics, if it answered.
fn scrape_correlation_flows(netns: &Netns) -> Option<u64> {
    metric_sample(
        &netns.scrape_metrics(METRICS_PORT)?,
        "flowtrack_correlation_flows",
    )
}

/// How the output's `opened` and `closed` lines pair up by key.
#[derive(Debug, Default)]
struct Balance {
    opened: usize,
    closed: usize,
    lost: usize,
    /// Keys with a `closed` without an `opened` before it, or left open.
    unbalanced_keys: usize,
}

impl Balance {
    fn of(lines: &str) -> Self {
        let mut balance = Self::default();
        let mut open: HashMap<FlowKey, i64> = HashMap::new();
        let mut unmatched_closes = 0;
        for record in lines
            .lines()
            .filter_map(|line| FlowRecord::from_json_line(line).ok())
        {
            match record.item {
                RecordItem::Event(event) => match event.kind {
                    FlowEventKind::Opened => {
                        balance.opened += 1;
                        *open.entry(event.key).or_default() += 1;
                    }
                    FlowEventKind::Closed { .. } => {
                        balance.closed += 1;
                        match open.get_mut(&event.key) {
                            Some(count) if *count > 0 => *count -= 1,
                            _ => unmatched_closes += 1,
                        }
                    }
                    _ => {}
                },
                RecordItem::Lost { .. } => balance.lost += 1,
                _ => {}
            }
        }
        balance.unbalanced_keys =
            unmatched_closes + open.values().filter(|count| **count != 0).count();
        balance
    }
}

/// A path for a temporary file of this run.
fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flowtrack-bench-{}-{name}", std::process::id()))
}
