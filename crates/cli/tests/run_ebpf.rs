//! `flowtrack run --backend ebpf` on a real kernel, for what is the eBPF
//! backend's alone or runs with it only (its ring buffer, its
//! descriptors), and the command's handling of its output and stderr.
//! What every backend does alike is in `backends.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowtrack_kernel_tests::{Netns, TestCgroup, attached_programs, privileged, send_udp};

mod common;

use common::{
    FLOWTRACK, Lines, closed_pipe, dev_full, flowtrack_in, signal, traffic_generator, wait_until,
};

/// Where cgroup v2 is not mounted (here a private mount namespace without
/// it, as `ip netns exec` makes by remounting /sys), `flowtrack run` says so
/// in one line, with what to do, and runs nothing.
#[test]
fn without_cgroup_v2_run_says_how_to_get_it() {
    if !privileged("without_cgroup_v2_run_says_how_to_get_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "for m in $(awk '$3 == \"cgroup2\" {print $2}' /proc/mounts); do umount -l \"$m\"; done \
             && exec \"$@\"",
        )
        .args(["sh", FLOWTRACK, "run", "--backend", "ebpf", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("flowtrack: error: flowtrack run needs cgroup v2 ")
            && stderr.contains("mount -t cgroup2")
            && stderr.contains("flowtrack run -- ip netns exec NS CMD")
            && stderr.ends_with("no cgroup2 filesystem in /proc/mounts\n"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the command ran");
}

/// The ring buffer of the stalled-reader test (`--ring-bytes`): 64 KiB.
const RING_BYTES: u32 = 1 << 16;

#[test]
fn a_reader_that_stops_gets_backpressure_then_counted_loss_never_unbounded_memory() {
    if !privileged("a_reader_that_stops_gets_backpressure_then_counted_loss_never_unbounded_memory")
    {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let made: u64 = 60_000;
    let server = netns.serve(&traffic_generator(), &["serve-tcp", "127.0.0.1:0"]);
    let storm = format!(
        "ip netns exec {} {} tcp 127.0.0.1:{} --bytes 1 --count {made} > /dev/null && touch {}",
        netns.name,
        traffic_generator().display(),
        server.port,
        done.display()
    );
    // Events go to stdout, a pipe nobody reads until the storm is over.
    let mut child = Command::new(FLOWTRACK)
        .args([
            "run",
            "--backend",
            "ebpf",
            "--format",
            "json",
            "--summary",
            "off",
            "--ring-bytes",
            &RING_BYTES.to_string(),
            "-o",
            "/dev/stdout",
            "--",
            "sh",
            "-c",
            &storm,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done.exists() {
        assert!(Instant::now() < deadline, "the storm did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak_while_stalled = flowtrack_kernel_tests::status_kib(child.id(), "VmHWM:").unwrap();
    // The reader comes back: everything written, or counted lost.
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let (mut events, mut lost) = (0_u64, 0_u64);
    for line in stdout.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        match value["kind"].as_str().unwrap() {
            "opened" | "closed" => events += 1,
            // What names and processes lost (payload records) is not flows.
            "lost" if value["point"] == "payload_lost" => {}
            "lost" => {
                lost += value["count"]
                    .as_u64()
                    .expect("ring-buffer losses are counted")
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        events + lost,
        2 * made,
        "every opened and closed event written or counted lost"
    );
    // What waited for the reader: the ring (744 records of 88 bytes), and
    // the merge queue's batches, the pipe and the writer's buffer (about
    // 750 events here). With the default 4 MiB ring, 48,375 were written.
    assert!(
        events < 744 + 8_192,
        "{events} events written: more than a {RING_BYTES}-byte ring and the buffers behind it hold"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "; LOST {lost} observations (ring buffer full: raise --ring-bytes)"
        )),
        "the summary names the loss and the flag: {stderr}"
    );
    // Bounded by configuration: the merge queue and the ring, not by the
    // 120,000 events.
    assert!(
        peak_while_stalled < 150 * 1024,
        "peak RSS {peak_while_stalled} KiB while the reader was stalled"
    );
}

/// A storm that overfills the smallest ring just before the command exits:
/// its losses happen after the last periodic check of the kernel's
/// counters, and are still in the output and the summary (once they were
/// not, and the summary said "nothing lost" with flows missing). Each
/// opened and closed event is written or counted lost.
#[test]
fn losses_at_the_end_of_a_run_are_counted_in_its_summary() {
    if !privileged("losses_at_the_end_of_a_run_are_counted_in_its_summary") {
        return;
    }
    let netns = Netns::new();
    let made: u64 = 6_000;
    let server = netns.serve(&traffic_generator(), &["serve-tcp", "127.0.0.1:0"]);
    let storm = format!(
        "ip netns exec {} {} tcp 127.0.0.1:{} --bytes 1 --count {made} --threads 4 > /dev/null",
        netns.name,
        traffic_generator().display(),
        server.port,
    );
    // Until a run loses (the first, mostly), each checked whole.
    let mut runs_with_loss = 0;
    for _ in 0..5 {
        let output = Command::new(FLOWTRACK)
            .args(["run", "--backend", "ebpf", "--format", "json"])
            .args(["--ring-bytes", "4096", "-o", "/dev/stdout", "--"])
            .args(["sh", "-c", &storm])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let (mut events, mut lost) = (0_u64, 0_u64);
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            match value["kind"].as_str().unwrap() {
                "opened" | "closed" => events += 1,
                "lost" if value["point"] == "payload_lost" => {}
                "lost" => lost += value["count"].as_u64().expect("counted"),
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(
            events + lost,
            2 * made,
            "every opened and closed event written or counted lost"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if lost > 0 {
            runs_with_loss += 1;
            assert!(
                stderr.contains(&format!(
                    "; LOST {lost} observations (ring buffer full: raise --ring-bytes)"
                )),
                "{stderr}"
            );
            break;
        } else {
            assert!(stderr.contains("; nothing lost"), "{stderr}");
        }
    }
    assert!(
        runs_with_loss > 0,
        "no run overfilled a 4 KiB ring: the test provoked nothing"
    );
}

/// `run` arguments for a command in `netns` that makes 200 UDP flows to
/// 127.0.0.1:9, then creates `marker`, and exits with status 7.
fn two_hundred_flows(netns: &Netns, marker: &Path) -> Vec<String> {
    let script = format!(
        "import socket,sys\n\
         for i in range(200):\n    \
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n    \
             s.connect(('127.0.0.1',9))\n    \
             s.send(b'x')\n    \
             s.close()\n\
         open({marker:?},'w').close()\n\
         sys.exit(7)"
    );
    [
        "--",
        "ip",
        "netns",
        "exec",
        &netns.name,
        "python3",
        "-c",
        &script,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn an_output_that_takes_nothing_is_counted_and_exits_5_the_command_undisturbed() {
    if !privileged("an_output_that_takes_nothing_is_counted_and_exits_5_the_command_undisturbed") {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done");
    // `| head` that exited, and a full disk.
    let cases: [(&str, Stdio, &str); 2] = [
        ("/dev/stdout", closed_pipe().into(), "closed by its reader"),
        (
            "/dev/full",
            Stdio::null(),
            "No space left on device (os error 28)",
        ),
    ];
    for (out, stdout, why) in cases {
        let _ = std::fs::remove_file(&marker);
        let output = Command::new(FLOWTRACK)
            .args([
                "run",
                "--backend",
                "ebpf",
                "--format",
                "json",
                "--summary",
                "json",
                "-o",
                out,
            ])
            .args(two_hundred_flows(&netns, &marker))
            .stdout(stdout)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(5), "{output:?}");
        assert!(marker.exists(), "the command ran to its end");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "\nflowtrack: 200 flows opened, 200 closed; nothing lost; OUTPUT INCOMPLETE: \
                 0 of 400 lines written to {out}, 400 not ({why})\n"
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains(r#"{"proto":"udp","address":"127.0.0.1","port":9,"connections":200,"denied":0,"packets":200,"#),
            "the destinations are counted: {stderr}"
        );
        assert!(
            stderr.ends_with("flowtrack: the command exited with status 7\n"),
            "{stderr}"
        );
    }
}

#[test]
fn an_unwritable_stderr_never_panics_and_the_commands_status_stays() {
    if !privileged("an_unwritable_stderr_never_panics_and_the_commands_status_stays") {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done");
    let out = dir.path().join("flows.jsonl");
    let out = out.to_str().unwrap();
    // Under auto, a line says which backend runs before the command starts.
    let cases: [(&[&str], Stdio, u8); 3] = [
        (&["--backend", "auto", "-o", out], dev_full().into(), 7),
        (&["--backend", "auto", "-o", out], closed_pipe().into(), 7),
        // Events on stderr, which is closed: they cannot be written.
        (&["--backend", "ebpf"], closed_pipe().into(), 5),
    ];
    for (args, stderr, code) in cases {
        let _ = std::fs::remove_file(&marker);
        let status = Command::new(FLOWTRACK)
            .arg("run")
            .args(args)
            .args(two_hundred_flows(&netns, &marker))
            .stderr(stderr)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(i32::from(code)), "{args:?}");
        assert!(marker.exists(), "the command ran to its end: {args:?}");
    }
}

#[test]
fn quiet_silences_the_backend_choice() {
    if !privileged("quiet_silences_the_backend_choice") {
        return;
    }
    let run = |quiet: &[&str]| {
        let output = Command::new(FLOWTRACK)
            .args(quiet)
            .args(["run", "--backend", "auto", "--", "true"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(&[]).starts_with("flowtrack: using the ebpf backend"));
    let quiet = run(&["-q"]);
    assert!(!quiet.contains("using the"), "{quiet}");
    assert!(quiet.contains("flowtrack: 0 flows opened"), "{quiet}");
}

#[test]
fn processes_left_in_the_cgroup_are_killed_and_counted() {
    if !privileged("processes_left_in_the_cgroup_are_killed_and_counted") {
        return;
    }
    let output = Command::new(FLOWTRACK)
        .args(["run", "--backend", "ebpf", "--", "sh", "-c"])
        .arg("sleep 60 & sleep 60 & exit 3")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.ends_with("flowtrack: killed 2 processes left in the command's cgroup\n"),
        "{stderr}"
    );
}

/// flowtrack killed the moment it has forked its command, whose child is
/// still joining the cgroup (a write to `cgroup.procs` can take
/// milliseconds) and has not executed yet: a `flowtrack cleanup` right
/// after removes the cgroup. It once found the cgroup locked (the child's
/// copy of flowtrack's lock) and said "nothing left behind", or found the
/// child joining as it removed the cgroup and gave up on "busy".
#[test]
fn a_run_killed_as_its_command_starts_is_cleaned_up_at_once() {
    if !privileged("a_run_killed_as_its_command_starts_is_cleaned_up_at_once") {
        return;
    }
    for _ in 0..5 {
        let mut run = Command::new(FLOWTRACK)
            .args(["run", "--backend", "ebpf", "--", "sleep", "30"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = run.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        // No sleep between looks: the window is a few milliseconds.
        while forked_children(pid).is_empty() {
            assert!(
                Instant::now() < deadline,
                "flowtrack never forked its command"
            );
        }
        run.kill().unwrap();
        run.wait().unwrap();
        let cgroups = common::cgroups_of(pid);
        assert_eq!(cgroups.len(), 1, "the killed run's cgroup is left");
        let output = Command::new(FLOWTRACK).arg("cleanup").output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let removed = format!("removed cgroup {}\n", cgroups[0].display());
        assert!(
            String::from_utf8_lossy(&output.stdout).contains(&removed),
            "{output:?}"
        );
        assert!(!cgroups[0].exists());
    }
}

/// The processes `pid`'s threads forked.
fn forked_children(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .collect()
}

#[test]
fn running_out_of_file_descriptors_is_named_with_what_to_do() {
    if !privileged("running_out_of_file_descriptors_is_named_with_what_to_do") {
        return;
    }
    let output = Command::new("sh")
        .args([
            "-c",
            "ulimit -n 16 && exec \"$0\" run --backend ebpf -- true",
        ])
        .arg(FLOWTRACK)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("Too many open files") && stderr.contains("ulimit -n"),
        "{stderr}"
    );
}

#[test]
fn watch_all_gives_each_flow_its_cgroup_and_container() {
    if !privileged("ebpf watch_all_gives_each_flow_its_cgroup_and_container") {
        return;
    }
    let netns = Netns::new();
    let plain = TestCgroup::new();
    let parent = TestCgroup::new();
    let id = "0123456789abcdef".repeat(4);
    let container = TestCgroup {
        path: parent.path.join(format!("docker-{id}.scope")),
    };
    std::fs::create_dir(&container.path).unwrap();
    let root = flow_cgroup::cgroup2_mount().unwrap();
    let below_root =
        |cgroup: &TestCgroup| format!("/{}", cgroup.path.strip_prefix(&root).unwrap().display());
    let mut watch = flowtrack_in(&netns, &["watch", "--all", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = Lines::follow(watch.stdout.take().unwrap());
    // The whole host's flows come too: each test flow is found by its port.
    wait_until("watch --all attached at the root", || {
        attached_programs(&root).len() == flow_backend_ebpf::CGROUP_PROGRAMS.len()
    });
    let flows = [&plain, &container].map(|cgroup| send_udp(cgroup, &netns));
    let closed = |line: &String, sport: u16| {
        line.contains(r#""kind":"closed""#) && line.contains(&format!(r#""sport":{sport},"#))
    };
    events.wait_for("both flows closed", |lines| {
        flows
            .iter()
            .all(|flow| lines.iter().any(|line| closed(line, flow.src_port)))
    });
    // As systemd stops the unit in examples/: a SIGTERM ends it as Ctrl-C.
    signal(&watch, rustix::process::Signal::TERM);
    let output = watch.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("flows opened"), "the summary: {stderr}");
    let stdout = events.all();
    for (flow, cgroup, container_id) in
        [(flows[0], &plain, None), (flows[1], &container, Some(&id))]
    {
        for kind in ["opened", "closed"] {
            let line = stdout
                .lines()
                .find(|line| {
                    line.contains(&format!(r#""kind":"{kind}""#))
                        && line.contains(&format!(r#""sport":{},"#, flow.src_port))
                })
                .unwrap_or_else(|| panic!("{kind} {flow} in {stdout}"));
            assert!(
                line.contains(&format!(r#""cgroup":"{}""#, below_root(cgroup))),
                "{line}"
            );
            match container_id {
                Some(id) => assert!(line.contains(&format!(r#""container":"{id}""#)), "{line}"),
                None => assert!(!line.contains("container"), "{line}"),
            }
        }
    }
    assert!(
        attached_programs(&root).is_empty(),
        "detached from the root after SIGTERM"
    );
}

#[test]
fn watch_all_with_the_nflog_backend_says_it_needs_ebpf() {
    let output = Command::new(FLOWTRACK)
        .args(["watch", "--all", "--backend", "nflog"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("watching the whole host needs the eBPF backend"),
        "{stderr}"
    );
}
