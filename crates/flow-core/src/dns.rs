//! A DNS lookup the scope made, as its answer showed it: the vocabulary of
//! the names a flow carries. Backends observe the answers arriving at the
//! scope's sockets and parse them (the `flow-names` crate); this module
//! only says what a lookup is.
//!
//! ```
//! use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
//! let lookup = DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NO_ERROR)
//!     .with_answers(["151.101.0.223".parse()?])
//!     .with_cnames(["dualstack.python.map.fastly.net"]);
//! assert_eq!(lookup.qtype.to_string(), "A");
//! assert_eq!(lookup.rcode.to_string(), "NOERROR");
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A DNS query type (RFC 1035 QTYPE), shown by its mnemonic (`A`, `AAAA`,
/// `HTTPS`) or as `TYPE<n>` (RFC 3597) when flowtrack does not name it.
///
/// ```
/// use flow_core::dns::QueryType;
/// assert_eq!(QueryType(28).to_string(), "AAAA");
/// assert_eq!(QueryType(65280).to_string(), "TYPE65280");
/// assert_eq!(QueryType::parse("TYPE65280"), Some(QueryType(65280)));
/// assert_eq!(QueryType::parse("aaaa"), Some(QueryType::AAAA));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryType(pub u16);

/// Query types flowtrack names, with their mnemonics.
const QUERY_TYPES: [(u16, &str); 19] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (35, "NAPTR"),
    (39, "DNAME"),
    (41, "OPT"),
    (43, "DS"),
    (46, "RRSIG"),
    (48, "DNSKEY"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (257, "CAA"),
    (255, "ANY"),
];

impl QueryType {
    /// An IPv4 address.
    pub const A: Self = Self(1);
    /// An IPv6 address.
    pub const AAAA: Self = Self(28);
    /// A canonical name.
    pub const CNAME: Self = Self(5);
    /// Service binding for HTTPS.
    pub const HTTPS: Self = Self(65);

    /// Its mnemonic, when flowtrack names it.
    #[must_use]
    pub fn mnemonic(self) -> Option<&'static str> {
        QUERY_TYPES
            .iter()
            .find(|(number, _)| *number == self.0)
            .map(|(_, name)| *name)
    }

    /// Parses what [`Display`](fmt::Display) writes (case-insensitive).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if let Some((number, _)) = QUERY_TYPES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(text))
        {
            return Some(Self(*number));
        }
        let digits = text
            .get(..4)
            .filter(|prefix| prefix.eq_ignore_ascii_case("TYPE"))
            .and(text.get(4..))?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok().map(Self))
            .flatten()
    }
}

impl fmt::Display for QueryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mnemonic() {
            Some(name) => f.pad(name),
            None => f.pad(&format!("TYPE{}", self.0)),
        }
    }
}

/// A DNS response code (RFC 1035 RCODE, the header's four bits), shown by
/// its mnemonic (`NOERROR`, `NXDOMAIN`, `SERVFAIL`) or as `RCODE<n>`.
///
/// ```
/// use flow_core::dns::ResponseCode;
/// assert_eq!(ResponseCode(3).to_string(), "NXDOMAIN");
/// assert_eq!(ResponseCode::parse("SERVFAIL"), Some(ResponseCode::SERVER_FAILURE));
/// assert!(ResponseCode(3).is_failure());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponseCode(pub u16);

/// Response codes flowtrack names, with their mnemonics.
const RESPONSE_CODES: [(u16, &str); 11] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (6, "YXDOMAIN"),
    (7, "YXRRSET"),
    (8, "NXRRSET"),
    (9, "NOTAUTH"),
    (10, "NOTZONE"),
];

impl ResponseCode {
    /// The lookup succeeded (it may still have no address).
    pub const NO_ERROR: Self = Self(0);
    /// The server failed.
    pub const SERVER_FAILURE: Self = Self(2);
    /// The name does not exist.
    pub const NAME_ERROR: Self = Self(3);

    /// Whether the lookup failed (anything but `NOERROR`).
    #[must_use]
    pub fn is_failure(self) -> bool {
        self != Self::NO_ERROR
    }

    /// Its mnemonic, when flowtrack names it.
    #[must_use]
    pub fn mnemonic(self) -> Option<&'static str> {
        RESPONSE_CODES
            .iter()
            .find(|(number, _)| *number == self.0)
            .map(|(_, name)| *name)
    }

    /// Parses what [`Display`](fmt::Display) writes (case-insensitive).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        if let Some((number, _)) = RESPONSE_CODES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(text))
        {
            return Some(Self(*number));
        }
        let digits = text
            .get(..5)
            .filter(|prefix| prefix.eq_ignore_ascii_case("RCODE"))
            .and(text.get(5..))?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok().map(Self))
            .flatten()
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mnemonic() {
            Some(name) => f.pad(name),
            None => f.pad(&format!("RCODE{}", self.0)),
        }
    }
}

/// One lookup the scope made, as its answer showed it.
///
/// Names are lowercase, without the trailing dot. `answers` are the
/// addresses (A and AAAA records) at the end of the CNAME chain that
/// starts at `query`, IPv4-mapped IPv6 addresses given as IPv4; `cnames`
/// is that chain, in order. A failed lookup (`NXDOMAIN`, `SERVFAIL`) has
/// neither.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DnsLookup {
    /// The name the workload asked for.
    pub query: Arc<str>,
    /// What it asked for.
    pub qtype: QueryType,
    /// The answer's response code.
    pub rcode: ResponseCode,
    /// The addresses the name resolved to.
    pub answers: Vec<IpAddr>,
    /// The CNAME chain from `query` to the name the addresses belong to.
    pub cnames: Vec<Arc<str>>,
    /// The answer was truncated (`TC`): the workload asks again over TCP.
    pub truncated: bool,
}

impl DnsLookup {
    /// A lookup of `query` for `qtype`, answered with `rcode`, with no
    /// answers yet.
    #[must_use]
    pub fn new(query: impl Into<Arc<str>>, qtype: QueryType, rcode: ResponseCode) -> Self {
        Self {
            query: query.into(),
            qtype,
            rcode,
            answers: Vec::new(),
            cnames: Vec::new(),
            truncated: false,
        }
    }

    /// The same lookup with these addresses (IPv4-mapped ones as IPv4).
    #[must_use]
    pub fn with_answers(mut self, answers: impl IntoIterator<Item = IpAddr>) -> Self {
        self.answers = answers.into_iter().map(|a| a.to_canonical()).collect();
        self
    }

    /// The same lookup with this CNAME chain.
    #[must_use]
    pub fn with_cnames<S: Into<Arc<str>>>(mut self, cnames: impl IntoIterator<Item = S>) -> Self {
        self.cnames = cnames.into_iter().map(Into::into).collect();
        self
    }

    /// The same lookup, marked truncated or not.
    #[must_use]
    pub fn truncated(mut self, truncated: bool) -> Self {
        self.truncated = truncated;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn query_types_and_codes_read_back(number in any::<u16>()) {
            prop_assert_eq!(QueryType::parse(&QueryType(number).to_string()), Some(QueryType(number)));
            prop_assert_eq!(ResponseCode::parse(&ResponseCode(number).to_string()), Some(ResponseCode(number)));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,12}") {
            let _ = QueryType::parse(&text);
            let _ = ResponseCode::parse(&text);
        }
    }

    #[test]
    fn mapped_answers_are_ipv4() {
        let lookup = DnsLookup::new("a.test", QueryType::AAAA, ResponseCode::NO_ERROR)
            .with_answers(["::ffff:10.0.0.1".parse().unwrap()]);
        assert_eq!(lookup.answers, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
