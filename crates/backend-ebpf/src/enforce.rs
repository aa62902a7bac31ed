//! Enforce mode, the loader's side: the policy's compiled address rules
//! ([`flow_policy::table`]) into the kernel's prefix trie and anywhere
//! array (`flow_ebpf_common::policy`), then the socket-address hooks
//! attached. Every step that fails fails the backend's start: enforcement
//! is in place before the scope's command runs, or nothing runs.
//!
//! Name rules: a name's addresses are only known from the scope's own
//! lookups, and allowing them after userspace reads a passive copy of the
//! answer would leave a window in which the workload may already connect
//! (a false denial). So with name rules the scope's DNS goes through
//! flowtrack's own resolver ([`crate::resolver`]), which allows the
//! addresses before it relays the answer; the `recvmsg` hooks then give
//! the answers the server's address.

use std::fs::File;
use std::net::IpAddr;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use flow_core::FlowError;
use flow_ebpf_common::{
    CONNECT4_PROGRAM, CONNECT6_PROGRAM, ENFORCE_DEFAULT_ALLOW, ENFORCE_DEFAULT_DENY, ENFORCE_OFF,
    POLICY_ANYWHERE_MAP, POLICY_PREFIXES, POLICY_PREFIXES_MAP, POLICY_RULES, RECVMSG4_PROGRAM,
    RECVMSG6_PROGRAM, RULE_ANY_PROTOCOL, RULE_DENY, RULE_PORTS, RawPolicyRule, RawPolicyRules,
    SENDMSG4_PROGRAM, SENDMSG6_PROGRAM, V4_PREFIX_OFFSET, mapped_v4,
};
use flow_policy::{Action, Entry, Policy, Proto};

use crate::BACKEND_NAME;
use crate::attach::{program, program_error, program_id};

/// The socket-address hooks, attached in enforce mode only.
pub(crate) const HOOKS: [&str; 4] = [
    CONNECT4_PROGRAM,
    CONNECT6_PROGRAM,
    SENDMSG4_PROGRAM,
    SENDMSG6_PROGRAM,
];

/// [`RawPolicyRules`] as a map value.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Rules(pub(crate) RawPolicyRules);

// SAFETY: plain integers, no padding (the layout is checked in
// flow-ebpf-common's tests), valid for any bit pattern.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Rules {}

/// The value of the `ENFORCE` global for `policy` (none: off).
pub(crate) fn global(policy: Option<&Policy>) -> u32 {
    match policy {
        None => ENFORCE_OFF,
        Some(policy) if policy.default_deny() => ENFORCE_DEFAULT_DENY,
        Some(_) => ENFORCE_DEFAULT_ALLOW,
    }
}

/// A rule as the kernel checks it.
fn raw_rule(entry: &Entry) -> RawPolicyRule {
    let (first_port, last_port, ports) = match entry.ports {
        Some(range) => (range.first, range.last, RULE_PORTS),
        None => (0, 0, 0),
    };
    RawPolicyRule {
        rule: entry.rule.get(),
        first_port,
        last_port,
        protocol: match entry.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Any => RULE_ANY_PROTOCOL,
        },
        flags: ports
            | match entry.action {
                Action::Deny => RULE_DENY,
                Action::Allow => 0,
            },
    }
}

/// The kernel's form of a list of rules.
pub(crate) fn raw_rules(entries: &[Entry]) -> Result<RawPolicyRules, String> {
    let mut rules = RawPolicyRules::default();
    if entries.len() > POLICY_RULES {
        return Err(format!(
            "{} rules apply to one destination; the kernel checks {POLICY_RULES} at most",
            entries.len()
        ));
    }
    for (slot, entry) in rules.rules.iter_mut().zip(entries) {
        *slot = raw_rule(entry);
    }
    rules.len = entries.len() as u32;
    Ok(rules)
}

/// The trie's entries for `policy`: each prefix (IPv4 as IPv4-mapped) with
/// its rules, and `::ffff:0:0/96` always, so that an IPv4 address never
/// meets a short IPv6 prefix's rules.
pub(crate) fn prefixes(policy: &Policy) -> Result<Vec<(u32, [u8; 16], RawPolicyRules)>, String> {
    let table = policy.prefixes();
    if table.len() >= POLICY_PREFIXES as usize {
        return Err(format!(
            "{} address prefixes; the kernel holds {} at most",
            table.len(),
            POLICY_PREFIXES - 1
        ));
    }
    let mut out = Vec::with_capacity(table.len() + 1);
    let mut v4_root = false;
    for (net, entries) in table.iter() {
        let rules = raw_rules(entries).map_err(|why| format!("{net}: {why}"))?;
        v4_root |= net.network().is_ipv4() && net.prefix_len() == 0;
        let (len, address) = trie_prefix(net.network(), net.prefix_len());
        out.push((len, address, rules));
    }
    if !v4_root {
        out.push((
            V4_PREFIX_OFFSET,
            mapped_v4([0; 4]),
            RawPolicyRules::default(),
        ));
    }
    Ok(out)
}

/// The trie's prefix length and address of `address/len` (IPv4 as
/// IPv4-mapped: `flow_ebpf_common::policy`).
pub(crate) fn trie_prefix(address: IpAddr, len: u8) -> (u32, [u8; 16]) {
    match address {
        IpAddr::V4(v4) => (V4_PREFIX_OFFSET + u32::from(len), mapped_v4(v4.octets())),
        IpAddr::V6(v6) => (u32::from(len), v6.octets()),
    }
}

/// Fills the policy's maps in the loaded object.
pub(crate) fn fill_maps(ebpf: &mut Ebpf, policy: &Policy) -> Result<(), FlowError> {
    let unable = |why: String| {
        FlowError::unavailable(
            BACKEND_NAME,
            format!("cannot put the policy in the kernel: {why}"),
        )
    };
    let prefixes = prefixes(policy).map_err(unable)?;
    let anywhere = raw_rules(policy.prefixes().anywhere())
        .map_err(|why| unable(format!("rules for anywhere (*): {why}")))?;
    let map = ebpf
        .map_mut(POLICY_PREFIXES_MAP)
        .ok_or_else(|| unable(format!("the eBPF object has no map {POLICY_PREFIXES_MAP}")))?;
    let mut trie: LpmTrie<&mut MapData, [u8; 16], Rules> =
        LpmTrie::try_from(map).map_err(|e| unable(e.to_string()))?;
    for (len, address, rules) in prefixes {
        trie.insert(&Key::new(len, address), Rules(rules), 0)
            .map_err(|e| unable(format!("inserting a prefix: {e}")))?;
    }
    let map = ebpf
        .map_mut(POLICY_ANYWHERE_MAP)
        .ok_or_else(|| unable(format!("the eBPF object has no map {POLICY_ANYWHERE_MAP}")))?;
    let mut array: Array<&mut MapData, Rules> =
        Array::try_from(map).map_err(|e| unable(e.to_string()))?;
    array
        .set(0, Rules(anywhere), 0)
        .map_err(|e| unable(format!("the rules for anywhere: {e}")))?;
    Ok(())
}

/// Loads and attaches the socket-address hooks to `cgroup` (with a
/// resolver, the `recvmsg` ones too); each one's name and kernel id.
pub(crate) fn attach_hooks(
    ebpf: &mut Ebpf,
    cgroup: &File,
    resolver: bool,
) -> Result<Vec<(&'static str, u32)>, FlowError> {
    let mut programs = Vec::new();
    let recvmsg: &[&str] = if resolver {
        &[RECVMSG4_PROGRAM, RECVMSG6_PROGRAM]
    } else {
        &[]
    };
    for &name in HOOKS.iter().chain(recvmsg) {
        let hook: &mut CgroupSockAddr = program(ebpf, name)?;
        hook.load().map_err(|e| program_error(name, "loading", e))?;
        hook.attach(cgroup, CgroupAttachMode::Single)
            .map_err(|e| program_error(name, "attaching", e))?;
        programs.push((name, program_id(name, hook.info())?));
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let mut builder = Policy::builder();
        for rule in allow {
            builder = builder.allow(rule).unwrap();
        }
        for rule in deny {
            builder = builder.deny(rule).unwrap();
        }
        builder.build().unwrap().unwrap()
    }

    #[test]
    fn ipv4_prefixes_are_mapped_and_the_ipv4_root_is_always_there() {
        let policy = policy(
            &["tcp://10.0.0.0/8:8000-8100", "any://[2001:db8::]/32"],
            &[],
        );
        let mut prefixes = prefixes(&policy).unwrap();
        prefixes.sort_by_key(|(len, address, _)| (*len, *address));
        let shown: Vec<(u32, [u8; 16], u32)> = prefixes
            .iter()
            .map(|(len, address, rules)| (*len, *address, rules.len))
            .collect();
        let mut v6 = [0; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(
            shown,
            [
                (32, v6, 1),
                (96, mapped_v4([0; 4]), 0),
                (104, mapped_v4([10, 0, 0, 0]), 1)
            ]
        );
        let rule = prefixes[2].2.rules[0];
        assert_eq!(
            (rule.protocol, rule.first_port, rule.last_port, rule.flags),
            (6, 8000, 8100, RULE_PORTS)
        );
        assert_eq!(global(Some(&policy)), ENFORCE_DEFAULT_DENY);
        assert_eq!(global(None), ENFORCE_OFF);
    }

    #[test]
    fn the_global_says_whether_the_rest_is_allowed() {
        assert_eq!(
            global(Some(&policy(&[], &["tcp://10.0.0.1"]))),
            ENFORCE_DEFAULT_ALLOW
        );
        assert_eq!(
            global(Some(&policy(&["tcp://pypi.org:443"], &[]))),
            ENFORCE_DEFAULT_DENY
        );
    }
}
