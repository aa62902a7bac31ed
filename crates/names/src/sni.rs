//! The server name a TLS client asked for: the `server_name` extension
//! (RFC 6066) of the ClientHello a TCP flow's initiator sends first.
//!
//! A hand parser rather than a crate: the capture holds the first bytes of
//! the flow's first payload, often cut short (a ClientHello with a
//! post-quantum key share is near 1.8 KB), and the TLS crates only read
//! whole records. This one reads a cut copy as far as it goes, checks every
//! length against the bytes it has, and allocates only the name.
//!
//! ```
//! use flow_names::sni::{ServerName, server_name};
//! assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), ServerName::NotTls);
//! assert_eq!(server_name(&[0x16, 0x03, 0x01]), ServerName::Cut);
//! ```

use std::sync::Arc;

/// The longest host name (RFC 1035: 253 characters in text form).
pub const MAX_NAME: usize = 253;

/// TLS record content type `handshake`.
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Extension type `server_name`.
const SERVER_NAME: usize = 0;
/// Server name type `host_name`.
const HOST_NAME: usize = 0;

/// What a flow's first payload says about the server name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerName {
    /// The host name the client asked for: 1 to 253 characters of
    /// `[a-z0-9._-]`, lowercased.
    Name(Arc<str>),
    /// A ClientHello without a host name (a client connecting to an
    /// address, or one that does not send it).
    Absent,
    /// Not a TLS ClientHello (plain HTTP, SSH, another protocol).
    NotTls,
    /// A ClientHello whose copy ends (or whose first record ends) before
    /// the server name: the name is unknown.
    Cut,
    /// A ClientHello that breaks its own lengths, or a host name that is
    /// not one.
    Malformed,
}

/// The server name in `client_hello`, the first bytes of what a TCP flow's
/// initiator sent (a prefix of any length). Never panics.
#[must_use]
pub fn server_name(client_hello: &[u8]) -> ServerName {
    // The record header (type, version 3.x, length) and the handshake
    // type: as many of them as the copy holds must match.
    for (at, value) in [(0, HANDSHAKE), (1, 3), (5, CLIENT_HELLO)] {
        match client_hello.get(at) {
            Some(&byte) if byte != value => return ServerName::NotTls,
            None => return ServerName::Cut,
            Some(_) => {}
        }
    }
    let record_length = usize::from(u16::from_be_bytes([client_hello[3], client_hello[4]]));
    let record = Reader {
        bytes: &client_hello[5..client_hello.len().min(5 + record_length)],
        // The hello goes on past this record's bytes when the copy is cut
        // or when it continues in the next record (which is not read).
        cut: true,
    };
    read_hello(record).unwrap_or_else(|verdict| verdict)
}

/// Reads the ClientHello in `record` (from its handshake type) to its
/// server name; `Err` with the verdict when the bytes run out or
/// contradict each other.
fn read_hello(mut record: Reader<'_>) -> Result<ServerName, ServerName> {
    record.take(1)?; // handshake type, checked by the caller
    let hello_length = record.length(3)?;
    let mut hello = record.sub(hello_length)?;
    hello.take(2 + 32)?; // legacy_version, random
    for width in [1, 2, 1] {
        // legacy_session_id, cipher_suites, legacy_compression_methods
        let length = hello.length(width)?;
        hello.take(length)?;
    }
    if hello.bytes.is_empty() && !hello.cut {
        return Ok(ServerName::Absent); // no extensions at all
    }
    let extensions_length = hello.length(2)?;
    let mut extensions = hello.sub(extensions_length)?;
    while !extensions.bytes.is_empty() {
        let kind = extensions.length(2)?;
        let length = extensions.length(2)?;
        let data = extensions.take(length)?;
        if kind == SERVER_NAME {
            return Ok(host_name(data));
        }
    }
    if extensions.cut {
        Err(ServerName::Cut)
    } else {
        Ok(ServerName::Absent)
    }
}

/// The first `host_name` of a whole `server_name` extension's data.
fn host_name(data: &[u8]) -> ServerName {
    let mut list = Reader {
        bytes: data,
        cut: false,
    };
    let mut read = || {
        let list_length = list.length(2)?;
        if list_length != list.bytes.len() {
            return Err(ServerName::Malformed);
        }
        while !list.bytes.is_empty() {
            let name_type = list.length(1)?;
            let length = list.length(2)?;
            let name = list.take(length)?;
            if name_type == HOST_NAME {
                return Ok(validated(name));
            }
        }
        Ok(ServerName::Absent)
    };
    read().unwrap_or_else(|verdict| verdict)
}

/// `name` lowercased, if it is a host name.
fn validated(name: &[u8]) -> ServerName {
    let valid = |byte: &u8| byte.is_ascii_alphanumeric() || b"._-".contains(byte);
    if name.is_empty() || name.len() > MAX_NAME || !name.iter().all(valid) {
        return ServerName::Malformed;
    }
    // Lowercased on the stack: the name is the only allocation.
    let mut lower = [0_u8; MAX_NAME];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower).map_or(ServerName::Malformed, |text| ServerName::Name(text.into()))
}

/// Bytes read front to back. `cut`: the bytes the message declares may go
/// on past these (running out is then a cut, otherwise malformed).
struct Reader<'a> {
    bytes: &'a [u8],
    cut: bool,
}

impl<'a> Reader<'a> {
    /// What running out of bytes means here.
    fn short(&self) -> ServerName {
        if self.cut {
            ServerName::Cut
        } else {
            ServerName::Malformed
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], ServerName> {
        let (taken, rest) = self.bytes.split_at_checked(n).ok_or_else(|| self.short())?;
        self.bytes = rest;
        Ok(taken)
    }

    /// A big-endian number of `width` (1 to 3) bytes.
    fn length(&mut self, width: usize) -> Result<usize, ServerName> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0, |length, &byte| length << 8 | usize::from(byte)))
    }

    /// The next `length` bytes as a reader of their own: all there are,
    /// and a cut reader, when they run short and this reader is cut.
    fn sub(&mut self, length: usize) -> Result<Reader<'a>, ServerName> {
        let available = length.min(self.bytes.len());
        if available < length && !self.cut {
            return Err(ServerName::Malformed);
        }
        let (inner, rest) = self.bytes.split_at(available);
        self.bytes = rest;
        Ok(Reader {
            bytes: inner,
            cut: available < length,
        })
    }
}

#[cfg(test)]
mod tests;
