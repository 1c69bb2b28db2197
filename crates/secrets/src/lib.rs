//! Upstream credentials at rest: AES-256-GCM under `secrets.credential_key`,
//! with the repository id as associated data so that a ciphertext copied to
//! another repository's row does not decrypt.
//!
//! Sealed layout: `version (1) | key fingerprint (4) | nonce (12) | ciphertext`.
//! The fingerprint lets a key rotation tell which rows are still under the
//! old key without trying to decrypt them.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("sealed credential is malformed")]
    Malformed,
    #[error("sealed credential was made with another key")]
    WrongKey,
    #[error("sealed credential failed authentication")]
    Tampered,
    #[error("credential could not be encoded")]
    Encoding,
}

/// An upstream credential in clear. `Debug` never shows the secret parts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    Token {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_username: Option<String>,
    },
    UsernamePassword {
        username: String,
        password: String,
    },
}

impl Credential {
    /// The API's `auth_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Token { .. } => "token",
            Credential::UsernamePassword { .. } => "username_password",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, [redacted])", self.kind())
    }
}

/// The credential key.
#[derive(Clone)]
pub struct CredentialKey {
    cipher: Aes256Gcm,
    fingerprint: [u8; 4],
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialKey({})", self.fingerprint_hex())
    }
}

impl CredentialKey {
    pub fn new(key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let mut fingerprint = [0u8; 4];
        fingerprint.copy_from_slice(&digest[..4]);
        CredentialKey {
            cipher: Aes256Gcm::new(key.into()),
            fingerprint,
        }
    }

    /// A short public name for the key (not secret: 32 bits of its hash).
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Was `sealed` made with this key? (Header check only.)
    pub fn sealed_with_this(&self, sealed: &[u8]) -> bool {
        sealed.len() >= HEADER && sealed[0] == VERSION && sealed[1..5] == self.fingerprint
    }

    pub fn seal(&self, plaintext: &[u8], associated: &str) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: associated.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Encoding)?;
        let mut out = Vec::with_capacity(HEADER + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], associated: &str) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < HEADER || sealed[0] != VERSION {
            return Err(SecretError::Malformed);
        }
        if sealed[1..5] != self.fingerprint {
            return Err(SecretError::WrongKey);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER]),
                Payload {
                    msg: &sealed[HEADER..],
                    aad: associated.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Tampered)
    }

    pub fn seal_credential(
        &self,
        credential: &Credential,
        repo_id: &str,
    ) -> Result<Vec<u8>, SecretError> {
        let json = serde_json::to_vec(credential).map_err(|_| SecretError::Encoding)?;
        self.seal(&json, repo_id)
    }

    pub fn open_credential(&self, sealed: &[u8], repo_id: &str) -> Result<Credential, SecretError> {
        let json = self.open(sealed, repo_id)?;
        serde_json::from_slice(&json).map_err(|_| SecretError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(b: u8) -> CredentialKey {
        CredentialKey::new(&[b; 32])
    }

    #[test]
    fn round_trip_and_binding_to_repo() {
        let k = key(1);
        let cred = Credential::UsernamePassword {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let sealed = k.seal_credential(&cred, "repo_a").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open_credential(&sealed, "repo_a").unwrap(), cred);
        assert_eq!(
            k.open_credential(&sealed, "repo_b"),
            Err(SecretError::Tampered)
        );
        assert_eq!(
            key(2).open_credential(&sealed, "repo_a"),
            Err(SecretError::WrongKey)
        );
        assert!(k.sealed_with_this(&sealed) && !key(2).sealed_with_this(&sealed));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            k.open_credential(&flipped, "repo_a"),
            Err(SecretError::Tampered)
        );
        assert_eq!(k.open(&[1, 2], "repo_a"), Err(SecretError::Malformed));
    }

    #[test]
    fn debug_redacts() {
        let cred = Credential::Token {
            token: "ghp_secret".into(),
            token_username: None,
        };
        let text = format!("{cred:?} {:?}", key(3));
        assert!(!text.contains("ghp_secret"), "{text}");
        assert_eq!(cred.kind(), "token");
    }
}

/// The current key plus keys being rotated out. Seals with the current key
/// only; opens with whichever key a sealed value names, so that during a
/// rotation every process reads credentials sealed under either key.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: CredentialKey,
    previous: Vec<CredentialKey>,
}

impl KeyRing {
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        KeyRing {
            current: CredentialKey::new(current),
            previous: previous.iter().map(CredentialKey::new).collect(),
        }
    }

    pub fn current(&self) -> &CredentialKey {
        &self.current
    }

    /// Is `sealed` under a key other than the current one?
    pub fn needs_rotation(&self, sealed: &[u8]) -> bool {
        !self.current.sealed_with_this(sealed)
    }

    pub fn seal_credential(
        &self,
        credential: &Credential,
        repo_id: &str,
    ) -> Result<Vec<u8>, SecretError> {
        self.current.seal_credential(credential, repo_id)
    }

    pub fn open_credential(&self, sealed: &[u8], repo_id: &str) -> Result<Credential, SecretError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.sealed_with_this(sealed))
            .ok_or(SecretError::WrongKey)?
            .open_credential(sealed, repo_id)
    }
}

#[cfg(test)]
mod keyring_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn opens_under_old_and_new_seals_under_new() {
        let old = KeyRing::new(&[1; 32], &[]);
        let rotating = KeyRing::new(&[2; 32], &[[1; 32]]);
        let done = KeyRing::new(&[2; 32], &[]);
        let cred = Credential::Token {
            token: "t".into(),
            token_username: None,
        };
        let sealed_old = old.seal_credential(&cred, "repo_x").unwrap();
        assert!(rotating.needs_rotation(&sealed_old));
        assert_eq!(
            rotating.open_credential(&sealed_old, "repo_x").unwrap(),
            cred
        );
        assert_eq!(
            done.open_credential(&sealed_old, "repo_x"),
            Err(SecretError::WrongKey)
        );
        let resealed = rotating.seal_credential(&cred, "repo_x").unwrap();
        assert!(!rotating.needs_rotation(&resealed));
        assert_eq!(done.open_credential(&resealed, "repo_x").unwrap(), cred);
    }
}
