//! Which names each address was resolved from: the query names of the
//! lookups the scope made, kept for as long as the address is in use.
//!
//! The cache is bounded in addresses and evicts the one least recently
//! used (learnt or looked up): there is no TTL expiry, since applications
//! keep using an address past its TTL, and a flow's name must not vanish
//! while its flows go on. The caller reports evictions as a loss.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use flow_core::dns::{DnsLookup, QueryType, ResponseCode};
//! use flow_names::cache::NameCache;
//!
//! let mut cache = NameCache::new(NonZeroUsize::MIN);
//! let address = "151.101.0.223".parse()?;
//! let lookup = DnsLookup::new("pypi.org", QueryType::A, ResponseCode::NO_ERROR)
//!     .with_answers([address]);
//! assert_eq!(cache.learn(&lookup), 0);
//! assert_eq!(cache.host(&address).as_deref(), Some("pypi.org"));
//! // A second address does not fit: the first is evicted.
//! let other = DnsLookup::new("files.pythonhosted.org", QueryType::A, ResponseCode::NO_ERROR)
//!     .with_answers(["151.101.64.223".parse()?]);
//! assert_eq!(cache.learn(&other), 1);
//! assert_eq!(cache.host(&address), None);
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::collections::hash_map::RandomState;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use flow_core::dns::DnsLookup;
use hashlink::LruCache;

/// The most names kept for one address (a CDN address serves many); the
/// oldest goes when a new one comes.
pub const NAMES_PER_ADDRESS: usize = 8;

/// Addresses and the names that resolved to them, latest first; bounded,
/// least recently used out first. Every operation is O(1).
#[derive(Debug)]
pub struct NameCache {
    /// hashlink's `LruCache` is a hash map threaded on a list in use
    /// order, so a lookup, moving an entry to the most-recent end, and
    /// evicting the least recent are all O(1) (an `IndexMap` keeps an
    /// order too, but moving an entry to its end shifts the others: O(n)).
    /// Hashed with std's randomly keyed SipHash rather than hashbrown's
    /// faster default: the addresses come from answers the workload can
    /// choose. Each entry's names are at most [`NAMES_PER_ADDRESS`], so
    /// updating them is constant work too.
    addresses: LruCache<IpAddr, Vec<Arc<str>>, RandomState>,
}

impl NameCache {
    /// An empty cache that holds at most `capacity` addresses.
    #[must_use]
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            addresses: LruCache::with_hasher(capacity.get(), RandomState::new()),
        }
    }

    /// Notes that `lookup`'s query name resolved to each of its answers
    /// (the name moves to the front of each address's names, and each
    /// address becomes the most recently used); how many other addresses
    /// were evicted to make room.
    pub fn learn(&mut self, lookup: &DnsLookup) -> usize {
        let mut evicted = 0;
        for address in &lookup.answers {
            let address = address.to_canonical();
            if let Some(names) = self.addresses.get_mut(&address) {
                if let Some(known) = names.iter().position(|name| *name == lookup.query) {
                    names.remove(known);
                }
                names.truncate(NAMES_PER_ADDRESS - 1);
                names.insert(0, Arc::clone(&lookup.query));
                continue;
            }
            if self.addresses.len() == self.addresses.capacity() {
                self.addresses.remove_lru();
                evicted += 1;
            }
            self.addresses
                .insert(address, vec![Arc::clone(&lookup.query)]);
        }
        evicted
    }

    /// The latest name that resolved to `address` (an IPv4-mapped address
    /// as its IPv4 address). Looking an address up keeps it: it becomes
    /// the most recently used.
    pub fn host(&mut self, address: &IpAddr) -> Option<Arc<str>> {
        self.addresses
            .get(&address.to_canonical())
            .and_then(|names| names.first().cloned())
    }

    /// Every name kept for `address`, latest first (at most
    /// [`NAMES_PER_ADDRESS`]). Reading them does not count as a use.
    #[must_use]
    pub fn names(&self, address: &IpAddr) -> Vec<Arc<str>> {
        self.addresses
            .peek(&address.to_canonical())
            .cloned()
            .unwrap_or_default()
    }

    /// How many addresses are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether no address is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The most addresses kept.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.addresses.capacity()
    }
}

#[cfg(test)]
mod tests;
