//! Mesa's private keys: `mesa_private_key_<org slug>_<base64url, unpadded,
//! of the PKCS#8 DER of an Ed25519 private key>`.
//!
//! Invariants:
//! - The DER is the canonical PKCS#8 v1 document (RFC 8410, no public key
//!   attribute): Mesa's SDK re-encodes the key it parses and refuses any
//!   other encoding. ed25519-dalek's own `to_pkcs8_der` writes v2 (with the
//!   public key), so the document is built from `KeypairBytes` without it.
//! - The seed comes from the operating system's CSPRNG.
//! - The text exists only in this process, to be printed once; callers
//!   store [`NewPrivateKey::public_key`] only.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use rand::TryRngCore;

pub const PREFIX: &str = "mesa_private_key_";

/// A freshly generated key: the text for its owner, the half we keep.
pub struct NewPrivateKey {
    pub text: String,
    pub public_key: [u8; 32],
}

/// Generate a private key bound to org `slug`.
pub fn generate(slug: &str) -> anyhow::Result<NewPrivateKey> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("the operating system's random number generator failed")?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    encode(slug, &key)
}

/// The private key text of `key` for org `slug`.
pub fn encode(slug: &str, key: &SigningKey) -> anyhow::Result<NewPrivateKey> {
    let der = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_der()
    .context("cannot encode the private key as PKCS#8")?;
    Ok(NewPrivateKey {
        text: format!("{PREFIX}{slug}_{}", URL_SAFE_NO_PAD.encode(der.as_bytes())),
        public_key: key.verifying_key().to_bytes(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::pkcs8::DecodePrivateKey;

    /// RFC 8410 section 7: the v1 OneAsymmetricKey of an Ed25519 key is
    /// these 16 bytes, then the 32-byte seed, nothing else.
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];

    #[test]
    fn the_text_holds_the_canonical_v1_pkcs8_document_of_the_key() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let new = encode("acme-corp", &key).unwrap();
        let body = new
            .text
            .strip_prefix("mesa_private_key_acme-corp_")
            .unwrap();
        let der = URL_SAFE_NO_PAD.decode(body).unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], V1_PREFIX);
        assert_eq!(der[16..], [7u8; 32]);
        let back = SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(back.verifying_key().to_bytes(), new.public_key);
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate("acme").unwrap();
        let b = generate("acme").unwrap();
        assert_ne!(a.public_key, b.public_key);
        assert!(a.text.starts_with("mesa_private_key_acme_"));
    }
}
