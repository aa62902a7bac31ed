//! The egress policy on a real kernel, the same for every backend that
//! enforces: a probe that tries each way out of the scope (TCP over both
//! families, an IPv4-mapped destination, UDP `sendto` and connected UDP,
//! raw ICMP echo, a grandchild), the policy it meets, and what must come
//! of it. [`crate::backend_suite!`] runs [`enforce_refuses_at_once`] and
//! [`enforcement_that_cannot_be_put_in_place_fails_the_start`] on each
//! backend; the CLI's tests run the same probe through `flowtrack run`.

use std::net::SocketAddr;
use std::time::Duration;

use flow_core::{FlowError, FlowEventKind, FlowSource, FlowStream};
use flow_policy::Policy;
use futures::StreamExt;

use crate::TestEnv;

/// Tries each way out of the scope and prints one line per try: its name
/// and `ok` or the errno's name. With `noraw` as its argument it sends
/// no raw ICMP (a user without CAP_NET_RAW cannot).
pub const PROBE: &str = r#"
import errno, subprocess, sys
from socket import *
def attempt(name, f):
    try:
        f(); result = 'ok'
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    print(name, result, flush=True)
def tcp(family, addr, port):
    s = socket(family); s.settimeout(5)
    try: s.connect((addr, port))
    finally: s.close()
def sendto(addr):
    s = socket(AF_INET, SOCK_DGRAM)
    try: s.sendto(b'x', (addr, 9))
    finally: s.close()
def connected(addr):
    s = socket(AF_INET, SOCK_DGRAM)
    try: s.connect((addr, 9)); s.send(b'x')
    finally: s.close()
def ping(addr):
    s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP); s.settimeout(5)
    try: s.sendto(b'\x08\x00\xf7\xff\x00\x00\x00\x00', (addr, 0)); s.recv(100)
    finally: s.close()
v4 = socket(); v4.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1); v4.bind(('127.0.0.1', 8000)); v4.listen(64)
v6 = socket(AF_INET6); v6.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1); v6.bind(('::1', 8000)); v6.listen(64)
attempt('tcp4-allowed', lambda: tcp(AF_INET, '127.0.0.1', 8000))
attempt('tcp4-deny-rule', lambda: tcp(AF_INET, '127.0.0.1', 8050))
attempt('tcp4-outside-range', lambda: tcp(AF_INET, '127.0.0.1', 8101))
attempt('tcp6-allowed', lambda: tcp(AF_INET6, '::1', 8000))
attempt('tcp6-other-port', lambda: tcp(AF_INET6, '::1', 8001))
attempt('mapped-allowed', lambda: tcp(AF_INET6, '::ffff:127.0.0.1', 8000))
attempt('mapped-outside-range', lambda: tcp(AF_INET6, '::ffff:127.0.0.1', 8101))
attempt('udp-sendto-allowed', lambda: sendto('127.0.0.1'))
attempt('udp-sendto-denied', lambda: sendto('127.0.0.2'))
attempt('udp-connect-denied', lambda: connected('127.0.0.3'))
if sys.argv[1:] != ['noraw']:
    attempt('ping-allowed', lambda: ping('127.0.0.5'))
    attempt('ping-denied', lambda: ping('127.0.0.4'))
grandchild = "import socket\ntry:\n socket.create_connection(('127.0.0.1', 8101), 5)\n print('grandchild ok')\nexcept OSError as e:\n print('grandchild', __import__('errno').errorcode[e.errno])"
sys.stdout.write(subprocess.run([sys.executable, '-c', grandchild], capture_output=True, text=True).stdout)
"#;

/// The enforced policy [`PROBE`] meets, as `flowtrack run` takes it: a
/// port range with a deny rule inside it (deny wins), IPv6, UDP to one
/// address, ICMP to another.
pub const ENFORCED: [&str; 12] = [
    "--mode",
    "enforce",
    "--allow",
    "tcp://127.0.0.1:8000-8100",
    "--deny",
    "tcp://127.0.0.1:8050",
    "--allow",
    "tcp://[::1]:8000",
    "--allow",
    "udp://127.0.0.1:9",
    "--allow",
    "icmp://127.0.0.5",
];

/// [`ENFORCED`] as a policy.
///
/// # Panics
/// Never: the rules are well formed.
#[must_use]
pub fn enforced_policy() -> Policy {
    let mut builder = Policy::builder().mode(flow_policy::Mode::Enforce);
    for pair in ENFORCED[2..].chunks(2) {
        builder = match pair[0] {
            "--allow" => builder.allow(pair[1]),
            _ => builder.deny(pair[1]),
        }
        .expect("a well-formed rule");
    }
    builder.build().expect("a policy").expect("rules")
}

/// What [`PROBE`] prints under [`ENFORCED`]: each refused TCP connection
/// fails with `tcp_refusal` (the backend's: `EPERM` from a socket hook,
/// `ECONNREFUSED` from a reset), every refused send with `EPERM`; with
/// `raw`, the ICMP echo tries too.
#[must_use]
pub fn probe_results(tcp_refusal: &str, raw: bool) -> Vec<String> {
    let mut results = vec![
        "tcp4-allowed ok".to_owned(),
        format!("tcp4-deny-rule {tcp_refusal}"),
        format!("tcp4-outside-range {tcp_refusal}"),
        "tcp6-allowed ok".to_owned(),
        format!("tcp6-other-port {tcp_refusal}"),
        "mapped-allowed ok".to_owned(),
        format!("mapped-outside-range {tcp_refusal}"),
        "udp-sendto-allowed ok".to_owned(),
        "udp-sendto-denied EPERM".to_owned(),
        "udp-connect-denied EPERM".to_owned(),
    ];
    if raw {
        results.extend(["ping-allowed ok".to_owned(), "ping-denied EPERM".to_owned()]);
    }
    results.push(format!("grandchild {tcp_refusal}"));
    results
}

/// The denials [`PROBE`] causes under [`ENFORCED`], sorted: destination
/// (an IPv4-mapped one as IPv4: a socket hook sees the address the
/// workload gave, a packet rule the IPv4 packet) and the rule named.
#[must_use]
pub fn probe_denials(raw: bool) -> Vec<(SocketAddr, String)> {
    let mut denials: Vec<(SocketAddr, String)> = [
        ("127.0.0.1:8050", "tcp://127.0.0.1:8050"),
        ("127.0.0.1:8101", "default"),
        // The IPv4-mapped destination, and the grandchild's.
        ("127.0.0.1:8101", "default"),
        ("127.0.0.1:8101", "default"),
        ("[::1]:8001", "default"),
        ("127.0.0.2:9", "default"),
        ("127.0.0.3:9", "default"),
    ]
    .into_iter()
    .map(|(dst, rule)| (dst.parse().expect("an address"), rule.to_owned()))
    .collect();
    if raw {
        // An echo request's "port": its type (8) and code.
        denials.push((
            "127.0.0.4:2048".parse().expect("an address"),
            "default".to_owned(),
        ));
    }
    denials.sort();
    denials
}

/// A destination as [`probe_denials`] compares them.
#[must_use]
pub fn canonical(dst: SocketAddr) -> SocketAddr {
    SocketAddr::new(dst.ip().to_canonical(), dst.port())
}

/// Enforce mode refuses what the policy denies at once, lets the rest
/// through, and reports each refusal (`"enforced": true`, the rule), on a
/// stream started with [`enforced_policy`].
///
/// # Panics
/// When the probe's results or the denials differ.
pub async fn enforce_refuses_at_once(env: &TestEnv, stream: &mut FlowStream, tcp_refusal: &str) {
    let printed = env.python_inside(PROBE, &[]);
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        probe_results(tcp_refusal, true)
    );
    let expected = probe_denials(true);
    let mut denials = Vec::new();
    let read = async {
        while denials.len() < expected.len() {
            match stream.next().await {
                Some(Ok(event)) => {
                    if let FlowEventKind::Denied { rule, enforced } = &event.kind {
                        assert!(enforced, "{event:?}");
                        let rule = rule.as_deref().unwrap_or("none").to_owned();
                        denials.push((canonical(event.key.dst()), rule));
                    }
                }
                Some(Err(FlowError::Lost { .. })) => {}
                Some(Err(error)) => panic!("the backend failed: {error}"),
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    denials.sort();
    assert_eq!(denials, expected);
}

/// Enforcement that cannot be put in place fails the start (the source
/// says why, naming itself) and leaves nothing in the kernel: `source` is
/// made to fail (a backend's test knob), `leftovers` lists what is left.
///
/// # Panics
/// When the source starts, or leaves something behind.
pub async fn enforcement_that_cannot_be_put_in_place_fails_the_start(
    mut source: Box<dyn FlowSource>,
    leftovers: impl FnOnce() -> Vec<String>,
) {
    let name = source.name().to_owned();
    let error = source.start().await.err().expect("the start fails");
    assert!(
        matches!(error, FlowError::Unavailable { .. })
            && error
                .to_string()
                .starts_with(&format!("{name} backend unavailable: ")),
        "{error}"
    );
    assert_eq!(leftovers(), Vec::<String>::new(), "nothing left: {error}");
}
