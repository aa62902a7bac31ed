use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::testing::{Response, response};

/// Responses, each after its two-byte length, end to end.
fn stream(responses: &[Response]) -> Vec<u8> {
    responses
        .iter()
        .flat_map(|response| {
            let wire = response.wire();
            let length = u16::try_from(wire.len()).expect("a small message");
            [length.to_be_bytes().to_vec(), wire].concat()
        })
        .collect()
}

/// A segment: where it starts in the stream, and its length.
type Piece = (usize, usize);

/// Pushes `pieces` of `stream` (which starts at sequence number `isn`);
/// everything read, the flush included.
fn feed(isn: u32, stream: &[u8], pieces: &[Piece]) -> (Reassembled, usize) {
    let mut reassembler = DnsOverTcp::new();
    let mut all = Reassembled::default();
    let mut most = 0;
    for &(start, len) in pieces {
        let seq = isn.wrapping_add(u32::try_from(start).expect("a small stream"));
        let read = reassembler.push(seq, &stream[start..start + len]);
        most = most.max(reassembler.buffered());
        all.messages.extend(read.messages);
        all.dropped += read.dropped;
    }
    let read = reassembler.flush();
    all.messages.extend(read.messages);
    all.dropped += read.dropped;
    (all, most)
}

/// What the reassembler must give for whole messages.
fn expected(responses: &[Response]) -> Vec<Result<Answer, DnsError>> {
    responses
        .iter()
        .map(|response| Ok(response.expected()))
        .collect()
}

/// A stream's segmentation: split at `cuts`, each segment stretched by an
/// overlap, the first kept first (the capture starts there) and the rest
/// in an order given by `keys`, with some sent twice.
fn segments(
    len: usize,
    cuts: &[prop::sample::Index],
    stretch: &[usize],
    keys: &[u32],
) -> Vec<Piece> {
    let mut bounds: Vec<usize> = cuts.iter().map(|cut| cut.index(len)).collect();
    bounds.extend([0, len]);
    bounds.sort_unstable();
    bounds.dedup();
    let mut pieces: Vec<Piece> = bounds
        .windows(2)
        .enumerate()
        .map(|(n, pair)| {
            let end = (pair[1] + stretch[n % stretch.len()]).min(len);
            (pair[0], end - pair[0])
        })
        .collect();
    let duplicates: Vec<Piece> = pieces
        .iter()
        .enumerate()
        .filter(|(n, _)| keys[n % keys.len()].is_multiple_of(4))
        .map(|(_, piece)| *piece)
        .collect();
    pieces.extend(duplicates);
    let first = pieces.remove(0);
    let mut order: Vec<(u32, Piece)> = pieces
        .into_iter()
        .enumerate()
        .map(|(n, piece)| {
            (
                keys[n % keys.len()].rotate_left(u32::try_from(n % 32).unwrap_or(0)),
                piece,
            )
        })
        .collect();
    order.sort_unstable();
    std::iter::once(first)
        .chain(order.into_iter().map(|(_, piece)| piece))
        .collect()
}

proptest! {
    #[test]
    fn any_segmentation_order_and_duplication_reads_the_same(
        responses in prop::collection::vec(response(), 1..6),
        isn in prop_oneof![any::<u32>(), Just(u32::MAX - 3)],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        stretch in prop::collection::vec(prop_oneof![Just(0_usize), 0_usize..40], 1..8),
        keys in prop::collection::vec(any::<u32>(), 1..40),
    ) {
        let stream = stream(&responses);
        let pieces = segments(stream.len(), &cuts, &stretch, &keys);
        let (read, _) = feed(isn, &stream, &pieces);
        prop_assert_eq!(read.messages, expected(&responses));
        prop_assert_eq!(read.dropped, 0);
    }

    /// A segment lost for good: the messages before it read back whole,
    /// and the bytes given up are counted.
    #[test]
    fn a_lost_segment_is_counted_and_the_rest_read(
        responses in prop::collection::vec(response(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..30),
        lost in any::<prop::sample::Index>(),
    ) {
        let stream = stream(&responses);
        let mut pieces = segments(stream.len(), &cuts, &[0], &[1]);
        pieces.sort_unstable();
        let lost = 1 + lost.index(pieces.len().max(2) - 1);
        prop_assume!(lost < pieces.len());
        let (start, len) = pieces.remove(lost);
        let (read, _) = feed(7, &stream, &pieces);
        // Bytes lost at the very end leave no trace: the stream just ends.
        if start + len < stream.len() {
            prop_assert!(read.dropped >= len as u64);
        }
        let mut whole_before = 0;
        let mut at = 0;
        for response in &responses {
            at += 2 + response.wire().len();
            if at > start {
                break;
            }
            whole_before += 1;
        }
        prop_assert_eq!(&read.messages[..whole_before], &expected(&responses)[..whole_before]);
    }

    #[test]
    fn arbitrary_segments_never_panic_and_stay_bounded(
        segments in prop::collection::vec(
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..300), 0_usize..400),
            0..40,
        ),
    ) {
        let mut reassembler = DnsOverTcp::new();
        for (seq, bytes, original) in segments {
            let _ = reassembler.push_cut(seq, &bytes, original);
            prop_assert!(reassembler.buffered() <= WINDOW);
        }
        let _ = reassembler.flush();
        prop_assert_eq!(reassembler.buffered(), 0);
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// Two responses, their stream, and where the second one starts.
fn two_responses() -> (Vec<Response>, Vec<u8>, usize) {
    let responses = vec![
        Response::simple(1, "a.test", &[ip("10.0.0.1")]),
        Response::simple(2, "b.test", &[ip("10.0.0.2"), ip("10.0.0.3")]),
    ];
    let stream = stream(&responses);
    let first = 2 + responses[0].wire().len();
    (responses, stream, first)
}

#[test]
fn several_messages_in_one_segment_are_all_read() {
    let (responses, stream, _) = two_responses();
    let read = DnsOverTcp::new().push(5, &stream);
    assert_eq!(read.messages, expected(&responses));
}

#[test]
fn a_segment_copied_in_part_gives_up_the_rest_at_once() {
    let (responses, stream, first) = two_responses();
    let mut reassembler = DnsOverTcp::new();
    // The first message's last 4 bytes (half its address) are not copied.
    let read = reassembler.push_cut(100, &stream[..first - 4], first);
    assert_eq!(read.dropped, 4);
    let answer = read.messages[0].as_ref().expect("a response");
    assert_eq!(&*answer.lookup.query, "a.test");
    assert!(answer.lookup.answers.is_empty() && !answer.complete);
    // The next message starts where the first one ends.
    let read = reassembler.push(100 + u32::try_from(first).expect("small"), &stream[first..]);
    assert_eq!(read.messages, expected(&responses)[1..]);
}

#[test]
fn a_gap_that_never_fills_is_given_up_by_flush() {
    let (responses, stream, first) = two_responses();
    let mut reassembler = DnsOverTcp::new();
    assert!(
        reassembler
            .push(0, &stream[..first - 4])
            .messages
            .is_empty()
    );
    let rest = u32::try_from(first).expect("small");
    assert!(reassembler.push(rest, &stream[first..]).messages.is_empty());
    let read = reassembler.flush();
    assert_eq!(read.dropped, 4);
    assert_eq!(read.messages.len(), 2);
    let cut = read.messages[0].as_ref().expect("a response");
    assert!(cut.lookup.answers.is_empty() && !cut.complete);
    assert_eq!(read.messages[1], expected(&responses)[1]);
    assert_eq!(reassembler.buffered(), 0);
}

#[test]
fn a_segment_beyond_the_window_gives_up_the_front() {
    let (responses, stream, _) = two_responses();
    let mut reassembler = DnsOverTcp::new();
    assert!(reassembler.push(0, &stream[..10]).messages.is_empty());
    // A segment a window ahead: the message at the front cannot be
    // waited for; the far segment is taken as a message start.
    let far = u32::try_from(WINDOW + 100).expect("small");
    let read = reassembler.push(far, &stream);
    assert_eq!(read.messages, expected(&responses));
    assert_eq!(read.dropped, WINDOW as u64 + 100 - 10);
    assert!(reassembler.buffered() <= WINDOW);
}

#[test]
fn a_lost_length_resynchronises_at_the_next_segment() {
    let (responses, stream, first) = two_responses();
    let mut reassembler = DnsOverTcp::new();
    assert!(reassembler.push(0, &stream[..1]).messages.is_empty());
    let rest = u32::try_from(first).expect("small");
    assert!(reassembler.push(rest, &stream[first..]).messages.is_empty());
    let read = reassembler.flush();
    assert_eq!(read.messages, expected(&responses)[1..]);
    assert_eq!(read.dropped, first as u64);
}

#[test]
fn retransmissions_of_what_was_read_are_ignored() {
    let (_, stream, _) = two_responses();
    let mut reassembler = DnsOverTcp::new();
    assert_eq!(reassembler.push(u32::MAX - 5, &stream).messages.len(), 2);
    let again = reassembler.push(u32::MAX - 5, &stream);
    assert_eq!(again, Reassembled::default());
    assert_eq!(reassembler.buffered(), 0);
}
