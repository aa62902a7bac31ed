//! What the test DNS server knows and how it answers a query.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// CNAME links followed at most (a loop ends in SERVFAIL).
const MAX_CHAIN: usize = 16;

/// The time to live of every record.
const TTL: u32 = 60;

/// The largest answer sent over UDP (no EDNS: RFC 1035's limit).
const UDP_LIMIT: usize = 512;

/// One record's data.
#[derive(Debug, Clone)]
enum Data {
    /// An A or AAAA record's address.
    Address(IpAddr),
    /// A CNAME record's target (lowercase, no trailing dot).
    Alias(String),
}

/// The names the server answers for.
#[derive(Debug, Default)]
pub(crate) struct Zone {
    /// Records by lowercase name without the trailing dot.
    records: HashMap<String, Vec<Data>>,
    /// Names answered with SERVFAIL.
    failing: HashSet<String>,
    /// `<n>.SUFFIX` answers an address derived from n.
    synthesized: Option<String>,
}

/// How a message travels: over UDP a large answer is truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Answers past 512 bytes are truncated.
    Udp,
    /// Answers go whole.
    Tcp,
}

/// A name as the zone keys it.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// Adds a record: `kind` is A, AAAA or CNAME.
    pub(crate) fn add(&mut self, name: &str, kind: &str, value: &str) -> Result<(), String> {
        let data = match kind.to_ascii_uppercase().as_str() {
            "A" => Data::Address(IpAddr::V4(
                value
                    .parse()
                    .map_err(|_| format!("{value:?} is not an IPv4 address"))?,
            )),
            "AAAA" => Data::Address(IpAddr::V6(
                value
                    .parse()
                    .map_err(|_| format!("{value:?} is not an IPv6 address"))?,
            )),
            "CNAME" => Data::Alias(key(value)),
            _ => return Err(format!("record type {kind:?}: A, AAAA or CNAME")),
        };
        self.records.entry(key(name)).or_default().push(data);
        Ok(())
    }

    /// Makes `name` answer `count` A records, 127.200.0.1 on.
    pub(crate) fn add_big(&mut self, name: &str, count: u32) {
        let first = u32::from(Ipv4Addr::new(127, 200, 0, 1));
        let addresses = (0..count).map(|n| Data::Address(Ipv4Addr::from(first + n).into()));
        self.records.entry(key(name)).or_default().extend(addresses);
    }

    /// Makes `name` answer SERVFAIL.
    pub(crate) fn fail(&mut self, name: &str) {
        self.failing.insert(key(name));
    }

    /// Makes every `<n>.suffix` answer 127.0.0.1 + n (n below 2²⁴ - 2,
    /// so every address is a distinct loopback one).
    pub(crate) fn synthesize(&mut self, suffix: &str) {
        self.synthesized = Some(key(suffix));
    }

    /// The records of `name`, stored or synthesized.
    fn lookup(&self, name: &str) -> Option<Vec<Data>> {
        if let Some(records) = self.records.get(name) {
            return Some(records.clone());
        }
        let suffix = self.synthesized.as_deref()?;
        let n: u32 = name.strip_suffix(suffix)?.strip_suffix('.')?.parse().ok()?;
        let address = u32::from(Ipv4Addr::LOCALHOST).checked_add(n)?;
        (address < u32::from(Ipv4Addr::new(127, 255, 255, 255)))
            .then(|| vec![Data::Address(Ipv4Addr::from(address).into())])
    }

    /// The response to the DNS query `query`, as sent over `transport`;
    /// `None` for what is not a query.
    pub(crate) fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let question = request.queries.first()?.clone();
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_query(question.clone());
        let (code, records) = self.resolve(&question);
        response.metadata.response_code = code;
        response.add_answers(records);
        let wire = response.to_vec().ok()?;
        if transport == Transport::Udp && wire.len() > UDP_LIMIT {
            // The question stays (glibc needs it to retry over TCP).
            return response.truncate().to_vec().ok();
        }
        Some(wire)
    }

    /// The response code and the answer records to `question`, following
    /// CNAME links as a resolver does.
    fn resolve(&self, question: &Query) -> (ResponseCode, Vec<Record>) {
        let kind = question.query_type;
        let mut owner = question.name.clone();
        let mut records = Vec::new();
        for _ in 0..MAX_CHAIN {
            let name = key(&owner.to_ascii());
            if self.failing.contains(&name) {
                return (ResponseCode::ServFail, Vec::new());
            }
            let Some(data) = self.lookup(&name) else {
                return (ResponseCode::NXDomain, records);
            };
            let alias = data.iter().find_map(|data| match data {
                Data::Alias(target) => Some(target.clone()),
                Data::Address(_) => None,
            });
            let target = match alias {
                Some(target) if kind != RecordType::CNAME => target,
                _ => {
                    records.extend(data.iter().filter_map(|data| record(&owner, data, kind)));
                    return (ResponseCode::NoError, records);
                }
            };
            let Ok(next) = Name::from_str(&format!("{target}.")) else {
                return (ResponseCode::ServFail, Vec::new());
            };
            records.push(Record::from_rdata(
                owner,
                TTL,
                RData::CNAME(CNAME(next.clone())),
            ));
            owner = next;
        }
        (ResponseCode::ServFail, Vec::new())
    }
}

/// `data` as a record of `owner`, when it answers a query for `kind`.
fn record(owner: &Name, data: &Data, kind: RecordType) -> Option<Record> {
    let rdata = match (data, kind) {
        (Data::Address(IpAddr::V4(v4)), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
        (Data::Address(IpAddr::V6(v6)), RecordType::AAAA | RecordType::ANY) => {
            RData::AAAA(AAAA(*v6))
        }
        (Data::Alias(target), RecordType::CNAME | RecordType::ANY) => {
            RData::CNAME(CNAME(Name::from_str(&format!("{target}.")).ok()?))
        }
        _ => return None,
    };
    Some(Record::from_rdata(owner.clone(), TTL, rdata))
}
