//! The policy file parser and validator: any text is a policy or an error that points into
//! it, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(err) = skillgate_policy::Policy::parse("fuzz.toml", text) {
        let _ = err.to_string();
    }
});
