//! `flowtrack-bench scale`: a million concurrent flows — idle UDP flows to
//! distinct addresses and ports, all open at once inside a test namespace
//! and cgroup — watched by `flowtrack watch` with each backend: flowtrack's
//! peak RSS and the kernel memory its flow state takes, per flow.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flowtrack_kernel_tests::{Netns, TestCgroup, metric_sum, status_kib};

/// Opens FLOWS idle UDP flows (one datagram each, from one socket, to
/// 127.1.x.1 ports 1024–61023), then stays alive for LIFE seconds so they
/// stay open; with EVERY above 0, sends to each again EVERY seconds after
/// the last round, so that none idles out (the eBPF backend closes a UDP
/// flow after 30 s without a packet).
const FAN_OUT: &str = "import socket,sys,time\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
n,life,every=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3])\n\
def fan(): [s.sendto(b'x',('127.1.%d.1' % (i // 60000), 1024 + i % 60000)) for i in range(n)]\n\
fan()\n\
print('sent', flush=True)\n\
end=time.time()+life\n\
while every and time.time()+every<end: time.sleep(every); fan()\n\
time.sleep(max(0,end-time.time()))\n";

/// `flowtrack_flows_opened_total` and observations reported lost, from
/// the metrics endpoint at 127.0.0.1:`port` in `netns`.
fn scrape(netns: &Netns, port: u16) -> Option<(u64, u64)> {
    let scraped = netns.scrape_metrics(port)?;
    Some((
        metric_sum(&scraped, "flowtrack_flows_opened_total"),
        metric_sum(&scraped, "flowtrack_observations_lost_total"),
    ))
}

/// Bytes of the kernel objects behind `backend`'s flow state for the
/// cgroup at `cgroup`: the eBPF maps of the attached programs, or the
/// conntrack entries (slab objects).
fn kernel_bytes(backend: &str, cgroup: &std::path::Path) -> Result<u64> {
    if backend == "nflog" {
        return conntrack_slab_bytes();
    }
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let output = Command::new("bpftool").arg("-j").args(args).output()?;
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let attached = json(&["cgroup", "show", cgroup.to_str().context("path")?])?;
    let mut maps = std::collections::BTreeSet::new();
    for program in attached.as_array().into_iter().flatten() {
        let id = program["id"].as_u64().context("program id")?;
        let info = json(&["prog", "show", "id", &id.to_string()])?;
        maps.extend(
            info["map_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64),
        );
    }
    let mut bytes = 0;
    for map in maps {
        bytes += json(&["map", "show", "id", &map.to_string()])?["bytes_memlock"]
            .as_u64()
            .unwrap_or(0);
    }
    Ok(bytes)
}

/// Bytes of conntrack entries now (`nf_conntrack` slab: objects × size).
fn conntrack_slab_bytes() -> Result<u64> {
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    let line = slabinfo
        .lines()
        .find(|line| line.starts_with("nf_conntrack "))
        .context("no nf_conntrack slab")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(fields.len() == 3, "unexpected slabinfo line {line}");
    Ok(fields[0] * fields[2])
}

/// Packets conntrack dropped in `netns` (`insert_failed` + `drop` of
/// `conntrack -S`): a flow whose first packet it dropped never left.
fn conntrack_drops(netns: &Netns) -> u64 {
    let Ok(output) = netns.command("conntrack").arg("-S").output() else {
        return 0;
    };
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|field| {
            let (name, value) = field.split_once('=')?;
            matches!(name, "insert_failed" | "drop").then(|| value.parse::<u64>().ok())?
        })
        .sum()
}

/// A global setting changed for the measurement, put back on drop.
pub(crate) struct Setting {
    path: &'static str,
    old: String,
}

impl Setting {
    pub(crate) fn raise(path: &'static str, at_least: u64) -> Result<Self> {
        let old = std::fs::read_to_string(path)?.trim().to_owned();
        if old.parse::<u64>().unwrap_or(0) < at_least {
            std::fs::write(path, at_least.to_string())
                .with_context(|| format!("raising {path}"))?;
        }
        Ok(Self { path, old })
    }
}

impl Drop for Setting {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.old);
    }
}

fn stop(mut child: Child) {
    if let Ok(pid) = rustix::process::Pid::from_raw(child.id().cast_signed()).context("pid") {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
    let _ = child.wait();
}

/// How long the workload keeps its flows open (and how long the counts
/// may take to settle, less a margin).
const WORKLOAD_LIFE: Duration = Duration::from_secs(120);

/// `flowtrack watch --backend BACKEND` in `netns`, of `cgroup`, with
/// room for `flows` flows, JSON to /dev/null, metrics on 127.0.0.1:`port`
/// there.
pub(crate) fn watch_at_scale(
    netns: &Netns,
    cgroup: &TestCgroup,
    backend: &str,
    flows: u64,
    port: u16,
) -> Result<Command> {
    let flowtrack = std::env::current_exe()?.with_file_name("flowtrack");
    let mut watch = Command::new("nsenter");
    watch
        .arg(format!("--net={}", netns.path().display()))
        .arg(&flowtrack)
        .args([
            "watch",
            "--backend",
            backend,
            "--format",
            "json",
            "-o",
            "/dev/null",
        ])
        .args([
            "--summary",
            "off",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--cgroup")
        .arg(&cgroup.path)
        .args(["--flow-table-entries", &(flows + flows / 4).to_string()]);
    Ok(watch)
}

/// Runs [`FAN_OUT`] in `netns` and `cgroup`: `flows` flows opened, kept
/// open for `life` (each sent to again `every`, when given); returns once
/// every datagram of the first round is sent.
pub(crate) fn open_at_once(
    netns: &Netns,
    cgroup: &TestCgroup,
    flows: u64,
    life: Duration,
    every: Option<Duration>,
) -> Result<Child> {
    let mut python = netns.command("python3");
    python.args([
        "-c",
        FAN_OUT,
        &flows.to_string(),
        &life.as_secs().to_string(),
        &every.map_or(0, |every| every.as_secs()).to_string(),
    ]);
    let mut workload = cgroup.wrap(&python).stdout(Stdio::piped()).spawn()?;
    let mut sent = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(workload.stdout.as_mut().context("stdout")?),
        &mut sent,
    )?;
    ensure!(sent.trim() == "sent", "the sender failed: {sent:?}");
    Ok(workload)
}

/// One backend's row.
fn measure(backend: &str, flows: u64, port: u16) -> Result<String> {
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let mut watch = watch_at_scale(&netns, &cgroup, backend, flows, port)?;
    watch.args(["--netlink-buffer", &(64 << 20).to_string()]);
    let watch = watch.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(&netns, port).is_none() {
        ensure!(
            Instant::now() < deadline,
            "flowtrack --backend {backend} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_before = status_kib(watch.id(), "VmRSS:").unwrap_or(0);
    let kernel_before = kernel_bytes(backend, &cgroup.path)?;
    let started = Instant::now();
    let mut workload = open_at_once(&netns, &cgroup, flows, WORKLOAD_LIFE, None)?;
    // Every flow is open now, none idle yet: the kernel state is at its
    // largest.
    let kernel = kernel_bytes(backend, &cgroup.path)?.saturating_sub(if backend == "nflog" {
        kernel_before
    } else {
        0
    });
    // Wait until every flow is accounted for (reported opened or lost), or
    // the counts stop moving: the reader may trail the kernel at this scale.
    let (mut opened, mut lost, mut settled) = (0, 0, Duration::ZERO);
    let mut last_change = Instant::now();
    while started.elapsed() < WORKLOAD_LIFE - Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        let Some(now) = scrape(&netns, port) else {
            continue;
        };
        if now != (opened, lost) {
            (opened, lost) = now;
            last_change = Instant::now();
            settled = started.elapsed();
        }
        if opened + lost >= flows || last_change.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let peak = status_kib(watch.id(), "VmHWM:").unwrap_or(0);
    let dropped = conntrack_drops(&netns);
    let _ = workload.kill();
    let _ = workload.wait();
    stop(watch);
    if opened == 0 {
        bail!("flowtrack --backend {backend} reported no flow");
    }
    let per_flow = |bytes: u64| bytes as f64 / flows as f64;
    let grown = peak.saturating_sub(rss_before) * 1024;
    Ok(format!(
        "| {backend} | {flows} | {opened} | {lost} | {:.0} s | {dropped} | {} MiB (+{} MiB) | {:.0} B | {} MiB | {:.0} B |\n",
        settled.as_secs_f64(),
        peak / 1024,
        grown >> 20,
        per_flow(grown),
        kernel >> 20,
        per_flow(kernel),
    ))
}

/// Both backends' rows, with the table header.
pub(crate) fn scale(flows: u64) -> Result<String> {
    // Conntrack's table is global: make room for the flows, put it back after.
    let _max = Setting::raise(
        "/proc/sys/net/netfilter/nf_conntrack_max",
        flows + flows / 4,
    )?;
    let mut table = String::from(
        "| backend | flows opened at once | reported opened | reported lost | all reported after | conntrack drops | flowtrack peak RSS (growth) | growth per flow | kernel flow state | per flow |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (backend, port) in [("ebpf", 19_464), ("nflog", 19_465)] {
        write!(table, "{}", measure(backend, flows, port)?)?;
    }
    Ok(table)
}
