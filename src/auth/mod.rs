//! JWT checks for the WebSocket upgrade, `phx_join` and `access_token` refreshes
//! (protocol.md §1.2, §4.2 step 8, §8).
//!
//! Supabase's rules, mirrored here (srv `channels_authorization.ex`, `jwt_verification.ex`):
//! the token is percent-decoded and stripped of whitespace; HS256/384/512 are checked with
//! the configured secret, or with the `k` of a JWKS `oct` key whose `kid` matches the
//! header; RS*/PS*/ES256/ES384/EdDSA are checked with the JWKS key of the header's `kid`.
//! After the signature, `exp` must be a number in the future, `iat` (if present) a
//! number, and `role` and `exp` must both be present.
//!
//! Layout: `jwt` holds the [`Verifier`], `jwks` turns a JWKS document into keys.
//! This module holds the result types and every text a client sees, in one place.
//! No sockets and no clock: callers pass `now`.

mod jwks;
mod jwt;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod verify_tests;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

pub use jwt::Verifier;

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// Claim `role` (required; a string).
    pub role: String,
    /// Claim `exp`, seconds since the epoch (required; decimals rounded).
    pub exp: i64,
    /// Claim `sub` when it is a string.
    pub sub: Option<String>,
    /// Every claim as JSON text (`request.jwt.claims` for RLS), with decimal `exp`/`iat`
    /// rounded as Supabase does. Text, not a map: every channel keeps its claims, and a
    /// parsed map costs several times the memory.
    pub json: Arc<str>,
}

impl Claims {
    /// One claim, parsed from [`Claims::json`] (for rarely read ones, such as a tier).
    pub fn get(&self, name: &str) -> Option<Value> {
        serde_json::from_str::<Map<String, Value>>(&self.json)
            .ok()?
            .remove(name)
    }
}

/// Why a token was refused. Each variant maps to Supabase's exact texts below.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// Not a JWT: empty, not three base64url parts, header or claims not a JSON object.
    Malformed,
    /// The signature does not match.
    Signature,
    /// No key can be built for this token (no secret, unknown `kid`, unusable JWK,
    /// algorithm we do not support).
    Signer { kid: Option<String> },
    /// `exp <= now`; `seconds_ago = now - exp`.
    Expired { seconds_ago: i64 },
    /// `role` or `exp` missing after verification.
    MissingClaims,
    /// `exp` present but not a number.
    InvalidExp,
}

impl AuthError {
    /// Supabase's log/reason code for this error (the prefix of [`AuthError::join_reason`]).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed => "MalformedJWT",
            AuthError::Signature => "JwtSignatureError",
            AuthError::Signer { .. } => "JwtSignerError",
            AuthError::Expired { .. } | AuthError::MissingClaims | AuthError::InvalidExp => "InvalidJWTToken",
        }
    }

    /// Body text of the HTTP 401 reply to a refused WebSocket upgrade / the `{"error": ...}` value.
    pub fn upgrade_message(&self) -> String {
        match self {
            AuthError::Malformed => "The token provided is not a valid JWT".to_owned(),
            AuthError::Signature => "Failed to validate JWT signature".to_owned(),
            AuthError::Signer { kid: None } => {
                "Failed to generate JWT signer, check your JWT secret or JWKS configuration".to_owned()
            }
            // srv formats the kid with Elixir's `inspect/1`: a quoted, escaped string.
            // Rust's `{:?}` on a str quotes and escapes the same characters that matter
            // (`"`, `\`, control characters).
            AuthError::Signer { kid: Some(kid) } => format!(
                "Failed to generate JWT signer for key ID (kid) {kid:?}, check your JWT secret or JWKS configuration"
            ),
            // The upgrade reply does not say how long ago (srv `user_socket.ex#error_response`).
            AuthError::Expired { .. } => "Token has expired".to_owned(),
            AuthError::MissingClaims => "Fields `role` and `exp` are required in JWT".to_owned(),
            AuthError::InvalidExp => "Token expiration time is invalid".to_owned(),
        }
    }

    /// `phx_reply` error reason for a refused join, `"<Code>: <message>"`.
    pub fn join_reason(&self) -> String {
        format!("{}: {}", self.code(), self.system_message())
    }

    /// Message of the `system` error pushed when an `access_token` refresh fails (no code prefix).
    pub fn system_message(&self) -> String {
        match self {
            AuthError::Expired { seconds_ago } => {
                format!("Token has expired {seconds_ago} seconds ago")
            }
            other => other.upgrade_message(),
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.join_reason())
    }
}

impl std::error::Error for AuthError {}

/// If `value` starts with '{' (after trimming) it is the JWKS document itself, else it is
/// a file path to read. The document is checked later, by [`Verifier::new`].
pub fn load_jwks(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.starts_with('{') {
        return Ok(value.to_owned());
    }
    if value.is_empty() {
        return Err("empty JWKS value: give a JWKS JSON document or a file path".to_owned());
    }
    std::fs::read_to_string(value).map_err(|e| format!("cannot read JWKS file {value:?}: {e}"))
}

/// Development mode: a random 48-character secret made of URL-safe characters.
pub fn random_secret() -> String {
    // 36 bytes from the thread CSPRNG (ChaCha, seeded by the OS) → 48 base64url chars,
    // 288 bits: far above the 256 bits HS256 can use.
    let bytes: [u8; 36] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Sign HS256 claims with the secret (dev mode prints ready-made anon/service_role
/// tokens with it; tests use it too). The header is `{"alg":"HS256","typ":"JWT"}`.
pub fn sign_hs256(secret: &str, claims: &Value) -> Result<String, String> {
    if secret.is_empty() {
        // The verifier treats an empty secret as "not configured", so such a token
        // could never be accepted.
        return Err("cannot sign with an empty secret".to_owned());
    }
    if !claims.is_object() {
        return Err("JWT claims must be a JSON object".to_owned());
    }
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    sign_parts(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
}

/// `base64url(header) "." base64url(claims) "." base64url(signature)`.
fn sign_parts(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> Result<String, String> {
    let encode = |v: &Value| {
        serde_json::to_vec(v)
            .map(|json| URL_SAFE_NO_PAD.encode(json))
            .map_err(|e| format!("cannot encode JWT part: {e}"))
    };
    let message = format!("{}.{}", encode(header)?, encode(claims)?);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).map_err(|e| format!("cannot sign JWT: {e}"))?;
    Ok(format!("{message}.{signature}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::fixtures::{user_claims, JWKS, NOW, SECRET};
    use super::*;
    use serde_json::json;

    #[test]
    fn random_secret_is_long_url_safe_and_random() {
        let a = random_secret();
        assert!(a.len() >= 40, "{a}");
        assert!(
            a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{a}"
        );
        assert_ne!(a, random_secret());
        let token = sign_hs256(&a, &user_claims()).unwrap();
        assert!(Verifier::new(Some(&a), None).unwrap().verify(&token, NOW).is_ok());
    }

    #[test]
    fn sign_hs256_refuses_what_could_never_verify() {
        assert!(sign_hs256("", &user_claims()).is_err());
        assert!(sign_hs256(SECRET, &json!([1, 2])).is_err());
        let token = sign_hs256(SECRET, &user_claims()).unwrap();
        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&header).unwrap(),
            json!({"alg": "HS256", "typ": "JWT"})
        );
    }

    #[test]
    fn load_jwks_takes_a_document_or_a_path() {
        assert_eq!(load_jwks("  {\"keys\": []}\n").unwrap(), "{\"keys\": []}");
        let path = std::env::temp_dir().join(format!("realtime-jwks-test-{}.json", std::process::id()));
        std::fs::write(&path, JWKS).unwrap();
        let loaded = load_jwks(&format!("{}\n", path.display())).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded, JWKS);
        assert!(Verifier::new(None, Some(&loaded)).is_ok());
        let missing = load_jwks("/nonexistent/jwks.json").unwrap_err();
        assert!(missing.contains("/nonexistent/jwks.json"), "{missing}");
        assert!(load_jwks("  ").is_err());
    }

    #[test]
    fn error_codes_and_display() {
        assert_eq!(AuthError::Malformed.code(), "MalformedJWT");
        assert_eq!(
            AuthError::InvalidExp.to_string(),
            "InvalidJWTToken: Token expiration time is invalid"
        );
    }
}
