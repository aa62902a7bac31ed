//! How flowtrack writes times and counts for people: one formatter each,
//! shared by the contract's `Display` impls, the text output and the
//! summaries.
//!
//! ```
//! use flow_core::display::{Count, LossCount, Seconds};
//! assert_eq!(Seconds(1_500_000_000).to_string(), "1.500000000");
//! assert_eq!(format!("{:.6}s", Seconds(1_500_000_000)), "1.500000s");
//! assert_eq!(format!("{:>12}", Seconds(2)), " 0.000000002");
//! assert_eq!(Count(1, "observation").to_string(), "1 observation");
//! assert_eq!(Count(3, "flow").to_string(), "3 flows");
//! assert_eq!(LossCount(None).to_string(), "an unknown number of observations");
//! ```

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;

use crate::clock::NANOS_PER_SEC;

/// CLOCK_MONOTONIC nanoseconds as seconds: nine decimals, or the
/// precision given (`{:.6}`), truncated; width and alignment apply.
/// Formatting allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decimals = f.precision().unwrap_or(9).min(9);
        let whole = self.0 / NANOS_PER_SEC;
        let fraction = self.0 % NANOS_PER_SEC / 10_u64.pow(9 - decimals as u32);
        // u64::MAX seconds, a point and nine decimals fit in 32 bytes.
        let mut buffer = [0_u8; 32];
        let mut cursor = std::io::Cursor::new(&mut buffer[..]);
        let written = if decimals == 0 {
            write!(cursor, "{whole}")
        } else {
            write!(cursor, "{whole}.{fraction:0decimals$}")
        };
        written.map_err(|_| fmt::Error)?;
        let len = usize::try_from(cursor.position()).map_err(|_| fmt::Error)?;
        // Only ASCII digits and a point were written.
        let text = std::str::from_utf8(&buffer[..len]).map_err(|_| fmt::Error)?;
        f.pad_integral(true, "", text)
    }
}

/// A count of things with their noun, in the plural unless there is
/// exactly one: `1 flow`, `0 flows`, `12 observations`. The noun's plural
/// is the noun and an `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count<'a>(pub u64, pub &'a str);

impl fmt::Display for Count<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(count, noun) = *self;
        write!(f, "{count} {noun}")?;
        if count == 1 { Ok(()) } else { f.write_str("s") }
    }
}

/// An optional count of lost observations: `12 observations`, `1
/// observation`, or `an unknown number of observations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossCount(pub Option<u64>);

impl fmt::Display for LossCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(count) => Count(count, "observation").fmt(f),
            None => f.write_str("an unknown number of observations"),
        }
    }
}

/// Each octet's decimal digits (without leading zeros) and a dot, in four
/// bytes, and how many digits.
const OCTETS: [([u8; 4], usize); 256] = octet_texts();

const fn octet_texts() -> [([u8; 4], usize); 256] {
    let mut texts = [([0; 4], 0); 256];
    let mut octet = 0;
    while octet < 256 {
        let (hundreds, tens, ones) = (digit(octet / 100), digit(octet / 10), digit(octet));
        texts[octet] = match octet {
            0..10 => ([ones, b'.', 0, 0], 1),
            10..100 => ([tens, ones, b'.', 0], 2),
            _ => ([hundreds, tens, ones, b'.'], 3),
        };
        octet += 1;
    }
    texts
}

/// The last decimal digit of `value`, in ASCII.
const fn digit(value: usize) -> u8 {
    // Below 10: the cast loses nothing.
    b'0' + (value % 10) as u8
}

/// An IP address's text, or a socket address's, as `IpAddr`'s and
/// `SocketAddr`'s Display write them, in a buffer on the stack: for the
/// output's writers, which append it in one copy.
///
/// By hand for IPv4 because the output writes two addresses a line,
/// millions of lines a second: `Display` (or `itoa`, an octet at a time)
/// copied a few bytes at a time. IPv6, rarer, goes through `Display`.
///
/// ```
/// use flow_core::display::AddressText;
/// assert_eq!(AddressText::new("10.0.200.1".parse()?).as_bytes(), b"10.0.200.1");
/// assert_eq!(AddressText::new("2001:db8::1".parse()?).as_bytes(), b"2001:db8::1");
/// assert_eq!(AddressText::socket("10.0.0.1".parse()?, 443).as_bytes(), b"10.0.0.1:443");
/// assert_eq!(AddressText::socket("::1".parse()?, 53).as_bytes(), b"[::1]:53");
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AddressText {
    /// The longest text is a socket address with an IPv6 address:
    /// `[` 39 `]:` 5 bytes (`Ipv6Addr` writes a mapped IPv4 address as
    /// `::ffff:a.b.c.d`, shorter).
    bytes: [u8; 47],
    len: usize,
}

impl AddressText {
    /// The text of `ip`.
    #[must_use]
    #[inline]
    pub fn new(ip: IpAddr) -> Self {
        let mut text = Self::empty();
        match ip {
            IpAddr::V4(ip) => text.push_ipv4(ip),
            IpAddr::V6(ip) => text.write(format_args!("{ip}")),
        }
        text
    }

    /// The text of the socket address `ip`:`port` (`[ip]:port` for IPv6).
    #[must_use]
    #[inline]
    pub fn socket(ip: IpAddr, port: u16) -> Self {
        let mut text = Self::empty();
        match ip {
            IpAddr::V4(ip) => {
                text.push_ipv4(ip);
                text.push(b':');
                text.push_number(port);
            }
            IpAddr::V6(ip) => text.write(format_args!("[{ip}]:{port}")),
        }
        text
    }

    fn empty() -> Self {
        Self {
            bytes: [0; 47],
            len: 0,
        }
    }

    /// Appends formatted text (IPv6).
    fn write(&mut self, text: fmt::Arguments<'_>) {
        let mut rest = &mut self.bytes[self.len..];
        let room = rest.len();
        // The buffer holds the longest text: writing cannot fail.
        let _ = rest.write_fmt(text);
        self.len += room - rest.len();
    }

    /// `a.b.c.d`: each octet's digits and a dot copied from [`OCTETS`],
    /// the last dot left out.
    fn push_ipv4(&mut self, ip: std::net::Ipv4Addr) {
        let mut len = self.len;
        for octet in ip.octets() {
            let (text, digits) = OCTETS[usize::from(octet)];
            self.bytes[len..len + 4].copy_from_slice(&text);
            len += digits + 1;
        }
        self.len = len - 1;
    }

    /// A port's decimal digits.
    fn push_number(&mut self, number: u16) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(number).as_bytes();
        self.bytes[self.len..self.len + digits.len()].copy_from_slice(digits);
        self.len += digits.len();
    }

    /// The text.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends the text to `out`.
    ///
    /// ```
    /// use flow_core::display::AddressText;
    /// let mut out = b"to ".to_vec();
    /// AddressText::socket("10.0.0.1".parse()?, 443).append_to(&mut out);
    /// AddressText::new("2001:db8::1".parse()?).append_to(&mut out);
    /// assert_eq!(out, b"to 10.0.0.1:4432001:db8::1");
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    #[inline]
    pub fn append_to(&self, out: &mut Vec<u8>) {
        // A text of up to 24 bytes (any IPv4 address with its port) is
        // copied as 24 bytes and cut back: a copy of a fixed size is a few
        // moves, a copy of the text's own length a call to memcpy (a third
        // of what writing an address cost).
        match self.bytes.first_chunk::<24>() {
            Some(first) if self.len <= first.len() => {
                let start = out.len();
                out.extend_from_slice(first);
                out.truncate(start + self.len);
            }
            _ => out.extend_from_slice(self.as_bytes()),
        }
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }
}

/// Whether `text` is printable ASCII (a space to `~`): a terminal shows
/// it as it is, a column a byte.
///
/// ```
/// use flow_core::display::is_printable_ascii;
/// assert!(is_printable_ascii("files.pythonhosted.org"));
/// assert!(!is_printable_ascii("\u{1b}[2J"));
/// assert!(!is_printable_ascii("caf\u{e9}"));
/// ```
#[must_use]
pub fn is_printable_ascii(text: &str) -> bool {
    // A word at a time, as the JSON escape test: the text output tests
    // every name it writes.
    !any_word(text.as_bytes(), |word| {
        // Below a space; at or above 0x80; 0x7f, which adding one takes
        // to 0x80 (a carry comes only from a byte 0xff, found already).
        let found = below(word, 0x20) | word | word.wrapping_add(repeated(1));
        found & repeated(0x80) != 0
    })
}

/// Whether `found` is true of a word of `bytes`: eight bytes at a time,
/// the last bytes (however few) as one word, some of them twice (a test
/// of whether any byte is of a kind is the same with a byte seen twice).
pub(crate) fn any_word(bytes: &[u8], found: impl Fn(u64) -> bool) -> bool {
    let (words, rest) = bytes.as_chunks::<8>();
    words.iter().any(|word| found(u64::from_le_bytes(*word)))
        || (!rest.is_empty() && found(last_word(bytes)))
}

/// The last bytes of `bytes` (not empty) as one word: the last eight, or
/// all of a shorter text, some of them twice.
fn last_word(bytes: &[u8]) -> u64 {
    if let Some(last) = bytes.last_chunk::<8>() {
        u64::from_le_bytes(*last)
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        u64::from(u32::from_le_bytes(*first)) | u64::from(u32::from_le_bytes(*last)) << 32
    } else {
        // One to three bytes.
        let [a, b, c] = [0, bytes.len() / 2, bytes.len() - 1].map(|index| bytes[index]);
        u64::from_le_bytes([a, b, c, c, c, c, c, c])
    }
}

/// `byte` in each of a word's eight bytes.
pub(crate) const fn repeated(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The top bit of each byte of `word` below `bound` (at most 0x80) is set
/// in the result, if there is one (the bits above the lowest such byte may
/// be wrong, but not all of them clear): the subtraction borrows into a
/// byte's top bit only from a byte below `bound`, and `!word` drops the
/// bytes whose top bit was set already.
pub(crate) const fn below(word: u64, bound: u8) -> u64 {
    word.wrapping_sub(repeated(bound)) & !word
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seconds_read_back_as_the_same_nanoseconds(ns in any::<u64>()) {
            let text = Seconds(ns).to_string();
            let (whole, fraction) = text.split_once('.').unwrap();
            prop_assert_eq!(fraction.len(), 9);
            let back = whole.parse::<u64>().unwrap() * NANOS_PER_SEC + fraction.parse::<u64>().unwrap();
            prop_assert_eq!(back, ns);
        }

        #[test]
        fn address_text_is_what_display_writes(ip in any::<IpAddr>()) {
            let (text, expected) = (AddressText::new(ip), ip.to_string());
            prop_assert_eq!(text.as_bytes(), expected.as_bytes());
        }
    }

    #[test]
    fn printable_ascii_is_found_at_every_length_and_position() {
        for len in 1..20 {
            for position in 0..len {
                for byte in (0..=0x7f_u8).map(char::from).chain(['\u{e9}', '\u{80}']) {
                    let mut text = "a".repeat(len);
                    text.replace_range(position..=position, &byte.to_string());
                    let printable = (' '..='~').contains(&byte);
                    assert_eq!(
                        is_printable_ascii(&text),
                        printable,
                        "{byte:?} at {position} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn socket_text_is_what_display_writes() {
        for port in [0, 7, 80, 443, 9_999, 10_000, 65_535] {
            for ip in [
                "0.0.0.0",
                "255.255.255.255",
                "::",
                "::ffff:1.2.3.4",
                "fe80::1:2:3:4:5",
            ] {
                let address = std::net::SocketAddr::new(ip.parse().unwrap(), port);
                let (text, expected) =
                    (AddressText::socket(address.ip(), port), address.to_string());
                assert_eq!(text.as_bytes(), expected.as_bytes());
            }
        }
    }

    #[test]
    fn every_octet_is_written_as_display_writes_it() {
        for octet in 0..=255 {
            let ip = IpAddr::from([octet, 0, 255, octet]);
            assert_eq!(AddressText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn precision_truncates_and_width_pads() {
        assert_eq!(format!("{:.3}", Seconds(1_999_999_999)), "1.999");
        assert_eq!(format!("{:.0}", Seconds(1_999_999_999)), "1");
        assert_eq!(
            format!("{:>19}", Seconds(4_020_867_016_112)),
            "     4020.867016112"
        );
        assert_eq!(format!("{:<6}|", Seconds(0)), "0.000000000|");
    }

    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(Count(0, "flow").to_string(), "0 flows");
        assert_eq!(Count(1, "flow").to_string(), "1 flow");
    }
}
