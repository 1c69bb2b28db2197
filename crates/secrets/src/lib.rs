//! Upstream credentials at rest: AES-256-GCM under `secrets.credential_key`.
//!
//! Invariants:
//! - A sealed credential opens only for the repository and the upstream
//!   origin (scheme, host, port) it was sealed for: both are in the
//!   associated data, so a ciphertext copied to another repository's row, or
//!   a row whose URL now names another host (edited in the database, past
//!   the API's checks), does not open, and the worker, which opens with the
//!   origin of the URL it is about to fetch, has nothing to hand to libgit2.
//! - The origin is the caller's canonical string
//!   (`depot_domain::policy::origin`); this crate only binds bytes.
//! - New values are always sealed in the current format ([`FORMAT`]).
//!
//! Sealed layout: `version (1) | key fingerprint (4) | nonce (12) | ciphertext`.
//! The fingerprint lets a key rotation tell which rows are still under the
//! old key without trying to decrypt them. Versions:
//! - 1 (before origin binding): associated data = repo id.
//! - 2: associated data = `depot-credential-v2 \0 repo id \0 origin`. The
//!   version is inside the associated data too, so relabelling a value's
//!   version byte makes it fail to open rather than downgrade it.
//!
//! Version 1 values still open (for whatever URL their row holds: they
//! record no origin), because refusing them would fail every sync of an
//! existing deployment the moment it upgrades. The API already refuses to
//! move a stored credential to another origin, so such a value can only
//! reach another host through a database edit; `depot-admin secrets rotate`
//! re-seals every version 1 value as version 2, bound to the origin of the
//! URL its row holds, which closes that too ([`KeyRing::needs_rotation`] is
//! true for them).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The format new values are sealed in.
pub const FORMAT: u8 = 2;
const LEGACY: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("sealed credential is malformed")]
    Malformed,
    #[error("sealed credential was made with another key")]
    WrongKey,
    #[error("sealed credential does not open for this repository and origin")]
    Tampered,
    #[error("credential could not be encoded")]
    Encoding,
}

/// The format version of a sealed value, if it has a header at all.
pub fn format_version(sealed: &[u8]) -> Option<u8> {
    (sealed.len() >= HEADER)
        .then(|| sealed[0])
        .filter(|v| *v == LEGACY || *v == FORMAT)
}

/// Is `sealed` bound to an origin (format 2)? False for legacy values,
/// which open for any URL of their repository.
pub fn is_origin_bound(sealed: &[u8]) -> bool {
    format_version(sealed) == Some(FORMAT)
}

/// The associated data of a sealed credential of `version`.
fn associated_data(version: u8, repo_id: &str, origin: &str) -> Vec<u8> {
    match version {
        LEGACY => repo_id.as_bytes().to_vec(),
        // NUL cannot occur in a repo id or an origin (both ASCII without
        // control characters), so the fields cannot be shifted into one
        // another.
        _ => format!("depot-credential-v{version}\0{repo_id}\0{origin}").into_bytes(),
    }
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
        format_version(sealed).is_some() && sealed[1..5] == self.fingerprint
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SecretError::Encoding)?;
        let mut out = Vec::with_capacity(HEADER + ciphertext.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    fn open(&self, sealed: &[u8], repo_id: &str, origin: &str) -> Result<Vec<u8>, SecretError> {
        let version = format_version(sealed).ok_or(SecretError::Malformed)?;
        if sealed[1..5] != self.fingerprint {
            return Err(SecretError::WrongKey);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER]),
                Payload {
                    msg: &sealed[HEADER..],
                    aad: &associated_data(version, repo_id, origin),
                },
            )
            .map_err(|_| SecretError::Tampered)
    }

    /// Seal `credential` for repository `repo_id` and upstream `origin`.
    pub fn seal_credential(
        &self,
        credential: &Credential,
        repo_id: &str,
        origin: &str,
    ) -> Result<Vec<u8>, SecretError> {
        let json = serde_json::to_vec(credential).map_err(|_| SecretError::Encoding)?;
        self.seal(&json, &associated_data(FORMAT, repo_id, origin))
    }

    /// Open a credential for repository `repo_id`, to be sent to `origin`
    /// (the origin of the URL about to be fetched, never one read from the
    /// sealed value). Legacy values ignore `origin` (module docs).
    pub fn open_credential(
        &self,
        sealed: &[u8],
        repo_id: &str,
        origin: &str,
    ) -> Result<Credential, SecretError> {
        let json = self.open(sealed, repo_id, origin)?;
        serde_json::from_slice(&json).map_err(|_| SecretError::Malformed)
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

    /// Should `depot-admin secrets rotate` re-seal `sealed`: under a key
    /// other than the current one, or in the legacy format without an
    /// origin?
    pub fn needs_rotation(&self, sealed: &[u8]) -> bool {
        !self.current.sealed_with_this(sealed) || !is_origin_bound(sealed)
    }

    pub fn seal_credential(
        &self,
        credential: &Credential,
        repo_id: &str,
        origin: &str,
    ) -> Result<Vec<u8>, SecretError> {
        self.current.seal_credential(credential, repo_id, origin)
    }

    /// See [`CredentialKey::open_credential`].
    pub fn open_credential(
        &self,
        sealed: &[u8],
        repo_id: &str,
        origin: &str,
    ) -> Result<Credential, SecretError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.sealed_with_this(sealed))
            .ok_or(SecretError::WrongKey)?
            .open_credential(sealed, repo_id, origin)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ORIGIN: &str = "https://git.example.com:443";

    fn key(b: u8) -> CredentialKey {
        CredentialKey::new(&[b; 32])
    }

    fn password() -> Credential {
        Credential::UsernamePassword {
            username: "alice".into(),
            password: "s3cret-upstream-pw".into(),
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `password()` sealed by the release before origin binding (format 1)
    /// under key `[7; 32]` for repository `repo_legacy`.
    const LEGACY_SEALED: &str = "014bb06f8e3e97b1f20f9e29c0b322cb6135699b7e7a43986ad8f144608587c7ef8b158c39275d43f2036a03affe63f31c673aea371dfd999641ba1209b900a8715c65d8229dfe7f8b801c8cc535d178dc25d051553da066c99a4f09061294948f3db996caa325c3961b3952e39f498b";

    #[test]
    fn round_trip_and_binding_to_repo() {
        let k = key(1);
        let cred = Credential::UsernamePassword {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let sealed = k.seal_credential(&cred, "repo_a", ORIGIN).unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open_credential(&sealed, "repo_a", ORIGIN).unwrap(), cred);
        assert_eq!(
            k.open_credential(&sealed, "repo_b", ORIGIN),
            Err(SecretError::Tampered)
        );
        assert_eq!(
            key(2).open_credential(&sealed, "repo_a", ORIGIN),
            Err(SecretError::WrongKey)
        );
        assert!(k.sealed_with_this(&sealed) && !key(2).sealed_with_this(&sealed));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            k.open_credential(&flipped, "repo_a", ORIGIN),
            Err(SecretError::Tampered)
        );
        assert_eq!(
            k.open_credential(&[1, 2], "repo_a", ORIGIN),
            Err(SecretError::Malformed)
        );
    }

    #[test]
    fn a_credential_opens_only_for_the_origin_it_was_sealed_for() {
        let k = key(1);
        let sealed = k.seal_credential(&password(), "repo_a", ORIGIN).unwrap();
        assert!(is_origin_bound(&sealed));
        for other in [
            "https://evil.example.net:443",
            "https://git.example.com:8443",
            "http://git.example.com:443",
            "",
        ] {
            assert_eq!(
                k.open_credential(&sealed, "repo_a", other),
                Err(SecretError::Tampered),
                "{other}"
            );
        }
    }

    /// The fields of the associated data cannot be shifted into one
    /// another: the same bytes split differently do not open.
    #[test]
    fn repo_and_origin_are_not_interchangeable() {
        let k = key(1);
        let sealed = k
            .seal_credential(&password(), "repo_a", "https://h:1")
            .unwrap();
        assert_eq!(
            k.open_credential(&sealed, "repo_ahttps://h:1", ""),
            Err(SecretError::Tampered)
        );
    }

    /// Relabelling a value's version byte does not make it open under the
    /// other format's rules (no downgrade to "any origin").
    #[test]
    fn relabelling_the_version_does_not_downgrade() {
        let k = key(1);
        let mut sealed = k.seal_credential(&password(), "repo_a", ORIGIN).unwrap();
        sealed[0] = 1;
        assert_eq!(
            k.open_credential(&sealed, "repo_a", ORIGIN),
            Err(SecretError::Tampered)
        );
        let mut legacy = hex(LEGACY_SEALED);
        legacy[0] = FORMAT;
        assert_eq!(
            key(7).open_credential(&legacy, "repo_legacy", ORIGIN),
            Err(SecretError::Tampered)
        );
        sealed[0] = 9;
        assert_eq!(
            k.open_credential(&sealed, "repo_a", ORIGIN),
            Err(SecretError::Malformed)
        );
    }

    /// Values sealed before origin binding still open for their repository
    /// (and only it), and a rotation re-seals them even under the current key.
    #[test]
    fn legacy_values_still_open_and_need_rotation() {
        let legacy = hex(LEGACY_SEALED);
        assert_eq!(format_version(&legacy), Some(1));
        assert!(!is_origin_bound(&legacy));
        let ring = KeyRing::new(&[7; 32], &[]);
        assert_eq!(
            ring.open_credential(&legacy, "repo_legacy", ORIGIN)
                .unwrap(),
            password()
        );
        assert_eq!(
            ring.open_credential(&legacy, "repo_other", ORIGIN),
            Err(SecretError::Tampered)
        );
        assert!(ring.current().sealed_with_this(&legacy));
        assert!(ring.needs_rotation(&legacy));
        let resealed = ring
            .seal_credential(&password(), "repo_legacy", ORIGIN)
            .unwrap();
        assert!(!ring.needs_rotation(&resealed));
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

    #[test]
    fn opens_under_old_and_new_seals_under_new() {
        let old = KeyRing::new(&[1; 32], &[]);
        let rotating = KeyRing::new(&[2; 32], &[[1; 32]]);
        let done = KeyRing::new(&[2; 32], &[]);
        let cred = Credential::Token {
            token: "t".into(),
            token_username: None,
        };
        let sealed_old = old.seal_credential(&cred, "repo_x", ORIGIN).unwrap();
        assert!(rotating.needs_rotation(&sealed_old));
        assert_eq!(
            rotating
                .open_credential(&sealed_old, "repo_x", ORIGIN)
                .unwrap(),
            cred
        );
        assert_eq!(
            done.open_credential(&sealed_old, "repo_x", ORIGIN),
            Err(SecretError::WrongKey)
        );
        let resealed = rotating.seal_credential(&cred, "repo_x", ORIGIN).unwrap();
        assert!(!rotating.needs_rotation(&resealed));
        assert_eq!(
            done.open_credential(&resealed, "repo_x", ORIGIN).unwrap(),
            cred
        );
    }
}
