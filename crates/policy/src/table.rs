//! The compiled form of a policy's address rules: for each address prefix
//! a rule names, every rule that applies to addresses under it (its own,
//! and those of the shorter prefixes that contain it), so that one
//! longest-prefix lookup finds all the rules for an address. This is what
//! the backends put in the kernel (an LPM trie per family for eBPF;
//! interval sets for nf_tables): the cost of a check does not grow with the
//! number of rules. Rules for anywhere (`*`) are kept apart, checked for
//! every address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::rule::applies;
use crate::{Action, PortRange, Proto, RuleId};

/// Rules that may apply to one address prefix (after those of the
/// prefixes containing it are added): the size of the kernel's entry.
pub const MAX_ENTRIES: usize = 16;

/// Rules for anywhere (`*`) at most.
pub const MAX_ANYWHERE: usize = 64;

/// A rule as a check needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    /// Allow or deny (deny sorts first).
    pub action: Action,
    /// Which rule (for the `rule` of a denial).
    pub rule: RuleId,
    /// The protocols it applies to.
    pub proto: Proto,
    /// The ports, `None` for any.
    pub ports: Option<PortRange>,
}

impl Entry {
    /// Whether it applies to a flow of `protocol` to `port`.
    #[must_use]
    pub fn applies(&self, protocol: u8, port: u16) -> bool {
        applies(self.proto, self.ports, protocol, port)
    }
}

/// What a policy says about a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// It may go.
    Allow,
    /// It is denied by this deny rule, or (`None`) by default: allow rules
    /// exist and none allows it.
    Deny(Option<RuleId>),
}

impl Decision {
    /// Whether the flow may go.
    #[must_use]
    pub fn allows(self) -> bool {
        self == Self::Allow
    }
}

/// Decides a flow of `protocol` to `port` by the rules that apply to its
/// destination: a deny rule that applies wins (the first written, when
/// several do); else an allow rule; else the default (deny when the policy
/// has allow rules).
pub(crate) fn decide<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    default_deny: bool,
    protocol: u8,
    port: u16,
) -> Decision {
    let mut denied_by: Option<RuleId> = None;
    let mut allowed = false;
    for entry in entries {
        if !entry.applies(protocol, port) {
            continue;
        }
        match entry.action {
            Action::Deny => denied_by = Some(denied_by.map_or(entry.rule, |d| d.min(entry.rule))),
            Action::Allow => allowed = true,
        }
    }
    match denied_by {
        Some(rule) => Decision::Deny(Some(rule)),
        None if allowed || !default_deny => Decision::Allow,
        None => Decision::Deny(None),
    }
}

/// A prefix lookup table: per prefix length (longest first), masked
/// address → entries.
#[derive(Debug, Clone)]
struct ByLength<A> {
    lengths: Vec<(u8, HashMap<A, Vec<Entry>>)>,
}

impl<A: Copy + Eq + std::hash::Hash> ByLength<A> {
    /// From each prefix's own entries, with those of containing prefixes
    /// added (`mask(address, len)`).
    fn build(
        own: BTreeMap<u8, HashMap<A, Vec<Entry>>>,
        mask: fn(A, u8) -> A,
        mut crowded: impl FnMut(u8, A, &[Entry]),
    ) -> Self {
        let mut lengths = Vec::with_capacity(own.len());
        for (&len, prefixes) in own.iter().rev() {
            let mut full = HashMap::with_capacity(prefixes.len());
            for (&address, entries) in prefixes {
                let mut all = entries.clone();
                for (&shorter, containing) in own.range(..len) {
                    if let Some(more) = containing.get(&mask(address, shorter)) {
                        all.extend_from_slice(more);
                    }
                }
                all.sort_unstable();
                all.dedup();
                if all.len() > MAX_ENTRIES {
                    crowded(len, address, &all);
                }
                full.insert(address, all);
            }
            lengths.push((len, full));
        }
        Self { lengths }
    }

    fn len(&self) -> usize {
        self.lengths
            .iter()
            .map(|(_, prefixes)| prefixes.len())
            .sum()
    }

    fn lookup(&self, address: A, mask: fn(A, u8) -> A) -> &[Entry] {
        self.lengths
            .iter()
            .find_map(|(len, prefixes)| prefixes.get(&mask(address, *len)))
            .map_or(&[], Vec::as_slice)
    }
}

fn mask_v4(address: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        _ => address & (u32::MAX << (32 - u32::from(len))),
    }
}

fn mask_v6(address: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        _ => address & (u128::MAX << (128 - u32::from(len))),
    }
}

/// A prefix to which more than [`MAX_ENTRIES`] rules apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crowded {
    pub(crate) prefix: IpNet,
    pub(crate) rules: Vec<RuleId>,
}

/// The compiled address rules of a policy (see the [module](self)
/// documentation).
#[derive(Debug, Clone)]
pub struct Prefixes {
    anywhere: Vec<Entry>,
    v4: ByLength<u32>,
    v6: ByLength<u128>,
}

impl Prefixes {
    /// Compiles `rules` (each with its prefix, or `None` for anywhere);
    /// the prefixes to which too many rules apply are returned instead.
    pub(crate) fn compile(
        rules: impl IntoIterator<Item = (Option<IpNet>, Entry)>,
    ) -> Result<Self, Vec<Crowded>> {
        let mut anywhere = Vec::new();
        let mut own4: BTreeMap<u8, HashMap<u32, Vec<Entry>>> = BTreeMap::new();
        let mut own6: BTreeMap<u8, HashMap<u128, Vec<Entry>>> = BTreeMap::new();
        for (net, entry) in rules {
            match net {
                None => anywhere.push(entry),
                Some(IpNet::V4(net)) => own4
                    .entry(net.prefix_len())
                    .or_default()
                    .entry(u32::from(net.network()))
                    .or_default()
                    .push(entry),
                Some(IpNet::V6(net)) => own6
                    .entry(net.prefix_len())
                    .or_default()
                    .entry(u128::from(net.network()))
                    .or_default()
                    .push(entry),
            }
        }
        anywhere.sort_unstable();
        let mut crowded = Vec::new();
        let v4 = ByLength::build(own4, mask_v4, |len, address, all| {
            crowded.push(Crowded {
                prefix: IpNet::V4(Ipv4Net::new(address.into(), len).unwrap_or_default()),
                rules: all.iter().map(|entry| entry.rule).collect(),
            });
        });
        let v6 = ByLength::build(own6, mask_v6, |len, address, all| {
            crowded.push(Crowded {
                prefix: IpNet::V6(Ipv6Net::new(address.into(), len).unwrap_or_default()),
                rules: all.iter().map(|entry| entry.rule).collect(),
            });
        });
        if crowded.is_empty() {
            Ok(Self { anywhere, v4, v6 })
        } else {
            crowded.sort_unstable_by_key(|crowded| crowded.prefix);
            Err(crowded)
        }
    }

    /// The rules for anywhere (`*`).
    #[must_use]
    pub fn anywhere(&self) -> &[Entry] {
        &self.anywhere
    }

    /// The rules that apply to `address` by its prefixes (IPv4-mapped
    /// addresses as IPv4), those for anywhere aside.
    #[must_use]
    pub fn lookup(&self, address: IpAddr) -> &[Entry] {
        match address.to_canonical() {
            IpAddr::V4(v4) => self.v4.lookup(u32::from(v4), mask_v4),
            IpAddr::V6(v6) => self.v6.lookup(u128::from(v6), mask_v6),
        }
    }

    /// Every prefix a rule names, with every rule that applies under it
    /// (what the kernel's prefix table holds).
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &[Entry])> {
        let v4 = self.v4.lengths.iter().flat_map(|(len, prefixes)| {
            prefixes.iter().map(move |(address, entries)| {
                let net = Ipv4Net::new((*address).into(), *len).unwrap_or_default();
                (IpNet::V4(net), entries.as_slice())
            })
        });
        let v6 = self.v6.lengths.iter().flat_map(|(len, prefixes)| {
            prefixes.iter().map(move |(address, entries)| {
                let net = Ipv6Net::new((*address).into(), *len).unwrap_or_default();
                (IpNet::V6(net), entries.as_slice())
            })
        });
        v4.chain(v6)
    }

    /// How many prefixes the table holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether it holds no prefix.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rule: u16, action: Action) -> Entry {
        Entry {
            action,
            rule: RuleId::new(rule).unwrap(),
            proto: Proto::Any,
            ports: None,
        }
    }

    #[test]
    fn a_prefix_carries_the_rules_of_the_prefixes_that_contain_it() {
        let prefixes = Prefixes::compile([
            (Some("10.0.0.0/8".parse().unwrap()), entry(1, Action::Allow)),
            (Some("10.1.0.0/16".parse().unwrap()), entry(2, Action::Deny)),
            (
                Some("10.1.2.3/32".parse().unwrap()),
                entry(3, Action::Allow),
            ),
            (
                Some("2001:db8::/32".parse().unwrap()),
                entry(4, Action::Allow),
            ),
            (None, entry(5, Action::Deny)),
        ])
        .unwrap();
        let rules = |address: &str| -> Vec<u16> {
            prefixes
                .lookup(address.parse().unwrap())
                .iter()
                .map(|e| e.rule.get())
                .collect()
        };
        assert_eq!(rules("10.1.2.3"), [2, 1, 3], "deny first, then by rule");
        assert_eq!(rules("10.1.9.9"), [2, 1]);
        assert_eq!(rules("10.9.9.9"), [1]);
        assert_eq!(rules("::ffff:10.9.9.9"), [1], "IPv4-mapped as IPv4");
        assert!(rules("11.0.0.1").is_empty());
        assert_eq!(rules("2001:db8::1"), [4]);
        assert_eq!(prefixes.anywhere().len(), 1);
        assert_eq!(prefixes.len(), 4);
    }

    #[test]
    fn deny_wins_and_allow_lists_deny_the_rest() {
        let deny = entry(2, Action::Deny);
        let allow = entry(1, Action::Allow);
        assert_eq!(
            decide([&allow, &deny], true, 6, 443),
            Decision::Deny(RuleId::new(2))
        );
        assert_eq!(decide([&allow], true, 6, 443), Decision::Allow);
        assert_eq!(decide([], true, 6, 443), Decision::Deny(None));
        assert_eq!(decide([], false, 6, 443), Decision::Allow);
    }

    #[test]
    fn too_many_rules_on_one_prefix_are_named() {
        let rules = (1..=17).map(|rule| {
            let mut entry = entry(rule, Action::Allow);
            entry.ports = Some(PortRange {
                first: rule,
                last: rule,
            });
            (Some("10.0.0.0/8".parse().unwrap()), entry)
        });
        let crowded = Prefixes::compile(rules).unwrap_err();
        assert_eq!(crowded[0].prefix.to_string(), "10.0.0.0/8");
        assert_eq!(crowded[0].rules.len(), 17);
    }
}
