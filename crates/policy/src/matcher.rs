//! Deciding flows as a run goes: the policy, and what the scope's own
//! lookups taught it about names.
//!
//! A name rule (`tcp://pypi.org:443`, `tcp://*.pythonhosted.org`) applies
//! to the addresses that the scope's lookups of a matching name returned
//! (the query name, or a name on its CNAME chain), from the answer on and
//! for the rest of the run: no TTL expires them, since applications reuse
//! answers past it and CDNs rotate addresses. IPv4-mapped IPv6 answers are
//! their IPv4 addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use flow_core::FlowKey;
use flow_core::dns::{DnsLookup, ResponseCode};

use crate::table::{self, Decision, Entry};
use crate::{Policy, RuleId};

/// Addresses the matcher remembers names for at most: a lookup beyond it
/// teaches nothing (its addresses stay denied by an allow list) and is
/// counted ([`Learned::dropped`]).
pub const MAX_LEARNED_ADDRESSES: usize = 65_536;

/// An address a lookup taught the matcher about: every rule that now
/// applies to it (by its prefixes and by name), what the kernel's entry
/// for that one address must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedAddress {
    /// The address (IPv4-mapped ones as IPv4).
    pub address: IpAddr,
    /// The rules that apply to it, deny first.
    pub entries: Vec<Entry>,
}

/// What one lookup taught.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Addresses whose rules changed.
    pub addresses: Vec<LearnedAddress>,
    /// Addresses not learned: the memory is full, or more rules would
    /// apply to one address than the kernel's entry holds.
    pub dropped: usize,
}

/// A policy and the names the scope looked up (see the
/// [module](self) documentation).
///
/// ```
/// use std::sync::Arc;
/// use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
/// use flow_core::FlowKey;
/// use flow_policy::{Matcher, Policy};
///
/// let policy = Policy::builder().allow("tcp://*.pythonhosted.org:443")?.build()?.unwrap();
/// let mut matcher = Matcher::new(Arc::new(policy));
/// let key = FlowKey::tcp("10.0.0.1:40000".parse()?, "151.101.0.223:443".parse()?);
/// assert!(!matcher.decide(&key).allows(), "not looked up yet");
/// let lookup = DnsLookup::new("files.pythonhosted.org", QueryType::A, ResponseCode::NO_ERROR)
///     .with_answers(["151.101.0.223".parse()?]);
/// assert_eq!(matcher.learn(&lookup).addresses.len(), 1);
/// assert!(matcher.decide(&key).allows());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Matcher {
    policy: Arc<Policy>,
    /// Address → the name rules its lookups matched.
    learned: HashMap<IpAddr, Vec<Entry>>,
}

impl Matcher {
    /// A matcher that knows no name yet.
    #[must_use]
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            policy,
            learned: HashMap::new(),
        }
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Learns from a lookup the scope made: its addresses take the name
    /// rules that match its query name or a name of its CNAME chain. Only
    /// answered lookups (`NOERROR`) teach.
    pub fn learn(&mut self, lookup: &DnsLookup) -> Learned {
        let mut learned = Learned::default();
        if lookup.rcode != ResponseCode::NO_ERROR || lookup.answers.is_empty() {
            return learned;
        }
        let mut rules = Vec::new();
        for name in std::iter::once(&lookup.query).chain(&lookup.cnames) {
            self.policy.matching_names(name, &mut rules);
        }
        if rules.is_empty() {
            return learned;
        }
        rules.sort_unstable();
        rules.dedup();
        let named: Vec<Entry> = rules
            .iter()
            .filter_map(|id| self.policy.entry(*id))
            .collect();
        for answer in &lookup.answers {
            let address = answer.to_canonical();
            match self.learn_address(address, &named) {
                Some(Some(entries)) => learned.addresses.push(LearnedAddress { address, entries }),
                Some(None) => {}
                None => learned.dropped += 1,
            }
        }
        learned
    }

    /// Adds `named` to what `address` is known by: `Some(Some(entries))`
    /// when its rules changed, `Some(None)` when they did not, `None` when
    /// it cannot be learned.
    fn learn_address(&mut self, address: IpAddr, named: &[Entry]) -> Option<Option<Vec<Entry>>> {
        let full = self.learned.len() >= MAX_LEARNED_ADDRESSES;
        let known = self.learned.get(&address);
        if known.is_none() && full {
            return None;
        }
        let mut merged: Vec<Entry> = known.cloned().unwrap_or_default();
        let before = merged.len();
        for entry in named {
            if !merged.contains(entry) {
                merged.push(*entry);
            }
        }
        if merged.len() == before && known.is_some() {
            return Some(None);
        }
        merged.sort_unstable();
        let mut entries: Vec<Entry> = self
            .policy
            .prefixes()
            .lookup(address)
            .iter()
            .chain(&merged)
            .copied()
            .collect();
        entries.sort_unstable();
        entries.dedup();
        if entries.len() > table::MAX_ENTRIES {
            return None;
        }
        self.learned.insert(address, merged);
        Some(Some(entries))
    }

    /// What the policy says of a flow to `address` and `port` over
    /// `protocol`, with what the lookups taught.
    #[must_use]
    pub fn decide_address(&self, protocol: u8, address: IpAddr, port: u16) -> Decision {
        let address = address.to_canonical();
        let named = self.learned.get(&address).map_or(&[][..], Vec::as_slice);
        self.policy.decide(protocol, address, port, named)
    }

    /// What the policy says of the flow `key` (to its responder).
    #[must_use]
    pub fn decide(&self, key: &FlowKey) -> Decision {
        self.decide_address(key.protocol, key.dst_addr, key.dst_port)
    }

    /// The text of the rule that decided `decision` (`default` for a
    /// default denial), for a denial's `rule` field.
    #[must_use]
    pub fn rule_text(&self, rule: Option<RuleId>) -> Arc<str> {
        self.policy.rule_text(rule)
    }

    /// How many addresses are known by name.
    #[must_use]
    pub fn learned_addresses(&self) -> usize {
        self.learned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::dns::QueryType;

    fn lookup(query: &str, cnames: &[&str], answers: &[&str]) -> DnsLookup {
        DnsLookup::new(query, QueryType::A, ResponseCode::NO_ERROR)
            .with_answers(answers.iter().map(|a| a.parse().unwrap()))
            .with_cnames(cnames.iter().copied())
    }

    fn matcher(allow: &[&str], deny: &[&str]) -> Matcher {
        let mut builder = Policy::builder();
        for rule in allow {
            builder = builder.allow(rule).unwrap();
        }
        for rule in deny {
            builder = builder.deny(rule).unwrap();
        }
        Matcher::new(Arc::new(builder.build().unwrap().unwrap()))
    }

    fn key(dst: &str) -> FlowKey {
        FlowKey::tcp("10.0.0.1:40000".parse().unwrap(), dst.parse().unwrap())
    }

    #[test]
    fn names_allow_what_their_lookups_returned_with_their_ports() {
        let mut m = matcher(&["tcp://pypi.org:443"], &[]);
        m.learn(&lookup(
            "pypi.org",
            &["dualstack.python.map.fastly.net"],
            &["151.101.0.223", "2a04:4e42::223"],
        ));
        assert!(m.decide(&key("151.101.0.223:443")).allows());
        assert!(m.decide(&key("[2a04:4e42::223]:443")).allows());
        assert!(
            m.decide(&key("[::ffff:151.101.0.223]:443")).allows(),
            "IPv4-mapped"
        );
        assert!(
            !m.decide(&key("151.101.0.223:80")).allows(),
            "its port only"
        );
        assert!(!m.decide(&key("151.101.0.224:443")).allows());
    }

    #[test]
    fn a_cname_on_the_chain_matches_and_failed_lookups_teach_nothing() {
        let mut m = matcher(&["tcp://*.fastly.net"], &[]);
        let failed = DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NAME_ERROR)
            .with_answers(["192.0.2.1".parse().unwrap()]);
        assert!(m.learn(&failed).addresses.is_empty());
        m.learn(&lookup(
            "pypi.org",
            &["dualstack.python.map.fastly.net"],
            &["192.0.2.1"],
        ));
        assert!(m.decide(&key("192.0.2.1:443")).allows());
    }

    #[test]
    fn a_denied_name_beats_an_allowed_prefix() {
        let mut m = matcher(&["any://192.0.2.0/24"], &["tcp://evil.example"]);
        assert!(m.decide(&key("192.0.2.66:443")).allows());
        let learned = m.learn(&lookup("evil.example", &[], &["192.0.2.66"]));
        assert_eq!(
            learned.addresses[0].entries.len(),
            2,
            "the prefix's rule and the name's"
        );
        assert_eq!(
            m.decide(&key("192.0.2.66:443")),
            Decision::Deny(RuleId::new(2))
        );
        assert!(
            !m.learn(&lookup("evil.example", &[], &["192.0.2.66"]))
                .addresses
                .iter()
                .any(|_| true),
            "nothing new"
        );
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut m = matcher(&["tcp://*.example"], &[]);
        for n in 0..MAX_LEARNED_ADDRESSES as u32 {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string();
            m.learn(&lookup("a.example", &[], &[&address]));
        }
        let learned = m.learn(&lookup("b.example", &[], &["192.0.2.1"]));
        assert_eq!(learned.dropped, 1);
        assert!(!m.decide(&key("192.0.2.1:1")).allows());
        assert_eq!(m.learned_addresses(), MAX_LEARNED_ADDRESSES);
    }
}
