//! A DNS response, as the scope received it: which name was asked for, what
//! it resolved to, and how the server answered.
//!
//! The wire format is read with [hickory-proto] (fuzzed upstream; its name
//! decoder only follows compression pointers backwards, so loops and
//! out-of-bounds pointers are errors), but record by record rather than
//! with `Message::from_vec`: a copy cut short still gives the answers
//! before the cut, and absurd counts cost nothing (records are read until
//! the bytes end; `Message::read` reserves memory for every counted
//! question first). Only A, AAAA and CNAME answers are decoded; every
//! other record is skipped by its length, so a malformed or unusual record
//! of another type (HTTPS hints, OPT) does not hide the addresses after it.
//!
//! [hickory-proto]: https://docs.rs/hickory-proto
//!
//! ```
//! use flow_names::dns::parse_response;
//! // A response (id 7) to "A? a.test" with one answer, 10.0.0.1.
//! let wire = [
//!     0, 7, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, // header
//!     1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1, // question
//!     0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1, // answer
//! ];
//! let answer = parse_response(&wire)?;
//! assert_eq!((answer.id, &*answer.lookup.query), (7, "a.test"));
//! assert_eq!(answer.lookup.answers, ["10.0.0.1".parse::<std::net::IpAddr>()?]);
//! assert!(answer.complete);
//! // The same copy cut inside the answer: the lookup, without its address.
//! let cut = parse_response(&wire[..wire.len() - 2])?;
//! assert!(cut.lookup.answers.is_empty() && !cut.complete);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
use hickory_proto::op::{Header, MessageType, OpCode, Query};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};

/// CNAME links followed from the query name at most (resolvers give up
/// between 8 and 16); a longer chain, or a loop, ends there.
pub const MAX_CHAIN: usize = 16;

/// Record types and class this module decodes.
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// What a DNS response said about the lookup it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The message ID (pairs the response with its query).
    pub id: u16,
    /// The first question, the response code, the CNAME chain from the
    /// question's name and the addresses at its end, and the `TC` bit.
    pub lookup: DnsLookup,
    /// Every answer record was read. `false` when the copy was cut (or a
    /// record was malformed) before the last one: `lookup` then holds what
    /// came before.
    pub complete: bool,
}

/// Why nothing could be read from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Fewer bytes than the 12 of a DNS header.
    #[error("the DNS header is cut ({0} bytes of 12)")]
    HeaderCut(usize),
    /// A query (`QR` = 0), or a response to something other than a
    /// standard query (an update, a notify).
    #[error("not a response to a standard DNS query")]
    NotResponse,
    /// A response without a question: nothing says what it answers.
    #[error("a DNS response without a question")]
    NoQuestion,
    /// The question is cut short or malformed.
    #[error("the question of a DNS response is cut or malformed")]
    Question,
}

/// Reads a DNS response: its first question, its response code and `TC`
/// bit, and the addresses at the end of the CNAME chain that starts at the
/// question's name (IPv4-mapped addresses as IPv4). Names are lowercase,
/// without the trailing dot. HTTPS/SVCB address hints are not answers and
/// are ignored.
///
/// # Errors
/// When nothing can be read: see [`DnsError`]. A copy cut after the
/// question is not an error: what was read is returned, with
/// [`Answer::complete`] false.
pub fn parse_response(payload: &[u8]) -> Result<Answer, DnsError> {
    let mut decoder = BinDecoder::new(payload);
    let header = Header::read(&mut decoder).map_err(|_| DnsError::HeaderCut(payload.len()))?;
    let metadata = &header.metadata;
    if metadata.message_type != MessageType::Response || metadata.op_code != OpCode::Query {
        return Err(DnsError::NotResponse);
    }
    if header.counts.queries == 0 {
        return Err(DnsError::NoQuestion);
    }
    let question = Query::read(&mut decoder).map_err(|_| DnsError::Question)?;
    // Other questions (there is one in practice) are read past, unused.
    let questions_read = (1..header.counts.queries).all(|_| Query::read(&mut decoder).is_ok());
    // Memory grows with the bytes actually read, whatever the count says.
    let mut records = Vec::new();
    let mut complete = questions_read;
    if questions_read {
        for _ in 0..header.counts.answers {
            match read_record(&mut decoder) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
    }
    let (cnames, end) = chain(&question.name, &records);
    let addresses = records.iter().filter_map(|record| match record.data {
        Data::Address(address) if record.owner == *end => Some(address),
        _ => None,
    });
    let lookup = DnsLookup::new(
        text(&question.name),
        QueryType(u16::from(question.query_type)),
        ResponseCode(u16::from(metadata.response_code)),
    )
    .with_answers(addresses)
    .with_cnames(cnames)
    .truncated(metadata.truncation);
    Ok(Answer {
        id: metadata.id,
        lookup,
        complete,
    })
}

/// An answer record this module decodes.
struct Record {
    /// The name the record belongs to.
    owner: Name,
    /// What it says about that name.
    data: Data,
}

/// What an A, AAAA or CNAME record holds.
enum Data {
    /// An A or AAAA record's address.
    Address(IpAddr),
    /// A CNAME record's target.
    Alias(Name),
}

/// Reads one resource record: `Some` for an Internet-class A, AAAA or
/// CNAME record, `None` for any other record (skipped by its length).
fn read_record(decoder: &mut BinDecoder<'_>) -> Result<Option<Record>, DecodeError> {
    let owner = Name::read(decoder)?;
    let kind = decoder.read_u16()?.unverified();
    let class = decoder.read_u16()?.unverified();
    let _ttl = decoder.read_u32()?.unverified();
    let length = usize::from(decoder.read_u16()?.unverified());
    if (class, kind) == (CLASS_IN, TYPE_CNAME) {
        // The target may point back into the message: decode it in place;
        // it must fill the record's data exactly.
        let start = decoder.index();
        let alias = Name::read(decoder)?;
        if decoder.index() != start + length {
            return Err(DecodeError::InsufficientBytes);
        }
        return Ok(Some(Record {
            owner,
            data: Data::Alias(alias),
        }));
    }
    let rdata = decoder.read_slice(length)?.unverified();
    let address = match (class, kind) {
        (CLASS_IN, TYPE_A) => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(rdata).map_err(|_| DecodeError::InsufficientBytes)?,
        )),
        (CLASS_IN, TYPE_AAAA) => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(rdata).map_err(|_| DecodeError::InsufficientBytes)?,
        )),
        _ => return Ok(None),
    };
    Ok(Some(Record {
        owner,
        data: Data::Address(address),
    }))
}

/// The CNAME chain from `query` (the targets, in order, as text) and the
/// name at its end, following at most [`MAX_CHAIN`] links.
fn chain<'a>(query: &'a Name, records: &'a [Record]) -> (Vec<Arc<str>>, &'a Name) {
    let mut cnames = Vec::new();
    let mut owner = query;
    for _ in 0..MAX_CHAIN {
        // `Name` equality ignores ASCII case.
        let next = records.iter().find_map(|record| match &record.data {
            Data::Alias(target) if record.owner == *owner => Some(target),
            _ => None,
        });
        let Some(target) = next else { break };
        cnames.push(text(target));
        owner = target;
    }
    (cnames, owner)
}

/// A name as flowtrack shows it: lowercase ASCII (non-ASCII and special
/// bytes escaped as hickory-proto writes them), without the trailing dot
/// (the root stays `.`).
fn text(name: &Name) -> Arc<str> {
    let mut ascii = name.to_ascii();
    ascii.make_ascii_lowercase();
    if ascii.len() > 1 && ascii.ends_with('.') {
        ascii.pop();
    }
    ascii.into()
}

#[cfg(test)]
mod tests;
