//! One rule: `PROTO://DEST[:PORTS]`, the same on the command line and in a
//! policy file.
//!
//! - `PROTO`: `tcp`, `udp`, `icmp` (ICMP over IPv4, ICMPv6 over IPv6) or
//!   `any`.
//! - `DEST`: a name (`pypi.org`), a wildcard (`*.pythonhosted.org`: any name
//!   ending in `.pythonhosted.org`, not that name itself), an address or a
//!   prefix (`10.0.0.0/8`, `[2001:db8::]/32`, `[::1]`; IPv6 in brackets), or
//!   `*` (anywhere).
//! - `PORTS`: a port or an inclusive range (`8000-8100`); absent for any
//!   port. Only TCP and UDP have ports: `any://…:443` means TCP or UDP to
//!   port 443, and `icmp://…:1` is refused.
//!
//! An IPv4-mapped IPv6 address (`[::ffff:10.0.0.1]`) is the IPv4 address,
//! in a rule as in a flow.
//!
//! ```
//! use flow_policy::{Action, Rule};
//! let rule = Rule::parse(Action::Allow, "TCP://PyPI.org.:443")?;
//! assert_eq!(rule.to_string(), "tcp://pypi.org:443");
//! let error = Rule::parse(Action::Deny, "tcp://10.1.0.0/8").unwrap_err();
//! assert_eq!(
//!     error.to_string(),
//!     "rule \"tcp://10.1.0.0/8\": 10.1.0.0/8 has bits set beyond its prefix: write 10.0.0.0/8"
//! );
//! # Ok::<(), flow_policy::RuleError>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::name;

/// What a rule does to the flows it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Deny: it wins over every allow rule.
    Deny,
    /// Allow: once any allow rule exists, what none allows is denied.
    Allow,
}

impl Action {
    /// `allow` or `deny`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// The protocols a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1) to an IPv4 destination, ICMPv6 (58) to an IPv6 one.
    Icmp,
    /// Every protocol; with ports, TCP and UDP only.
    Any,
}

impl Proto {
    /// Every protocol, in declaration order.
    pub const ALL: [Self; 4] = [Self::Tcp, Self::Udp, Self::Icmp, Self::Any];

    /// Its name in a rule: `tcp`, `udp`, `icmp`, `any`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Any => "any",
        }
    }

    /// Whether the IANA protocol number `protocol` is this one.
    ///
    /// ```
    /// use flow_policy::Proto;
    /// assert!(Proto::Icmp.matches(58));
    /// assert!(Proto::Any.matches(132));
    /// assert!(!Proto::Tcp.matches(17));
    /// ```
    #[must_use]
    pub fn matches(self, protocol: u8) -> bool {
        match self {
            Self::Tcp => protocol == TCP,
            Self::Udp => protocol == UDP,
            Self::Icmp => protocol == ICMP || protocol == ICMPV6,
            Self::Any => true,
        }
    }
}

/// IANA protocol numbers.
pub(crate) const ICMP: u8 = 1;
pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const ICMPV6: u8 = 58;

/// Whether flows of `protocol` have ports a rule can name.
#[must_use]
pub fn has_ports(protocol: u8) -> bool {
    protocol == TCP || protocol == UDP
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (the first, for one port).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    #[must_use]
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Where a rule's flows go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// `*`: anywhere.
    Anywhere,
    /// A name: the addresses the scope's own lookups of it returned.
    Name(Arc<str>),
    /// `*.SUFFIX`: the addresses of any name ending in `.SUFFIX` (held here
    /// with its leading dot).
    Suffix(Arc<str>),
    /// An address prefix (IPv4-mapped ones as IPv4).
    Net(IpNet),
}

impl Dest {
    /// Whether the destination is given by name (a name or a wildcard).
    #[must_use]
    pub fn is_name(&self) -> bool {
        matches!(self, Self::Name(_) | Self::Suffix(_))
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anywhere => f.write_str("*"),
            Self::Name(name) => f.write_str(name),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
            Self::Net(IpNet::V4(net)) if net.prefix_len() == 32 => write!(f, "{}", net.addr()),
            Self::Net(IpNet::V4(net)) => write!(f, "{net}"),
            Self::Net(IpNet::V6(net)) if net.prefix_len() == 128 => write!(f, "[{}]", net.addr()),
            Self::Net(IpNet::V6(net)) => write!(f, "[{}]/{}", net.addr(), net.prefix_len()),
        }
    }
}

/// A parsed rule (see the [module](self) documentation). Its
/// [`Display`](fmt::Display) is the canonical text: lowercase, no
/// trailing dot, `/32` and `/128` left out; what `denied` lines show as
/// `rule`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// The protocols.
    pub proto: Proto,
    /// The destination.
    pub dest: Dest,
    /// The ports, `None` for any (always `None` unless TCP or UDP apply).
    pub ports: Option<PortRange>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.proto.name(), self.dest)?;
        if let Some(ports) = self.ports {
            write!(f, ":{ports}")?;
        }
        Ok(())
    }
}

/// A rule that cannot be parsed: the rule as given, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {problem}")]
pub struct RuleError {
    /// The text given.
    pub rule: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The grammar, for error messages.
const GRAMMAR: &str = "a rule is PROTO://DEST[:PORTS], e.g. tcp://pypi.org:443, udp://10.0.0.53:53, any://[2001:db8::]/32";

impl Rule {
    /// Parses `text` as an `action` rule.
    ///
    /// # Errors
    /// [`RuleError`] naming the rule and what is wrong with it.
    pub fn parse(action: Action, text: &str) -> Result<Self, RuleError> {
        parse(action, text).map_err(|problem| RuleError {
            rule: text.to_owned(),
            problem,
        })
    }

    /// Whether the rule applies to a flow of `protocol` to `port` (its
    /// destination aside).
    ///
    /// ```
    /// use flow_policy::{Action, Rule};
    /// let rule = Rule::parse(Action::Allow, "any://*:8000-8100")?;
    /// assert!(rule.applies(6, 8080) && rule.applies(17, 8000));
    /// assert!(!rule.applies(1, 8080), "ICMP has no ports");
    /// # Ok::<(), flow_policy::RuleError>(())
    /// ```
    #[must_use]
    pub fn applies(&self, protocol: u8, port: u16) -> bool {
        applies(self.proto, self.ports, protocol, port)
    }
}

/// Whether `proto` with `ports` applies to a flow of `protocol` to `port`.
pub(crate) fn applies(proto: Proto, ports: Option<PortRange>, protocol: u8, port: u16) -> bool {
    proto.matches(protocol)
        && match ports {
            None => true,
            Some(ports) => has_ports(protocol) && ports.contains(port),
        }
}

fn parse(action: Action, text: &str) -> Result<Rule, String> {
    let Some((proto, rest)) = text.split_once("://") else {
        return Err(format!("no \"://\": {GRAMMAR}"));
    };
    let proto = Proto::ALL
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(proto))
        .ok_or_else(|| format!("unknown protocol {proto:?}: expected tcp, udp, icmp or any"))?;
    let (dest, ports) = split_ports(rest)?;
    let dest = parse_dest(dest)?;
    let ports = ports.map(parse_ports).transpose()?;
    if ports.is_some() && proto == Proto::Icmp {
        return Err("icmp has no ports: write icmp://DEST".to_owned());
    }
    Ok(Rule {
        action,
        proto,
        dest,
        ports,
    })
}

/// `DEST[:PORTS]` → (`DEST`, `PORTS`), IPv6 in brackets.
fn split_ports(rest: &str) -> Result<(&str, Option<&str>), String> {
    let after_dest = if rest.starts_with('[') {
        let close = rest
            .find(']')
            .ok_or("an IPv6 address opened with [ is never closed with ]")?;
        // The prefix length, if any, follows the bracket.
        let tail = &rest[close + 1..];
        let prefix = tail.find(':').unwrap_or(tail.len());
        close + 1 + prefix
    } else {
        match rest.find(':') {
            Some(colon) if rest[colon + 1..].contains(':') => {
                return Err(
                    "too many colons: an IPv6 address goes in brackets, e.g. [2001:db8::1]:443"
                        .to_owned(),
                );
            }
            Some(colon) => colon,
            None => rest.len(),
        }
    };
    let (dest, ports) = rest.split_at(after_dest);
    match ports.strip_prefix(':') {
        Some(ports) => Ok((dest, Some(ports))),
        None => Ok((dest, None)),
    }
}

fn parse_ports(text: &str) -> Result<PortRange, String> {
    let port = |text: &str| {
        text.parse::<u16>().map_err(|_| {
            format!("{text:?} is not a port: give a number from 0 to 65535, or a range such as 8000-8100")
        })
    };
    let range = match text.split_once('-') {
        Some((first, last)) => PortRange {
            first: port(first)?,
            last: port(last)?,
        },
        None => {
            let port = port(text)?;
            PortRange {
                first: port,
                last: port,
            }
        }
    };
    if range.first > range.last {
        return Err(format!(
            "the port range {text} is backwards: write {}-{}",
            range.last, range.first
        ));
    }
    Ok(range)
}

fn parse_dest(text: &str) -> Result<Dest, String> {
    if text.is_empty() {
        return Err(format!("no destination: {GRAMMAR}"));
    }
    if text == "*" {
        return Ok(Dest::Anywhere);
    }
    if let Some(inner) = text.strip_prefix('[') {
        return parse_v6(inner).map(Dest::Net);
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        let suffix =
            name::normalise(suffix).map_err(|why| format!("the wildcard {text:?}: {why}"))?;
        return Ok(Dest::Suffix(format!(".{suffix}").into()));
    }
    if text.contains('*') {
        return Err(format!(
            "{text:?}: a wildcard is \"*.\" then a name (*.pythonhosted.org), or \"*\" alone for anywhere"
        ));
    }
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    if let Ok(address) = address.parse::<Ipv4Addr>() {
        let len = prefix_len(prefix, 32)?;
        let net = Ipv4Net::new(address, len).map_err(|e| e.to_string())?;
        return exact(IpNet::V4(net), text).map(Dest::Net);
    }
    if prefix.is_some() || address.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{text:?} is not an address: an IPv4 prefix is like 10.0.0.0/8, an IPv6 one like [2001:db8::]/32"
        ));
    }
    name::normalise(text)
        .map(|name| Dest::Name(name.into()))
        .map_err(|why| format!("the name {text:?}: {why}"))
}

/// `ADDR]` or `ADDR]/LEN` (the opening bracket already taken).
fn parse_v6(inner: &str) -> Result<IpNet, String> {
    let (address, after) = inner
        .split_once(']')
        .ok_or("an IPv6 address opened with [ is never closed with ]")?;
    let prefix = match after {
        "" => None,
        _ => Some(
            after
                .strip_prefix('/')
                .ok_or_else(|| format!("unexpected {after:?} after the IPv6 address"))?,
        ),
    };
    let address: Ipv6Addr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IPv6 address"))?;
    let len = prefix_len(prefix, 128)?;
    let net = Ipv6Net::new(address, len).map_err(|e| e.to_string())?;
    let text = match prefix {
        Some(prefix) => format!("[{address}]/{prefix}"),
        None => format!("[{address}]"),
    };
    exact(canonical(IpNet::V6(net)), &text)
}

/// An IPv4-mapped IPv6 prefix as the IPv4 prefix it covers (a prefix of
/// `::ffff:0:0/96` or longer); any other prefix as it is.
///
/// ```
/// use flow_policy::rule::canonical;
/// assert_eq!(canonical("::ffff:10.0.0.0/104".parse()?).to_string(), "10.0.0.0/8");
/// assert_eq!(canonical("2001:db8::/32".parse()?).to_string(), "2001:db8::/32");
/// # Ok::<(), ipnet::AddrParseError>(())
/// ```
#[must_use]
pub fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

fn prefix_len(text: Option<&str>, max: u8) -> Result<u8, String> {
    match text {
        None => Ok(max),
        Some(text) => text
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("{text:?} is not a prefix length: give 0 to {max}")),
    }
}

/// `net`, refused when it has bits set beyond its prefix (a typo more
/// often than not).
fn exact(net: IpNet, text: &str) -> Result<IpNet, String> {
    let truncated = net.trunc();
    if truncated == net {
        Ok(net)
    } else {
        let written = match truncated {
            IpNet::V6(v6) => format!("[{}]/{}", v6.addr(), v6.prefix_len()),
            IpNet::V4(v4) => v4.to_string(),
        };
        Err(format!(
            "{text} has bits set beyond its prefix: write {written}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Rule {
        Rule::parse(Action::Allow, text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problem(text: &str) -> String {
        Rule::parse(Action::Allow, text).unwrap_err().problem
    }

    #[test]
    fn the_issue_examples_parse_and_print_back() {
        for text in [
            "tcp://pypi.org:443",
            "udp://10.255.255.53:53",
            "any://127.0.0.0/8",
            "tcp://*:443",
            "tcp://*.pythonhosted.org",
            "any://[2001:db8::]/32",
            "any://[::1]",
            "tcp://10.0.0.1:8000-8100",
            "icmp://192.0.2.1",
            "udp://[fd00::53]:53",
        ] {
            assert_eq!(parse_ok(text).to_string(), text);
        }
    }

    #[test]
    fn destinations_are_what_they_look_like() {
        assert_eq!(parse_ok("tcp://*").dest, Dest::Anywhere);
        assert_eq!(
            parse_ok("tcp://PyPI.Org.").dest,
            Dest::Name("pypi.org".into())
        );
        assert_eq!(
            parse_ok("tcp://*.pythonhosted.org").dest,
            Dest::Suffix(".pythonhosted.org".into())
        );
        assert_eq!(
            parse_ok("tcp://10.0.0.1").dest,
            Dest::Net("10.0.0.1/32".parse().unwrap())
        );
        assert_eq!(
            parse_ok("tcp://[::ffff:10.0.0.1]:80").to_string(),
            "tcp://10.0.0.1:80",
            "IPv4-mapped is IPv4"
        );
        assert_eq!(
            parse_ok("any://[::ffff:0:0]/96").to_string(),
            "any://0.0.0.0/0"
        );
    }

    #[test]
    fn ports_apply_to_tcp_and_udp_only() {
        let rule = parse_ok("any://10.0.0.1:53");
        assert!(rule.applies(TCP, 53) && rule.applies(UDP, 53));
        assert!(!rule.applies(UDP, 54));
        assert!(!rule.applies(ICMP, 53));
        let any_port = parse_ok("any://10.0.0.1");
        assert!(any_port.applies(ICMP, 2048) && any_port.applies(132, 0));
        assert!(parse_ok("icmp://*").applies(ICMPV6, 0));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        assert!(problem("pypi.org").contains("PROTO://DEST"));
        assert!(problem("sctp://x.org").contains("unknown protocol \"sctp\""));
        assert!(problem("tcp://").contains("no destination"));
        assert!(problem("tcp://x.org:99999").contains("\"99999\" is not a port"));
        assert!(problem("tcp://x.org:9-1").contains("backwards: write 1-9"));
        assert!(problem("tcp://x.org:").contains("\"\" is not a port"));
        assert!(problem("icmp://x.org:1").contains("icmp has no ports"));
        assert!(problem("tcp://2001:db8::1").contains("in brackets"));
        assert!(problem("tcp://[2001:db8::1").contains("never closed"));
        assert!(problem("tcp://[2001:db8::]/129").contains("0 to 128"));
        assert!(problem("tcp://10.0.0.0/33").contains("0 to 32"));
        assert!(problem("tcp://[::1]x").contains("unexpected \"x\""));
        assert!(problem("tcp://10.0.0.256").contains("last label"));
        assert!(problem("tcp://a.*.org").contains("wildcard"));
        assert!(problem("tcp://*.").contains("wildcard"));
        assert!(problem("tcp://[zz]").contains("not an IPv6 address"));
        assert!(problem("tcp://10.1.0.0/8").contains("write 10.0.0.0/8"));
        assert!(problem("tcp://[2001:db8::1]/32").contains("write [2001:db8::]/32"));
        assert!(problem("tcp://under_score.ok..org").contains("empty label"));
    }
}
