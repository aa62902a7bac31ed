//! `flowtrack-bench soak`: steady mixed traffic with connection churn
//! under `flowtrack run --backend both` for a while: RSS and open file
//! descriptors sampled along the way, loss, and how it exits.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flowtrack_kernel_tests::{Netns, churn_workload, rss_and_fds};

/// Runs the soak for `seconds`; returns the Markdown table.
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
        .args([
            "run",
            "--backend",
            "both",
            "--format",
            "json",
            "--summary",
            "off",
            "-o",
        ])
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
        let (rss, fds) = rss_and_fds(child.id());
        if rss > 0 && started.elapsed() > Duration::from_secs(10) {
            samples.push((rss, fds));
        }
    }
    let output = child.wait_with_output()?;
    let lines = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let count = |kind: &str| {
        lines
            .lines()
            .filter(|line| line.contains(&format!(r#""kind":"{kind}""#)))
            .count()
    };
    let (first, last) = (
        samples.first().copied().unwrap_or_default(),
        samples.last().copied().unwrap_or_default(),
    );
    let max_rss = samples.iter().map(|(rss, _)| *rss).max().unwrap_or(0);
    Ok(format!(
        "| duration | flows opened | closed | loss lines | RSS first → last (max) | fds first → last | exit |\n\
         |---|---|---|---|---|---|---|\n\
         | {seconds} s | {} | {} | {} | {:.1} → {:.1} MiB ({:.1}) | {} → {} | {} |\n",
        count("opened"),
        count("closed"),
        count("lost"),
        first.0 as f64 / 1024.0,
        last.0 as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        first.1,
        last.1,
        output.status,
    ))
}

/// A path for a temporary file of this run.
fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flowtrack-bench-{}-{name}", std::process::id()))
}
