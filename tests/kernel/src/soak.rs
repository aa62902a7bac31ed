//! A soak: `flowtrack run --backend both` over [`crate::churn_workload`]
//! in a fresh namespace, sampled along the way, and how its output pairs
//! up. The suite's soak test and the harness's soak section both run it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flow_core::record::{FlowRecord, RecordItem};
use flow_core::{FlowEventKind, FlowKey};

use crate::{Netns, churn_workload, metric_sample, rss_and_fds};

/// Where flowtrack serves its metrics inside the soak's namespace.
const METRICS_PORT: u16 = 9464;

/// One sample of the running flowtrack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Since the start.
    pub at: Duration,
    /// `VmRSS` in KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// `flowtrack_correlation_flows`, if the scrape answered.
    pub correlation_flows: Option<u64>,
}

/// A finished soak.
#[derive(Debug)]
pub struct Soak {
    /// Its namespace, still there for checks of what was left behind.
    pub netns: Netns,
    /// Samples taken every `every` after the warm-up, while the workload
    /// runs.
    pub samples: Vec<Sample>,
    /// flowtrack's exit status and stderr.
    pub output: Output,
    /// flowtrack's JSON lines.
    pub lines: String,
}

/// Runs flowtrack (at `flowtrack`) over the churn workload of the
/// generator at `traffic` for `seconds`, sampling every `every` once
/// `warm_up` has passed and until the workload ends.
///
/// # Panics
/// When flowtrack cannot be started or waited for.
#[must_use]
pub fn soak(
    flowtrack: &Path,
    traffic: &Path,
    seconds: u64,
    warm_up: Duration,
    every: Duration,
) -> Soak {
    let netns = Netns::new();
    let (tcp, udp) = (
        netns.serve(traffic, &["serve-tcp", "127.0.0.1:0"]),
        netns.serve(traffic, &["serve-udp", "[::1]:0"]),
    );
    let out = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg(flowtrack)
        .args(["run", "--backend", "both", "--format", "json"])
        .args(["--summary", "off", "--metrics-addr"])
        .arg(format!("127.0.0.1:{METRICS_PORT}"))
        .arg("-o")
        .arg(out.path())
        .args(["--", "sh", "-c"])
        .arg(churn_workload(traffic, tcp.port, udp.port, seconds))
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting flowtrack");
    let started = Instant::now();
    let workload = Duration::from_secs(seconds);
    let mut samples = Vec::new();
    while child.try_wait().expect("waiting for flowtrack").is_none() {
        // The soak's sampling pace, not a wait for anything.
        std::thread::sleep(every);
        // Only while the workload runs: once it ends, flowtrack drains and
        // closes its sockets, links and metrics server, and a sample then
        // would show its exit, not its steady state.
        if !(warm_up..workload).contains(&started.elapsed()) {
            continue;
        }
        let (rss_kib, fds) = rss_and_fds(child.id());
        if rss_kib > 0 {
            samples.push(Sample {
                at: started.elapsed(),
                rss_kib,
                fds,
                correlation_flows: netns
                    .scrape_metrics(METRICS_PORT)
                    .and_then(|scraped| metric_sample(&scraped, "flowtrack_correlation_flows")),
            });
        }
    }
    let output = child.wait_with_output().expect("waiting for flowtrack");
    let lines = std::fs::read_to_string(out.path()).unwrap_or_default();
    Soak {
        netns,
        samples,
        output,
        lines,
    }
}

/// How an output's `opened` and `closed` lines pair up by key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// `opened` lines.
    pub opened: usize,
    /// `closed` lines.
    pub closed: usize,
    /// `lost` lines.
    pub lost: usize,
    /// `closed` lines with no `opened` before them on their key, plus keys
    /// left open.
    pub unbalanced_keys: usize,
}

impl Balance {
    /// Counts the JSON lines `lines`.
    #[must_use]
    pub fn of(lines: &str) -> Self {
        let mut balance = Self::default();
        let mut open: HashMap<FlowKey, i64> = HashMap::new();
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
                            _ => balance.unbalanced_keys += 1,
                        }
                    }
                    _ => {}
                },
                RecordItem::Lost { .. } => balance.lost += 1,
                _ => {}
            }
        }
        balance.unbalanced_keys += open.values().filter(|count| **count != 0).count();
        balance
    }
}
