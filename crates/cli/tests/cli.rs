//! The `flowtrack` command line, run as a user runs it.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

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

#[test]
fn replay_keeps_each_backends_lines_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.jsonl");
    let lines: Vec<String> = (0..200)
        .map(|i| {
            let backend = if i % 3 == 0 { "nflog" } else { "ebpf" };
            format!(r#"{{"ts_ns":{i},"kind":"lost","backend":"{backend}","count":{i}}}"#)
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let replayed = stdout_of(
        flowtrack()
            .arg("replay")
            .arg(&file)
            .args(["--format", "json"]),
    );
    let mut got: Vec<&str> = replayed.lines().collect();
    assert_eq!(got.len(), lines.len());
    for backend in ["ebpf", "nflog"] {
        let of = |all: &[&str]| {
            all.iter()
                .filter(|l| l.contains(backend))
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
        };
        let want: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(of(&got), of(&want), "{backend}");
    }
    got.sort_unstable();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want);
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
