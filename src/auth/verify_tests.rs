//! End-to-end checks of [`Verifier`] with real keys and real signatures. They also prove
//! that jsonwebtoken's `rust_crypto` backend is compiled in: without a backend it panics
//! at the first signature.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::fixtures::*;
use super::*;

#[test]
fn hs256_valid_token() {
    let token = sign_hs256(SECRET, &user_claims()).unwrap();
    let claims = hs_verifier().verify(&token, NOW).unwrap();
    assert_eq!(claims.role, "authenticated");
    assert_eq!(claims.exp, NOW + 3600);
    assert_eq!(claims.sub.as_deref(), Some("user-1"));
    assert_eq!(serde_json::from_str::<Value>(&claims.json).unwrap(), user_claims());
}

#[test]
fn hs384_and_hs512_use_the_secret_too() {
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let header = json!({"alg": format!("{alg:?}"), "typ": "JWT"});
        let token = sign(header, user_claims(), &EncodingKey::from_secret(SECRET.as_bytes()), alg);
        assert!(hs_verifier().verify(&token, NOW).is_ok(), "{alg:?}");
    }
}

#[test]
fn tokens_from_an_independent_signer_verify() {
    let v = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
    for token in [PY_HS256, PY_RS256, PY_PS256, PY_ES256, PY_EDDSA] {
        let claims = v.verify(token, NOW).unwrap();
        assert_eq!(claims.exp, PY_EXP);
        assert_eq!(claims.sub.as_deref(), Some("python-user"));
        assert_eq!(claims.get("aud"), Some(json!("authenticated")));
    }
}

#[test]
fn wrong_secret_is_a_signature_error() {
    let token = sign_hs256("some-other-secret", &user_claims()).unwrap();
    let e = hs_verifier().verify(&token, NOW).unwrap_err();
    assert_eq!(e, AuthError::Signature);
    let text = "Failed to validate JWT signature";
    assert_texts(&e, text, &format!("JwtSignatureError: {text}"), text);
}

#[test]
fn tampered_claims_are_a_signature_error() {
    let parts: Vec<&str> = PY_ES256.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(br#"{"role":"service_role","exp":4102444800}"#);
    let token = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(jwks_verifier().verify(&token, NOW), Err(AuthError::Signature));
    // A signature that is not base64url at all fails the same way.
    let token = format!("{}.{}.***", parts[0], parts[1]);
    assert_eq!(jwks_verifier().verify(&token, NOW), Err(AuthError::Signature));
}

#[test]
fn expired_token_reports_how_long_ago() {
    let claims = json!({"role": "anon", "exp": NOW - 42});
    let token = sign_hs256(SECRET, &claims).unwrap();
    let e = hs_verifier().verify(&token, NOW).unwrap_err();
    assert_eq!(e, AuthError::Expired { seconds_ago: 42 });
    assert_texts(
        &e,
        "Token has expired",
        "InvalidJWTToken: Token has expired 42 seconds ago",
        "Token has expired 42 seconds ago",
    );
    // exp == now is already expired, and a decimal exp is rounded first.
    let token = sign_hs256(SECRET, &json!({"role": "anon", "exp": NOW})).unwrap();
    assert_eq!(
        hs_verifier().verify(&token, NOW),
        Err(AuthError::Expired { seconds_ago: 0 })
    );
    let token = sign_hs256(SECRET, &json!({"role": "anon", "exp": NOW as f64 - 9.6})).unwrap();
    assert_eq!(
        hs_verifier().verify(&token, NOW),
        Err(AuthError::Expired { seconds_ago: 10 })
    );
}

#[test]
fn missing_role_or_exp_is_missing_claims() {
    for claims in [json!({"exp": NOW + 60}), json!({"role": "anon"}), json!({})] {
        let token = sign_hs256(SECRET, &claims).unwrap();
        let e = hs_verifier().verify(&token, NOW).unwrap_err();
        assert_eq!(e, AuthError::MissingClaims, "{claims}");
        let text = "Fields `role` and `exp` are required in JWT";
        assert_texts(&e, text, &format!("InvalidJWTToken: {text}"), text);
    }
}

#[test]
fn non_numeric_exp_is_invalid_exp() {
    let token = sign_hs256(SECRET, &json!({"role": "anon", "exp": "tomorrow"})).unwrap();
    let e = hs_verifier().verify(&token, NOW).unwrap_err();
    assert_eq!(e, AuthError::InvalidExp);
    let text = "Token expiration time is invalid";
    assert_texts(&e, text, &format!("InvalidJWTToken: {text}"), text);
}

#[test]
fn garbage_and_empty_tokens_are_malformed() {
    let v = hs_verifier();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
    let body = URL_SAFE_NO_PAD.encode(br#"{"role":"anon"}"#);
    for token in [
        String::new(),
        " \n\t ".to_owned(),
        "garbage".to_owned(),
        "a.b".to_owned(),
        "..".to_owned(),
        "a.b.c".to_owned(),
        "a.b.c.d.e".to_owned(),
        "sb_publishable_abc123".to_owned(),
        format!("{header}.{body}"),
        format!("{header}.{body}.sig.extra"),
        format!("{header}.!!!.sig"),
        format!("{}.{body}.sig", URL_SAFE_NO_PAD.encode(b"[1,2]")),
        format!("{header}.{}.sig", URL_SAFE_NO_PAD.encode(b"\"a string\"")),
        format!("{header}.{}.sig", URL_SAFE_NO_PAD.encode(b"{\"role\":")),
    ] {
        let e = v.verify(&token, NOW).unwrap_err();
        assert_eq!(e, AuthError::Malformed, "{token:?}");
        let text = "The token provided is not a valid JWT";
        assert_texts(&e, text, &format!("MalformedJWT: {text}"), text);
    }
}

#[test]
fn percent_encoded_and_whitespace_tokens_are_cleaned() {
    let token = sign_hs256(SECRET, &user_claims()).unwrap();
    let v = hs_verifier();
    let encoded = token.replace('.', "%2E");
    assert!(v.verify(&encoded, NOW).is_ok());
    let spaced = format!(" \n{}\r\n\t{}%20 ", &token[..10], &token[10..]);
    assert!(v.verify(&spaced, NOW).is_ok());
    // Padded parts are accepted too.
    let padded: Vec<String> = token
        .split('.')
        .map(|p| format!("{p}{}", "=".repeat((4 - p.len() % 4) % 4)))
        .collect();
    assert!(v.verify(&padded.join("."), NOW).is_ok());
}

#[test]
fn jwks_keys_sign_and_verify_by_kid() {
    let v = jwks_verifier();
    let rsa = EncodingKey::from_rsa_der(&der(RSA_PKCS1_PEM));
    let p256 = EncodingKey::from_ec_der(&der(EC_P256_PKCS8_PEM));
    let p384 = EncodingKey::from_ec_der(&der(EC_P384_PKCS8_PEM));
    let ed = EncodingKey::from_ed_der(&der(ED25519_PKCS8_PEM));
    let cases = [
        ("RS256", "rsa-1", &rsa, Algorithm::RS256),
        ("RS384", "rsa-1", &rsa, Algorithm::RS384),
        ("RS512", "rsa-1", &rsa, Algorithm::RS512),
        ("PS512", "rsa-1", &rsa, Algorithm::PS512),
        ("ES256", "ec-1", &p256, Algorithm::ES256),
        ("ES384", "ec384-1", &p384, Algorithm::ES384),
        ("EdDSA", "ed-1", &ed, Algorithm::EdDSA),
        // srv (Joken) also names the algorithm after the curve.
        ("Ed25519", "ed-1", &ed, Algorithm::EdDSA),
    ];
    for (name, kid, key, alg) in cases {
        let token = sign(json!({"alg": name, "kid": kid}), user_claims(), key, alg);
        assert_eq!(
            v.verify(&token, NOW).map(|c| c.role),
            Ok("authenticated".into()),
            "{name}"
        );
    }
}

#[test]
fn unknown_kid_is_a_signer_error_naming_it() {
    let v = jwks_verifier();
    let p256 = EncodingKey::from_ec_der(&der(EC_P256_PKCS8_PEM));
    let token = sign(
        json!({"alg": "ES256", "kid": "rotated-away"}),
        user_claims(),
        &p256,
        Algorithm::ES256,
    );
    let e = v.verify(&token, NOW).unwrap_err();
    assert_eq!(
        e,
        AuthError::Signer {
            kid: Some("rotated-away".into())
        }
    );
    let text =
        "Failed to generate JWT signer for key ID (kid) \"rotated-away\", check your JWT secret or JWKS configuration";
    assert_texts(&e, text, &format!("JwtSignerError: {text}"), text);
    // The kid is quoted and escaped like Elixir's inspect/1 does.
    let e = AuthError::Signer {
        kid: Some(r#"a"b\c"#.into()),
    };
    assert!(e.upgrade_message().contains(r#"(kid) "a\"b\\c", check"#));
}

#[test]
fn kid_must_name_a_key_of_the_right_type_and_curve() {
    let v = jwks_verifier();
    let p256 = EncodingKey::from_ec_der(&der(EC_P256_PKCS8_PEM));
    let signer = |kid: &str| Err(AuthError::Signer { kid: Some(kid.into()) });
    // ES256 naming the RSA key's kid: no EC key has it.
    let token = sign(
        json!({"alg": "ES256", "kid": "rsa-1"}),
        user_claims(),
        &p256,
        Algorithm::ES256,
    );
    assert_eq!(v.verify(&token, NOW), signer("rsa-1"));
    // ES384 header naming the P-256 key.
    let header = json!({"alg": "ES384", "kid": "ec-1"});
    let token = sign(
        header,
        user_claims(),
        &EncodingKey::from_ec_der(&der(EC_P384_PKCS8_PEM)),
        Algorithm::ES384,
    );
    assert_eq!(v.verify(&token, NOW), signer("ec-1"));
    // Algorithms srv knows but we cannot verify name the key too.
    let body = URL_SAFE_NO_PAD.encode(user_claims().to_string());
    for (alg, kid) in [("ES512", "ec-1"), ("Ed448", "ed-1")] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string());
        assert_eq!(v.verify(&format!("{header}.{body}.AAAA"), NOW), signer(kid));
    }
}

#[test]
fn asymmetric_token_without_kid_or_unknown_alg_is_a_signer_error_without_kid() {
    let v = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
    let rsa = EncodingKey::from_rsa_der(&der(RSA_PKCS1_PEM));
    let token = sign(json!({"alg": "RS256"}), user_claims(), &rsa, Algorithm::RS256);
    let e = v.verify(&token, NOW).unwrap_err();
    assert_eq!(e, AuthError::Signer { kid: None });
    let text = "Failed to generate JWT signer, check your JWT secret or JWKS configuration";
    assert_texts(&e, text, &format!("JwtSignerError: {text}"), text);
    let body = URL_SAFE_NO_PAD.encode(user_claims().to_string());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": 256, "kid": "ec-1"}),
        json!({"typ": "JWT"}),
    ] {
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        assert_eq!(
            v.verify(&format!("{header}.{body}."), NOW),
            Err(AuthError::Signer { kid: None })
        );
    }
}

#[test]
fn hs_token_without_a_secret_is_a_signer_error() {
    let v = jwks_verifier();
    let token = sign_hs256(SECRET, &user_claims()).unwrap();
    assert_eq!(v.verify(&token, NOW), Err(AuthError::Signer { kid: None }));
    // An empty secret counts as none: it would let anyone forge tokens.
    let v = Verifier::new(Some(""), None).unwrap();
    assert_eq!(v.verify(&token, NOW), Err(AuthError::Signer { kid: None }));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(
        json!({"alg": "HS256", "kid": "auth-kid"}),
        user_claims(),
        &key,
        Algorithm::HS256,
    );
    assert_eq!(
        jwks_verifier().verify(&token, NOW),
        Err(AuthError::Signer {
            kid: Some("auth-kid".into())
        })
    );
}

#[test]
fn oct_key_with_the_kid_replaces_the_secret() {
    let v = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
    let oct = EncodingKey::from_secret(b"oct-secret-for-kid");
    let by_kid = sign(
        json!({"alg": "HS256", "kid": "oct-1"}),
        user_claims(),
        &oct,
        Algorithm::HS256,
    );
    assert!(v.verify(&by_kid, NOW).is_ok());
    // With that kid the secret is not tried.
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(
        json!({"alg": "HS256", "kid": "oct-1"}),
        user_claims(),
        &secret,
        Algorithm::HS256,
    );
    assert_eq!(v.verify(&token, NOW), Err(AuthError::Signature));
    // A kid with no oct key (Supabase Auth's usual HS token) falls back to the secret.
    let token = sign(
        json!({"alg": "HS512", "kid": "auth-kid"}),
        user_claims(),
        &secret,
        Algorithm::HS512,
    );
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn hs_token_naming_an_rsa_kid_does_not_use_the_public_key() {
    // Algorithm confusion: an attacker HMAC-signs with the published RSA key's bytes.
    let v = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
    for secret in [JWKS.as_bytes(), b"AQAB"] {
        let key = EncodingKey::from_secret(secret);
        let token = sign(
            json!({"alg": "HS256", "kid": "rsa-1"}),
            user_claims(),
            &key,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&token, NOW), Err(AuthError::Signature));
    }
}

#[test]
fn verifier_new_rejects_unparseable_jwks_and_hides_secrets() {
    assert!(Verifier::new(None, Some("{not json")).is_err());
    assert!(Verifier::new(None, Some(r#"{"no_keys": []}"#)).is_err());
    let v = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
    let debug = format!("{v:?}");
    assert!(!debug.contains(SECRET) && debug.contains("jwks_keys: 5"), "{debug}");
}

#[test]
fn never_panics_on_random_input() {
    let v = Verifier::new(Some(SECRET), Some(JWKS)).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let valid = sign_hs256(SECRET, &user_claims()).unwrap();
    let alphabet = b"abcXYZ019-_.=%+/ \n{}\"";
    for round in 0..3000 {
        let len = rng.random_range(0..200);
        let token: Vec<u8> = match round % 3 {
            0 => (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect(),
            1 => (0..len).map(|_| rng.random()).collect(),
            _ => {
                // Flip a few characters of a valid token.
                let mut t = valid.clone().into_bytes();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..t.len());
                    t[i] = alphabet[rng.random_range(0..alphabet.len())];
                }
                t
            }
        };
        let _ = v.verify(&String::from_utf8_lossy(&token), NOW);
    }
    // Headers that name every key with garbage signatures.
    let body = URL_SAFE_NO_PAD.encode(user_claims().to_string());
    for alg in ["HS256", "RS256", "PS384", "ES256", "ES384", "EdDSA", "Ed25519"] {
        for kid in ["rsa-1", "ec-1", "ec384-1", "ed-1", "oct-1"] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string());
            for sig in ["", "AA", "A", &"A".repeat(700)] {
                let _ = v.verify(&format!("{header}.{body}.{sig}"), NOW);
            }
        }
    }
    // Huge and deeply nested inputs.
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(1 << 20),
        "b".repeat(1 << 20),
        "c".repeat(1 << 20)
    );
    assert_eq!(v.verify(&huge, NOW), Err(AuthError::Malformed));
    let nested = URL_SAFE_NO_PAD.encode("[".repeat(100_000));
    assert_eq!(
        v.verify(&format!("{nested}.{nested}.x"), NOW),
        Err(AuthError::Malformed)
    );
    assert_eq!(v.verify(&"%".repeat(1000), NOW), Err(AuthError::Malformed));
    assert_eq!(v.verify("..%2E", NOW), Err(AuthError::Malformed));
}
