//! Any bytes as the first payload a TCP flow's initiator sent: a server
//! name, or a verdict, never a panic; a name is always a valid host name.
#![no_main]

use flow_names::sni::{MAX_NAME, ServerName, server_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let ServerName::Name(name) = server_name(data) {
        assert!((1..=MAX_NAME).contains(&name.len()));
        assert!(name.bytes().all(|byte| byte.is_ascii_lowercase()
            || byte.is_ascii_digit()
            || b"._-".contains(&byte)));
    }
});
