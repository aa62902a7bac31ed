//! Test support: DNS responses built with hickory-proto from a small model,
//! and what [`crate::dns::parse_response`] must read back from them; TLS
//! ClientHello records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS, SVCB, TXT, svcb};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;

use crate::dns::{Answer, MAX_CHAIN};

/// A response: a query name, a CNAME chain from it, addresses at the
/// chain's end, and records that must not count (addresses of another
/// name, an HTTPS record with address hints, a TXT record), written in the
/// order servers use (the chain, the addresses, the rest).
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// The message ID.
    pub(crate) id: u16,
    /// The question's name.
    pub(crate) query: String,
    /// The question's type.
    pub(crate) qtype: u16,
    /// The response code (the header's four bits).
    pub(crate) rcode: u8,
    /// The `TC` bit.
    pub(crate) truncated: bool,
    /// The CNAME targets from the query name, in order.
    pub(crate) chain: Vec<String>,
    /// The addresses of the chain's last name.
    pub(crate) addresses: Vec<IpAddr>,
    /// Whether records that must not count follow.
    pub(crate) noise: bool,
}

impl Response {
    /// A `NOERROR` response to `A? query` with these addresses.
    pub(crate) fn simple(id: u16, query: &str, addresses: &[IpAddr]) -> Self {
        Self {
            id,
            query: query.to_owned(),
            qtype: 1,
            rcode: 0,
            truncated: false,
            chain: Vec::new(),
            addresses: addresses.to_vec(),
            noise: false,
        }
    }

    /// The message, on the wire.
    pub(crate) fn wire(&self) -> Vec<u8> {
        let name = |text: &str| Name::from_str(&format!("{text}.")).expect("a valid name");
        let record = |owner: &str, data: RData| Record::from_rdata(name(owner), 300, data);
        let mut message = Message::response(self.id, OpCode::Query);
        message.metadata.response_code = hickory_proto::op::ResponseCode::from_low(self.rcode);
        message.metadata.truncation = self.truncated;
        message.add_query(Query::query(
            name(&self.query),
            RecordType::from(self.qtype),
        ));
        let mut owner = self.query.as_str();
        for target in &self.chain {
            message.add_answer(record(owner, RData::CNAME(CNAME(name(target)))));
            owner = target;
        }
        for address in &self.addresses {
            message.add_answer(record(owner, address_data(*address)));
        }
        if self.noise {
            message.add_answer(record(
                "noise.test",
                address_data(Ipv4Addr::LOCALHOST.into()),
            ));
            let hint =
                svcb::SvcParamValue::Ipv4Hint(svcb::IpHint(vec![A(Ipv4Addr::new(192, 0, 2, 9))]));
            let https = SVCB::new(1, Name::root(), vec![(svcb::SvcParamKey::Ipv4Hint, hint)]);
            message.add_answer(record(owner, RData::HTTPS(HTTPS(https))));
            message.add_answer(record(owner, RData::TXT(TXT::new(vec!["v=x".into()]))));
        }
        message.to_vec().expect("the message encodes")
    }

    /// What [`crate::dns::parse_response`] must read from [`Response::wire`].
    pub(crate) fn expected(&self) -> Answer {
        let followed = self.chain.len().min(MAX_CHAIN);
        let reached = followed == self.chain.len();
        let lower = |text: &String| text.to_ascii_lowercase();
        let lookup = DnsLookup::new(
            lower(&self.query),
            QueryType(self.qtype),
            ResponseCode(u16::from(self.rcode)),
        )
        .with_cnames(self.chain[..followed].iter().map(lower))
        .with_answers(self.addresses.iter().copied().filter(|_| reached))
        .truncated(self.truncated);
        Answer {
            id: self.id,
            lookup,
            complete: true,
        }
    }
}

/// An A or AAAA record's data.
fn address_data(address: IpAddr) -> RData {
    match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// A name of one to three labels, in mixed case.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]{1,8}){0,2}"
}

/// Any address, IPv4-mapped IPv6 ones included.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
    ]
}

/// Responses of every shape: chains longer than [`MAX_CHAIN`], any query
/// type and response code, up to 12 addresses. Chain names are made
/// distinct from each other and from the query (a chain that comes back to
/// a name it passed is a loop: `chain_loops_are_bounded` covers those).
pub(crate) fn response() -> impl Strategy<Value = Response> {
    (
        any::<u16>(),
        name(),
        prop_oneof![Just(1_u16), Just(28), Just(65), any::<u16>()],
        0_u8..16,
        any::<bool>(),
        prop::collection::vec(name(), 0..20),
        prop::collection::vec(address(), 0..12),
        any::<bool>(),
    )
        .prop_map(
            |(id, query, qtype, rcode, truncated, chain, addresses, noise)| Response {
                id,
                chain: chain
                    .into_iter()
                    .enumerate()
                    .map(|(n, link)| format!("c{n}.{link}"))
                    .collect(),
                query: format!("q.{query}"),
                qtype,
                rcode,
                truncated,
                addresses,
                noise,
            },
        )
}

/// A big-endian length field of `width` bytes.
fn length(value: usize, width: usize) -> Vec<u8> {
    value.to_be_bytes()[8 - width..].to_vec()
}

/// `body` after its length field of `width` bytes.
fn prefixed(body: &[u8], width: usize) -> Vec<u8> {
    [length(body.len(), width), body.to_vec()].concat()
}

/// A ClientHello record with these extensions (type, data), and where the
/// `server_name` extension ends (the bytes a copy needs to name the flow).
pub(crate) fn client_hello(extensions: &[(u16, Vec<u8>)]) -> (Vec<u8>, Option<usize>) {
    let mut body = vec![3, 3];
    body.extend([0x5a; 32]); // random
    body.extend(prefixed(&[7; 32], 1)); // session id
    body.extend(prefixed(&[0x13, 0x01, 0x13, 0x02], 2)); // cipher suites
    body.extend(prefixed(&[0], 1)); // compression: null
    let mut block = Vec::new();
    let mut server_name_end = None;
    for (kind, data) in extensions {
        block.extend(kind.to_be_bytes());
        block.extend(prefixed(data, 2));
        if *kind == 0 && server_name_end.is_none() {
            server_name_end = Some(block.len());
        }
    }
    let extensions_at = body.len() + 2;
    body.extend(prefixed(&block, 2));
    let record = [
        vec![22, 3, 1],
        prefixed(&[vec![1], prefixed(&body, 3)].concat(), 2),
    ]
    .concat();
    // Record header (5), handshake header (4), then the body.
    (
        record,
        server_name_end.map(|end| 5 + 4 + extensions_at + end),
    )
}

/// A `server_name` extension's data naming `host`.
pub(crate) fn server_name_extension(host: &str) -> Vec<u8> {
    prefixed(&[vec![0], prefixed(host.as_bytes(), 2)].concat(), 2)
}
