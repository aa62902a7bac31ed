//! What the `run` tests share: the workload, running flowtrack in a test
//! namespace, following it, and checks of its output and of the kernel
//! state it leaves.

// Each test file uses what it needs of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flow_core::FlowEvent;
use flow_core::record::{FlowRecord, RecordItem};
use flowtrack_kernel_tests::{Netns, TestCgroup};

/// The flowtrack binary under test.
pub(crate) const FLOWTRACK: &str = env!("CARGO_BIN_EXE_flowtrack");

/// `out` (JSON lines) holds exactly the opening and closing of SEND_UDP's
/// flow from `sport`, seen by `backend`, with its one datagram counted,
/// and no command line (written only with `--cmdline`); the closing.
pub(crate) fn assert_one_udp_flow(out: &Path, backend: &str, sport: u16) -> FlowEvent {
    let lines = std::fs::read_to_string(out).unwrap();
    assert!(!lines.contains("\"cmdline\""), "{lines}");
    let records: Vec<FlowRecord<'static>> = lines
        .lines()
        .map(|l| FlowRecord::from_json_line(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records.iter().map(FlowRecord::kind_name).collect();
    assert_eq!(kinds, ["opened", "closed"], "{lines}");
    for record in &records {
        assert_eq!(record.backend, backend);
        let RecordItem::Event(event) = &record.item else {
            panic!("{record:?}")
        };
        assert_eq!(
            event.key.to_string(),
            format!("udp 127.0.0.1:{sport} -> 127.0.0.1:9")
        );
    }
    let RecordItem::Event(closed) = &records[1].item else {
        unreachable!()
    };
    assert_eq!(
        closed.kind,
        flow_core::FlowEventKind::Closed {
            pkt_count: 1,
            byte_count: 128
        },
        "one datagram: 100 + 8 + 20 bytes"
    );
    closed.clone().into_owned()
}

/// `flowtrack ARGS` inside `netns`.
pub(crate) fn flowtrack_in(netns: &Netns, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .arg(FLOWTRACK)
        .args(args);
    command
}

/// `flowtrack`, run as user and group nobody (65534) with no other group.
pub(crate) fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        FLOWTRACK,
    ]);
    command
}

/// `nf_conntrack_acct` in `netns`: `1` while the nflog backend runs there.
pub(crate) fn accounting(netns: &Netns) -> String {
    netns.sysctl("net.netfilter.nf_conntrack_acct")
}

/// flowtrack's cgroups (`flowtrack-<pid>-<n>`) that belong to `pid`.
pub(crate) fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let mount = flow_cgroup::cgroup2_mount().expect("cgroup v2 is mounted");
    std::fs::read_dir(&mount)
        .expect("the cgroup mount is readable")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("flowtrack-{pid}-")))
        })
        .collect()
}

fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Whether program `id` is unloaded within a few seconds (the kernel frees
/// programs after an RCU grace period, not at once).
pub(crate) fn program_goes_away(id: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while program_exists(id) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The kernel tests' traffic generator, built beside flowtrack in the same
/// workspace.
pub(crate) fn traffic_generator() -> std::path::PathBuf {
    let path = Path::new(FLOWTRACK).with_file_name("traffic");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        path.display()
    );
    path
}

/// The write end of a pipe whose reader has gone (`| head` after it exits).
pub(crate) fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// `/dev/full`, for writing: every write fails with "no space".
pub(crate) fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap()
}

/// Sends `signal` to `child`.
pub(crate) fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().cast_signed()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Polls `done` until it holds, for 20 seconds at the most.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `command` (by its name, so executed) runs in `cgroup`.
/// Until then the child flowtrack forked for it still shares flowtrack's
/// lock on the cgroup, so a run killed earlier leaves a cgroup that looks
/// in use for the moment the child takes to execute.
pub(crate) fn wait_for_command(cgroup: &Path, command: &str) {
    wait_until(&format!("{command} runs in {}", cgroup.display()), || {
        std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|name| name.trim_end() == command)
            })
    });
}

/// `flowtrack run --backend BACKEND -- sleep 30` in `netns`, its stderr
/// piped.
pub(crate) fn start_sleeping_run(netns: &Netns, backend: &str) -> Child {
    flowtrack_in(netns, &["run", "--backend", backend, "--", "sleep", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowtrack starts")
}

/// Waits until `flowtrack` has installed its nf_tables table in `netns`.
pub(crate) fn wait_for_table(netns: &Netns) {
    wait_until("flowtrack installed its table", || {
        netns.tables().contains("flowtrack_")
    });
}

/// Removes the cgroup `watch` follows, and waits for the watch to end.
pub(crate) fn remove_watched(cgroup: &TestCgroup, mut watch: Child) -> Output {
    std::fs::remove_dir(&cgroup.path).expect("the cgroup is empty and can be removed");
    wait_until("watch ends after its cgroup was removed", || {
        watch.try_wait().unwrap().is_some()
    });
    watch.wait_with_output().unwrap()
}

/// Sends Ctrl-C (SIGINT) to `watch` once `count` lines of its events (its
/// stdout, piped) are out; checks that it then ends normally, and returns
/// every line it wrote.
pub(crate) fn ctrl_c_after_lines(mut watch: Child, count: usize) -> String {
    let events = Lines::follow(watch.stdout.take().expect("watch's stdout is piped"));
    events.wait_for("the events are written", |lines| lines.len() >= count);
    signal(&watch, rustix::process::Signal::INT);
    let output = watch.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "Ctrl-C ends watch normally: {output:?}"
    );
    events.all()
}

/// The lines a child writes to a pipe, read as they come, so that a test
/// can wait for what the child says before it acts.
pub(crate) struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Lines {
    /// Reads `pipe` (a child's stdout or stderr) until the child closes it.
    pub(crate) fn follow(pipe: impl Read + Send + 'static) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }
        });
        Self { lines, reader }
    }

    /// Waits until a line read so far satisfies `wanted` (20 seconds at
    /// the most).
    pub(crate) fn wait_for(&self, what: &str, mut wanted: impl FnMut(&[String]) -> bool) {
        wait_until(what, || wanted(&self.lines.lock().unwrap()));
    }

    /// Every line, once the child has closed the pipe (it has exited).
    pub(crate) fn all(self) -> String {
        self.reader.join().expect("the pipe's reader");
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

/// One scrape; `None` when the server closed the connection unanswered.
pub(crate) fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.").then_some(response)
}
