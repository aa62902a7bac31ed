use proptest::prelude::*;

use super::*;
use crate::testing::{client_hello, server_name_extension};

/// A ClientHello that Python's `ssl` (OpenSSL 3.0) sent to `pypi.org`.
const PYTHON: &[u8] = include_bytes!("../../testdata/client-hello-python.bin");
/// A ClientHello that `openssl s_client -servername pypi.org` sent.
const OPENSSL: &[u8] = include_bytes!("../../testdata/client-hello-openssl.bin");

fn name(text: &str) -> ServerName {
    ServerName::Name(text.into())
}

fn other_extensions() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec((1_u16.., prop::collection::vec(any::<u8>(), 0..300)), 0..6)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = server_name(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_record_header_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..700)
    ) {
        let _ = server_name(&[&[22, 3, 1, 2, 0, 1][..], &bytes].concat());
    }

    /// The name comes back lowercased wherever the extension sits, and a
    /// copy cut anywhere gives it when it holds the whole extension, `Cut`
    /// otherwise.
    #[test]
    fn the_name_reads_back_from_any_long_enough_prefix(
        host in "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,60}[a-zA-Z0-9])?",
        before in other_extensions(),
        after in other_extensions(),
        cut in any::<prop::sample::Index>(),
    ) {
        let extensions = [before, vec![(0, server_name_extension(&host))], after].concat();
        let (hello, end) = client_hello(&extensions);
        let end = end.expect("a server_name extension");
        let expected = name(&host.to_ascii_lowercase());
        prop_assert_eq!(server_name(&hello), expected.clone());
        let cut = cut.index(hello.len() + 1);
        let verdict = server_name(&hello[..cut]);
        if cut >= end {
            prop_assert_eq!(verdict, expected);
        } else {
            prop_assert_eq!(verdict, ServerName::Cut);
        }
    }

    #[test]
    fn a_hello_without_the_extension_has_no_name(extensions in other_extensions()) {
        prop_assert_eq!(server_name(&client_hello(&extensions).0), ServerName::Absent);
    }

    /// Any single byte of a hello changed: a verdict, never a panic.
    #[test]
    fn a_corrupted_hello_never_panics(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut hello = PYTHON.to_vec();
        hello[at.index(PYTHON.len())] = byte;
        let _ = server_name(&hello);
    }
}

#[test]
fn real_client_hellos_are_read() {
    assert_eq!(server_name(PYTHON), name("pypi.org"));
    assert_eq!(server_name(OPENSSL), name("pypi.org"));
    // The name sits at byte 127: a 512-byte copy holds it.
    assert_eq!(server_name(&PYTHON[..512]), name("pypi.org"));
    assert_eq!(server_name(&PYTHON[..120]), ServerName::Cut);
}

#[test]
fn a_large_key_share_before_the_name_cuts_a_short_copy() {
    let key_share = (51, vec![0xab; 1250]);
    let (hello, _) = client_hello(&[key_share, (0, server_name_extension("pypi.org"))]);
    assert_eq!(server_name(&hello[..1024]), ServerName::Cut);
    assert_eq!(server_name(&hello), name("pypi.org"));
}

#[test]
fn other_protocols_are_not_tls() {
    assert_eq!(
        server_name(b"GET / HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
        ServerName::NotTls
    );
    assert_eq!(server_name(b"SSH-2.0-OpenSSH_9.6\r\n"), ServerName::NotTls);
    // A TLS record, but not a handshake's ClientHello.
    assert_eq!(
        server_name(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
        ServerName::NotTls
    );
    assert_eq!(server_name(&[23, 3]), ServerName::NotTls);
    assert_eq!(server_name(&[22]), ServerName::Cut);
    assert_eq!(server_name(&[]), ServerName::Cut);
}

#[test]
fn bad_names_and_lengths_are_malformed() {
    for host in ["", "with space.test", "a/b", &"a".repeat(254)] {
        let (hello, _) = client_hello(&[(0, server_name_extension(host))]);
        assert_eq!(server_name(&hello), ServerName::Malformed, "{host:?}");
    }
    assert!(matches!(
        server_name(&client_hello(&[(0, server_name_extension(&"a".repeat(253)))]).0),
        ServerName::Name(_)
    ));
    // The list's length disagrees with the extension's.
    let mut data = server_name_extension("pypi.org");
    data[1] += 1;
    assert_eq!(
        server_name(&client_hello(&[(0, data)]).0),
        ServerName::Malformed
    );
    // The extensions' length runs past a whole hello.
    let (mut hello, _) = client_hello(&[(0, server_name_extension("pypi.org"))]);
    let extensions_length = 5 + 4 + 2 + 32 + 33 + 6 + 2;
    hello[extensions_length + 1] += 1;
    assert_eq!(server_name(&hello), ServerName::Malformed);
}

#[test]
fn a_hello_without_extensions_has_no_name() {
    let (mut hello, _) = client_hello(&[]);
    // Drop the empty extensions block and fix the lengths.
    hello.truncate(hello.len() - 2);
    hello[4] -= 2;
    hello[8] -= 2;
    assert_eq!(server_name(&hello), ServerName::Absent);
}
