//! Masking of response bodies and text: any body is masked into valid JSON or refused, any
//! text is masked, never a panic. The first byte picks the strategy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgate_policy::mask::{DETECTORS, mask_json, mask_text};
use skillgate_policy::{Mask, Strategy};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let strategy = match pick % 3 {
        0 => Strategy::Redact,
        1 => Strategy::Partial,
        _ => Strategy::Hash,
    };
    let mask = Mask {
        columns: Vec::new(),
        fields: vec![
            "email".to_owned(),
            "customer.card".to_owned(),
            "*.ssn".to_owned(),
        ],
        detectors: DETECTORS.to_vec(),
        strategy,
        ..Mask::default()
    };
    if let Ok((masked, _)) = mask_json(body, &mask, b"salt") {
        if let Err(err) = serde_json::from_slice::<serde_json::Value>(&masked) {
            panic!(
                "masking produced invalid JSON ({err}): {}",
                String::from_utf8_lossy(&masked)
            );
        }
    }
    let _ = mask_text(&String::from_utf8_lossy(body), &mask, b"salt");
});
