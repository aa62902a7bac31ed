//! The `flowtrack` command line, run as a user runs it.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

mod common;

use common::{closed_pipe, dev_full};

fn flowtrack() -> Command {
    Command::cargo_bin("flowtrack").unwrap()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/flows.jsonl")
}

fn stdout_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn replay_json_round_trips() {
    let recorded = std::fs::read_to_string(example()).unwrap();
    let replayed = stdout_of(
        flowtrack()
            .arg("replay")
            .arg(example())
            .args(["--format", "json"]),
    );
    // One backend in the file, so the order is the file's.
    assert_eq!(replayed, recorded);

    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again.jsonl");
    std::fs::write(&again, &replayed).unwrap();
    assert_eq!(
        stdout_of(
            flowtrack()
                .arg("replay")
                .arg(&again)
                .args(["--format", "json"])
        ),
        recorded
    );
}

/// A file as `--backend both` writes it: the backends' lines interleaved,
/// flows both saw listing both, losses of each; an update and a close with
/// counters by direction.
const BOTH: &str = concat!(
    r#"{"ts_ns":10,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":80,"backend":"ebpf","backends":["ebpf","nflog"]}"#,
    "\n",
    r#"{"ts_ns":12,"kind":"opened","proto":"udp","src":"10.0.0.1","sport":5353,"dst":"10.0.0.3","dport":53,"backend":"nflog","backends":["nflog"]}"#,
    "\n",
    r#"{"ts_ns":11,"kind":"lost","backend":"nflog","count":null,"point":"netlink_overrun"}"#,
    "\n",
    r#"{"ts_ns":9,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":40001,"dst":"10.0.0.2","dport":80,"backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":15,"kind":"update","proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":80,"packets":4,"bytes":300,"src_packets":2,"src_bytes":200,"dst_packets":2,"dst_bytes":100,"start_ns":10,"backend":"ebpf","backends":["ebpf","nflog"]}"#,
    "\n",
    r#"{"ts_ns":20,"kind":"closed","proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":80,"packets":6,"bytes":400,"src_packets":3,"src_bytes":250,"dst_packets":3,"dst_bytes":150,"start_ns":10,"reason":"fin","backend":"ebpf","backends":["ebpf","nflog"]}"#,
    "\n",
    r#"{"ts_ns":21,"kind":"lost","backend":"ebpf","count":2,"point":"ring_buffer_full"}"#,
    "\n",
    r#"{"ts_ns":30,"kind":"closed","proto":"udp","src":"10.0.0.1","sport":5353,"dst":"10.0.0.3","dport":53,"packets":2,"bytes":120,"backend":"nflog","backends":["nflog","ebpf"]}"#,
    "\n",
);

#[test]
fn a_both_file_replays_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("both.jsonl");
    std::fs::write(&file, BOTH).unwrap();
    let replayed = stdout_of(
        flowtrack()
            .arg("replay")
            .arg(&file)
            .args(["--format", "json"]),
    );
    assert_eq!(replayed, BOTH);
}

#[test]
fn replay_keeps_each_backends_lines_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.jsonl");
    let lines: String = (0..200)
        .map(|i| {
            let backend = if i % 3 == 0 { "nflog" } else { "ebpf" };
            format!("{{\"ts_ns\":{i},\"kind\":\"lost\",\"backend\":\"{backend}\",\"count\":{i}}}\n")
        })
        .collect();
    std::fs::write(&file, &lines).unwrap();
    let replayed = stdout_of(
        flowtrack()
            .arg("replay")
            .arg(&file)
            .args(["--format", "json"]),
    );
    assert_eq!(replayed, lines);
}

#[test]
fn replay_of_huge_counters_does_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.jsonl");
    let max = u64::MAX;
    let closed = format!(
        "{{\"ts_ns\":1,\"kind\":\"closed\",\"proto\":\"udp\",\"src\":\"10.0.0.1\",\"sport\":1,\"dst\":\"10.0.0.2\",\"dport\":53,\"packets\":{max},\"bytes\":{max},\"backend\":\"ebpf\"}}\n"
    );
    let lost = format!("{{\"ts_ns\":2,\"kind\":\"lost\",\"backend\":\"ebpf\",\"count\":{max}}}\n");
    std::fs::write(&file, [closed.as_str(), &closed, &lost, &lost].concat()).unwrap();
    let text = stdout_of(flowtrack().arg("replay").arg(&file));
    assert_eq!(text.lines().count(), 4);
}

#[test]
fn replay_reads_a_pipe_once() {
    let recorded = std::fs::read_to_string(example()).unwrap();
    let replayed = stdout_of(
        flowtrack()
            .args(["replay", "/dev/stdin", "--format", "json"])
            .write_stdin(recorded.clone()),
    );
    assert_eq!(replayed, recorded);
}

#[test]
fn replay_reads_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, std::fs::read(example()).unwrap()))
    };
    let output = flowtrack()
        .arg("replay")
        .arg(&fifo)
        .args(["--format", "json"])
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(output.stdout, std::fs::read(example()).unwrap());
}

#[test]
fn replay_refuses_control_characters_in_backend_names() {
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.jsonl");
    std::fs::write(
        &evil,
        "{\"ts_ns\":1,\"kind\":\"lost\",\"backend\":\"\\u001b[2J\\nflowtrack: nothing lost\",\"count\":1}\n",
    )
    .unwrap();
    let output = flowtrack().arg("replay").arg(&evil).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "flowtrack: error: {} line 1: field `backend`: the backend name \"\\u{{1b}}[2J\\nflowtrack: nothing lost\" holds control characters\n",
            evil.display()
        )
    );
}

#[test]
fn replay_prints_aligned_text() {
    let text = stdout_of(flowtrack().arg("replay").arg(example()));
    assert_eq!(text.lines().count(), 9);
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        "       81.234567000  opened  ebpf    udp         10.200.1.2:41812 -> 10.200.1.1:53"
    );
    assert!(text.contains("3 observations lost (ring buffer full)"));
    assert!(text.contains("[fd00:200::2]:40122 -> [fd00:200::1]:8080"));
    let arrows: Vec<_> = text.lines().filter_map(|l| l.find(" -> ")).collect();
    assert!(arrows.iter().all(|&column| column == arrows[0]), "{text}");
}

#[test]
fn replay_writes_to_an_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let stdout = stdout_of(
        flowtrack()
            .arg("replay")
            .arg(example())
            .args(["--format", "json", "-o"])
            .arg(&out),
    );
    assert!(stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(example()).unwrap()
    );
}

#[test]
fn an_empty_file_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    flowtrack()
        .arg("replay")
        .arg(&empty)
        .assert()
        .success()
        .stdout("")
        .stderr("");
}

#[test]
fn a_malformed_line_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(example()).unwrap();
    std::fs::write(&bad, format!("{good}{{\"ts_ns\":1,\"kind\":\"opened\",\"proto\":\"tcp\",\"src\":\"10.0.0.1\",\"sport\":99999}}\n")).unwrap();
    let output = flowtrack().arg("replay").arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "nothing is replayed from a broken file"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "flowtrack: error: {} line 10: field `sport`: invalid value: integer `99999`, expected u16 (column 71)\n",
            bad.display()
        )
    );
}

#[test]
fn a_missing_file_is_one_clear_line() {
    flowtrack()
        .args(["replay", "/nonexistent/flows.jsonl"])
        .assert()
        .code(1)
        .stderr("flowtrack: error: opening /nonexistent/flows.jsonl: No such file or directory (os error 2)\n");
}

#[test]
fn unknown_values_get_clap_errors() {
    let assert = flowtrack()
        .args(["replay", "x", "--format", "yaml"])
        .assert()
        .code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("invalid value 'yaml' for '--format <FORMAT>'"),
        "{stderr}"
    );
    flowtrack()
        .args(["run", "--backend", "pcap", "--", "true"])
        .assert()
        .code(2);
    flowtrack()
        .args(["watch", "--cgroup", "/a", "--netns", "b"])
        .assert()
        .code(2);
    flowtrack().args(["watch"]).assert().code(2);
    flowtrack().args(["run"]).assert().code(2);
    let assert = flowtrack()
        .args(["run", "--ring-bytes", "5000", "--", "true"])
        .assert()
        .code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("invalid value '5000' for '--ring-bytes <BYTES>': a ring buffer of 5000 bytes: the kernel takes a power of two, at least the page size (4096)"),
        "{stderr}"
    );
}

#[test]
fn the_ebpf_backend_does_not_watch_a_netns() {
    let assert = flowtrack()
        .args(["watch", "--backend", "ebpf", "--netns", "/proc/self/ns/net"])
        .assert()
        .code(1);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert_eq!(
        stderr,
        "flowtrack: error: cannot watch network namespace /proc/self/ns/net: ebpf backend unavailable: it observes cgroups, not network namespaces: use --cgroup, or --backend nflog\n"
    );
}

#[test]
fn watch_rejects_a_missing_cgroup_or_netns() {
    flowtrack()
        .args(["watch", "--cgroup", "/nonexistent/cgroup"])
        .assert()
        .code(1)
        .stderr("flowtrack: error: cgroup /nonexistent/cgroup does not exist or is not a cgroup directory: give the full path of a cgroup v2 directory\n");
    flowtrack()
        .args(["watch", "--netns", "flowtrack-test-no-such-netns"])
        .assert()
        .code(1)
        .stderr("flowtrack: error: network namespace flowtrack-test-no-such-netns not found (/run/netns/flowtrack-test-no-such-netns does not exist): see `ip netns list`, or give a path or a pid\n");
}

#[test]
fn verbosity_flags_set_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{}").unwrap();
    // -q keeps the one-line error; -v adds diagnostics; both together are a usage error.
    let quiet = flowtrack()
        .args(["-q", "replay"])
        .arg(&bad)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&quiet.stderr).lines().count(), 1);
    let verbose = flowtrack()
        .args(["replay", "-vv", "--format", "json"])
        .arg(example())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(verbose.status.success());
    assert!(
        String::from_utf8_lossy(&verbose.stderr).contains("flow source ended"),
        "{verbose:?}"
    );
    flowtrack()
        .args(["-q", "-v", "replay", "x"])
        .assert()
        .code(2);
}

/// `flowtrack ARGS` with stdout or stderr given.
fn flowtrack_with(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flowtrack"));
    command.args(args).env_remove("RUST_LOG");
    command
}

#[test]
fn an_unwritable_stderr_never_panics() {
    let example = example();
    let example = example.to_str().unwrap();
    for stderr in [dev_full().into(), closed_pipe().into()] {
        let stderr: std::process::Stdio = stderr;
        let status = flowtrack_with(&["-vv", "replay", example])
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0), "diagnostics lost, the replay done");
    }
    let status = flowtrack_with(&["replay", "/nonexistent/flows.jsonl"])
        .stderr(dev_full())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let status = flowtrack_with(&["replay", "--bogus"])
        .stderr(dev_full())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn an_output_that_takes_nothing_is_reported_with_exit_status_5() {
    // `| head` that exited, and a full disk.
    let cases: [(&[&str], std::process::Stdio, &str); 2] = [
        (
            &[],
            closed_pipe().into(),
            "stdout, 9 not (closed by its reader)",
        ),
        (
            &["-o", "/dev/full"],
            std::process::Stdio::null(),
            "/dev/full, 9 not (No space left on device (os error 28))",
        ),
    ];
    for (args, stdout, end) in cases {
        let output = flowtrack_with(&["replay", example().to_str().unwrap()])
            .args(args)
            .stdout(stdout)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(5), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.ends_with(&format!(
                "flowtrack: OUTPUT INCOMPLETE: 0 of 9 lines written to {end}\n"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn a_full_filesystem_keeps_whole_lines_and_counts_the_rest() {
    if !flowtrack_kernel_tests::privileged(
        "a_full_filesystem_keeps_whole_lines_and_counts_the_rest",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let line = std::fs::read_to_string(example()).unwrap();
    let lines = 1000 * line.lines().count();
    std::fs::write(&input, line.repeat(1000)).unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let kept = dir.path().join("kept.jsonl");
    // A 64 KiB tmpfs in a mount namespace of its own; what reached it is
    // copied out before the namespace goes.
    let script = format!(
        "mount -t tmpfs -o size=64k flowtrack-test {small} && \
         {flowtrack} replay {input} --format json -o {small}/out.jsonl; \
         status=$?; cp {small}/out.jsonl {kept}; exit $status",
        small = mount.display(),
        flowtrack = env!("CARGO_BIN_EXE_flowtrack"),
        input = input.display(),
        kept = kept.display(),
    );
    let output = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let written = std::fs::read_to_string(&kept).unwrap();
    assert!(written.ends_with('\n'), "the last line is whole");
    let whole = written.lines().count();
    assert!(whole > 0 && whole < lines, "{whole} of {lines}");
    assert!(
        written
            .lines()
            .all(|l| flow_core::record::FlowRecord::from_json_line(l).is_ok())
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected = format!(
        "flowtrack: OUTPUT INCOMPLETE: {whole} of {lines} lines written to {}/out.jsonl, {} not (No space left on device (os error 28))\n",
        mount.display(),
        lines - whole
    );
    assert!(stderr.ends_with(&expected), "{stderr}");
}

#[test]
fn output_through_another_users_link_in_a_sticky_directory_is_refused() {
    if !flowtrack_kernel_tests::privileged(
        "output_through_another_users_link_in_a_sticky_directory_is_refused",
    ) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = shared.join("out.jsonl");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    flowtrack()
        .arg("replay")
        .arg(example())
        .arg("-o")
        .arg(&link)
        .assert()
        .code(1)
        .stdout("")
        .stderr(format!(
            "flowtrack: error: refusing to write to {}: it is a symbolic link owned by uid 65534 in {}, \
             a sticky world-writable directory owned by uid 0 (another user's link could aim the \
             output at any file): remove the link or write elsewhere\n",
            link.display(),
            shared.display()
        ));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");

    // A new file is the owner's alone, whatever the umask.
    std::fs::remove_file(&link).unwrap();
    let script = format!(
        "umask 000 && exec {} replay {} -o {}",
        env!("CARGO_BIN_EXE_flowtrack"),
        example().display(),
        link.display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    let mode = std::fs::metadata(&link).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
}

#[test]
fn an_export_url_flowtrack_cannot_send_to_is_a_usage_error_naming_what_it_can() {
    for (url, says) in [
        (
            "otlp+http://127.0.0.1:4318",
            "OTLP over HTTP is not supported; use otlp+grpc://HOST:PORT",
        ),
        (
            "kafka://127.0.0.1:9092",
            "unknown scheme (expected ipfix+udp://HOST:PORT, ipfix+tcp://HOST:PORT or otlp+grpc://HOST:PORT)",
        ),
        ("otlp+grpc://127.0.0.1", "expected HOST:PORT"),
    ] {
        let assert = flowtrack()
            .args(["replay", "x", "--export", url])
            .assert()
            .code(2);
        let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
        assert!(
            stderr.contains(&format!("cannot export to {url:?}: {says}")),
            "{stderr}"
        );
    }
}
