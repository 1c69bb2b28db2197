//! Mesa's access tokens (`docs/api.md`, "Private keys and access tokens"): a
//! compact JWS signed by the holder of an org-bound Ed25519 private key,
//! carrying the public key in its header.
//!
//! Invariants:
//! - This module checks everything a token says about itself: the header
//!   (`alg` EdDSA, `typ` mesa-at+jwt, an Ed25519 `jwk`, no `crit`), the
//!   signature over the `header.payload` bytes exactly as received (strict
//!   Ed25519: no malleable signatures, no weak keys), `aud`, `exp`/`iat`
//!   within [`CLOCK_SKEW_SECONDS`], a lifetime of at most
//!   [`MAX_LIFETIME_SECONDS`], and a well-formed grant. Whether the key is
//!   a registered, unrevoked key of org `iss` is the caller's check
//!   (crate::auth), against the credential cache.
//! - No claim is read before the signature verifies.
//! - An error names the failed check and nothing of the token.
//! - Decoding is the `base64` and `serde_json` crates' (canonical unpadded
//!   base64url; duplicate JSON keys refused).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use depot_domain::Scope;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use std::collections::HashMap;

pub const TYP: &str = "mesa-at+jwt";
pub const AUDIENCE: &str = "mesa-api";
/// Mesa's own verifier caps token lifetimes at 4 h; so do we.
pub const MAX_LIFETIME_SECONDS: i64 = 4 * 60 * 60;
/// Tolerated difference between the signer's clock and ours.
pub const CLOCK_SKEW_SECONDS: i64 = 60;
/// Mesa's SDK grants at most 250 repositories per token.
pub const MAX_ACCESS_ENTRIES: usize = 250;

/// A token whose own claims all hold.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub public_key: [u8; 32],
    pub iss: String,
    pub exp: i64,
    pub grant: Grant,
}

/// What a token grants in org `iss`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `admin: true`: read, write and admin.
    Admin,
    /// `access`: repo name to `read-repo` (Read) or `write-repo` (Write).
    Repos(HashMap<String, Scope>),
}

/// The check a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("access token is not a compact JWS (header.payload.signature, base64url)")]
    Format,
    #[error("access token header is not a valid JOSE header")]
    Header,
    #[error("access token alg must be EdDSA")]
    Algorithm,
    #[error("access token typ must be mesa-at+jwt")]
    Type,
    #[error("access token header has crit parameters, which are not supported")]
    Critical,
    #[error("access token jwk must be an Ed25519 public key (kty OKP, crv Ed25519, x)")]
    Jwk,
    #[error("access token signature does not verify with its jwk")]
    Signature,
    #[error("access token payload is not a valid claims object")]
    Claims,
    #[error("access token aud must be mesa-api")]
    Audience,
    #[error("access token has expired (exp)")]
    Expired,
    #[error("access token iat is in the future")]
    IssuedInFuture,
    #[error("access token lifetime (exp - iat) must be positive and at most 4 hours")]
    Lifetime,
    #[error("access token iss must be an org slug")]
    Issuer,
    #[error(
        "access token must grant either admin: true or access to 1-250 repositories as read-repo or write-repo"
    )]
    Grant,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    jwk: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Jwk {
    kty: String,
    crv: String,
    x: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    iat: Option<i64>,
    exp: Option<i64>,
    admin: Option<bool>,
    access: Option<HashMap<String, String>>,
}

fn decode(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Format)
}

/// Is this bearer credential a JWS rather than an API key? API keys never
/// hold a dot.
pub fn looks_like_token(bearer: &str) -> bool {
    bearer.contains('.')
}

/// Check everything `token` says about itself at unix time `now`.
pub fn verify(token: &str, now: i64) -> Result<VerifiedToken, TokenError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Format);
    };
    let header: Header =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| TokenError::Header)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Algorithm);
    }
    // RFC 7515: `typ` is compared case-insensitively.
    if !header.typ.is_some_and(|t| t.eq_ignore_ascii_case(TYP)) {
        return Err(TokenError::Type);
    }
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let jwk: Jwk = header
        .jwk
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or(TokenError::Jwk)?;
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return Err(TokenError::Jwk);
    }
    let public_key: [u8; 32] = decode(&jwk.x)
        .map_err(|_| TokenError::Jwk)?
        .try_into()
        .map_err(|_| TokenError::Jwk)?;
    let verifying = VerifyingKey::from_bytes(&public_key).map_err(|_| TokenError::Jwk)?;
    let signature: [u8; 64] = decode(signature_b64)?
        .try_into()
        .map_err(|_| TokenError::Signature)?;
    // The signing input is the received text up to the second dot: never
    // a re-encoding of what was parsed.
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    verifying
        .verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| TokenError::Signature)?;

    let claims: Claims =
        serde_json::from_slice(&decode(payload_b64)?).map_err(|_| TokenError::Claims)?;
    let audience_ok = match &claims.aud {
        Some(Audience::One(a)) => a == AUDIENCE,
        Some(Audience::Many(all)) => all.iter().any(|a| a == AUDIENCE),
        None => false,
    };
    if !audience_ok {
        return Err(TokenError::Audience);
    }
    let (Some(iat), Some(exp)) = (claims.iat, claims.exp) else {
        return Err(TokenError::Lifetime);
    };
    if exp.saturating_add(CLOCK_SKEW_SECONDS) <= now {
        return Err(TokenError::Expired);
    }
    if iat > now.saturating_add(CLOCK_SKEW_SECONDS) {
        return Err(TokenError::IssuedInFuture);
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime <= 0 || lifetime > MAX_LIFETIME_SECONDS {
        return Err(TokenError::Lifetime);
    }
    let iss = claims
        .iss
        .filter(|s| is_org_slug(s))
        .ok_or(TokenError::Issuer)?;
    let grant = match (claims.admin, claims.access) {
        (Some(true), None) => Grant::Admin,
        (None, Some(access)) if (1..=MAX_ACCESS_ENTRIES).contains(&access.len()) => {
            let repos = access
                .into_iter()
                .map(|(repo, level)| match level.as_str() {
                    "read-repo" => Ok((repo, Scope::Read)),
                    "write-repo" => Ok((repo, Scope::Write)),
                    _ => Err(TokenError::Grant),
                })
                .collect::<Result<_, _>>()?;
            Grant::Repos(repos)
        }
        _ => return Err(TokenError::Grant),
    };
    Ok(VerifiedToken {
        public_key,
        iss,
        exp,
        grant,
    })
}

/// Mesa's org slug: `[a-z0-9]`, inner `-` allowed.
fn is_org_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::{Value, json};

    const NOW: i64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3u8; 32])
    }

    fn header(key: &SigningKey) -> Value {
        json!({"alg": "EdDSA", "typ": TYP, "jwk": {
            "kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
        }})
    }

    fn claims() -> Value {
        json!({"iss": "acme", "aud": AUDIENCE, "iat": NOW - 10, "exp": NOW + 890,
               "jti": "j", "admin": true})
    }

    fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    fn without(mut v: Value, k: &str) -> Value {
        v.as_object_mut().unwrap().remove(k);
        v
    }

    #[test]
    fn a_well_formed_admin_token_verifies() {
        let k = key();
        let t = verify(&sign(&k, &header(&k), &claims()), NOW).unwrap();
        assert_eq!(t.iss, "acme");
        assert_eq!(t.grant, Grant::Admin);
        assert_eq!(t.public_key, k.verifying_key().to_bytes());
    }

    #[test]
    fn an_access_token_maps_levels_to_scopes() {
        let k = key();
        let c = with(
            without(claims(), "admin"),
            "access",
            json!({"a": "read-repo", "b": "write-repo"}),
        );
        let t = verify(&sign(&k, &header(&k), &c), NOW).unwrap();
        let Grant::Repos(repos) = t.grant else {
            panic!("not a repo grant")
        };
        assert_eq!(repos["a"], Scope::Read);
        assert_eq!(repos["b"], Scope::Write);
    }

    #[test]
    fn each_header_check_is_named() {
        let k = key();
        let h = header(&k);
        for (header, expected) in [
            (with(h.clone(), "alg", json!("none")), TokenError::Algorithm),
            (
                with(h.clone(), "alg", json!("HS256")),
                TokenError::Algorithm,
            ),
            (with(h.clone(), "typ", json!("JWT")), TokenError::Type),
            (without(h.clone(), "typ"), TokenError::Type),
            (
                with(h.clone(), "crit", json!(["exp"])),
                TokenError::Critical,
            ),
            (without(h.clone(), "jwk"), TokenError::Jwk),
            (
                with(
                    h.clone(),
                    "jwk",
                    json!({"kty": "EC", "crv": "P-256", "x": "AA"}),
                ),
                TokenError::Jwk,
            ),
            (
                with(
                    h.clone(),
                    "jwk",
                    json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
                ),
                TokenError::Jwk,
            ),
            (json!([1, 2]), TokenError::Header),
        ] {
            assert_eq!(
                verify(&sign(&k, &header, &claims()), NOW).unwrap_err(),
                expected,
                "{header}"
            );
        }
    }

    #[test]
    fn a_jwk_carrying_the_private_half_is_refused() {
        let k = key();
        let mut h = header(&k);
        h["jwk"]["d"] = json!(URL_SAFE_NO_PAD.encode(k.to_bytes()));
        assert_eq!(
            verify(&sign(&k, &h, &claims()), NOW).unwrap_err(),
            TokenError::Jwk
        );
    }

    #[test]
    fn each_claim_check_is_named() {
        let k = key();
        let c = claims();
        for (claims, expected) in [
            (with(c.clone(), "aud", json!("other")), TokenError::Audience),
            (without(c.clone(), "aud"), TokenError::Audience),
            (
                with(
                    with(c.clone(), "exp", json!(NOW - 61)),
                    "iat",
                    json!(NOW - 100),
                ),
                TokenError::Expired,
            ),
            (
                with(
                    with(c.clone(), "iat", json!(NOW + 61)),
                    "exp",
                    json!(NOW + 100),
                ),
                TokenError::IssuedInFuture,
            ),
            (
                with(c.clone(), "exp", json!(NOW - 10 + 4 * 3600 + 1)),
                TokenError::Lifetime,
            ),
            (without(c.clone(), "iat"), TokenError::Lifetime),
            (
                with(c.clone(), "exp", json!(NOW - 11)),
                TokenError::Lifetime,
            ),
            (with(c.clone(), "iss", json!("Acme")), TokenError::Issuer),
            (without(c.clone(), "iss"), TokenError::Issuer),
            (with(c.clone(), "admin", json!(false)), TokenError::Grant),
            (without(c.clone(), "admin"), TokenError::Grant),
            (
                with(c.clone(), "access", json!({"a": "read-repo"})),
                TokenError::Grant,
            ),
            (
                with(without(c.clone(), "admin"), "access", json!({})),
                TokenError::Grant,
            ),
            (
                with(without(c.clone(), "admin"), "access", json!({"a": "admin"})),
                TokenError::Grant,
            ),
            (with(c.clone(), "exp", json!(1.5)), TokenError::Claims),
        ] {
            let got = verify(&sign(&k, &header(&k), &claims), NOW);
            assert_eq!(got.unwrap_err(), expected, "{claims}");
        }
    }

    #[test]
    fn an_audience_list_naming_mesa_api_is_accepted() {
        let k = key();
        let c = with(claims(), "aud", json!(["x", AUDIENCE]));
        assert!(verify(&sign(&k, &header(&k), &c), NOW).is_ok());
    }

    #[test]
    fn a_changed_byte_anywhere_breaks_the_signature() {
        let k = key();
        let t = sign(&k, &header(&k), &claims());
        let (input, sig) = t.rsplit_once('.').unwrap();
        // Tampered payload, signature kept.
        let forged = sign(&k, &header(&k), &with(claims(), "iss", json!("other")));
        let (forged_input, _) = forged.rsplit_once('.').unwrap();
        assert_eq!(
            verify(&format!("{forged_input}.{sig}"), NOW).unwrap_err(),
            TokenError::Signature
        );
        // Another key's signature over the same input.
        let other = SigningKey::from_bytes(&[4u8; 32]);
        let other_sig = URL_SAFE_NO_PAD.encode(other.sign(input.as_bytes()).to_bytes());
        assert_eq!(
            verify(&format!("{input}.{other_sig}"), NOW).unwrap_err(),
            TokenError::Signature
        );
        // Padding or a non-canonical final character is not base64url.
        assert_eq!(
            verify(&format!("{input}.{sig}="), NOW).unwrap_err(),
            TokenError::Format
        );
    }

    #[test]
    fn malformed_tokens_are_format_errors() {
        for t in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30."] {
            assert!(verify(t, NOW).is_err(), "{t}");
        }
        assert_eq!(verify("a.b.c.d", NOW).unwrap_err(), TokenError::Format);
    }

    #[test]
    fn messages_never_hold_the_token() {
        let k = key();
        let t = sign(&k, &header(&k), &with(claims(), "aud", json!("zzz")));
        let e = verify(&t, NOW).unwrap_err().to_string();
        assert!(!e.contains("zzz") && !e.contains(&t[..10]), "{e}");
    }
}
