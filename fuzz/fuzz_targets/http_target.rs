//! HTTP request-target normalisation: any target is refused or normalised, and a normalised
//! path normalises to itself (no second decoding could reach another path than the one the
//! policy saw).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgate_policy::http::normalize;

fuzz_target!(|target: &str| {
    let Ok(first) = normalize(target) else {
        return;
    };
    let path = first.path();
    let again = normalize(&path).unwrap_or_else(|err| {
        panic!("{target:?} normalised to {path:?}, which is refused: {err:?}")
    });
    assert_eq!(
        again.path(),
        path,
        "{target:?} is not stable under normalisation"
    );
});
