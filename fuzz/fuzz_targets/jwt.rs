//! Tokens and key sets from outside: the agent's pre-signature token inspection
//! (`gate::identity::token` of the agent library), signature checking of whatever passes it,
//! group claims, and JWKS documents turned into keys. Any input is refused or accepted, never a
//! panic. The first byte picks: even, a token; odd, a JWKS.
#![no_main]

use skillgate::gate::identity::token;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use libfuzzer_sys::fuzz_target;

/// A P-256 public key: signatures can be checked, but no input can be signed with it.
const X: &str = "xUOdAvzPltStQB_WkrZqRuAcMUgnHCeuzXINSGRCU3g";
const Y: &str = "LPlN85A1meHDU3yb65UGZobrf9h5fOIWWwpmIsHlEZ4";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 2 == 1 {
        if let Ok(set) = serde_json::from_slice::<JwkSet>(rest) {
            for jwk in &set.keys {
                let _ = DecodingKey::from_jwk(jwk);
            }
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if token::inspect(text).is_err() {
        return;
    }
    let key = DecodingKey::from_ec_components(X, Y).expect("a valid key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_audience(&["skillgate"]);
    if let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(text, &key, &validation) {
        panic!("a token no one could sign was accepted: {:?}", data.claims);
    }
    // Group claims, as read from whatever payload the token carries.
    let payload = text
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    let _ = token::groups(&payload, "realm_access.roles");
});
