//! Property tests of the rule grammar and of matching: what parses prints
//! back to itself, any text is refused or parsed without a panic, deny
//! rules win, IPv4-mapped addresses match as IPv4, and the compiled prefix
//! table decides as a plain scan of the rules does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flow_policy::{Action, Decision, Dest, Policy, PortRange, Proto, Rule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

fn any_proto() -> impl Strategy<Value = Proto> {
    proptest::sample::select(Proto::ALL.to_vec())
}

fn any_label() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_-]{0,10}"
}

fn any_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(any_label(), 1..4).prop_map(|labels| labels.join("."))
}

/// Small address spaces, so that prefixes overlap and addresses fall in
/// them often.
fn any_v4() -> impl Strategy<Value = Ipv4Addr> {
    (0_u8..4, any::<u8>()).prop_map(|(b, d)| Ipv4Addr::new(10, b, 0, d))
}

fn any_v6() -> impl Strategy<Value = Ipv6Addr> {
    (0_u16..4, any::<u16>()).prop_map(|(b, d)| Ipv6Addr::new(0x2001, 0xdb8, b, 0, 0, 0, 0, d))
}

fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any_v4(), 0_u8..=32).prop_map(|(a, len)| IpNet::V4(Ipv4Net::new(a, len).unwrap().trunc())),
        (any_v6(), 0_u8..=128)
            .prop_map(|(a, len)| IpNet::V6(Ipv6Net::new(a, len).unwrap().trunc())),
    ]
}

fn any_dest() -> impl Strategy<Value = Dest> {
    prop_oneof![
        Just(Dest::Anywhere),
        any_name().prop_map(|name| Dest::Name(name.into())),
        any_name().prop_map(|name| Dest::Suffix(format!(".{name}").into())),
        any_net().prop_map(Dest::Net),
    ]
}

fn any_ports() -> impl Strategy<Value = Option<PortRange>> {
    proptest::option::of(
        (any::<u16>(), 0_u16..300).prop_map(|(first, span)| PortRange {
            first,
            last: first.saturating_add(span),
        }),
    )
}

fn any_rule() -> impl Strategy<Value = Rule> {
    (
        prop_oneof![Just(Action::Allow), Just(Action::Deny)],
        any_proto(),
        any_dest(),
        any_ports(),
    )
        .prop_map(|(action, proto, dest, ports)| Rule {
            action,
            proto,
            dest,
            ports: if proto == Proto::Icmp { None } else { ports },
        })
}

/// Address rules only (names need lookups), few enough per prefix.
fn any_address_rules() -> impl Strategy<Value = Vec<Rule>> {
    proptest::collection::vec(any_rule(), 0..12).prop_map(|rules| {
        rules
            .into_iter()
            .map(|mut rule| {
                if rule.dest.is_name() {
                    rule.dest = Dest::Anywhere;
                }
                rule
            })
            .collect()
    })
}

fn any_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any_v4().prop_map(IpAddr::V4),
        any_v6().prop_map(IpAddr::V6),
        any_v4().prop_map(|v4| IpAddr::V6(v4.to_ipv6_mapped())),
    ]
}

/// What the rules say, by a scan of every rule: the reference the
/// compiled table must agree with.
fn scan(rules: &[Rule], protocol: u8, address: IpAddr, port: u16) -> Decision {
    let address = address.to_canonical();
    let matches = |rule: &Rule| {
        rule.applies(protocol, port)
            && match &rule.dest {
                Dest::Anywhere => true,
                Dest::Net(net) => net.contains(&address),
                _ => false,
            }
    };
    let deny = rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.action == Action::Deny && matches(rule));
    if let Some((index, _)) = deny {
        return Decision::Deny(flow_policy::RuleId::new(index as u16 + 1));
    }
    let has_allow = rules.iter().any(|rule| rule.action == Action::Allow);
    if !has_allow
        || rules
            .iter()
            .any(|rule| rule.action == Action::Allow && matches(rule))
    {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}

proptest! {
    #[test]
    fn a_rule_prints_back_to_itself(rule in any_rule()) {
        let text = rule.to_string();
        let parsed = Rule::parse(rule.action, &text).unwrap();
        prop_assert_eq!(&parsed, &rule);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn any_text_parses_or_is_refused(text in ".{0,60}") {
        if let Err(error) = Rule::parse(Action::Allow, &text) {
            prop_assert_eq!(error.rule, text);
        }
    }

    #[test]
    fn rule_shaped_text_parses_or_is_refused(
        proto in "(tcp|udp|icmp|any|x)",
        dest in "[\\[\\]a-z0-9.:*/_-]{0,24}",
        ports in "(:[0-9-]{0,12})?",
    ) {
        let text = format!("{proto}://{dest}{ports}");
        if let Ok(rule) = Rule::parse(Action::Deny, &text) {
            prop_assert_eq!(Rule::parse(Action::Deny, &rule.to_string()).unwrap(), rule);
        }
    }

    #[test]
    fn the_compiled_table_decides_as_a_scan_of_the_rules(
        rules in any_address_rules(),
        address in any_address(),
        protocol in proptest::sample::select(vec![1_u8, 6, 17, 58, 132]),
        port in any::<u16>(),
    ) {
        // A policy the kernel could not hold is refused whole; skip it.
        let Ok(policy) = Policy::new(flow_policy::Mode::Audit, rules.clone()) else {
            return Ok(());
        };
        prop_assert_eq!(
            policy.decide(protocol, address, port, &[]),
            scan(&rules, protocol, address, port)
        );
    }

    #[test]
    fn a_mapped_address_is_decided_as_its_ipv4_address(
        rules in any_address_rules(),
        v4 in any_v4(),
        port in any::<u16>(),
    ) {
        let Ok(policy) = Policy::new(flow_policy::Mode::Audit, rules) else {
            return Ok(());
        };
        prop_assert_eq!(
            policy.decide(6, IpAddr::V6(v4.to_ipv6_mapped()), port, &[]),
            policy.decide(6, IpAddr::V4(v4), port, &[])
        );
    }
}
