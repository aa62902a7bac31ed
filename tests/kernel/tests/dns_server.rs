//! The test DNS server, checked against glibc: Python's
//! `socket.getaddrinfo` inside a namespace whose resolver it is resolves
//! each kind of answer the name tests rely on.

use std::collections::BTreeMap;

use flowtrack_kernel_tests::{Netns, privileged};

const DNS_SERVER: &str = env!("CARGO_BIN_EXE_dns-server");

/// For each name: its addresses (sorted, one per line) and canonical name,
/// or `error NAME` with the `getaddrinfo` error.
const RESOLVE: &str = r#"
import socket, sys
for name in sys.argv[1:]:
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP, flags=socket.AI_CANONNAME)
        addresses = sorted({info[4][0] for info in found})
        print(name, "canonical", found[0][3], " ".join(addresses))
    except socket.gaierror as error:
        codes = {socket.EAI_NONAME: "EAI_NONAME", socket.EAI_AGAIN: "EAI_AGAIN"}
        print(name, "error", codes.get(error.errno, error.errno))
"#;

/// What `RESOLVE` printed, by name.
fn resolve(netns: &Netns, names: &[&str]) -> BTreeMap<String, String> {
    let output = netns
        .command("python3")
        .arg("-c")
        .arg(RESOLVE)
        .args(names)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, result)| (name.to_owned(), result.to_owned()))
        .collect()
}

#[test]
fn glibc_resolves_every_kind_of_answer() {
    if !privileged("dns_server glibc_resolves_every_kind_of_answer") {
        return;
    }
    let netns = Netns::new();
    let _server = netns.serve(
        DNS_SERVER.as_ref(),
        &[
            "127.0.0.1:53",
            "--record",
            "a.test",
            "A",
            "10.0.0.1",
            "--record",
            "v6.test",
            "AAAA",
            "fd00::6",
            "--record",
            "www.test",
            "CNAME",
            "cdn.test",
            "--record",
            "cdn.test",
            "CNAME",
            "edge.test",
            "--record",
            "edge.test",
            "A",
            "10.0.0.2",
            "--record",
            "edge.test",
            "AAAA",
            "fd00::2",
            "--big",
            "big.test",
            "40",
            "--servfail",
            "fail.test",
            "--synthesize",
            "race.test",
        ],
    );
    netns.use_resolver("127.0.0.1:53".parse().expect("an address"));
    let resolved = resolve(
        &netns,
        &[
            "a.test",
            "v6.test",
            "WWW.test",
            "nope.test",
            "fail.test",
            "big.test",
            "12345.race.test",
        ],
    );
    let big: Vec<String> = (1..=40).map(|n| format!("127.200.0.{n}")).collect();
    let expected = [
        ("a.test", "canonical a.test 10.0.0.1".to_owned()),
        ("v6.test", "canonical v6.test fd00::6".to_owned()),
        // The chain is followed: the canonical name is its end.
        (
            "WWW.test",
            "canonical edge.test 10.0.0.2 fd00::2".to_owned(),
        ),
        ("nope.test", "error EAI_NONAME".to_owned()),
        ("fail.test", "error EAI_AGAIN".to_owned()),
        // 40 addresses do not fit in 512 bytes: glibc got them over TCP
        // after the truncated UDP answer.
        ("big.test", format!("canonical big.test {}", sorted(&big))),
        // 127.0.0.1 + 12345.
        (
            "12345.race.test",
            "canonical 12345.race.test 127.0.48.58".to_owned(),
        ),
    ];
    for (name, result) in expected {
        assert_eq!(resolved.get(name), Some(&result), "{name}");
    }
}

/// Addresses as Python's `sorted` orders their text.
fn sorted(addresses: &[String]) -> String {
    let mut addresses = addresses.to_vec();
    addresses.sort();
    addresses.join(" ")
}

#[test]
fn the_resolver_files_go_with_the_namespace() {
    if !privileged("dns_server the_resolver_files_go_with_the_namespace") {
        return;
    }
    let netns = Netns::new();
    netns.use_resolver("127.0.0.1:53".parse().expect("an address"));
    let directory = std::path::Path::new("/etc/netns").join(&netns.name);
    let resolv = std::fs::read_to_string(directory.join("resolv.conf")).expect("written");
    assert_eq!(resolv, "nameserver 127.0.0.1\n");
    drop(netns);
    assert!(!directory.exists());
}
