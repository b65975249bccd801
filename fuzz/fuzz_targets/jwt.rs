//! The JWT verification path (`realtime::auth::Verifier::verify`): a fixed HS256 secret
//! plus a JWKS with RSA, EC (P-256, P-384), Ed25519 and `oct` keys (the same keys as
//! `src/auth/fixtures.rs`, whose `PY_*` tokens seed the corpus).
//!
//! The first input byte picks how the rest is read:
//! * `0`: the token text itself (percent-escapes, whitespace, dots, base64 and all);
//! * `1`: `[h] header_json[h] claims_json`, signed here with the HS256 secret, so the
//!   claim checks after the signature see arbitrary JSON: a token whose header selects the
//!   secret must never fail on its signature, and an accepted token has a string `role`
//!   and an `exp` in the future;
//! * `2`: `[h] header_json[h] [c] claims_json[c] signature`, all base64url-encoded here:
//!   arbitrary headers (alg, kid) and signature bytes reach key selection and every
//!   verification algorithm. Such a token must never be accepted.
//!
//! Every accepted token satisfies the claim rules; no input panics.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use realtime::auth::{AuthError, Claims, Verifier};
use serde_json::{Map, Value};
use std::sync::OnceLock;

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const NOW: i64 = 1_750_000_000;
const JWKS: &str = include_str!("jwks.json");

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::new(Some(SECRET), Some(JWKS)).expect("fixture JWKS parses"))
}

fn check_accepted(claims: &Claims) {
    assert!(claims.exp > NOW, "accepted an expired token: {claims:?}");
    assert_eq!(
        claims.get("role").as_ref().and_then(Value::as_str),
        Some(claims.role.as_str())
    );
    assert_eq!(claims.get("exp").as_ref().and_then(Value::as_i64), Some(claims.exp));
}

fn check_result(result: &Result<Claims, AuthError>) {
    match result {
        Ok(claims) => check_accepted(claims),
        Err(e) => {
            // Every error has its Supabase texts.
            assert!(!e.upgrade_message().is_empty());
            assert!(e.join_reason().starts_with(e.code()));
            let _ = e.system_message();
        }
    }
}

/// Splits `[n] bytes[n] rest`.
fn take(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n);
    (rest.len() >= n).then(|| rest.split_at(n))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(data);
            let result = verifier().verify(&token, NOW);
            check_result(&result);
        }
        1 => {
            let Some((header, claims)) = take(data) else { return };
            let message = format!("{}.{}", b64(header), b64(claims));
            let Ok(signature) = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            ) else {
                return;
            };
            let result = verifier().verify(&format!("{message}.{signature}"), NOW);
            check_result(&result);
            let header: Option<Map<String, Value>> = serde_json::from_slice(header).ok();
            let claims: Option<Map<String, Value>> = serde_json::from_slice(claims).ok();
            if let (Some(header), Some(_)) = (header, claims) {
                let uses_secret = header.get("alg") == Some(&Value::from("HS256"))
                    && header.get("kid").and_then(Value::as_str) != Some("oct-1");
                if uses_secret {
                    assert!(
                        !matches!(result, Err(AuthError::Signature | AuthError::Signer { .. })),
                        "a token signed with the secret was refused: {result:?}"
                    );
                }
            }
        }
        _ => {
            let Some((header, rest)) = take(data) else { return };
            let Some((claims, signature)) = take(rest) else { return };
            let token = format!("{}.{}.{}", b64(header), b64(claims), b64(signature));
            let result = verifier().verify(&token, NOW);
            check_result(&result);
            assert!(result.is_err(), "accepted a token with a made-up signature: {token}");
        }
    }
});
