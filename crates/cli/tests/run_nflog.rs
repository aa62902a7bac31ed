//! `flowtrack run|watch --backend nflog` on a real kernel, for what is the
//! nflog backend's alone (a network namespace as the scope, nflog groups,
//! conntrack settings and leftovers across PID namespaces), each test in a
//! network namespace of its own (flowtrack enters it with `nsenter`, which
//! keeps the host's mounts and so the cgroup v2 tree). What every backend
//! does alike is in `backends.rs`.

use std::process::{Child, Command, Output, Stdio};

use flowtrack_kernel_tests::{Netns, SEND_UDP, privileged};

mod common;

use common::{
    FLOWTRACK, accounting, as_nobody, assert_one_udp_flow, cgroups_of, ctrl_c_after_lines,
    flowtrack_in, signal, start_sleeping_run, wait_for_table, wait_until,
};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `nf_conntrack_timestamp` in `netns`.
fn timestamps(netns: &Netns) -> String {
    netns.sysctl("net.netfilter.nf_conntrack_timestamp")
}

#[test]
fn watch_follows_a_namespace_until_ctrl_c() {
    if !privileged("nflog watch_follows_a_namespace_until_ctrl_c") {
        return;
    }
    let netns = Netns::new();
    let scope = ["--netns", netns.name.as_str()];
    let watch = start_nflog_watch(&netns, Command::new(FLOWTRACK), &scope);
    let sent = netns
        .command("python3")
        .args(["-c", SEND_UDP])
        .output()
        .unwrap();
    assert_eq!(sent.status.code(), Some(7));
    let sport = String::from_utf8_lossy(&sent.stdout).trim().to_owned();
    let stdout = ctrl_c_after_lines(watch, 1);
    // A namespace scope closes a UDP flow at its DESTROY (30 s): only the
    // open shows within the test.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].contains(&format!(
            r#""kind":"opened","proto":"udp","src":"127.0.0.1","sport":{sport},"dst":"127.0.0.1","dport":9"#
        )),
        "{stdout}"
    );
    assert_eq!(netns.tables(), "", "removed after Ctrl-C");
}

#[test]
fn a_busy_group_or_a_missing_namespace_is_one_clear_line() {
    if !privileged("nflog a_busy_group_or_a_missing_namespace_is_one_clear_line") {
        return;
    }
    let netns = Netns::new();
    let watch = |group: &str| {
        Command::new(FLOWTRACK)
            .args([
                "watch",
                "--backend",
                "nflog",
                "--nflog-group",
                group,
                "--netns",
                &netns.name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = watch("5");
    wait_for_table(&netns);
    let second = watch("5").wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(
        stderr(&second),
        format!(
            "flowtrack: error: cannot watch network namespace {}: nflog backend unavailable: \
             nflog group 5 already has a listener (another flowtrack or ulogd): choose a free one\n",
            netns.path().display()
        )
    );
    signal(&first, rustix::process::Signal::INT);
    assert!(first.wait_with_output().unwrap().status.success());
    let missing = Command::new(FLOWTRACK)
        .args([
            "watch",
            "--backend",
            "nflog",
            "--netns",
            "flowtrack-no-such-namespace",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing).lines().count(), 1, "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn auto_picks_ebpf_here_and_says_so() {
    if !privileged("nflog auto_picks_ebpf_here_and_says_so") {
        return;
    }
    let netns = Netns::new();
    let output = flowtrack_in(&netns, &["run", "--", "true"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        stderr(&output).starts_with(
            "flowtrack: using the ebpf backend (auto: the first choice; nflog is the fallback)\n"
        ),
        "{}",
        stderr(&output)
    );
}

#[test]
fn auto_falls_back_to_nflog_without_cap_bpf_and_says_why() {
    if !privileged("nflog auto_falls_back_to_nflog_without_cap_bpf_and_says_why") {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flows.jsonl");
    // Root without CAP_BPF and CAP_SYS_ADMIN (as in a container that may
    // not load BPF programs) but with CAP_NET_ADMIN.
    let output = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .args([
            "setpriv",
            "--bounding-set=-bpf,-sys_admin",
            "--inh-caps=-bpf,-sys_admin",
            FLOWTRACK,
            "run",
            "--format",
            "json",
            "-o",
            out.to_str().unwrap(),
            "--",
            "python3",
            "-c",
            SEND_UDP,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert!(
        stderr(&output).starts_with(
            "flowtrack: using the nflog backend (auto: ebpf cannot run here: creating eBPF maps \
             needs CAP_BPF and CAP_NET_ADMIN: run as root or grant it)\n"
        ),
        "{}",
        stderr(&output)
    );
    let sport: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_one_udp_flow(&out, "nflog", sport);
}

/// `flowtrack ARGS` inside `netns` and in a PID namespace of its own, where
/// it is pid 1 and sees none of this one's processes.
fn flowtrack_in_own_pid_namespace(netns: &Netns, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .args(["unshare", "--pid", "--fork", "--mount-proc", FLOWTRACK])
        .args(args);
    command
}

#[test]
fn a_clean_up_in_another_pid_namespace_leaves_a_live_run_alone() {
    if !privileged("nflog a_clean_up_in_another_pid_namespace_leaves_a_live_run_alone") {
        return;
    }
    let netns = Netns::new();
    let run = start_sleeping_run(&netns, "nflog");
    wait_for_table(&netns);
    let cgroups = cgroups_of(run.id());
    assert_eq!(cgroups.len(), 1, "{cgroups:?}");
    let cgroup = &cgroups[0];
    // There, this run's pid names no process.
    let cleanup = flowtrack_in_own_pid_namespace(&netns, &["cleanup"])
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    let listed = String::from_utf8_lossy(&cleanup.stdout);
    assert!(!listed.contains(&cgroup.display().to_string()), "{listed}");
    // A start there cleans up too, and restores the settings as it ends.
    let start =
        flowtrack_in_own_pid_namespace(&netns, &["run", "--backend", "nflog", "--", "true"])
            .output()
            .unwrap();
    assert!(start.status.success(), "{start:?}");
    assert_eq!(
        flow_cgroup::is_populated(cgroup),
        Some(true),
        "the run's cgroup and command are left alone"
    );
    assert!(netns.tables().contains("flowtrack_"), "its table is left");
    assert_eq!(accounting(&netns), "1", "its settings are left");
    signal(&run, rustix::process::Signal::INT);
    let output = run.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    assert_eq!(netns.tables(), "");
    assert_eq!(accounting(&netns), "0");
}

#[test]
fn a_dead_runs_leftovers_go_even_when_its_pid_lives_again() {
    if !privileged("nflog a_dead_runs_leftovers_go_even_when_its_pid_lives_again") {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("cgroup");
    // flowtrack as pid 1 of a PID namespace: pid 1 lives on in this one.
    let mut run =
        flowtrack_in_own_pid_namespace(&netns, &["run", "--backend", "nflog", "--", "sh", "-c"])
            .arg(format!(
                "grep ^0:: /proc/self/cgroup > {0}.new && mv {0}.new {0} && exec sleep 30",
                written.display()
            ))
            .spawn()
            .unwrap();
    wait_until("the command says its cgroup", || written.exists());
    let relative = std::fs::read_to_string(&written).unwrap();
    let cgroup = flow_cgroup::cgroup2_mount()
        .unwrap()
        .join(relative.trim().trim_start_matches("0::/"));
    assert!(
        cgroup
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("flowtrack-1-"),
        "{}",
        cgroup.display()
    );
    // `unshare`'s child is flowtrack; killing it ends its PID namespace.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.id())).unwrap();
    let flowtrack: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(flowtrack).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    run.wait().unwrap();
    assert!(cgroup.exists(), "left behind");
    assert_eq!(accounting(&netns), "1", "left changed");
    let cleanup = flowtrack_in(&netns, &["cleanup"]).output().unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    let listed = String::from_utf8_lossy(&cleanup.stdout);
    assert!(
        listed.contains(&format!("removed cgroup {}\n", cgroup.display())),
        "{listed}"
    );
    assert!(
        listed.contains("removed setting net.netfilter.nf_conntrack_acct=0 (left by pid 1)"),
        "{listed}"
    );
    assert!(!cgroup.exists());
    assert_eq!(accounting(&netns), "0");
}

#[test]
fn after_sigkill_a_start_with_the_ebpf_backend_restores_the_settings() {
    if !privileged("nflog after_sigkill_a_start_with_the_ebpf_backend_restores_the_settings") {
        return;
    }
    let netns = Netns::new();
    let mut run = start_sleeping_run(&netns, "nflog");
    wait_for_table(&netns);
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(
        (accounting(&netns), timestamps(&netns)),
        ("1".into(), "1".into())
    );
    let output = flowtrack_in(&netns, &["run", "--backend", "ebpf", "--", "true"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        (accounting(&netns), timestamps(&netns)),
        ("0".into(), "0".into()),
        "restored by a start without the nflog backend"
    );
}

/// Each of two runs at once: writes its flowtrack's pid (`$PPID`), waits
/// for the other's, sends SEND_UDP's datagram (its source port to
/// `$1.sport`), and waits for the other to have sent too. `$0` is the
/// directory, `$1` the run's name.
const ONE_OF_TWO: &str = r#"echo $PPID > "$0/$1.pid"
until [ -e "$0/a.pid" ] && [ -e "$0/b.pid" ]; do sleep 0.02; done
python3 -c "$SEND_UDP" > "$0/$1.sport"
touch "$0/$1.sent"
until [ -e "$0/a.sent" ] && [ -e "$0/b.sent" ]; do sleep 0.02; done"#;

#[test]
fn concurrent_runs_whose_pids_collide_report_only_their_own_flows() {
    if !privileged("nflog concurrent_runs_whose_pids_collide_report_only_their_own_flows") {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    // In a fresh PID namespace, the two flowtracks get pids 1000 and
    // 33768: equal modulo 32,768.
    let script = format!(
        r#"echo 999 > /proc/sys/kernel/ns_last_pid
"$FLOWTRACK" run --backend nflog --format json -o "$DIR/a.jsonl" -- sh -c '{ONE_OF_TWO}' "$DIR" a &
echo 33767 > /proc/sys/kernel/ns_last_pid
"$FLOWTRACK" run --backend nflog --format json -o "$DIR/b.jsonl" -- sh -c '{ONE_OF_TWO}' "$DIR" b &
wait"#
    );
    let output = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .args([
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .env("FLOWTRACK", FLOWTRACK)
        .env("DIR", dir.path())
        .env("SEND_UDP", SEND_UDP)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let pids: Vec<u32> = ["a.pid", "b.pid"]
        .iter()
        .map(|name| read(name).trim().parse().unwrap())
        .collect();
    assert_eq!(pids, [1000, 33768], "the pids collide modulo 32,768");
    for run in ["a", "b"] {
        let sport: u16 = read(&format!("{run}.sport")).trim().parse().unwrap();
        assert_one_udp_flow(&dir.path().join(format!("{run}.jsonl")), "nflog", sport);
    }
}

/// `flowtrack` (a command to add arguments to) watching `scope` with the
/// nflog backend in JSON, once its table is in `netns`.
fn start_nflog_watch(netns: &Netns, mut flowtrack: Command, scope: &[&str]) -> Child {
    let watch = flowtrack
        .args(["watch", "--backend", "nflog", "--format", "json"])
        .args(scope)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_table(netns);
    watch
}

/// Waits for `watch` to end on its own (the scope `went`), and checks it
/// ended well: status 0, one flow of `proto` opened and closed, a warning
/// saying why, and the summary.
fn assert_ends_with_one_flow(mut watch: Child, proto: &str, went: &str) {
    wait_until("watch ends", || watch.try_wait().unwrap().is_some());
    let output = watch.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for kind in ["opened", "closed"] {
        let line = format!(r#""kind":"{kind}","proto":"{proto}""#);
        assert_eq!(stdout.matches(&line).count(), 1, "{line} in {stdout}");
    }
    let stderr = stderr(&output);
    for said in [
        &format!("{went}: its flows are closed and the nflog backend ends"),
        "flowtrack: 1 flow opened, 1 closed; nothing lost",
    ] {
        assert!(stderr.contains(said), "{said} in {stderr}");
    }
}

#[test]
fn watch_ends_when_its_namespace_is_deleted() {
    if !privileged("nflog watch_ends_when_its_namespace_is_deleted") {
        return;
    }
    let netns = Netns::new();
    // flowtrack itself outside: only its listener thread enters.
    let scope = ["--netns", netns.name.as_str()];
    let watch = start_nflog_watch(&netns, Command::new(FLOWTRACK), &scope);
    // An echo exchange stays open until its entry expires (30 s).
    let ping = netns
        .command(common::traffic_generator().to_str().unwrap())
        .args(["icmp", "127.0.0.1:0", "--id", "5"])
        .status()
        .unwrap();
    assert!(ping.success());
    let deleted = Command::new("ip")
        .args(["netns", "delete", &netns.name])
        .status()
        .unwrap();
    assert!(deleted.success());
    let went = format!(
        "the network namespace {} was deleted",
        netns.path().display()
    );
    assert_ends_with_one_flow(watch, "icmp", &went);
}

#[test]
fn a_namespace_flowtrack_may_not_open_is_permission_denied() {
    if !privileged("nflog a_namespace_flowtrack_may_not_open_is_permission_denied") {
        return;
    }
    let output = as_nobody()
        .args(["watch", "--backend", "nflog", "--netns", "/proc/1/ns/net"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "flowtrack: error: cannot access network namespace /proc/1/ns/net: permission denied: \
         watching it needs root\n"
    );
}
