//! Any bytes as a DNS response (the payload a backend captured from port
//! 53): read as far as they go or refused with a reason, never a panic;
//! what is read is bounded by what the bytes hold.
#![no_main]

use flow_names::dns::{MAX_CHAIN, parse_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = parse_response(data) {
        let lookup = &answer.lookup;
        assert!(lookup.cnames.len() <= MAX_CHAIN);
        // An address takes at least the 4 bytes of an A record's data.
        assert!(lookup.answers.len() * 4 <= data.len());
        assert!(
            lookup
                .answers
                .iter()
                .all(|address| address.to_canonical() == *address)
        );
        assert!(!lookup.query.is_empty());
        assert!(!lookup.query.bytes().any(|byte| byte.is_ascii_uppercase()));
    }
});
