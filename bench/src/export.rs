//! `flowtrack-bench export`: what exporting costs. The eBPF storm
//! (`crate::storm`) watched by `flowtrack watch` without an export and
//! with `--export ipfix+udp://` to a local nfcapd, alternating: flows made,
//! closed lines written, records at the collector, CPU per 10,000 flows;
//! and `--active-timeout 60` with a large number of flows open at once
//! (`crate::scale`'s workload, each flow sent to again every 10 s or so,
//! so that none idles out): the CPU of a window that holds one update walk
//! of every flow, against the same window without updates.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flowtrack_kernel_tests::{Netns, Server, TestCgroup, metric_sum};

use crate::storm::{
    Generator, Watched, Watcher, cpu_seconds, flowtrack_beside, flowtrack_line, harness, tally,
};

/// nfcapd on a free UDP port of 127.0.0.1, writing into a directory of
/// its own.
struct Nfcapd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nfcapd {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("nfcapd")
            .args(["-p", &port.to_string(), "-b", "127.0.0.1", "-w"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nfcapd (Debian package nfdump; scripts/setup.sh installs it)")?;
        let nfcapd = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while nfcapd.socket_field(1).is_none() {
            ensure!(Instant::now() < deadline, "nfcapd never bound its port");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nfcapd)
    }

    /// Field `index` of nfcapd's socket's line in `/proc/net/udp`.
    fn socket_field(&self, index: usize) -> Option<String> {
        let bound = format!("0100007F:{:04X}", self.port);
        std::fs::read_to_string("/proc/net/udp")
            .ok()?
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .find(|fields| fields.get(1) == Some(&bound))?
            .get(index)
            .cloned()
    }

    /// Stops it once it has read what was sent, and counts the records it
    /// stored whose destination port is `dport`.
    fn stop_and_count(mut self, dport: u16) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        // tx_queue:rx_queue; rx_queue is what waits unread.
        while self
            .socket_field(4)
            .is_some_and(|queues| !queues.ends_with(":00000000"))
        {
            ensure!(Instant::now() < deadline, "nfcapd never read what was sent");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = rustix::process::Pid::from_raw(self.child.id().cast_signed()).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        self.child.wait()?;
        let output = Command::new("nfdump")
            .arg("-R")
            .arg(self.dir.path())
            .args(["-q", "-o", "csv"])
            .output()?;
        ensure!(output.status.success(), "nfdump failed: {output:?}");
        // ts,te,td,sa,da,sp,dp,...
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.split(',').nth(6).map(str::trim) == Some(&dport.to_string()))
            .count())
    }
}

/// One eBPF storm, exported to nfcapd or not: its table row.
fn storm_row(flowtrack: &str, export: bool, flows: usize) -> Result<String> {
    let netns = Netns::new();
    let mut echo = netns.command(&harness()?);
    echo.args(["echo", "127.0.0.1:0"]);
    let server = Server::start(echo);
    let cgroup = TestCgroup::new();
    let collector = export.then(Nfcapd::start).transpose()?;
    let mut ours = Command::new(flowtrack);
    ours.args(["watch", "--backend", "ebpf", "--format", "json", "--cgroup"])
        .arg(&cgroup.path);
    if let Some(collector) = &collector {
        ours.args([
            "--export",
            &format!("ipfix+udp://127.0.0.1:{}", collector.port),
        ]);
    }
    let generator = Generator {
        netns: &netns,
        cgroup: Some(&cgroup),
        dst: SocketAddr::from(([127, 0, 0, 1], server.port)),
        flows,
        threads: 2,
        lookup: None,
    };
    let storm = generator.run(vec![Watcher::spawn(ours)?])?;
    let Watched { lines, cpu, .. } = storm.watched.into_iter().next().context("flowtrack")?;
    let seen = tally(&lines, &storm.made, flowtrack_line(server.port));
    let dropped: u64 = lines
        .iter()
        .filter_map(|(_, line)| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["point"] == "export_dropped")
        .filter_map(|line| line["count"].as_u64())
        .sum();
    let at_collector = match collector {
        Some(collector) => collector.stop_and_count(server.port)?.to_string(),
        None => "–".to_owned(),
    };
    Ok(format!(
        "| {} | {} | {} | {at_collector} | {dropped} | {:.3} |\n",
        if export {
            "ipfix+udp to nfcapd"
        } else {
            "none"
        },
        storm.total,
        seen.closed,
        cpu * 10_000.0 / storm.total as f64,
    ))
}

/// The eBPF storm without and with export, twice each, alternating.
fn storms(flows: usize) -> Result<String> {
    let flowtrack = flowtrack_beside("flowtrack-bench export")?;
    let flowtrack = flowtrack
        .to_str()
        .context("flowtrack's path is not UTF-8")?;
    let mut table = String::from(
        "| export | flows made | closed lines written | records at the collector | export_dropped reported | flowtrack CPU s / 10k flows |\n|---|---|---|---|---|---|\n",
    );
    for export in [false, true, false, true] {
        table.push_str(&storm_row(flowtrack, export, flows)?);
    }
    Ok(table)
}

/// How long after flowtrack starts the window ends: past its second
/// update walk (at 120 s with `--active-timeout 60`), the first to report
/// flows opened after it started.
const WINDOW_END: Duration = Duration::from_secs(130);

/// `flows` idle UDP flows open at once, watched by the eBPF backend with
/// `active_timeout` (seconds) or none: the row.
fn open_flows_row(flows: u64, active_timeout: Option<u32>, port: u16) -> Result<String> {
    flowtrack_beside("flowtrack-bench export")?;
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let mut watch = crate::scale::watch_at_scale(&netns, &cgroup, "ebpf", flows, port)?;
    if let Some(seconds) = active_timeout {
        watch.args(["--active-timeout", &seconds.to_string()]);
    }
    let started = Instant::now();
    let mut watch = watch.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let metric = |name: &str| {
        netns
            .scrape_metrics(port)
            .map(|text| metric_sum(&text, name))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("flowtrack_flows_opened_total").is_none() {
        ensure!(Instant::now() < deadline, "flowtrack did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut workload = crate::scale::open_at_once(
        &netns,
        &cgroup,
        flows,
        WINDOW_END + Duration::from_secs(30),
        // A round of 1,000,000 datagrams takes about 10 s: rounds 2 s
        // apart leave none idle 30 s (a flow closed in the window is
        // counted in the row).
        Some(Duration::from_secs(2)),
    )?;
    // The window starts once every flow is reported opened.
    while metric("flowtrack_flows_opened_total").unwrap_or(0) < flows {
        ensure!(
            started.elapsed() < WINDOW_END - Duration::from_secs(30),
            "flowtrack did not report every flow opened"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (window_start, cpu_start) = (started.elapsed(), cpu_seconds(watch.id())?);
    let updates_before = metric("flowtrack_flow_updates_total").unwrap_or(0);
    let closed_before = metric("flowtrack_flows_closed_total").unwrap_or(0);
    std::thread::sleep(WINDOW_END.saturating_sub(started.elapsed()));
    let cpu = cpu_seconds(watch.id())? - cpu_start;
    let updates = metric("flowtrack_flow_updates_total").unwrap_or(0) - updates_before;
    let closed = metric("flowtrack_flows_closed_total").unwrap_or(0) - closed_before;
    let window = started.elapsed() - window_start;
    let _ = workload.kill();
    let _ = workload.wait();
    if let Ok(pid) = rustix::process::Pid::from_raw(watch.id().cast_signed()).context("pid") {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
    let _ = watch.wait();
    Ok(format!(
        "| {} | {flows} | {updates} | {closed} | {:.0} s | {cpu:.2} |\n",
        active_timeout.map_or("off".to_owned(), |s| format!("{s} s")),
        window.as_secs_f64(),
    ))
}

/// The storm table, then the open-flows table.
pub(crate) fn export(storm_flows: usize, open_flows: u64) -> Result<String> {
    let mut text = storms(storm_flows)?;
    text.push('\n');
    let _max = crate::scale::Setting::raise(
        "/proc/sys/net/netfilter/nf_conntrack_max",
        open_flows + open_flows / 4,
    )?;
    text.push_str(
        "| --active-timeout | flows open at once | updates reported in the window | closed in the window | window | flowtrack CPU s in the window |\n|---|---|---|---|---|---|\n",
    );
    for (timeout, port) in [(None, 19_466), (Some(60), 19_467)] {
        write!(text, "{}", open_flows_row(open_flows, timeout, port)?)?;
    }
    Ok(text)
}
