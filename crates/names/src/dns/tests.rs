use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::testing::{Response, response};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// `www.test -> cdn.test -> edge.test` with one A record, as a resolver
/// answers it, in mixed case.
fn chained() -> Response {
    Response {
        chain: vec!["CDN.test".into(), "edge.Test".into()],
        ..Response::simple(9, "WWW.test", &[ip("10.0.0.2")])
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_response(&bytes);
    }

    #[test]
    fn a_response_reads_back_as_it_was_encoded(response in response()) {
        prop_assert_eq!(parse_response(&response.wire()), Ok(response.expected()));
    }

    /// A copy cut anywhere after the question gives the same lookup with a
    /// prefix of the chain and of the addresses.
    #[test]
    fn a_cut_copy_reads_a_prefix(response in response(), cut in any::<prop::sample::Index>()) {
        let wire = response.wire();
        let whole = response.expected();
        let question_end = 12 + response.query.len() + 2 + 4;
        let cut = question_end + cut.index(wire.len() - question_end + 1);
        let read = parse_response(&wire[..cut]).expect("the question is there");
        prop_assert_eq!(read.id, whole.id);
        prop_assert_eq!(&read.lookup.query, &whole.lookup.query);
        prop_assert!(whole.lookup.cnames.starts_with(&read.lookup.cnames));
        prop_assert!(whole.lookup.answers.starts_with(&read.lookup.answers));
        // The answer section is the message's last.
        prop_assert_eq!(read.complete, cut == wire.len());
    }

    /// Any single byte changed: an error or a lookup, never a panic.
    #[test]
    fn a_corrupted_response_never_panics(
        response in response(), at in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let mut wire = response.wire();
        let at = at.index(wire.len());
        wire[at] = byte;
        let _ = parse_response(&wire);
    }
}

#[test]
fn the_chain_is_followed_and_names_are_lowercase() {
    let answer = parse_response(&chained().wire()).expect("a response");
    assert_eq!(&*answer.lookup.query, "www.test");
    assert_eq!(
        answer.lookup.cnames,
        [Arc::from("cdn.test"), "edge.test".into()]
    );
    assert_eq!(answer.lookup.answers, [ip("10.0.0.2")]);
    assert!(answer.complete);
}

#[test]
fn address_hints_and_other_names_are_not_answers() {
    let response = Response {
        noise: true,
        ..chained()
    };
    let answer = parse_response(&response.wire()).expect("a response");
    assert_eq!(answer.lookup.answers, [ip("10.0.0.2")]);
    assert!(answer.complete);
}

#[test]
fn mapped_addresses_are_ipv4() {
    let response = Response::simple(1, "m.test", &[ip("::ffff:192.0.2.7"), ip("2001:db8::1")]);
    let answer = parse_response(&response.wire()).expect("a response");
    assert_eq!(answer.lookup.answers, [ip("192.0.2.7"), ip("2001:db8::1")]);
}

#[test]
fn chain_loops_are_bounded() {
    let response = Response {
        chain: vec!["b.test".into(), "a.test".into()],
        ..Response::simple(1, "a.test", &[ip("10.0.0.1")])
    };
    let answer = parse_response(&response.wire()).expect("a response");
    assert_eq!(answer.lookup.cnames.len(), MAX_CHAIN);
    assert_eq!(&*answer.lookup.cnames[0], "b.test");
}

#[test]
fn failures_and_truncation_are_read() {
    let nxdomain = Response {
        rcode: 3,
        qtype: 28,
        ..Response::simple(4, "nope.test", &[])
    };
    let answer = parse_response(&nxdomain.wire()).expect("a response");
    assert_eq!(answer.lookup.rcode, ResponseCode::NAME_ERROR);
    assert_eq!(answer.lookup.qtype, QueryType::AAAA);
    let truncated = Response {
        truncated: true,
        ..Response::simple(5, "big.test", &[])
    };
    assert!(
        parse_response(&truncated.wire())
            .expect("a response")
            .lookup
            .truncated
    );
}

#[test]
fn what_cannot_be_read_says_why() {
    let wire = chained().wire();
    assert_eq!(parse_response(&wire[..11]), Err(DnsError::HeaderCut(11)));
    assert_eq!(parse_response(&wire[..20]), Err(DnsError::Question));
    let mut query = wire.clone();
    query[2] &= 0x7f;
    assert_eq!(parse_response(&query), Err(DnsError::NotResponse));
    let mut no_question = wire[..12].to_vec();
    no_question[5] = 0;
    assert_eq!(parse_response(&no_question), Err(DnsError::NoQuestion));
}

/// The research memo's hostile inputs: compression loops and pointers out
/// of bounds give no answer; absurd counts over a valid body give what the
/// body holds.
#[test]
fn hostile_messages_are_read_as_far_as_they_go() {
    let wire = chained().wire();
    let mut absurd = wire.clone();
    absurd[6..12].copy_from_slice(&[0xff; 6]);
    let answer = parse_response(&absurd).expect("a response");
    assert_eq!(answer.lookup.answers, [ip("10.0.0.2")]);
    assert!(!answer.complete);
    let header_only = [
        0, 1, 0x81, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(parse_response(&header_only), Err(DnsError::Question));
    // The first answer's owner points at itself, or past the end.
    let first_answer = 12 + "www.test".len() + 2 + 4;
    let itself = u8::try_from(first_answer).expect("a small offset");
    for pointer in [[0xc0, itself], [0xc0, 0xff]] {
        let mut bad = wire.clone();
        bad[first_answer..first_answer + 2].copy_from_slice(&pointer);
        let answer = parse_response(&bad).expect("the question is intact");
        assert!(answer.lookup.answers.is_empty() && !answer.complete);
    }
    // The question's name points at itself.
    let mut bad = wire;
    bad[12..14].copy_from_slice(&[0xc0, 12]);
    assert_eq!(parse_response(&bad), Err(DnsError::Question));
}
