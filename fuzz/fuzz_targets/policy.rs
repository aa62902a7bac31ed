//! Any text as a policy rule (`--allow`, `--deny`) and as a policy file
//! (`--policy`): parsed or refused with a message, never a panic; a rule
//! that parses prints back to itself, and a file that parses compiles (or
//! is refused whole, never a panic).
#![no_main]

use flow_policy::{Action, Mode, Policy, Rule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for action in [Action::Allow, Action::Deny] {
        match Rule::parse(action, text) {
            Ok(rule) => {
                let printed = rule.to_string();
                let again = Rule::parse(action, &printed).expect("a printed rule parses");
                assert_eq!(again, rule);
                assert_eq!(again.to_string(), printed);
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
    match flow_policy::file::parse("fuzz.toml", text) {
        Ok(file) => {
            let _ = Policy::new(file.mode.unwrap_or(Mode::Audit), file.rules);
        }
        Err(error) => assert!(error.to_string().starts_with("fuzz.toml line ")),
    }
});
