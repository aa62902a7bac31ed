//! The egress policy as the kernel checks it (enforce mode): a
//! longest-prefix-match trie of destination prefixes, each with every rule
//! that applies under it, and the rules for anywhere apart. Both are
//! filled by the loader from `flow_policy`'s compiled prefix table; the
//! programs decide as `flow_policy` does (deny wins; with allow rules the
//! rest is denied).
//!
//! One trie holds both families, keyed by IPv6 address: an IPv4 prefix
//! `a.b.c.d/n` is `::ffff:a.b.c.d/(96 + n)`, so an IPv4-mapped IPv6
//! destination meets the IPv4 rules with no conversion, and the loader
//! always inserts `::ffff:0:0/96` so that an IPv4 address never falls
//! through to a short IPv6 prefix.

/// Name of the prefix trie (LPM trie: 16-byte address → [`RawPolicyRules`]).
pub const POLICY_PREFIXES_MAP: &str = "POLICY_PREFIXES";
/// Name of the one-entry array of the rules for anywhere ([`RawPolicyRules`]).
pub const POLICY_ANYWHERE_MAP: &str = "POLICY_ANYWHERE";
/// Name of the read-only global (a `u32`) that says whether a policy is
/// enforced: [`ENFORCE_OFF`], [`ENFORCE_DEFAULT_ALLOW`] or
/// [`ENFORCE_DEFAULT_DENY`].
pub const ENFORCE_GLOBAL: &str = "ENFORCE";
/// [`ENFORCE_GLOBAL`]: no policy; every program lets everything pass.
pub const ENFORCE_OFF: u32 = 0;
/// [`ENFORCE_GLOBAL`]: enforced, and what no rule denies is allowed.
pub const ENFORCE_DEFAULT_ALLOW: u32 = 1;
/// [`ENFORCE_GLOBAL`]: enforced, and what no rule allows is denied.
pub const ENFORCE_DEFAULT_DENY: u32 = 2;

/// The `cgroup/connect4` program.
pub const CONNECT4_PROGRAM: &str = "flowtrack_connect4";
/// The `cgroup/connect6` program.
pub const CONNECT6_PROGRAM: &str = "flowtrack_connect6";
/// The `cgroup/sendmsg4` program.
pub const SENDMSG4_PROGRAM: &str = "flowtrack_sendmsg4";
/// The `cgroup/sendmsg6` program.
pub const SENDMSG6_PROGRAM: &str = "flowtrack_sendmsg6";

/// Rules one [`RawPolicyRules`] holds at most (a prefix's, or those for
/// anywhere).
pub const POLICY_RULES: usize = 64;
/// Prefixes the trie holds at most.
pub const POLICY_PREFIXES: u32 = 65_536;

/// [`RawPolicyRule::flags`]: a deny rule (else allow).
pub const RULE_DENY: u8 = 1;
/// [`RawPolicyRule::flags`]: the rule names ports: it applies to TCP and
/// UDP only, to ports `first_port..=last_port`.
pub const RULE_PORTS: u8 = 1 << 1;

/// The protocol of a rule that applies to every protocol.
pub const RULE_ANY_PROTOCOL: u8 = 0;

/// [`crate::RawFlowRecord::kind`]: a connection or packet was refused by
/// the policy; `close_reason` holds the rule id (0: the default). Sent as
/// a [`crate::RawOpenedRecord`], with the refused process as its owner.
pub const RECORD_DENIED: u32 = 7;

/// One rule, as a check needs it (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawPolicyRule {
    /// The rule's id (its place in the policy, from 1).
    pub rule: u16,
    /// With [`RULE_PORTS`]: the first port.
    pub first_port: u16,
    /// With [`RULE_PORTS`]: the last port.
    pub last_port: u16,
    /// IANA protocol number, [`RULE_ANY_PROTOCOL`], or 1 for ICMP of
    /// either family.
    pub protocol: u8,
    /// [`RULE_DENY`], [`RULE_PORTS`].
    pub flags: u8,
}

impl RawPolicyRule {
    /// Whether the rule applies to a flow of `protocol` to `port`.
    #[must_use]
    #[inline(always)]
    pub fn applies(&self, protocol: u8, port: u16) -> bool {
        let protocol_matches = self.protocol == RULE_ANY_PROTOCOL
            || self.protocol == protocol
            || (self.protocol == 1 && protocol == 58);
        if !protocol_matches {
            return false;
        }
        if self.flags & RULE_PORTS == 0 {
            return true;
        }
        (protocol == 6 || protocol == 17) && port >= self.first_port && port <= self.last_port
    }
}

/// The rules of one prefix (or for anywhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawPolicyRules {
    /// How many of `rules` are used.
    pub len: u32,
    /// Always zero.
    pub pad: u32,
    /// The rules.
    pub rules: [RawPolicyRule; POLICY_RULES],
}

impl Default for RawPolicyRules {
    fn default() -> Self {
        Self {
            len: 0,
            pad: 0,
            rules: [RawPolicyRule::default(); POLICY_RULES],
        }
    }
}

/// What the rules say about a flow so far (folded over the prefix's rules
/// and those for anywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The lowest id of a deny rule that applies, 0 for none.
    pub denied_by: u16,
    /// Whether an allow rule applies.
    pub allowed: bool,
}

impl Verdict {
    /// Folds in the rules of `rules` that apply to a flow of `protocol`
    /// to `port`.
    #[inline(always)]
    pub fn add(&mut self, rules: &RawPolicyRules, protocol: u8, port: u16) {
        let len = rules.len as usize;
        for i in 0..POLICY_RULES {
            if i >= len {
                break;
            }
            let rule = &rules.rules[i];
            if !rule.applies(protocol, port) {
                continue;
            }
            if rule.flags & RULE_DENY == 0 {
                self.allowed = true;
            } else if self.denied_by == 0 || rule.rule < self.denied_by {
                self.denied_by = rule.rule;
            }
        }
    }

    /// `None` when the flow may go, else the id of the rule that denies it
    /// (0: the default, `enforce` being [`ENFORCE_DEFAULT_DENY`]).
    #[must_use]
    #[inline(always)]
    pub fn denial(&self, enforce: u32) -> Option<u16> {
        if self.denied_by != 0 {
            Some(self.denied_by)
        } else if self.allowed || enforce != ENFORCE_DEFAULT_DENY {
            None
        } else {
            Some(0)
        }
    }
}

/// The trie key's address of an IPv4 address (network order): IPv4-mapped.
#[must_use]
pub const fn mapped_v4(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The trie key's prefix length of an IPv4 prefix length.
pub const V4_PREFIX_OFFSET: u32 = 96;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(rule: u16, protocol: u8, ports: Option<(u16, u16)>, deny: bool) -> RawPolicyRule {
        let (first_port, last_port) = ports.unwrap_or_default();
        RawPolicyRule {
            rule,
            first_port,
            last_port,
            protocol,
            flags: if deny { RULE_DENY } else { 0 } | if ports.is_some() { RULE_PORTS } else { 0 },
        }
    }

    fn rules(list: &[RawPolicyRule]) -> RawPolicyRules {
        let mut rules = RawPolicyRules::default();
        rules.rules[..list.len()].copy_from_slice(list);
        rules.len = list.len() as u32;
        rules
    }

    #[test]
    fn deny_wins_and_ports_apply_to_tcp_and_udp_only() {
        let list = rules(&[
            rule(1, 6, Some((8000, 8100)), false),
            rule(2, RULE_ANY_PROTOCOL, Some((8050, 8050)), true),
            rule(3, 1, None, false),
        ]);
        let verdict = |protocol, port| {
            let mut verdict = Verdict::default();
            verdict.add(&list, protocol, port);
            verdict.denial(ENFORCE_DEFAULT_DENY)
        };
        assert_eq!(verdict(6, 8000), None);
        assert_eq!(verdict(6, 8050), Some(2), "deny wins");
        assert_eq!(verdict(6, 8101), Some(0), "the default");
        assert_eq!(verdict(17, 8000), Some(0));
        assert_eq!(verdict(58, 0), None, "icmp rules cover ICMPv6");
        let mut verdict = Verdict::default();
        verdict.add(&list, 17, 9);
        assert_eq!(verdict.denial(ENFORCE_DEFAULT_ALLOW), None);
    }
}
