//! Names for flows, read in userspace from what flowtrack's backends
//! capture: the DNS responses that reach the scope ([`dns`], and
//! [`tcp`] for DNS over TCP), the server name of the TLS ClientHello a flow
//! starts with ([`sni`]), and a bounded cache from address to the names
//! that resolved to it ([`cache`]).
//!
//! Everything here reads untrusted bytes: any input gives a value or an
//! error, never a panic, and memory stays bounded whatever the input says.

pub mod cache;
pub mod dns;
pub mod sni;
pub mod tcp;

#[cfg(test)]
mod fuzz_seeds;
#[cfg(test)]
mod testing;
