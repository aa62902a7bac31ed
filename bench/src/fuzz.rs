//! Fuzzing runs for the report: each cargo-fuzz target for a while from
//! the committed corpus, two at a time (the machine has two cores).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// The targets and what they feed.
const TARGETS: [(&str, &str); 8] = [
    (
        "ring_record",
        "any bytes to the eBPF ring-buffer record decoder",
    ),
    (
        "json_line",
        "any text to the replay line parser, with a check that what parses writes back the same",
    ),
    (
        "ctnetlink",
        "any bytes to the ctnetlink event decoder (messages, nested CTA_* attributes)",
    ),
    (
        "nflog",
        "any bytes to the nfnetlink_log decoder (messages, NFULA_* attributes, the logged packet's headers)",
    ),
    (
        "dns_response",
        "any bytes to the DNS response parser (header, question, records, compression pointers)",
    ),
    (
        "dns_over_tcp",
        "any segments (sequence number, bytes copied and not) to the DNS-over-TCP reassembler",
    ),
    (
        "client_hello",
        "any bytes to the TLS ClientHello server-name parser",
    ),
    (
        "policy",
        "any text as a policy rule and as a policy file, with a check that a rule that parses prints back to itself and a file that parses compiles",
    ),
];

/// Runs `target` for `seconds`; the executions it reached.
fn run(target: &str, seconds: u64) -> Result<(u64, u64)> {
    let scratch =
        std::env::temp_dir().join(format!("flowtrack-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let output = Command::new("cargo")
        .current_dir("fuzz")
        .env("FLOWTRACK_EBPF_PREBUILT", "1")
        .args(["+nightly", "fuzz", "run", target])
        .arg(&scratch)
        .arg(format!("corpus/{target}"))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
        ])
        .output()
        .context("running cargo fuzz (from the repository's root)")?;
    let _ = std::fs::remove_dir_all(&scratch);
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "fuzz target {target} failed:\n{}",
            log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
    }
    // "Done 15374219 runs in 601 second(s)"
    let done = log
        .lines()
        .find_map(|line| line.strip_prefix("Done "))
        .context("no final statistics from libFuzzer")?;
    let words: Vec<&str> = done.split_whitespace().collect();
    Ok((
        words[0].parse()?,
        words.get(3).and_then(|s| s.parse().ok()).unwrap_or(seconds),
    ))
}

/// Runs every target for `seconds`, two at a time; the Markdown table.
pub(crate) fn fuzz(seconds: u64) -> Result<String> {
    let mut table =
        String::from("| target | what it feeds | executions | seconds |\n|---|---|---|---|\n");
    for pair in TARGETS.chunks(2) {
        let runs: Vec<_> = pair
            .iter()
            .map(|(target, _)| std::thread::spawn(move || run(target, seconds)))
            .collect();
        for ((target, what), handle) in pair.iter().zip(runs) {
            let (executions, took) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("fuzz thread panicked"))??;
            table.push_str(&format!(
                "| `{target}` | {what} | {executions} | {took} |\n"
            ));
        }
    }
    Ok(table)
}
