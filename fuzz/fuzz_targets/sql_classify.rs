//! The SQL classifier (PostgreSQL's parser plus the walk over its tree): any string is
//! classified or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|sql: &str| {
    if let Ok(statements) = skillgate_policy::sql::classify(sql) {
        for statement in &statements {
            let _ = format!("{statement:?}");
        }
    }
});
