//! The fuzz targets' seed corpora (`fuzz/corpus/{dns_response,
//! dns_over_tcp,client_hello}/seed-*`), made here from messages built with
//! hickory-proto and real ClientHellos. The test fails when the committed
//! seeds differ from these; `FLOWTRACK_WRITE_FUZZ_SEEDS=1 cargo test -p
//! flow-names fuzz_seeds` writes them.

use std::net::IpAddr;
use std::path::Path;

use crate::testing::{Response, client_hello, server_name_extension};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// Responses of the shapes resolvers send.
fn responses() -> Vec<Response> {
    let big: Vec<IpAddr> = (1..=40).map(|n| ip(&format!("10.1.0.{n}"))).collect();
    vec![
        Response::simple(0x1234, "a.test", &[ip("10.0.0.1")]),
        Response {
            chain: vec!["cdn.test".into(), "edge.test".into()],
            noise: true,
            ..Response::simple(2, "www.test", &[ip("10.0.0.2"), ip("10.0.0.3")])
        },
        Response {
            qtype: 28,
            ..Response::simple(3, "v6.test", &[ip("fd00::6"), ip("::ffff:10.0.0.6")])
        },
        Response {
            rcode: 3,
            ..Response::simple(4, "nope.test", &[])
        },
        Response {
            truncated: true,
            ..Response::simple(5, "big.test", &[])
        },
        Response::simple(6, "big.test", &big),
    ]
}

/// A `dns_over_tcp` input: segments as the target reads them (sequence
/// number, bytes copied, bytes not copied, all big-endian, then the bytes).
fn segments(stream: &[u8], pieces: &[(usize, usize, u16)]) -> Vec<u8> {
    let mut input = Vec::new();
    for &(start, len, uncopied) in pieces {
        let seq = 0xffff_ff00_u32.wrapping_add(u32::try_from(start).expect("small"));
        input.extend(seq.to_be_bytes());
        input.extend(u16::try_from(len).expect("small").to_be_bytes());
        input.extend(uncopied.to_be_bytes());
        input.extend(&stream[start..start + len]);
    }
    input
}

/// Every seed: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let wires: Vec<Vec<u8>> = responses().iter().map(Response::wire).collect();
    for (n, wire) in wires.iter().enumerate() {
        seeds.push(("dns_response", format!("seed-{n}"), wire.clone()));
    }
    seeds.push((
        "dns_response",
        "seed-cut".into(),
        wires[1][..wires[1].len() - 5].to_vec(),
    ));
    let stream: Vec<u8> = wires[..3]
        .iter()
        .flat_map(|wire| {
            [
                u16::try_from(wire.len())
                    .expect("small")
                    .to_be_bytes()
                    .to_vec(),
                wire.clone(),
            ]
            .concat()
        })
        .collect();
    let len = stream.len();
    let first = 2 + wires[0].len();
    seeds.push((
        "dns_over_tcp",
        "seed-one-segment".into(),
        segments(&stream, &[(0, len, 0)]),
    ));
    seeds.push((
        "dns_over_tcp",
        "seed-reordered".into(),
        segments(
            &stream,
            &[
                (0, 1, 0),
                (first + 7, len - first - 7, 0),
                (1, first + 7, 0),
                (1, 30, 0),
            ],
        ),
    ));
    seeds.push((
        "dns_over_tcp",
        "seed-cut".into(),
        segments(&stream, &[(0, first - 4, 4), (first, len - first, 0)]),
    ));
    for name in ["python", "openssl"] {
        let hello = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("testdata/client-hello-{name}.bin")),
        )
        .expect("the captured ClientHello");
        seeds.push(("client_hello", format!("seed-{name}"), hello));
    }
    let (pq_sized, _) = client_hello(&[
        (51, vec![0xab; 1250]),
        (0, server_name_extension("pypi.org")),
    ]);
    seeds.push(("client_hello", "seed-key-share-first".into(), pq_sized));
    seeds.push((
        "client_hello",
        "seed-http".into(),
        b"GET / HTTP/1.1\r\nHost: pypi.org\r\n\r\n".to_vec(),
    ));
    seeds
}

#[test]
fn fuzz_seeds_are_current() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let write = std::env::var_os("FLOWTRACK_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().expect("a directory"))
                .expect("the corpus directory");
            std::fs::write(&path, &bytes).expect("the seed is written");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is not current: FLOWTRACK_WRITE_FUZZ_SEEDS=1 cargo test -p flow-names fuzz_seeds",
            path.display()
        );
    }
}
