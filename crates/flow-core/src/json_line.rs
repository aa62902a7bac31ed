//! A writer of one flat JSON object into a byte buffer, for the records'
//! hot path.
//!
//! Written by hand because the output path writes millions of lines a
//! second: serde_json's serializer, generic over any value, spent most of
//! a line's time escaping the constant keys and the short ASCII strings
//! and copying a few bytes at a time (a profile of the merge + JSON
//! benchmark: `format_escaped_str` and `memmove` were 37% of it). Here a
//! key and its punctuation are one copy, numbers go through `itoa`, and a
//! string is copied as it is unless it needs escaping, when serde_json
//! escapes it (so the bytes are the same as serde_json's).

use std::net::IpAddr;
use std::sync::Arc;

use crate::display::{AddressText, any_word, below, repeated};

/// Bytes reserved for a line before it is written: more than an event
/// line with a process takes.
const LINE_BYTES: usize = 512;

/// The longest field name [`JsonObject::entry`] takes.
const MAX_KEY: usize = 28;

/// One JSON object being written at the end of a buffer.
pub(crate) struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> JsonObject<'a> {
    /// Opens an object at the end of `out` with its first entry (as
    /// [`JsonObject::entry`] writes it).
    #[inline(always)]
    pub(crate) fn open(
        out: &'a mut Vec<u8>,
        key: &'static str,
        value: &(impl JsonValue + ?Sized),
    ) -> Self {
        // Room for a typical line, so that the pieces are appended without
        // a capacity check failing midway.
        out.reserve(LINE_BYTES);
        let mut object = Self { out };
        object.write_entry(b'{', key, value);
        object
    }

    /// Writes `,"key":value`. `key` must need no escaping (the schema's
    /// field names).
    #[inline(always)]
    pub(crate) fn entry(&mut self, key: &'static str, value: &(impl JsonValue + ?Sized)) {
        self.write_entry(b',', key, value);
    }

    /// `lead` (`{` or `,`), then `"key":` in one copy, then the value.
    /// Inlined, so that each key, a literal, is put together with its
    /// length known: a few stores rather than four appends, each with its
    /// capacity check.
    #[inline(always)]
    fn write_entry(&mut self, lead: u8, key: &'static str, value: &(impl JsonValue + ?Sized)) {
        debug_assert!(!needs_escaping(key), "a field name that needs escaping");
        let key = key.as_bytes();
        let mut text = [0; MAX_KEY + 4];
        text[0] = lead;
        text[1] = b'"';
        text[2..2 + key.len()].copy_from_slice(key);
        text[2 + key.len()..4 + key.len()].copy_from_slice(b"\":");
        self.out.extend_from_slice(&text[..4 + key.len()]);
        value.write_json(self.out);
    }

    /// Continues an object opened in `out` by another [`JsonObject`]: for
    /// entries written on their own (each [`JsonObject::entry`] starts
    /// with its comma).
    pub(crate) fn continuing(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// The buffer the object is written in, for entries written there
    /// by a [`JsonObject::continuing`] it.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Closes the object.
    pub(crate) fn close(self) {
        self.out.push(b'}');
    }
}

/// A value [`JsonObject::entry`] can write.
pub(crate) trait JsonValue {
    /// Appends the value's JSON text to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

macro_rules! integer_values {
    ($($integer:ty),*) => {$(
        impl JsonValue for $integer {
            #[inline]
            fn write_json(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
            }
        }
    )*};
}

integer_values!(u16, u32, u64);

impl JsonValue for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl JsonValue for str {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        if needs_escaping(self) {
            // Rare (a control character, a quote or a backslash in a name
            // read from the network or a file): serde_json's escaping.
            serde_json::to_writer(&mut *out, self).expect("writing to a Vec cannot fail");
        } else {
            out.reserve(self.len() + 2);
            out.push(b'"');
            out.extend_from_slice(self.as_bytes());
            out.push(b'"');
        }
    }
}

/// One of the schema's own names (`"opened"`, `"tcp"`, `"fin"`): written
/// as it is, without looking for characters to escape (it has none).
pub(crate) struct Name(pub(crate) &'static str);

impl JsonValue for Name {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        debug_assert!(!needs_escaping(self.0), "a name that needs escaping");
        out.push(b'"');
        out.extend_from_slice(self.0.as_bytes());
        out.push(b'"');
    }
}

impl JsonValue for Arc<str> {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl JsonValue for IpAddr {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        AddressText::new(*self).append_to(out);
        out.push(b'"');
    }
}

impl<T: JsonValue> JsonValue for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (index, item) in self.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }
}

/// Whether serde_json would escape something in `text`: a control
/// character, a quote or a backslash (anything else, UTF-8 included, is
/// written as it is).
///
/// Eight bytes at a time (no crate offers serde_json's test alone): the
/// byte-by-byte test was the largest part of writing a string.
#[inline]
fn needs_escaping(text: &str) -> bool {
    any_word(text.as_bytes(), word_needs_escaping)
}

/// Whether one of a word's eight bytes is below 0x20, a quote or a
/// backslash (a quote or a backslash is a zero byte of the word xor
/// eight of them).
fn word_needs_escaping(word: u64) -> bool {
    let found =
        below(word, 0x20) | below(word ^ repeated(b'"'), 1) | below(word ^ repeated(b'\\'), 1);
    found & repeated(0x80) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(value: &(impl JsonValue + ?Sized)) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    proptest! {
        #[test]
        fn strings_are_written_as_serde_json_writes_them(text in any::<String>()) {
            prop_assert_eq!(written(text.as_str()), serde_json::to_string(&text).unwrap());
        }

        #[test]
        fn addresses_are_written_as_serde_json_writes_them(ip in any::<IpAddr>()) {
            prop_assert_eq!(written(&ip), serde_json::to_string(&ip).unwrap());
        }

        #[test]
        fn numbers_and_arrays_are_written_as_serde_json_writes_them(
            number in any::<u64>(),
            names in proptest::collection::vec(any::<String>(), 0..4),
        ) {
            prop_assert_eq!(written(&number), number.to_string());
            let names: Vec<Arc<str>> = names.iter().map(|name| Arc::from(name.as_str())).collect();
            prop_assert_eq!(written(names.as_slice()), serde_json::to_string(&names).unwrap());
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_every_position() {
        for len in 1..20 {
            for position in 0..len {
                for byte in (0..=0x7f_u8).map(char::from) {
                    let mut text = "a".repeat(len);
                    text.replace_range(position..=position, &byte.to_string());
                    let escaped = serde_json::to_string(&text).unwrap().len() > text.len() + 2;
                    assert_eq!(
                        needs_escaping(&text),
                        escaped,
                        "{byte:?} at {position} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_object_separates_its_entries() {
        let mut out = Vec::new();
        let mut object = JsonObject::open(&mut out, "a", &1_u16);
        object.entry("b", "x\"y");
        object.entry("c", &true);
        object.close();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":1,"b":"x\"y","c":true}"#
        );
    }
}
