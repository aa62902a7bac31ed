//! Aligned columns of a text line, written straight into a byte buffer.
//!
//! By hand rather than with `write!` and width specifiers: the text output
//! writes millions of lines a second, and the formatting machinery (a
//! virtual call per piece, padding written one `char` at a time, an
//! address formatted twice to measure it) was most of a line's cost in a
//! profile of the merge + text benchmark. The bytes are the same as
//! `format!`'s for the same widths (tested below).

use std::net::IpAddr;

use flow_core::display::{AddressText, is_printable_ascii};

/// A text line being written at the end of a buffer.
pub(crate) struct Line<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Line<'a> {
    /// A line written at the end of `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// Bytes as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// `text` for a terminal ([`push_printable`]), then spaces up to
    /// `width` characters (`{:<width}`).
    pub(crate) fn left(&mut self, text: &str, width: usize) -> &mut Self {
        if is_printable_ascii(text) {
            // Printable ASCII (most names): as it is, a column a byte.
            return self.name(text, width);
        }
        let start = self.out.len();
        push_printable(self.out, text);
        let written = char_count(&self.out[start..]);
        self.spaces(width.saturating_sub(written))
    }

    /// `name`, printable ASCII (one of flowtrack's own: `opened`, `tcp`),
    /// then spaces up to `width` characters.
    pub(crate) fn name(&mut self, name: &str, width: usize) -> &mut Self {
        debug_assert!(is_printable_ascii(name), "{name:?} is not printable ASCII");
        self.out.extend_from_slice(name.as_bytes());
        self.spaces(width.saturating_sub(name.len()))
    }

    /// A number right-aligned in `width` characters (`{:>width}`).
    pub(crate) fn number(&mut self, number: u64, width: usize) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(number);
        self.spaces(width.saturating_sub(digits.len()));
        self.out.extend_from_slice(digits.as_bytes());
        self
    }

    /// Seconds with nine decimals right-aligned in `width` characters, as
    /// `format!("{:>width}", flow_core::display::Seconds(ns))` writes them.
    pub(crate) fn seconds(&mut self, ns: u64, width: usize) -> &mut Self {
        let mut whole = itoa::Buffer::new();
        let whole = whole.format(ns / 1_000_000_000);
        let mut fraction = itoa::Buffer::new();
        // A one, then the nine digits of the fraction with their leading
        // zeros: the one is left out.
        let fraction = &fraction.format(1_000_000_000 + ns % 1_000_000_000)[1..];
        self.spaces(width.saturating_sub(whole.len() + 10));
        self.out.extend_from_slice(whole.as_bytes());
        self.out.push(b'.');
        self.out.extend_from_slice(fraction.as_bytes());
        self
    }

    /// A socket address (`1.2.3.4:5`, `[::1]:5`), left-aligned in `width`
    /// characters, or right-aligned when `right`.
    pub(crate) fn address(
        &mut self,
        ip: IpAddr,
        port: u16,
        width: usize,
        right: bool,
    ) -> &mut Self {
        let text = AddressText::socket(ip, port);
        let pad = width.saturating_sub(text.as_bytes().len());
        if right {
            self.spaces(pad);
        }
        text.append_to(self.out);
        if !right {
            self.spaces(pad);
        }
        self
    }

    /// `count` spaces.
    pub(crate) fn spaces(&mut self, count: usize) -> &mut Self {
        if count <= SPACES.len() {
            // A column's padding: a copy of known length, cut back, rather
            // than a fill of any length (a call to memset).
            let end = self.out.len() + count;
            self.out.extend_from_slice(&SPACES);
            self.out.truncate(end);
        } else {
            self.out.extend(std::iter::repeat_n(b' ', count));
        }
        self
    }

    /// Anything else, formatted (the rarer lines).
    pub(crate) fn display(&mut self, value: impl std::fmt::Display) -> &mut Self {
        // Formatting into a Vec only fails if the value's Display does.
        let _ = std::io::Write::write_fmt(self.out, format_args!("{value}"));
        self
    }
}

/// The most padding [`Line::spaces`] writes in one copy: the widest column.
const SPACES: [u8; 32] = [b' '; 32];

/// Characters in UTF-8 `bytes`.
fn char_count(bytes: &[u8]) -> usize {
    if bytes.is_ascii() {
        bytes.len()
    } else {
        String::from_utf8_lossy(bytes).chars().count()
    }
}

/// Appends `text` for a terminal: control characters (an escape
/// sequence, a newline) written as `\u{1b}`, so that a name read from a
/// file cannot drive the terminal or fake a line.
pub(crate) fn push_printable(out: &mut Vec<u8>, text: &str) {
    if !text.chars().any(char::is_control) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    out.extend_from_slice(escaped.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::display::Seconds;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn line(write: impl FnOnce(&mut Line<'_>)) -> String {
        let mut out = Vec::new();
        write(&mut Line::new(&mut out));
        String::from_utf8(out).unwrap()
    }

    proptest! {
        #[test]
        fn columns_are_what_format_writes(
            text in "[a-z\u{e9}\u{1b}\n.-]{0,30}",
            number in any::<u64>(),
            ns in any::<u64>(),
            address in any::<SocketAddr>(),
            width in 0_usize..30,
        ) {
            let printable = line(|l| { l.left(&text, 0); });
            prop_assert_eq!(line(|l| { l.left(&text, width); }), format!("{printable:<width$}"));
            prop_assert_eq!(line(|l| { l.number(number, width); }), format!("{number:>width$}"));
            prop_assert_eq!(line(|l| { l.seconds(ns, width); }), format!("{:>width$}", Seconds(ns)));
            let address = SocketAddr::new(address.ip(), address.port());
            prop_assert_eq!(
                line(|l| { l.address(address.ip(), address.port(), width, false); }),
                format!("{address:<width$}")
            );
            prop_assert_eq!(
                line(|l| { l.address(address.ip(), address.port(), width, true); }),
                format!("{address:>width$}")
            );
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            line(|l| {
                l.left("a\u{1b}[2Jb\n", 0);
            }),
            "a\\u{1b}[2Jb\\u{a}"
        );
    }
}
