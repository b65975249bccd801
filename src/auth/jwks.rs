//! A JWKS document (`{"keys": [...]}`) turned into verification keys, looked up the way
//! srv does it: first key whose `kty` fits the token's algorithm and whose `kid` equals
//! the header's (`jwt_verification.ex#generate_signer/3`).
//!
//! Keys are read field by field instead of through `jsonwebtoken::jwk::JwkSet`: that
//! type rejects the whole set when one key has a field it does not know (an `alg` such
//! as `ES512` or `Ed448`, an unusual `use`), and one odd key in Supabase Auth's JWKS
//! must not lock every user out. An unusable key is kept as "unusable" so a token that
//! names it gets the signer error with its kid, as in srv.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use jsonwebtoken::{crypto, Algorithm, DecodingKey};
use serde_json::Value;
use tracing::warn;

/// base64url that accepts both padded and unpadded input: JWK members and JWT parts are
/// unpadded by spec, but being strict about `=` would only refuse otherwise fine input.
pub(super) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// JWK key types, as named by the `kty` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kty {
    Rsa,
    Ec,
    Okp,
    Oct,
}

impl Kty {
    fn parse(kty: &str) -> Option<Kty> {
        match kty {
            "RSA" => Some(Kty::Rsa),
            "EC" => Some(Kty::Ec),
            "OKP" => Some(Kty::Okp),
            "oct" => Some(Kty::Oct),
            _ => None,
        }
    }
}

/// One JWK with a `kid`.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) kid: String,
    pub(super) kty: Kty,
    /// `crv` for EC and OKP keys (`P-256`, `P-384`, `Ed25519`, ...).
    pub(super) crv: Option<String>,
    /// `None` when the key's members do not make a usable key.
    pub(super) key: Option<DecodingKey>,
}

/// The keys of a JWKS document that carry a `kid`, in document order.
#[derive(Debug, Clone, Default)]
pub(super) struct KeySet {
    entries: Vec<Entry>,
}

impl KeySet {
    /// Parses a JWKS document. Errors (for the operator) only when the text is not JSON
    /// or has no `keys` array; a bad key inside is logged and kept as unusable.
    pub(super) fn parse(text: &str) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "JWKS must be a JSON object with a \"keys\" array".to_owned())?;
        let mut entries = Vec::with_capacity(keys.len());
        for (index, jwk) in keys.iter().enumerate() {
            // srv compares `jwk["kid"] == kid` with a string kid, so keys without a
            // string kid can never be selected.
            let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
                warn!(index, "JWKS key without a string \"kid\" ignored");
                continue;
            };
            let Some(kty) = jwk.get("kty").and_then(Value::as_str).and_then(Kty::parse) else {
                warn!(index, kid, "JWKS key with unknown \"kty\" ignored");
                continue;
            };
            let crv = jwk.get("crv").and_then(Value::as_str).map(str::to_owned);
            let key = build_key(kty, crv.as_deref(), jwk);
            if key.is_none() {
                warn!(
                    index,
                    kid,
                    ?kty,
                    ?crv,
                    "JWKS key unusable: tokens naming it will be refused"
                );
            }
            entries.push(Entry {
                kid: kid.to_owned(),
                kty,
                crv,
                key,
            });
        }
        Ok(KeySet { entries })
    }

    /// The first key of type `kty` whose kid is `kid`.
    pub(super) fn find(&self, kty: Kty, kid: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.kty == kty && e.kid == kid)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The algorithm an EC key verifies, by curve. P-521 (ES512) has no backend here.
pub(super) fn ec_alg(crv: Option<&str>) -> Option<Algorithm> {
    match crv? {
        "P-256" => Some(Algorithm::ES256),
        "P-384" => Some(Algorithm::ES384),
        _ => None,
    }
}

fn member(jwk: &Value, name: &str) -> Option<Vec<u8>> {
    B64URL.decode(jwk.get(name)?.as_str()?).ok()
}

/// Builds the key from its members, checked now so a broken JWKS shows up in the log at
/// start-up rather than as refused tokens later.
fn build_key(kty: Kty, crv: Option<&str>, jwk: &Value) -> Option<DecodingKey> {
    match kty {
        Kty::Oct => {
            let secret = member(jwk, "k")?;
            // An empty HMAC key would accept tokens anyone can forge.
            (!secret.is_empty()).then(|| DecodingKey::from_secret(&secret))
        }
        Kty::Rsa => {
            let (n, e) = (member(jwk, "n")?, member(jwk, "e")?);
            // The RSA backend parses (n, e) on every verification and reports a bad key
            // as a bad signature, so check here what it would refuse.
            rsa_components_usable(&n, &e).then(|| DecodingKey::from_rsa_raw_components(&n, &e))
        }
        Kty::Ec => {
            let alg = ec_alg(crv)?;
            let size = if alg == Algorithm::ES256 { 32 } else { 48 };
            let (x, y) = (member(jwk, "x")?, member(jwk, "y")?);
            if x.len() != size || y.len() != size {
                return None;
            }
            // Uncompressed SEC1 point, what `DecodingKey::from_ec_components` builds too.
            let point = [&[0x04][..], &x, &y].concat();
            probe(DecodingKey::from_ec_der(&point), alg)
        }
        Kty::Okp => {
            let x = member(jwk, "x")?;
            // Length checked here because jsonwebtoken's EdDSA verifier slices the key
            // with `[..32]` and would panic on a shorter one.
            if crv != Some("Ed25519") || x.len() != 32 {
                return None;
            }
            probe(DecodingKey::from_ed_der(&x), Algorithm::EdDSA)
        }
    }
}

/// `crypto::verify` builds the backend's EC/Ed verifier (parsing the key, e.g. checking
/// the point is on the curve) before it looks at the signature: `Err` means the key
/// itself is bad; a wrong signature is `Ok(false)`.
fn probe(key: DecodingKey, alg: Algorithm) -> Option<DecodingKey> {
    crypto::verify("", b"", &key, alg).ok().map(|_| key)
}

/// What the `rsa` crate's `RsaPublicKey::new` accepts: modulus of at most 4096 bits,
/// odd, larger than the exponent; exponent odd, in `3..2^33`.
fn rsa_components_usable(n: &[u8], e: &[u8]) -> bool {
    let strip = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|&x| x == 0).collect() };
    let (n, e) = (strip(n), strip(e));
    let Some(&n_last) = n.last() else {
        return false;
    };
    if n.len() > 512 || e.len() > 8 || n_last % 2 == 0 {
        return false;
    }
    let e_value = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let n_gt_e = n.len() > e.len() || (n.len() == e.len() && n > e);
    n_gt_e && e_value % 2 == 1 && (3..(1u64 << 33)).contains(&e_value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rejects_documents_that_are_not_a_jwks() {
        assert!(KeySet::parse("not json").is_err());
        assert!(KeySet::parse("[]").is_err());
        assert!(KeySet::parse(r#"{"keys": {}}"#).is_err());
        assert!(KeySet::parse(r#"{"kty": "oct", "k": "c2VjcmV0"}"#).is_err());
    }

    #[test]
    fn empty_key_list_is_fine() {
        assert_eq!(KeySet::parse(r#"{"keys": []}"#).map(|k| k.len()), Ok(0));
    }

    #[test]
    fn skips_keys_without_kid_or_known_kty_and_keeps_unusable_ones() {
        let set = KeySet::parse(
            r#"{"keys": [
                {"kty": "oct", "k": "c2VjcmV0"},
                {"kty": "weird", "kid": "w"},
                {"kty": "oct", "kid": 7, "k": "c2VjcmV0"},
                {"kty": "oct", "kid": "bad-b64", "k": "***"},
                {"kty": "oct", "kid": "empty", "k": ""},
                {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
                {"kty": "RSA", "kid": "tiny", "n": "AQ", "e": "AQAB"},
                {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "EC", "kid": "off-curve", "crv": "P-256",
                 "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                 "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
                {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "AAAA"},
                {"kty": "OKP", "kid": "short-ed", "crv": "Ed25519", "x": "AAAA"},
                {"kty": "oct", "kid": "good", "k": "c2VjcmV0", "alg": "HS999", "use": "odd"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(set.len(), 9);
        for kid in ["bad-b64", "empty", "no-n", "tiny", "p521", "off-curve", "short-ed"] {
            let entry = [Kty::Oct, Kty::Rsa, Kty::Ec, Kty::Okp]
                .iter()
                .find_map(|kty| set.find(*kty, kid))
                .unwrap();
            assert!(entry.key.is_none(), "{kid} should be unusable");
        }
        assert!(set.find(Kty::Okp, "x25519").unwrap().key.is_none());
        assert!(set.find(Kty::Oct, "good").unwrap().key.is_some());
        // Lookup is by kty and kid together.
        assert!(set.find(Kty::Rsa, "good").is_none());
    }

    #[test]
    fn rsa_components_checked_like_the_backend_would() {
        let n_2048 = [&[0xc5][..], &[0x11; 254], &[0x01]].concat();
        let e = [0x01, 0x00, 0x01];
        assert!(rsa_components_usable(&n_2048, &e));
        assert!(rsa_components_usable(&[&[0, 0][..], &n_2048].concat(), &[0, 1, 0, 1]));
        // 8192-bit modulus: over the backend's 4096-bit limit.
        let n_8192 = [&[0xc5][..], &[0x11; 1022], &[0x01]].concat();
        assert!(!rsa_components_usable(&n_8192, &e));
        // Even modulus, even or tiny exponent, empty modulus, modulus below exponent.
        assert!(!rsa_components_usable(&[&n_2048[..255], &[0x02]].concat(), &e));
        assert!(!rsa_components_usable(&n_2048, &[0x01, 0x00, 0x00]));
        assert!(!rsa_components_usable(&n_2048, &[0x01]));
        assert!(!rsa_components_usable(&[], &e));
        assert!(!rsa_components_usable(&[0x03], &e));
    }

    #[test]
    fn padded_and_unpadded_base64url_both_decode() {
        assert_eq!(B64URL.decode("c2VjcmV0").unwrap(), b"secret");
        assert_eq!(B64URL.decode("YQ==").unwrap(), b"a");
        assert_eq!(B64URL.decode("YQ").unwrap(), b"a");
        assert!(B64URL.decode("a+b/").is_err());
    }
}
