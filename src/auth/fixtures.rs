//! Test keys and tokens, generated once with `openssl genrsa -traditional 2048` /
//! `openssl genpkey` (P-256, P-384, Ed25519). The `PY_*` tokens were signed by Python's
//! `cryptography` package, not by jsonwebtoken, so verification is checked against an
//! independent signer. They expire in 2100 (`exp` 4102444800).
//! Also the helpers the tests share.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::{sign_parts, AuthError, Verifier};

/// RSA 2048, PKCS#1 (what `EncodingKey::from_rsa_der` takes). JWKS kid `rsa-1`.
pub(super) const RSA_PKCS1_PEM: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAvI9EJgs/CPEGS4KFzd+Jq9jfu+8AAkaKQeckReIj2XSdc7QU\n\
ykSeGjh0n8GnVq7uO+QLaEWBhIthch5MBHjIJvKqZMsW+Rn3Rs0CGTXbOYsmG67H\n\
igyZut7DUP1vL/sGnu0/Zvem0lQ038emvVll9Cv2d+U92RNFCy2TzBg119f+U+0i\n\
tQhp9KwSiwxlsB2RxBqEtnaytGbIw4ecRVKd7R1T0P1FoM+vLzjxnQ29kcj8YJbN\n\
IDGwWPeCtLihWDZflAQLWOQFgN2tnQDQ7xwVVbCBBf71daAxkVwTMP7rPeU1XYij\n\
amfKjbFT9N5Kz3Z6ZDrQvfI5BkH0tlNO8T0vwwIDAQABAoIBACqrZvoO+HQ/CrQi\n\
tMHKUJ61RKgEJSXeraHNOx2fV4p5g7nvqfa9wWNgnC+cxI/upRWjfNtbQzxpyCLp\n\
bT1j0bNSnbGSbb/wGs+IS+3FjLcAYJ7KFfiM8mrhxyQ4PaWHck+bk4nrB/K3wIFV\n\
bkuSA+rV2f/2veC2Jh0p8rSwU9rkcAF+SnxvJHhHfOywG7YPxfjHWQCvljOFX0sW\n\
qDvV7NXN0YPN5A3vErGp1GdGHua3JiDCL482nwslke77257gSgO2RpPXUOfklsR4\n\
w4apKU8E5gbVundFcUMKmW0xq/Vd6UrHZZ1ZiyaxPMcp6L6JMDWpblCLPOX9IIw7\n\
neGGPnECgYEA4DEwjUtiYeF5bKhobPieQF7YkxZ9vSJSoLAUsCvKzD6v/L8XC4J2\n\
FG05n+ozaqEUJIcyck4MbtZbtDt3jWrGL2gCBFB6M8K9v27MGiO5YI8sNBHPtLmd\n\
FKiiTkPNUHAYQSfj5XB35ceNSV/IkcE6FCUMWM/07iMTlbBVzydxsLMCgYEA10/h\n\
K5PBnhA/L2Og0HxDlUsra8tOd5e7DgLuKCLZYLVClgEJR4Z6qso0cxb0AaPvHOFj\n\
LOx3bz2Rgi89UlVNt+jR/eHTnLYHcR5F1nQq36aExBB43nI4SX8T4ncEr+Nwv2lJ\n\
jxJrjElMGzc6yQ7knoo1CXazjSslEzrGFBTP7LECgYBS+QGOGYtEzI0C8OUNB4qS\n\
KkgfT+CjYhOQkvplJR/+LWk2soZV5SfMcYw1KhlzakApMLwz37zsPHteHfAmL5E/\n\
tE+ixyIjC/zr35a8SeJu4S4r6zejHFsNbUf8jU1sasAfRSMsJE7LhOo+cKurfgb/\n\
s6J5MCXnCKZT7Rok++UwzwKBgCGRAXCSu2eR7tfLd2GpTbvzmRRYAKaiT/YSPOCi\n\
9jKeb4AFL1YoP+1qUpzyoh2zWe6tsJFrV/9OoOWjybKRO+mE8V/cGepfcm+PIaIa\n\
QCjXw/DxBHbhZacHmaj/lwp4sbYVivM0EvIu5x+DD7YSjU+uCjCsgbdrV39U9VZi\n\
HDwxAoGAU3Nmhy4YDrjsnPkCZFVQqOhriJFD7r6kIUOchQ9yM5Y9feYYT+TXxNmZ\n\
fpz0ek/XoQwtJWBGfsqeEg0+vwKcm2kRz/dhALzw2fADwrN5bn3qA7rdRYHN9gZ1\n\
6ejwVOBxFIEZGH9SqgVjxEuQVfAdpnX9m+SkfKHNypkLzJgxVrM=\n\
-----END RSA PRIVATE KEY-----\n";

/// P-256, PKCS#8 (what `EncodingKey::from_ec_der` takes). JWKS kid `ec-1`.
pub(super) const EC_P256_PKCS8_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFca6MUOSktRaJZCS\n\
O0rEcgirD+TROKNHBJWnRi87n9ShRANCAAQCJJ2hfncqi8ft1ue/xL7A5JB07QRO\n\
ujF5xJoQhzqpZ2VdtDVZqaWgcXXDUvDVHSB7LvaKfdum1hO5bqKMqoDJ\n\
-----END PRIVATE KEY-----\n";

/// P-384, PKCS#8. JWKS kid `ec384-1`.
pub(super) const EC_P384_PKCS8_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDCk2DgW11NtKJ60Z60i\n\
ypqyt5fIut+AmKD5lLpCyMpeyFJW+r4NQjjK6rVokElYyxGhZANiAATsp8WRg+UH\n\
RxP+62HJ1um8zHjKHdxgZQv8tyY+KISrBooDdoRjTyrkaw2uja0smU3MCrDQsG/2\n\
tKQPjxR7iJwrHOMFUsol1NEJtrMYk6Fl6kLNlAFY2KLfIvCdbIIbX7I=\n\
-----END PRIVATE KEY-----\n";

/// Ed25519, PKCS#8 (what `EncodingKey::from_ed_der` takes). JWKS kid `ed-1`.
pub(super) const ED25519_PKCS8_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIKg0A2CYNSbcoqHYvDEwxgkV9D9TH2Xbzf80Nut3soqw\n\
-----END PRIVATE KEY-----\n";

/// Public halves of the keys above, plus an `oct` key (kid `oct-1`, `k` = base64url of
/// `oct-secret-for-kid`), as a JWKS document would bring them.
pub(super) const JWKS: &str = r#"{"keys": [
  {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "e": "AQAB",
   "n": "vI9EJgs_CPEGS4KFzd-Jq9jfu-8AAkaKQeckReIj2XSdc7QUykSeGjh0n8GnVq7uO-QLaEWBhIthch5MBHjIJvKqZMsW-Rn3Rs0CGTXbOYsmG67HigyZut7DUP1vL_sGnu0_Zvem0lQ038emvVll9Cv2d-U92RNFCy2TzBg119f-U-0itQhp9KwSiwxlsB2RxBqEtnaytGbIw4ecRVKd7R1T0P1FoM-vLzjxnQ29kcj8YJbNIDGwWPeCtLihWDZflAQLWOQFgN2tnQDQ7xwVVbCBBf71daAxkVwTMP7rPeU1XYijamfKjbFT9N5Kz3Z6ZDrQvfI5BkH0tlNO8T0vww"},
  {"kty": "EC", "kid": "ec-1", "crv": "P-256", "alg": "ES256",
   "x": "AiSdoX53KovH7dbnv8S-wOSQdO0ETroxecSaEIc6qWc",
   "y": "ZV20NVmppaBxdcNS8NUdIHsu9op926bWE7luooyqgMk"},
  {"kty": "EC", "kid": "ec384-1", "crv": "P-384",
   "x": "7KfFkYPlB0cT_uthydbpvMx4yh3cYGUL_LcmPiiEqwaKA3aEY08q5GsNro2tLJlN",
   "y": "zAqw0LBv9rSkD48Ue4icKxzjBVLKJdTRCbazGJOhZepCzZQBWNii3yLwnWyCG1-y"},
  {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "wJkqX-6fEuxOhBXHTrArBWZ3L_T963049oDU-7P2EK8"},
  {"kty": "oct", "kid": "oct-1", "k": "b2N0LXNlY3JldC1mb3Ita2lk"}
]}"#;

/// The HS256 secret of [`PY_HS256`].
pub(super) const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// Claims of every `PY_*` token: `{"aud":"authenticated","exp":4102444800,
/// "iat":1700000000,"role":"authenticated","sub":"python-user"}`.
pub(super) const PY_EXP: i64 = 4_102_444_800;

/// HS256 with [`SECRET`], header `{"alg":"HS256","typ":"JWT"}`.
pub(super) const PY_HS256: &str = concat!(
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
    "eyJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInJvbGUiOiJhdXRoZW50aWNhdGVkIiwic3ViIjoicHl0aG9uLXVzZXIifQ.",
    "s0GmIeGzgo1hPJriPCr7NGNv9Un0Bba0RG8tWYvrG38"
);
/// RS256 with kid `rsa-1`.
pub(super) const PY_RS256: &str = concat!(
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.",
    "eyJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInJvbGUiOiJhdXRoZW50aWNhdGVkIiwic3ViIjoicHl0aG9uLXVzZXIifQ.",
    "iooEVdRTLuRUdBpQAQHAv94rlhDN7-nsH_dVUNt_IGsArFk3ue8d49sVGuqrCQH4nCXfdkPiWnm1wEoVPpaTG4OtStNoXDXs4hH6_RSar7ctUS_NKNFyRpb1gm8bm35bI-o1FbMV2cT6uY-AGlxX9ctsumPNwc2GlzBXWd7bgoik-Y2C3X_8XqR9StUXrADhlJLmQts5oE8hgw7wcar40Z4hTCMWxhLpCUhEGoJWhJyBBzIhBY4tvZr_A0yr2A_0gB1K65G5-3Io2tHMMOb9MBxU41OTYR1XsBdXO45PYTv3y4Ss8k6cyVsLm7b22YG5uQyTDtinMeTpkCUkbs2WWA"
);
/// PS256 with kid `rsa-1`.
pub(super) const PY_PS256: &str = concat!(
    "eyJhbGciOiJQUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.",
    "eyJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInJvbGUiOiJhdXRoZW50aWNhdGVkIiwic3ViIjoicHl0aG9uLXVzZXIifQ.",
    "gEL3enwt_Lnv1f5EfU-MLbse8S-Ld93kMOOlPKHfV_XbeMNkFUVt5n8kyyaYXKyQcUnteZZjMAhBAlpVC09hC0caKtLhkJ6AHNkY4JLdzqAAls6zG4ttD_F3MGhtX-NWQ1jHjHR8wCcyei-04yltax44DxMcO59iUWf1hMijUZzAo_jgiyRAxlxQWwKibeW5cmYw-gXU23DqgIXYo8tq9A4jvlRKi6jea5RjxuKagKy9_bZPkBg-ob803Z4GhSyHjGC0tW8bvtkFT0_hZcYKiNIN5KOf-bmXfj_qizQFbSO77xBzybsRMmhgOhqrsM48cse-BTQa8ET7C8-XDgemvw"
);
/// ES256 with kid `ec-1` (raw r‖s signature, as JWS wants).
pub(super) const PY_ES256: &str = concat!(
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLTEiLCJ0eXAiOiJKV1QifQ.",
    "eyJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInJvbGUiOiJhdXRoZW50aWNhdGVkIiwic3ViIjoicHl0aG9uLXVzZXIifQ.",
    "G1STuItLUjimClyFSloE99jppAS6rOfOqkRuPnw3kyseRfNfbsoBhM3EDMQqfALw--bC0vk5gyfVrrWnGTpcwg"
);
/// EdDSA with kid `ed-1`.
pub(super) const PY_EDDSA: &str = concat!(
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImVkLTEiLCJ0eXAiOiJKV1QifQ.",
    "eyJhdWQiOiJhdXRoZW50aWNhdGVkIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInJvbGUiOiJhdXRoZW50aWNhdGVkIiwic3ViIjoicHl0aG9uLXVzZXIifQ.",
    "GLZZLjSL2g9lmH8nhcJlomzX4JeYuHucGKgWqZoZxQ6YDBbKZK_v5GwzQVkRzStouzIGwI1sKWiDmUwTNeGrDg"
);

/// "Now" for the tests: mid-2025.
pub(super) const NOW: i64 = 1_750_000_000;

pub(super) fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

pub(super) fn sign(header: Value, claims: Value, key: &EncodingKey, alg: Algorithm) -> String {
    sign_parts(&header, &claims, key, alg).unwrap()
}

pub(super) fn user_claims() -> Value {
    json!({"role": "authenticated", "exp": NOW + 3600, "sub": "user-1", "aud": "authenticated"})
}

pub(super) fn hs_verifier() -> Verifier {
    Verifier::new(Some(SECRET), None).unwrap()
}

pub(super) fn jwks_verifier() -> Verifier {
    Verifier::new(None, Some(JWKS)).unwrap()
}

/// Checks all three texts of an error against Supabase's.
pub(super) fn assert_texts(e: &AuthError, upgrade: &str, join: &str, system: &str) {
    assert_eq!(e.upgrade_message(), upgrade);
    assert_eq!(e.join_reason(), join);
    assert_eq!(e.system_message(), system);
}
