//! `flowtrack run|watch` on a real kernel with each backend in turn, each
//! run in a network namespace of its own (flowtrack enters it with
//! `nsenter`, which keeps the host's mounts and so the cgroup v2 tree):
//! what every backend must do alike — report the command's flows, exit with
//! its code, follow a cgroup, and leave nothing behind after a normal run,
//! a signal, or SIGKILL followed by a new start. What only one backend
//! does is in `run_ebpf.rs` and `run_nflog.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use flow_core::record::{FlowRecord, RecordItem};
use flow_core::{FlowEvent, FlowEventKind, FlowKey};
use flowtrack_kernel_tests::{
    Netns, SEND_UDP, TestCgroup, attached_programs, privileged, send_udp,
};
use rustix::process::Signal;

mod common;

use common::{
    FLOWTRACK, accounting, as_nobody, assert_one_udp_flow, cgroups_of, closed_pipe,
    ctrl_c_after_lines, flowtrack_in, program_goes_away, remove_watched, signal,
    start_sleeping_run, traffic_generator, wait_for_command, wait_until,
};

/// What the tests expect of a backend where backends differ.
struct Backend {
    /// Its name, as `--backend` takes it.
    name: &'static str,
    /// Whether it turns conntrack accounting on while it runs (restored
    /// when it stops, or by the next start after a SIGKILL).
    changes_settings: bool,
    /// Why it cannot start for an unprivileged user.
    denied: &'static str,
    /// What it says when the cgroup it follows is removed, given the
    /// cgroup's path.
    cgroup_removed: fn(&Path) -> String,
}

const BACKENDS: [Backend; 2] = [
    Backend {
        name: "ebpf",
        changes_settings: false,
        denied: "creating eBPF maps needs CAP_BPF and CAP_NET_ADMIN",
        cgroup_removed: |_| {
            "the cgroup was removed: its flows are closed and the eBPF backend ends".to_owned()
        },
    },
    Backend {
        name: "nflog",
        changes_settings: true,
        denied: "subscribing to conntrack events needs CAP_NET_ADMIN",
        cgroup_removed: |cgroup| {
            format!(
                "the cgroup {} was removed: its flows are closed and the nflog backend ends",
                cgroup.display()
            )
        },
    },
];

/// Whether `backend` is attached to `cgroup` in `netns`: the eBPF
/// backend's three programs on the cgroup, the nflog backend's table in
/// the namespace.
fn attached(backend: &Backend, netns: &Netns, cgroup: &Path) -> bool {
    match backend.name {
        "ebpf" => attached_programs(cgroup).len() == flow_backend_ebpf::CGROUP_PROGRAMS.len(),
        _ => netns.tables().contains("flowtrack_"),
    }
}

/// Waits until `run`'s cgroup exists, `backend` is attached to it and its
/// `sleep` runs in it; the cgroup and the BPF programs attached to it.
fn wait_for_run(run: &Child, backend: &Backend, netns: &Netns) -> (PathBuf, Vec<u64>) {
    let mut cgroup = None;
    wait_until(
        &format!("flowtrack --backend {} started", backend.name),
        || {
            cgroup = cgroups_of(run.id()).pop();
            cgroup
                .as_ref()
                .is_some_and(|cgroup| attached(backend, netns, cgroup))
        },
    );
    let cgroup = cgroup.expect("the run's cgroup");
    wait_for_command(&cgroup, "sleep");
    let programs = attached_programs(&cgroup);
    (cgroup, programs)
}

/// `backend` left nothing in `netns`, or attached to `cgroup`: no program,
/// no table, the settings restored.
fn assert_released(backend: &Backend, netns: &Netns, cgroup: &Path, when: &str) {
    let name = backend.name;
    assert!(
        attached_programs(cgroup).is_empty(),
        "{name}: detached {when}"
    );
    assert_eq!(netns.tables(), "", "{name}: no table left {when}");
    assert_eq!(accounting(netns), "0", "{name}: accounting restored {when}");
}

/// Runs `test` once per backend, each time in a fresh network namespace;
/// nothing when the tests may not run ([`privileged`]).
fn each_backend(test: &str, mut body: impl FnMut(&Backend, &Netns)) {
    if privileged(test) {
        for backend in &BACKENDS {
            body(backend, &Netns::new());
        }
    }
}

#[test]
fn run_reports_the_commands_flows_and_exits_with_its_code() {
    each_backend(
        "run_reports_the_commands_flows_and_exits_with_its_code",
        |backend, netns| {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("flows.jsonl");
            let args = ["run", "--backend", backend.name, "--format", "json", "-o"];
            // The command enters the namespace itself, as the README shows.
            let output = flowtrack_in(netns, &args)
                .arg(&out)
                .args(["--", "ip", "netns", "exec", &netns.name])
                .args(["python3", "-c", SEND_UDP])
                .output()
                .unwrap();
            assert_eq!(
                output.status.code(),
                Some(7),
                "the command's exit code: {output:?}"
            );
            let sport: u16 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("flowtrack: 1 flow opened, 1 closed; nothing lost"),
                "{stderr}"
            );
            assert_one_udp_flow(&out, backend.name, sport);
            assert_eq!(netns.tables(), "", "{}: no table left", backend.name);
            assert_eq!(accounting(netns), "0", "{}: accounting", backend.name);
        },
    );
}

#[test]
fn sigint_sigterm_and_sighup_stop_the_command_and_clean_up() {
    each_backend(
        "sigint_sigterm_and_sighup_stop_the_command_and_clean_up",
        |backend, netns| {
            for (sent, code) in [(Signal::INT, 130), (Signal::TERM, 143), (Signal::HUP, 129)] {
                let run = start_sleeping_run(netns, backend.name);
                let (cgroup, programs) = wait_for_run(&run, backend, netns);
                if backend.changes_settings {
                    assert_eq!(accounting(netns), "1");
                }
                signal(&run, sent);
                let output = run.wait_with_output().unwrap();
                assert_eq!(
                    output.status.code(),
                    Some(code),
                    "{}: sleep ended by the forwarded {sent:?}",
                    backend.name
                );
                assert!(!cgroup.exists(), "the cgroup is removed after {sent:?}");
                for id in programs {
                    assert!(program_goes_away(id), "program {id} is unloaded");
                }
                assert_released(backend, netns, &cgroup, &format!("after {sent:?}"));
            }
        },
    );
}

#[test]
fn after_sigkill_the_next_start_removes_what_was_left() {
    each_backend(
        "after_sigkill_the_next_start_removes_what_was_left",
        |backend, netns| {
            let name = backend.name;
            let mut run = start_sleeping_run(netns, name);
            let (cgroup, programs) = wait_for_run(&run, backend, netns);
            run.kill().unwrap();
            run.wait().unwrap();
            // The links were file descriptors of the dead process, and the
            // table was owned by its netlink socket: the kernel removes them
            // with it.
            for id in &programs {
                assert!(
                    program_goes_away(*id),
                    "program {id} is unloaded with its process"
                );
            }
            wait_until("the kernel dropped the owned table", || {
                netns.tables().is_empty()
            });
            // The cgroup (with `sleep` still in it), and the settings, are left
            // until flowtrack starts again.
            assert!(cgroup.exists(), "{name}: the cgroup is left");
            let changed = if backend.changes_settings { "1" } else { "0" };
            assert_eq!(accounting(netns), changed, "{name}: left by the killed run");
            let output = flowtrack_in(netns, &["run", "--backend", name, "--", "true"])
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            assert!(
                !cgroup.exists(),
                "{name}: the next start removed the leftover cgroup and its processes"
            );
            assert_released(backend, netns, &cgroup, "after the next start");
        },
    );
}

/// A fresh cgroup, and `flowtrack watch --backend BACKEND --format json
/// --cgroup CGROUP` following it in `netns` (its events written to
/// `stdout`), once it is attached; a datagram has then been sent from the
/// cgroup: its flow's key.
fn watch_one_flow(
    backend: &Backend,
    netns: &Netns,
    stdout: impl Into<Stdio>,
) -> (TestCgroup, Child, FlowKey) {
    let cgroup = TestCgroup::new();
    let args = ["watch", "--backend", backend.name, "--format", "json"];
    let watch = flowtrack_in(netns, &args)
        .arg("--cgroup")
        .arg(&cgroup.path)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        &format!("watch --backend {} attached", backend.name),
        || attached(backend, netns, &cgroup.path),
    );
    let flow = send_udp(&cgroup, netns);
    (cgroup, watch, flow)
}

#[test]
fn watch_follows_an_existing_cgroup_until_ctrl_c() {
    each_backend(
        "watch_follows_an_existing_cgroup_until_ctrl_c",
        |backend, netns| {
            let (cgroup, watch, flow) = watch_one_flow(backend, netns, Stdio::piped());
            let sport = flow.src_port;
            // Once the flow is out, opened and closed (its socket closed; for
            // nflog, the cgroup has no process left).
            let stdout = ctrl_c_after_lines(watch, 2);
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.len(), 2, "{stdout}");
            assert!(
                lines[0].contains(r#""kind":"opened","proto":"udp""#),
                "{stdout}"
            );
            assert!(
                lines[1].contains(&format!(
                    r#""sport":{sport},"dst":"127.0.0.1","dport":9,"packets":1,"bytes":128"#
                )),
                "{stdout}"
            );
            assert_released(backend, netns, &cgroup.path, "after Ctrl-C");
        },
    );
}

#[test]
fn watch_ends_when_its_cgroup_is_removed() {
    each_backend("watch_ends_when_its_cgroup_is_removed", |backend, netns| {
        let (cgroup, watch, _) = watch_one_flow(backend, netns, Stdio::piped());
        // An echo exchange closes only when idle (30 s), or when the cgroup
        // goes; the UDP flow closed with its socket (eBPF), or as the
        // cgroup emptied (nflog).
        let mut ping = netns.command(traffic_generator().to_str().unwrap());
        ping.args(["icmp", "127.0.0.1:0", "--id", "7"]);
        assert!(cgroup.wrap(&ping).status().unwrap().success());
        let output = remove_watched(&cgroup, watch);
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        for kind in ["opened", "closed"] {
            for proto in ["udp", "icmp"] {
                let line = format!(r#""kind":"{kind}","proto":"{proto}""#);
                assert_eq!(stdout.matches(&line).count(), 1, "{line} in {stdout}");
            }
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        for said in [
            &(backend.cgroup_removed)(&cgroup.path),
            "flowtrack: 2 flows opened, 2 closed; nothing lost",
        ] {
            assert!(stderr.contains(said), "{said} in {stderr}");
        }
        assert_released(backend, netns, &cgroup.path, "after the cgroup went");
    });
}

#[test]
fn watch_with_a_closed_output_counts_and_exits_5() {
    each_backend(
        "watch_with_a_closed_output_counts_and_exits_5",
        |backend, netns| {
            let (cgroup, watch, _) = watch_one_flow(backend, netns, closed_pipe());
            // The watch ends when its cgroup goes.
            let output = remove_watched(&cgroup, watch);
            assert_eq!(output.status.code(), Some(5), "{output:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(
                    "flowtrack: 1 flow opened, 1 closed; nothing lost; OUTPUT INCOMPLETE: \
                 0 of 2 lines written to stdout, 2 not (closed by its reader)\n"
                ),
                "{}: {stderr}",
                backend.name
            );
        },
    );
}

#[test]
fn without_privileges_the_error_says_what_is_needed() {
    let as_nobody = |args: &[&str]| as_nobody().args(args).output().unwrap();
    each_backend(
        "without_privileges_the_error_says_what_is_needed",
        |backend, _| {
            let cgroup = TestCgroup::new();
            let cgroup_path = cgroup.path.to_str().unwrap();
            let name = backend.name;
            let watch = as_nobody(&["watch", "--backend", name, "--cgroup", cgroup_path]);
            assert_eq!(watch.status.code(), Some(1));
            assert_eq!(
                String::from_utf8_lossy(&watch.stderr),
                format!(
                    "flowtrack: error: cannot watch cgroup {cgroup_path}: cannot start the {name} \
                 backend: {}: run as root or grant it\n",
                    backend.denied
                )
            );
            let run = as_nobody(&["run", "--backend", name, "--", "true"]);
            assert_eq!(run.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(
                stderr.starts_with("flowtrack: error: cannot create cgroup ")
                    && stderr.contains("(needs root)"),
                "{stderr}"
            );
            assert_eq!(stderr.lines().count(), 1);
        },
    );
}

/// Lists the child's identity and any descriptor it inherited that is a
/// socket or a BPF object, then sends SEND_UDP's datagram.
const WHO_AM_I: &str = "import os,socket\n\
fds=[os.path.join('/proc/self/fd',f) for f in os.listdir('/proc/self/fd')]\n\
links=[os.readlink(p) for p in fds if os.path.exists(p)]\n\
bad=[t for t in links if 'bpf' in t or 'socket' in t]\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.connect(('127.0.0.1',9))\n\
s.send(b'x'*100)\n\
print(os.getuid(), os.getgid(), s.getsockname()[1], len(bad), os.getpid())";

#[test]
fn run_as_another_user_keeps_observing_and_leaks_no_descriptor() {
    each_backend(
        "run_as_another_user_keeps_observing_and_leaks_no_descriptor",
        |backend, netns| {
            let backend = backend.name;
            let dir = tempfile::tempdir().unwrap();
            let (out, fields) = run_python(netns, backend, &["--user", "nobody"], WHO_AM_I, &dir);
            assert_eq!(fields[..2], [65534, 65534], "the child runs as nobody");
            assert_eq!(
                fields[3], 0,
                "no socket or BPF descriptor inherited ({backend})"
            );
            let closed = assert_one_udp_flow(&out, backend, u16::try_from(fields[2]).unwrap());
            let process = closed.process.expect("the flow carries its process");
            assert_eq!(
                (process.uid, process.gid),
                (Some(65534), Some(65534)),
                "{backend}: the flow is nobody's"
            );
            match backend {
                // The nflog backend finds pids at best effort (README).
                "nflog" => assert!(process.pid.is_none_or(|pid| pid == fields[4])),
                _ => assert_eq!(process.pid, Some(fields[4]), "{backend}: the child's pid"),
            }
        },
    );
}

/// `flowtrack run --backend BACKEND --format json EXTRA -o FILE -- python3
/// -c SCRIPT` in `netns`, which must succeed: the flows' file (in `dir`)
/// and the numbers the script printed.
fn run_python(
    netns: &Netns,
    backend: &str,
    extra: &[&str],
    script: &str,
    dir: &tempfile::TempDir,
) -> (PathBuf, Vec<u32>) {
    let out = dir.path().join("flows.jsonl");
    let mut args = vec!["run", "--backend", backend, "--format", "json"];
    args.extend_from_slice(extra);
    args.push("-o");
    let output = flowtrack_in(netns, &args)
        .arg(&out)
        .args(["--", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(output.status.success(), "{backend}: {output:?}");
    let printed = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|field| field.parse().unwrap())
        .collect();
    (out, printed)
}

/// Connects to its own listener 200 times in a row, holding every
/// connection until the end; prints the listener's port and its pid.
const CONNECT_AGAIN_AND_AGAIN: &str = concat!(
    "import os, socket, time\n",
    "listener = socket.socket(); listener.bind(('127.0.0.1', 0)); listener.listen(512)\n",
    "port = listener.getsockname()[1]\n",
    "held = []\n",
    "for _ in range(200):\n",
    "    held.append(socket.create_connection(('127.0.0.1', port)))\n",
    "    held.append(listener.accept()[0])\n",
    "time.sleep(0.5)\n",
    "print(port, os.getpid())",
);

/// A program that connects again and again, faster than /proc can be
/// read through for each connection, has each of its connections
/// attributed to it (the nflog backend looks where the last socket was
/// found before it reads /proc anew, at most 20 times a second).
#[test]
fn each_connection_of_a_burst_carries_its_process() {
    each_backend(
        "each_connection_of_a_burst_carries_its_process",
        |backend, netns| {
            let backend = backend.name;
            let dir = tempfile::tempdir().unwrap();
            let (out, fields) = run_python(netns, backend, &[], CONNECT_AGAIN_AND_AGAIN, &dir);
            let (port, pid) = (u16::try_from(fields[0]).unwrap(), fields[1]);
            let lines = std::fs::read_to_string(&out).unwrap();
            let opened: Vec<FlowEvent> = lines
                .lines()
                .map(|line| FlowRecord::from_json_line(line).unwrap())
                .filter_map(|record| match record.item {
                    RecordItem::Event(event) => Some(event.into_owned()),
                    _ => None,
                })
                .filter(|event| {
                    matches!(event.kind, FlowEventKind::Opened) && event.key.dst_port == port
                })
                .collect();
            assert_eq!(opened.len(), 200, "{backend}: every connection: {lines}");
            let pids: Vec<Option<u32>> = opened
                .iter()
                .map(|event| event.process.as_ref().and_then(|process| process.pid))
                .collect();
            assert!(
                pids.iter().all(|&found| found == Some(pid)),
                "{backend}: the program's pid {pid} on every connection: {pids:?}"
            );
        },
    );
}

/// `--no-names --no-processes`: the main job's flows are all reported,
/// and nothing names or attributes them; by default, the same run names
/// and attributes them.
#[test]
fn without_names_and_processes_flows_are_bare() {
    each_backend(
        "without_names_and_processes_flows_are_bare",
        |backend, netns| {
            let workload = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workload.py");
            let run = |extra: &[&str]| {
                let dir = tempfile::tempdir().unwrap();
                let out = dir.path().join("flows.jsonl");
                let mut args = vec!["run", "--backend", backend.name, "--format", "json"];
                args.extend_from_slice(extra);
                args.push("-o");
                let output = flowtrack_in(netns, &args)
                    .arg(&out)
                    .args(["--", "python3", workload])
                    .output()
                    .unwrap();
                assert!(output.status.success(), "{output:?}");
                let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                (std::fs::read_to_string(&out).unwrap(), stderr)
            };
            let (bare, stderr) = run(&["--no-names", "--no-processes"]);
            assert!(
                stderr.contains("flowtrack: 4 flows opened, 4 closed; nothing lost"),
                "{}: {stderr}",
                backend.name
            );
            for field in [
                "\"host\"", "\"sni\"", "\"dns\"", "\"pid\"", "\"uid\"", "\"comm\"",
            ] {
                assert!(!bare.contains(field), "{}: {field} in {bare}", backend.name);
            }
            let (named, stderr) = run(&[]);
            assert!(
                stderr.contains("flowtrack: 4 flows opened, 4 closed, 1 lookup; nothing lost"),
                "{}: {stderr}",
                backend.name
            );
            for field in [
                "\"host\":\"files.example.test\"",
                "\"sni\":\"secure.example.test\"",
                "\"uid\":0",
            ] {
                assert!(
                    named.contains(field),
                    "{}: no {field} in {named}",
                    backend.name
                );
            }
        },
    );
}

/// `--cmdline` writes the command line of the process behind each flow,
/// and `--group-by process` sums the flows per program: the table's row
/// names the executable the events name.
#[test]
fn cmdline_and_the_table_of_programs() {
    each_backend("cmdline_and_the_table_of_programs", |backend, netns| {
        let backend = backend.name;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("flows.jsonl");
        let args = [
            "run",
            "--backend",
            backend,
            "--format",
            "json",
            "--cmdline",
            "--summary",
            "json",
            "--group-by",
            "process",
            "-o",
        ];
        let output = flowtrack_in(netns, &args)
            .arg(&out)
            .args(["--", "python3", "-c", SEND_UDP])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(7), "{output:?}");
        let lines = std::fs::read_to_string(&out).unwrap();
        let closed = lines
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|record| record["kind"] == "closed")
            .unwrap_or_else(|| panic!("{backend}: no closed line in {lines}"));
        // `python3` may be a wrapper (pyenv's shim) that runs the real
        // interpreter by its path: the command line is the interpreter's,
        // and the executable the file its first argument names.
        let is_the_interpreters = |cmdline: &serde_json::Value| {
            let args: Vec<&str> = cmdline
                .as_array()
                .unwrap_or_else(|| panic!("{lines}"))
                .iter()
                .map(|arg| arg.as_str().unwrap())
                .collect();
            assert!(args[0].ends_with("python3"), "{lines}");
            assert_eq!(args[1..], ["-c", SEND_UDP], "{lines}");
            std::fs::canonicalize(args[0]).unwrap()
        };
        match backend {
            // Best effort: what it found must be right.
            "nflog" => {
                if let Some(cmdline) = closed.get("cmdline") {
                    is_the_interpreters(cmdline);
                }
            }
            _ => {
                let python = is_the_interpreters(&closed["cmdline"]);
                assert_eq!(closed["exe"], python.to_str().unwrap(), "{lines}");
            }
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let table: serde_json::Value = stderr
            .lines()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("{backend}: no JSON summary in {stderr}"));
        let programs = table["programs"].as_array().unwrap();
        assert_eq!(programs.len(), 1, "{stderr}");
        let program = &programs[0];
        let expected = match (closed.get("exe"), closed.get("comm")) {
            (Some(exe), _) => exe.clone(),
            (None, Some(comm)) => format!("[{}]", comm.as_str().unwrap()).into(),
            (None, None) => "?".into(),
        };
        assert_eq!(program["program"], expected, "{stderr}");
        assert_eq!(program["uid"], 0, "{stderr}");
        assert_eq!(program["connections"], 1, "{stderr}");
    });
}

#[test]
fn a_user_that_does_not_exist_is_one_clear_line() {
    if !privileged("a_user_that_does_not_exist_is_one_clear_line") {
        return;
    }
    let missing = std::process::Command::new(FLOWTRACK)
        .args(["run", "--user", "flowtrack-no-such-user", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr),
        "flowtrack: error: user flowtrack-no-such-user does not exist: give a name from \
         /etc/passwd (or NSS) or a numeric uid\n"
    );
}
