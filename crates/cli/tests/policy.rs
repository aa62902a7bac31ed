//! `flowtrack run|watch` with an egress policy (`--allow`, `--deny`,
//! `--policy`, `--mode`, `--fail-on-deny`) and `flowtrack policy suggest`:
//! bad rules and files stop everything before it starts; audit mode lets
//! everything through and reports exactly the flows the policy would deny,
//! on each backend; a suggested policy allows what the recorded run did.
//! Each kernel test runs in a network namespace of its own.

use std::path::Path;
use std::process::Output;

use flow_core::FlowEventKind;
use flow_core::record::{FlowRecord, RecordItem};
use flowtrack_kernel_tests::policy::{ENFORCED, PROBE, canonical, probe_denials, probe_results};
use flowtrack_kernel_tests::{Netns, privileged};

mod common;

use common::{FLOWTRACK, flowtrack_in, traffic_generator};

/// The backends, as `--backend` takes them.
const BACKENDS: [&str; 2] = ["ebpf", "nflog"];

/// The records of a JSON-lines file.
fn records(path: &Path) -> Vec<FlowRecord<'static>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| FlowRecord::from_json_line(line).unwrap())
        .collect()
}

/// The `denied` events of a file: destination, rule, enforced.
fn denials(path: &Path) -> Vec<(String, Option<String>, bool)> {
    let mut denials: Vec<_> = records(path)
        .into_iter()
        .filter_map(|record| match record.item {
            RecordItem::Event(event) => match &event.kind {
                FlowEventKind::Denied { rule, enforced } => Some((
                    event.key.dst().to_string(),
                    rule.as_deref().map(str::to_owned),
                    *enforced,
                )),
                _ => None,
            },
            _ => None,
        })
        .collect();
    denials.sort();
    denials
}

/// Sends a datagram to port 9 of 127.0.0.1, .2 and .3 (each send
/// succeeds, or the script fails), then prints `sent`.
const SEND_THREE: &str = "import socket\n\
for a in ('127.0.0.1','127.0.0.2','127.0.0.3'): s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',(a,9)); s.close()\n\
print('sent')";

/// `flowtrack run ARGS --format json -o OUT -- ip netns exec NS python3 -c
/// SCRIPT`, in `netns`.
fn run_python(netns: &Netns, args: &[&str], out: &Path, script: &str) -> Output {
    run_python_args(netns, args, out, script, &[])
}

/// [`run_python`], the script given `script_args`.
fn run_python_args(
    netns: &Netns,
    args: &[&str],
    out: &Path,
    script: &str,
    script_args: &[&str],
) -> Output {
    flowtrack_in(netns, &["run"])
        .args(args)
        .args(["--format", "json", "-o"])
        .arg(out)
        .args([
            "--",
            "ip",
            "netns",
            "exec",
            &netns.name,
            "python3",
            "-c",
            script,
        ])
        .args(script_args)
        .output()
        .unwrap()
}

#[test]
fn audit_lets_everything_through_and_reports_exactly_the_would_be_denials() {
    if !privileged("audit_lets_everything_through_and_reports_exactly_the_would_be_denials") {
        return;
    }
    for backend in BACKENDS {
        let netns = Netns::new();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("flows.jsonl");
        let policy = [
            "--backend",
            backend,
            "--allow",
            "udp://127.0.0.1:9",
            "--deny",
            "udp://127.0.0.2",
            "--fail-on-deny",
        ];
        let output = run_python(&netns, &policy, &out, SEND_THREE);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "sent\n",
            "{backend}: {stderr}"
        );
        assert_eq!(
            output.status.code(),
            Some(4),
            "{backend}: --fail-on-deny after the command succeeded: {stderr}"
        );
        assert_eq!(
            denials(&out),
            [
                (
                    "127.0.0.2:9".to_owned(),
                    Some("udp://127.0.0.2".to_owned()),
                    false
                ),
                ("127.0.0.3:9".to_owned(), Some("default".to_owned()), false),
            ],
            "{backend}: {}",
            std::fs::read_to_string(&out).unwrap()
        );
        let opened = records(&out)
            .iter()
            .filter(|record| record.kind_name() == "opened")
            .count();
        assert_eq!(opened, 3, "{backend}: every flow went through");
        for said in [
            "flowtrack: 3 flows opened, 3 closed, 2 denied; nothing lost",
            "flowtrack: denied once: udp 127.0.0.2:9, rule udp://127.0.0.2, audit",
            "flowtrack: denied once: udp 127.0.0.3:9, rule default, audit",
        ] {
            assert!(stderr.contains(said), "{backend}: {said} in {stderr}");
        }
        // Without --fail-on-deny, the command's status.
        let output = run_python(&netns, &policy[..6], &out, SEND_THREE);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
    }
}

#[test]
fn bad_rules_and_files_start_nothing_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(FLOWTRACK)
            .arg("run")
            .args(args)
            .args(["--", "touch"])
            .arg(dir.path().join("ran"))
            .output()
            .unwrap()
    };
    let bad_rule = run(&["--allow", "tcp://pypi.org:99999"]);
    assert_eq!(bad_rule.status.code(), Some(2), "a usage error");
    assert!(
        String::from_utf8_lossy(&bad_rule.stderr).contains(
            "invalid value 'tcp://pypi.org:99999' for '--allow <RULE>': rule \"tcp://pypi.org:99999\": \"99999\" is not a port"
        ),
        "{bad_rule:?}"
    );
    let mode_alone = run(&["--mode", "enforce"]);
    assert_eq!(mode_alone.status.code(), Some(2), "{mode_alone:?}");
    std::fs::write(
        &file,
        "mode = \"enforce\"\nallow = [\n  \"tcp://pypi.org:443\",\n  \"tcp://[::1\",\n]\n",
    )
    .unwrap();
    let bad_file = run(&["--policy", file.to_str().unwrap()]);
    assert_eq!(bad_file.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bad_file.stderr),
        format!(
            "flowtrack: error: {} line 4, column 3: rule \"tcp://[::1\": an IPv6 address opened with [ is never closed with ]\n",
            file.display()
        )
    );
    std::fs::write(&file, "mode = \"enforce\"\nallw = []\n").unwrap();
    let unknown = run(&["--policy", file.to_str().unwrap()]);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.starts_with(&format!(
            "flowtrack: error: {} line 2, column 1: unknown field `allw`",
            file.display()
        )) && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!dir.path().join("ran").exists(), "the command never ran");
}

/// A recorded run: a lookup, two connections to what it answered (named),
/// a connection to a literal address, a ClientHello's server, loopback,
/// and a connection accepted from outside.
const RECORDED: &str = concat!(
    r#"{"ts_ns":1,"kind":"opened","proto":"udp","src":"10.0.0.1","sport":5353,"dst":"10.0.0.53","dport":53,"backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":2,"kind":"dns","proto":"udp","src":"10.0.0.1","sport":5353,"dst":"10.0.0.53","dport":53,"query":"pypi.org","qtype":"A","rcode":"NOERROR","answers":["151.101.0.223"],"cnames":[],"backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":3,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"151.101.0.223","dport":443,"host":"pypi.org","backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":4,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":40001,"dst":"151.101.0.223","dport":443,"host":"pypi.org","backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":5,"kind":"opened","proto":"tcp","src":"10.0.0.1","sport":40002,"dst":"192.0.2.7","dport":8080,"backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":6,"kind":"closed","proto":"tcp","src":"10.0.0.1","sport":40002,"dst":"192.0.2.7","dport":8080,"packets":6,"bytes":400,"sni":"secure.example","backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":7,"kind":"opened","proto":"udp","src":"127.0.0.1","sport":40003,"dst":"127.0.0.1","dport":9,"backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
    r#"{"ts_ns":8,"kind":"opened","proto":"tcp","src":"192.0.2.99","sport":50000,"dst":"10.0.0.1","dport":22,"inbound":true,"backend":"ebpf","backends":["ebpf"]}"#,
    "\n",
);

#[test]
fn suggest_allows_what_the_recorded_run_did() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("run.jsonl");
    std::fs::write(&events, RECORDED).unwrap();
    let policy = dir.path().join("policy.toml");
    let output = std::process::Command::new(FLOWTRACK)
        .args(["policy", "suggest"])
        .arg(&events)
        .arg("-o")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&policy).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "created as -o creates files");
    let written = std::fs::read_to_string(&policy).unwrap();
    let rules: Vec<&str> = written
        .lines()
        .filter(|line| line.starts_with("    \""))
        .collect();
    assert_eq!(
        rules,
        [
            "    \"any://127.0.0.0/8\",  # 1 connection",
            "    \"tcp://pypi.org:443\",  # 2 connections (151.101.0.223)",
            "    \"tcp://secure.example:8080\",  # 1 connection (192.0.2.7)",
            "    \"udp://10.0.0.53:53\",  # 1 connection",
        ],
        "{written}"
    );
    assert!(written.contains("mode = \"enforce\""), "{written}");
    // To stdout without -o; and the file is a policy flowtrack takes.
    let stdout = std::process::Command::new(FLOWTRACK)
        .args(["policy", "suggest"])
        .arg(&events)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&stdout.stdout), written);
    flow_policy::Policy::builder()
        .file(&policy)
        .unwrap()
        .build()
        .unwrap()
        .unwrap();
}

/// The probe every backend's suite runs (`flowtrack_kernel_tests::policy`),
/// through `flowtrack run` on each backend, as root and as `nobody` (no
/// raw ICMP then): the command and its grandchild are bound, each refusal
/// is a `denied` line with its rule, and `--fail-on-deny` exits 4.
#[test]
fn enforce_refuses_denied_destinations_at_once() {
    if !privileged("enforce_refuses_denied_destinations_at_once") {
        return;
    }
    for (backend, refusal) in [("ebpf", "EPERM"), ("nflog", "ECONNREFUSED")] {
        for user in [None, Some("nobody")] {
            let netns = Netns::new();
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("flows.jsonl");
            let mut args = vec!["--backend", backend, "--fail-on-deny"];
            args.extend(ENFORCED);
            if let Some(user) = user {
                args.extend(["--user", user]);
            }
            let raw = user.is_none();
            let script = format!(
                "import sys; sys.argv[1:] = [{:?}]\n{PROBE}",
                if raw { "" } else { "noraw" }
            );
            // The command inherits flowtrack's namespace (nobody could not
            // enter one with `ip netns exec`).
            let output = flowtrack_in(&netns, &["run"])
                .args(&args)
                .args(["--format", "json", "-o"])
                .arg(&out)
                .args(["--", "python3", "-c", &script])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                stdout.lines().collect::<Vec<_>>(),
                probe_results(refusal, raw),
                "{backend} {user:?}: {stderr}"
            );
            assert_eq!(
                output.status.code(),
                Some(4),
                "{backend} {user:?}: {stderr}"
            );
            let denied = denials(&out);
            assert!(
                denied.iter().all(|(_, _, enforced)| *enforced),
                "{denied:?}"
            );
            let mut denied: Vec<_> = denied
                .into_iter()
                .map(|(dst, rule, _)| (canonical(dst.parse().unwrap()), rule.unwrap_or_default()))
                .collect();
            denied.sort();
            assert_eq!(
                denied,
                probe_denials(raw),
                "{backend} {user:?}: {}",
                std::fs::read_to_string(&out).unwrap()
            );
        }
    }
}

/// Enforcement that cannot be put in place starts nothing: a name rule
/// the nflog backend cannot enforce (the eBPF backend enforces it through
/// its resolver: below). Hooks or rules the kernel refuses are simulated
/// in the conformance suite.
#[test]
fn enforce_mode_that_cannot_be_put_in_place_starts_nothing() {
    if !privileged("enforce_mode_that_cannot_be_put_in_place_starts_nothing") {
        return;
    }
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let output = flowtrack_in(&netns, &["run", "--mode", "enforce"])
        .args(["--backend", "nflog", "--allow", "tcp://pypi.org:443"])
        .args(["--", "touch"])
        .arg(&ran)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "flowtrack: error: cannot enforce the policy, so the command was not started: "
        ) && stderr.contains(
            "nflog backend unavailable: it enforces address rules only; name rules (tcp://pypi.org:443) are enforced by the eBPF backend"
        ) && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!ran.exists(), "the command never ran");
}

/// Sends a datagram to port 9 of each address of `sys.argv[1:]`, then
/// prints `sent` (a refused send fails the script).
const SEND_TO: &str = "import socket, sys\n\
for a in sys.argv[1:]: s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',(a,9)); s.close()\n\
print('sent')";

/// The round trip: a run recorded with no policy, the policy suggested
/// from it, the same workload enforced under it (nothing denied), then a
/// new destination (refused with EPERM, denied).
#[test]
fn a_suggested_policy_enforced_allows_the_run_and_denies_a_new_destination() {
    if !privileged("a_suggested_policy_enforced_allows_the_run_and_denies_a_new_destination") {
        return;
    }
    let netns = Netns::new();
    // Addresses of the namespace's own that are not loopback (a suggested
    // policy allows loopback as a whole).
    for address in ["192.0.2.1/32", "192.0.2.2/32"] {
        let status = std::process::Command::new("ip")
            .args(["-n", &netns.name, "addr", "add", address, "dev", "lo"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("recorded.jsonl");
    let policy = dir.path().join("policy.toml");
    let run = |args: &[&str], out: &Path, to: &[&str]| {
        flowtrack_in(&netns, &["run", "--backend", "ebpf"])
            .args(args)
            .args(["--format", "json", "-o"])
            .arg(out)
            .args(["--", "python3", "-c", SEND_TO])
            .args(to)
            .output()
            .unwrap()
    };
    let output = run(&[], &recorded, &["192.0.2.1"]);
    assert!(output.status.success(), "{output:?}");
    let suggested = std::process::Command::new(FLOWTRACK)
        .args(["policy", "suggest"])
        .arg(&recorded)
        .arg("-o")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(suggested.status.success(), "{suggested:?}");
    let written = std::fs::read_to_string(&policy).unwrap();
    assert!(written.contains("\"udp://192.0.2.1:9\""), "{written}");
    let policy_args = ["--policy", policy.to_str().unwrap(), "--fail-on-deny"];
    let enforced = dir.path().join("enforced.jsonl");
    let output = run(&policy_args, &enforced, &["192.0.2.1"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}\n{written}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "sent\n");
    assert_eq!(denials(&enforced), [], "nothing denied");
    let output = run(&policy_args, &enforced, &["192.0.2.1", "192.0.2.2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PermissionError"), "{stderr}");
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert_eq!(
        denials(&enforced),
        [("192.0.2.2:9".to_owned(), Some("default".to_owned()), true)]
    );
}

/// A namespace whose resolver is the test DNS server
/// ([`flowtrack_kernel_tests::names::serve_zone`]), and a file for a
/// run's events.
struct NamesRun {
    netns: Netns,
    _dns: flowtrack_kernel_tests::Server,
    _dir: tempfile::TempDir,
    out: std::path::PathBuf,
}

impl NamesRun {
    fn new() -> Self {
        let netns = Netns::new();
        let dns_server = traffic_generator().with_file_name("dns-server");
        let dns = flowtrack_kernel_tests::names::serve_zone(&netns, &dns_server);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.jsonl");
        Self {
            netns,
            _dns: dns,
            _dir: dir,
            out,
        }
    }

    /// [`run_python_args`] in this namespace, into this file.
    fn run(&self, args: &[&str], script: &str, script_args: &[&str]) -> Output {
        run_python_args(&self.netns, args, &self.out, script, script_args)
    }
}

/// Listens on port 8443 (both families), then resolves each name of
/// `sys.argv[1:]` through glibc (`v6.` names over IPv6; `literal:ADDR`
/// not at all) and connects to its first address; prints `NAME ok` or
/// `NAME ERRNO`.
const RESOLVE_AND_CONNECT: &str = r#"
import errno, socket, sys
listener = socket.socket(socket.AF_INET6)
listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
listener.bind(("::", 8443))
listener.listen(64)
for name in sys.argv[1:]:
    family = socket.AF_INET6 if name.startswith("v6.") else socket.AF_INET
    try:
        if name.startswith("literal:"):
            address = name.split(":", 1)[1]
        else:
            address = socket.getaddrinfo(name, 8443, family, socket.SOCK_STREAM)[0][4][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((address, 8443))
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e))
"#;

/// Name rules enforced: DNS goes through flowtrack's resolver, which lets
/// the addresses an allowed name was answered with through before the
/// workload has the answer; a denied name's, and addresses never
/// answered, fail with EPERM at once. The flows still show the DNS server
/// the workload asked, and the lookups are reported.
#[test]
fn enforced_name_rules_allow_what_their_lookups_answered_and_nothing_else() {
    if !privileged("enforced_name_rules_allow_what_their_lookups_answered_and_nothing_else") {
        return;
    }
    let names_run = NamesRun::new();
    let policy = [
        "--backend",
        "ebpf",
        "--mode",
        "enforce",
        "--allow",
        "udp://127.0.0.1:53",
        "--allow",
        "tcp://127.0.0.1:53",
        "--allow",
        "tcp://pypi.test:8443",
        "--allow",
        "tcp://www.test:8443",
        "--allow",
        "tcp://*.race.test:8443",
        "--allow",
        "tcp://big.test:8443",
        "--allow",
        "tcp://v6.test:8443",
        "--allow",
        "tcp://evil.test:8443",
        "--deny",
        "tcp://evil.test",
    ];
    let names = [
        "pypi.test",
        "www.test",
        "7.race.test",
        "big.test",
        "v6.test",
        "evil.test",
        "literal:127.0.0.23",
    ];
    let output = names_run.run(&policy, RESOLVE_AND_CONNECT, &names);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        said,
        [
            "pypi.test ok",
            "www.test ok",
            "7.race.test ok",
            "big.test ok",
            "v6.test ok",
            "evil.test EPERM",
            "literal:127.0.0.23 EPERM",
        ],
        "{output:?}"
    );
    let records = records(&names_run.out);
    // TCP only: glibc sorts a multi-address answer (big.test) by
    // connecting a UDP socket to each address, which the TCP rules deny
    // (and report) without any packet sent.
    let mut refused: Vec<(String, Option<String>)> = records
        .iter()
        .filter_map(|record| match &record.item {
            RecordItem::Event(event) if event.key.protocol == 6 => match &event.kind {
                FlowEventKind::Denied { rule, enforced } => {
                    assert!(enforced);
                    Some((
                        event.key.dst().to_string(),
                        rule.as_deref().map(str::to_owned),
                    ))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            (
                "127.0.0.21:8443".to_owned(),
                Some("tcp://evil.test".to_owned())
            ),
            ("127.0.0.23:8443".to_owned(), Some("default".to_owned())),
        ]
    );
    let lookups: Vec<(String, u16)> = records
        .iter()
        .filter_map(|record| match &record.item {
            RecordItem::Event(event) => event
                .lookup()
                .map(|lookup| (lookup.query.to_string(), event.key.dst_port)),
            _ => None,
        })
        .collect();
    for name in [
        "pypi.test",
        "www.test",
        "7.race.test",
        "big.test",
        "v6.test",
        "evil.test",
    ] {
        assert!(
            lookups.contains(&(name.to_owned(), 53)),
            "{name}'s lookup, to the server's port 53: {lookups:?}"
        );
    }
    let hosts: Vec<String> = records
        .iter()
        .filter_map(|record| match &record.item {
            RecordItem::Event(event) if matches!(event.kind, FlowEventKind::Opened) => {
                event.host.as_deref().map(str::to_owned)
            }
            _ => None,
        })
        .collect();
    for name in [
        "pypi.test",
        "www.test",
        "7.race.test",
        "big.test",
        "v6.test",
    ] {
        assert!(
            hosts.iter().any(|host| host == name),
            "{name} names its flow: {hosts:?}"
        );
    }
}

/// DNS itself must be allowed: a lookup whose server the policy denies
/// fails at once (its query refused with EPERM, reported), and the name
/// it would have answered stays denied.
#[test]
fn a_lookup_the_policy_denies_fails_at_once_and_allows_nothing() {
    if !privileged("a_lookup_the_policy_denies_fails_at_once_and_allows_nothing") {
        return;
    }
    let names_run = NamesRun::new();
    let policy = [
        "--backend",
        "ebpf",
        "--mode",
        "enforce",
        "--allow",
        "tcp://pypi.test:8443",
    ];
    let output = names_run.run(&policy, RESOLVE_AND_CONNECT, &["pypi.test"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("pypi.test ") && !stdout.contains("ok"),
        "the lookup fails: {output:?}"
    );
    let refused = denials(&names_run.out);
    assert!(
        refused.contains(&("127.0.0.1:53".to_owned(), Some("default".to_owned()), true)),
        "the query refused: {refused:?}"
    );
    assert!(
        refused.iter().all(|(dst, _, _)| dst.ends_with(":53")),
        "nothing else was tried: {refused:?}"
    );
}

/// Resolves `N.race.test` and connects a UDP socket to its address, for
/// N from 1 to `sys.argv[1]`, each address answered fresh; prints how
/// many connects were refused.
const RACE: &str = r#"
import errno, socket, sys
refused = 0
for n in range(1, int(sys.argv[1]) + 1):
    address = socket.gethostbyname(f"{n}.race.test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))
        except PermissionError:
            refused += 1
print(refused)
"#;

/// No race between the answer and the connection: 10,000 lookups, each
/// of a name answered with an address of its own, each followed at once
/// by a connection to it, in enforce mode: none is refused.
#[test]
fn ten_thousand_resolve_then_connect_cycles_are_never_falsely_denied() {
    if !privileged("ten_thousand_resolve_then_connect_cycles_are_never_falsely_denied") {
        return;
    }
    let names_run = NamesRun::new();
    let output = names_run.run(
        &[
            "--backend",
            "ebpf",
            "--mode",
            "enforce",
            "--allow",
            "udp://127.0.0.1:53",
            "--allow",
            "udp://*.race.test:9",
        ],
        RACE,
        &["10000"],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "0",
        "{output:?}"
    );
    assert_eq!(denials(&names_run.out), [], "nothing denied");
}
