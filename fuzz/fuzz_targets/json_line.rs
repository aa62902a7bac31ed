//! Any text as a line of `flowtrack replay` input: parsed or rejected with
//! a message, never a panic; what parses writes back and parses the same.
#![no_main]

use flow_core::record::FlowRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match FlowRecord::from_json_line(line) {
        Ok(record) => {
            let mut written = Vec::new();
            record
                .write_json_line(&mut written)
                .expect("writing to a Vec");
            let text = std::str::from_utf8(&written).expect("JSON is UTF-8");
            assert_eq!(
                FlowRecord::from_json_line(text).expect("our output parses"),
                record
            );
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
