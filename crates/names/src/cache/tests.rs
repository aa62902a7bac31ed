use flow_core::dns::{QueryType, ResponseCode};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn lookup(query: &str, answers: &[&str]) -> DnsLookup {
    DnsLookup::new(query, QueryType::A, ResponseCode::NO_ERROR)
        .with_answers(answers.iter().map(|answer| ip(answer)))
}

fn cache(capacity: usize) -> NameCache {
    NameCache::new(NonZeroUsize::new(capacity).expect("not zero"))
}

fn names(cache: &NameCache, address: &str) -> Vec<String> {
    cache
        .names(&ip(address))
        .iter()
        .map(|name| name.to_string())
        .collect()
}

#[test]
fn the_least_recently_used_address_goes_first() {
    let mut cache = cache(2);
    assert_eq!(cache.learn(&lookup("a.test", &["10.0.0.1"])), 0);
    assert_eq!(cache.learn(&lookup("b.test", &["10.0.0.2"])), 0);
    // Looking 10.0.0.1 up keeps it: 10.0.0.2 is now the least recent.
    assert_eq!(cache.host(&ip("10.0.0.1")).as_deref(), Some("a.test"));
    assert_eq!(cache.learn(&lookup("c.test", &["10.0.0.3"])), 1);
    assert_eq!(cache.host(&ip("10.0.0.2")), None);
    assert_eq!(cache.host(&ip("10.0.0.1")).as_deref(), Some("a.test"));
    assert_eq!(cache.host(&ip("10.0.0.3")).as_deref(), Some("c.test"));
    assert_eq!(cache.len(), 2);
}

#[test]
fn learning_an_address_again_keeps_it() {
    let mut cache = cache(2);
    cache.learn(&lookup("a.test", &["10.0.0.1"]));
    cache.learn(&lookup("b.test", &["10.0.0.2"]));
    cache.learn(&lookup("a.test", &["10.0.0.1"]));
    assert_eq!(cache.learn(&lookup("c.test", &["10.0.0.3"])), 1);
    assert_eq!(names(&cache, "10.0.0.1"), ["a.test"]);
    assert!(names(&cache, "10.0.0.2").is_empty());
}

#[test]
fn reading_names_is_not_a_use() {
    let mut cache = cache(1);
    cache.learn(&lookup("a.test", &["10.0.0.1"]));
    assert_eq!(names(&cache, "10.0.0.1"), ["a.test"]);
    cache.learn(&lookup("b.test", &["10.0.0.2"]));
    assert!(names(&cache, "10.0.0.1").is_empty());
}

#[test]
fn capacity_counts_addresses_and_evictions_are_reported() {
    let mut cache = cache(3);
    assert_eq!(cache.capacity(), 3);
    assert_eq!(
        cache.learn(&lookup(
            "many.test",
            &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        )),
        2
    );
    assert_eq!(cache.len(), 3);
    // The latest answers stay.
    assert_eq!(cache.host(&ip("10.0.0.5")).as_deref(), Some("many.test"));
    assert_eq!(cache.host(&ip("10.0.0.1")), None);
    // A failed lookup has no addresses: nothing changes.
    let failed = DnsLookup::new("nope.test", QueryType::A, ResponseCode::NAME_ERROR);
    assert_eq!(cache.learn(&failed), 0);
    assert_eq!(cache.len(), 3);
}

#[test]
fn several_names_for_one_address_are_kept_latest_first() {
    let mut cache = cache(4);
    for name in ["a.test", "b.test", "c.test"] {
        cache.learn(&lookup(name, &["192.0.2.1"]));
    }
    assert_eq!(names(&cache, "192.0.2.1"), ["c.test", "b.test", "a.test"]);
    // The same name learnt again moves to the front, once.
    cache.learn(&lookup("a.test", &["192.0.2.1"]));
    assert_eq!(names(&cache, "192.0.2.1"), ["a.test", "c.test", "b.test"]);
    assert_eq!(cache.host(&ip("192.0.2.1")).as_deref(), Some("a.test"));
    assert_eq!(cache.len(), 1);
}

#[test]
fn at_most_eight_names_per_address() {
    let mut cache = cache(1);
    for n in 0..12 {
        cache.learn(&lookup(&format!("n{n}.test"), &["192.0.2.1"]));
    }
    let kept = names(&cache, "192.0.2.1");
    assert_eq!(kept.len(), NAMES_PER_ADDRESS);
    assert_eq!(kept.first().map(String::as_str), Some("n11.test"));
    assert_eq!(kept.last().map(String::as_str), Some("n4.test"));
}

#[test]
fn mapped_addresses_are_their_ipv4_address() {
    let mut cache = cache(4);
    cache.learn(&lookup("v4.test", &["192.0.2.7"]));
    assert_eq!(
        cache.host(&ip("::ffff:192.0.2.7")).as_deref(),
        Some("v4.test")
    );
    // An answer given as mapped (public fields allow it) is kept as IPv4.
    let mut mapped = lookup("m.test", &[]);
    mapped.answers = vec![ip("::ffff:192.0.2.8")];
    cache.learn(&mapped);
    assert_eq!(cache.host(&ip("192.0.2.8")).as_deref(), Some("m.test"));
    assert_eq!(names(&cache, "::ffff:192.0.2.8"), ["m.test"]);
    // NAT64 addresses are IPv6 destinations of their own.
    assert_eq!(cache.host(&ip("64:ff9b::c000:207")), None);
}
