//! IANA protocol numbers and their names in flowtrack's output.
//!
//! [`FlowKey::protocol`](crate::FlowKey::protocol) is the IANA number. The
//! output names the four protocols flowtrack tracks by name (`tcp`, `udp`,
//! `icmp`, `icmpv6`) and any other by its decimal number.
//!
//! ```
//! use flow_core::protocol::{ICMP, ICMPV6, TCP, UDP};
//! assert_eq!([ICMP, TCP, UDP, ICMPV6], [1, 6, 17, 58]);
//! ```

use std::fmt;

/// ICMP (for IPv4).
pub const ICMP: u8 = 1;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// ICMPv6.
pub const ICMPV6: u8 = 58;

/// The name of a protocol number, if flowtrack names it.
///
/// ```
/// use flow_core::protocol;
/// assert_eq!(protocol::name(protocol::TCP), Some("tcp"));
/// assert_eq!(protocol::name(132), None);
/// ```
#[must_use]
pub fn name(protocol: u8) -> Option<&'static str> {
    match protocol {
        ICMP => Some("icmp"),
        TCP => Some("tcp"),
        UDP => Some("udp"),
        ICMPV6 => Some("icmpv6"),
        _ => None,
    }
}

/// Parses a protocol as written in the output: a name from [`name`] or a
/// decimal number from 0 to 255.
///
/// ```
/// use flow_core::protocol;
/// assert_eq!(protocol::parse("udp"), Some(17));
/// assert_eq!(protocol::parse("132"), Some(132));
/// assert_eq!(protocol::parse("sctp"), None);
/// ```
#[must_use]
pub fn parse(text: &str) -> Option<u8> {
    match text {
        "icmp" => Some(ICMP),
        "tcp" => Some(TCP),
        "udp" => Some(UDP),
        "icmpv6" => Some(ICMPV6),
        digits if digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok(),
        _ => None,
    }
}

/// Displays a protocol number as the output writes it: its name or its
/// decimal number.
///
/// ```
/// use flow_core::protocol::Display;
/// assert_eq!(Display(6).to_string(), "tcp");
/// assert_eq!(Display(132).to_string(), "132");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Display(pub u8);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name(self.0) {
            Some(name) => f.pad(name),
            None => f.pad(&self.0.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parses_back(protocol in any::<u8>()) {
            prop_assert_eq!(parse(&Display(protocol).to_string()), Some(protocol));
        }
    }

    #[test]
    fn rejects_signs_and_overflow() {
        assert_eq!(parse("+6"), None);
        assert_eq!(parse("256"), None);
        assert_eq!(parse(""), None);
    }
}
