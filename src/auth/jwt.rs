//! The [`Verifier`]: token → [`Claims`] or the [`AuthError`] Supabase would report.
//!
//! The JWT is taken apart here rather than by `jsonwebtoken::decode`, which is used only
//! for the signature (`jsonwebtoken::crypto::verify`). Reasons: `decode` checks `exp`,
//! `aud` and `nbf` itself with its own errors (Supabase tokens carry
//! `aud: "authenticated"`, which `decode` refuses unless told the audience), it cannot
//! parse the alg spelling `Ed25519` that srv accepts, and we need the order and texts of
//! srv's errors: claims/header decoding, then key selection, then signature, then `exp`.

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{crypto, Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::jwks::{ec_alg, KeySet, Kty, B64URL};
use super::{AuthError, Claims};

/// Verifies tokens against the configured secret and JWKS. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// HMAC key from the configured secret; `None` when no (or an empty) secret is set.
    secret: Option<DecodingKey>,
    keys: KeySet,
}

impl std::fmt::Debug for Verifier {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.inner.secret.as_ref().map(|_| "<set>"))
            .field("jwks_keys", &self.inner.keys.len())
            .finish()
    }
}

/// Which key family a header `alg` needs.
enum AlgKind {
    Hmac(Algorithm),
    /// `alg` is `None` for algorithms srv knows but our crypto backend does not
    /// (ES512, Ed448): the matching key is then reported as unusable.
    Jwk {
        kty: Kty,
        alg: Option<Algorithm>,
    },
}

fn alg_kind(alg: &str) -> Option<AlgKind> {
    let jwk = |kty, alg| Some(AlgKind::Jwk { kty, alg });
    match alg {
        "HS256" => Some(AlgKind::Hmac(Algorithm::HS256)),
        "HS384" => Some(AlgKind::Hmac(Algorithm::HS384)),
        "HS512" => Some(AlgKind::Hmac(Algorithm::HS512)),
        "RS256" => jwk(Kty::Rsa, Some(Algorithm::RS256)),
        "RS384" => jwk(Kty::Rsa, Some(Algorithm::RS384)),
        "RS512" => jwk(Kty::Rsa, Some(Algorithm::RS512)),
        "PS256" => jwk(Kty::Rsa, Some(Algorithm::PS256)),
        "PS384" => jwk(Kty::Rsa, Some(Algorithm::PS384)),
        "PS512" => jwk(Kty::Rsa, Some(Algorithm::PS512)),
        "ES256" => jwk(Kty::Ec, Some(Algorithm::ES256)),
        "ES384" => jwk(Kty::Ec, Some(Algorithm::ES384)),
        "ES512" => jwk(Kty::Ec, None),
        // RFC 8037 spells it `EdDSA`; JOSE/Joken (srv) also accept the curve name.
        "EdDSA" | "Ed25519" => jwk(Kty::Okp, Some(Algorithm::EdDSA)),
        "Ed448" => jwk(Kty::Okp, None),
        _ => None,
    }
}

impl Verifier {
    /// `secret`: HS256/384/512 secret (its raw string bytes, as Supabase uses it).
    /// `jwks`: a JWKS JSON document text. Errors if the JWKS text does not parse.
    pub fn new(secret: Option<&str>, jwks: Option<&str>) -> Result<Verifier, String> {
        let secret = secret
            .filter(|s| !s.is_empty())
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let keys = match jwks {
            Some(text) => KeySet::parse(text)?,
            None => KeySet::default(),
        };
        Ok(Verifier {
            inner: Arc::new(Inner { secret, keys }),
        })
    }

    /// Verifies the signature, then `exp` (> now), `iat` (numeric if present), then the
    /// presence of `role` and `exp`. `now` is in unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let token = clean_token(token);
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        // srv peeks at claims and header before anything else: both must be JSON objects.
        let claims = decode_object(payload).ok_or(AuthError::Malformed)?;
        let header = decode_object(header).ok_or(AuthError::Malformed)?;
        let kid = header.get("kid").and_then(Value::as_str);

        let (key, alg) = self.select_key(&header, kid)?;

        // The signed message is the token text up to the last dot, as sent.
        let message = &token[..token.len() - signature.len() - 1];
        let signature = B64URL.decode(signature).map_err(|_| AuthError::Signature)?;
        // `crypto::verify` wants strict unpadded base64url; re-encode what we decoded
        // leniently so a padding difference cannot look like a key problem.
        match crypto::verify(&B64URL.encode(signature), message, key, alg) {
            Ok(true) => check_claims(claims, now),
            Ok(false) => Err(AuthError::Signature),
            Err(_) => Err(AuthError::Signer {
                kid: kid.map(str::to_owned),
            }),
        }
    }

    /// srv `generate_signer/3`: the key and algorithm for this header.
    fn select_key(
        &self,
        header: &Map<String, Value>,
        kid: Option<&str>,
    ) -> Result<(&DecodingKey, Algorithm), AuthError> {
        let signer_error = || AuthError::Signer {
            kid: kid.map(str::to_owned),
        };
        // An alg srv does not know (`none`, a non-string, ...) is a signer error there
        // too: its last `generate_signer` clause, without a kid.
        let kind = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(alg_kind)
            .ok_or(AuthError::Signer { kid: None })?;
        match kind {
            AlgKind::Hmac(alg) => {
                // A JWKS `oct` key with the header's kid wins over the secret. Supabase
                // Auth's HS tokens carry a kid that is usually not in the JWKS (the secret
                // is not published), hence the fallback.
                let jwk = kid.and_then(|kid| self.inner.keys.find(Kty::Oct, kid));
                let key = match jwk {
                    Some(entry) => entry.key.as_ref(),
                    None => self.inner.secret.as_ref(),
                };
                key.map(|key| (key, alg)).ok_or_else(signer_error)
            }
            AlgKind::Jwk { kty, alg } => {
                // srv needs a kid for every asymmetric algorithm.
                let kid = kid.ok_or(AuthError::Signer { kid: None })?;
                let entry = self.inner.keys.find(kty, kid).ok_or_else(signer_error)?;
                let alg = alg.ok_or_else(signer_error)?;
                // An EC key serves only its own curve's algorithm.
                if kty == Kty::Ec && ec_alg(entry.crv.as_deref()) != Some(alg) {
                    return Err(signer_error());
                }
                entry.key.as_ref().map(|key| (key, alg)).ok_or_else(signer_error)
            }
        }
    }
}

/// srv `clean_token/1`: `URI.decode`, then drop whitespace. Bytes, not `str`: a
/// percent-escape may decode to any byte, and base64 decoding rejects non-ASCII later.
fn clean_token(token: &str) -> Vec<u8> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let escaped = match (byte, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex(hi).zip(hex(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        // Elixir's `URI.decode` raises on a bad escape; a lone '%' is kept instead,
        // which then fails base64 decoding: still "not a valid JWT".
        let (decoded, width) = escaped.map_or((byte, 1), |b| (b, 3));
        // `\s` in srv's regex: ASCII space, \t, \n, \v, \f, \r.
        if !matches!(decoded, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            out.push(decoded);
        }
        i += width;
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// A base64url JWT part holding a JSON object.
fn decode_object(part: &[u8]) -> Option<Map<String, Value>> {
    let json = B64URL.decode(part).ok()?;
    serde_json::from_slice(&json).ok()
}

/// A JSON number as whole seconds: decimals rounded half away from zero (Elixir's
/// `round/1`), out-of-range values saturated.
fn seconds(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return Some(i64::MAX);
    }
    // `as` saturates; JSON has no NaN or infinity.
    n.as_f64().map(|f| f.round() as i64)
}

/// The checks after the signature, in srv's order: Joken's `exp`/`iat` validators,
/// then `authorize_conn`'s required `role` and `exp`.
fn check_claims(mut raw: Map<String, Value>, now: i64) -> Result<Claims, AuthError> {
    let exp = match raw.get("exp") {
        Some(value) => Some(seconds(value).ok_or(AuthError::InvalidExp)?),
        None => None,
    };
    if let Some(exp) = exp {
        if exp <= now {
            return Err(AuthError::Expired {
                seconds_ago: now.saturating_sub(exp),
            });
        }
        raw.insert("exp".to_owned(), Value::from(exp));
    }
    match raw.get("iat").map(seconds) {
        // srv fails a non-numeric `iat` with a generic Joken error; the closest of our
        // texts is "not a valid JWT".
        Some(None) => return Err(AuthError::Malformed),
        Some(Some(iat)) => {
            raw.insert("iat".to_owned(), Value::from(iat));
        }
        None => {}
    }
    // srv only checks that the key exists; a `role` that is not a string cannot become
    // a Postgres role either, so it counts as missing.
    let role = raw.get("role").and_then(Value::as_str).map(str::to_owned);
    let (Some(role), Some(exp)) = (role, exp) else {
        return Err(AuthError::MissingClaims);
    };
    let sub = raw.get("sub").and_then(Value::as_str).map(str::to_owned);
    let json = Arc::from(Value::Object(raw).to_string());
    Ok(Claims { role, exp, sub, json })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clean_token_percent_decodes_then_drops_whitespace() {
        assert_eq!(clean_token("a%2Eb%2ec"), b"a.b.c");
        assert_eq!(clean_token(" a.\nb\t.\r\nc \x0b\x0c"), b"a.b.c");
        assert_eq!(clean_token("a%20b%0Ac"), b"abc");
        // Bad or cut escapes stay as they are.
        assert_eq!(clean_token("%zz%4%"), b"%zz%4%");
        assert_eq!(clean_token("%e2%82%ac"), "€".as_bytes());
        assert_eq!(clean_token(""), b"");
    }

    #[test]
    fn seconds_rounds_and_saturates() {
        assert_eq!(seconds(&json!(10)), Some(10));
        assert_eq!(seconds(&json!(-3)), Some(-3));
        assert_eq!(seconds(&json!(10.5)), Some(11));
        assert_eq!(seconds(&json!(10.49)), Some(10));
        assert_eq!(seconds(&json!(u64::MAX)), Some(i64::MAX));
        assert_eq!(seconds(&json!(1e300)), Some(i64::MAX));
        assert_eq!(seconds(&json!(-1e300)), Some(i64::MIN));
        assert_eq!(seconds(&json!("10")), None);
        assert_eq!(seconds(&json!(null)), None);
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test claims are objects"),
        }
    }

    #[test]
    fn claim_checks_follow_srv_order() {
        let now = 1_000;
        let check = |v| check_claims(claims(v), now);
        // exp before role: an expired token without role reports expiry.
        assert_eq!(check(json!({"exp": 400})), Err(AuthError::Expired { seconds_ago: 600 }));
        assert_eq!(
            check(json!({"exp": 1000, "role": "a"})),
            Err(AuthError::Expired { seconds_ago: 0 })
        );
        assert_eq!(
            check(json!({"exp": i64::MIN, "role": "a"})),
            Err(AuthError::Expired { seconds_ago: i64::MAX })
        );
        assert_eq!(check(json!({"exp": "2000", "role": "a"})), Err(AuthError::InvalidExp));
        assert_eq!(check(json!({"exp": null, "role": "a"})), Err(AuthError::InvalidExp));
        assert_eq!(
            check(json!({"exp": 2000, "iat": "x", "role": "a"})),
            Err(AuthError::Malformed)
        );
        assert_eq!(check(json!({"role": "a"})), Err(AuthError::MissingClaims));
        assert_eq!(check(json!({"exp": 2000})), Err(AuthError::MissingClaims));
        assert_eq!(check(json!({"exp": 2000, "role": 5})), Err(AuthError::MissingClaims));
    }

    #[test]
    fn decimal_exp_and_iat_are_rounded_everywhere() {
        let c = check_claims(
            claims(json!({"exp": 1999.6, "iat": 99.5, "role": "anon", "sub": 7})),
            1_000,
        )
        .unwrap();
        assert_eq!(c.exp, 2000);
        assert_eq!(c.sub, None);
        assert_eq!(c.get("exp"), Some(json!(2000)));
        assert_eq!(c.get("iat"), Some(json!(100)));
        assert_eq!(c.get("sub"), Some(json!(7)));
    }
}
