//! Credentials of an org: API keys and private keys.
//!
//! - API keys: `depot_` + 40 random characters; only its SHA-256 is stored.
//!   Lookup is by hash: an attacker who can time the index lookup learns
//!   about hashes, not keys. The digest found is compared again in constant
//!   time before the key is accepted, so no code path of ours ever compares
//!   secret material with an early exit.
//! - Private keys (Mesa's org-bound Ed25519 keys): only the 32-byte public
//!   key is stored; the private half never reaches the database.
//! - Every update or delete of either (and of an org) notifies
//!   [`CHANGES_CHANNEL`] with the key's id (or `org:<id>`) in the changing
//!   transaction (migration V4), so caches of verified credentials learn of
//!   a revocation when it commits.

use crate::{GenericClient, Result, corrupt};
use chrono::{DateTime, Utc};
use depot_domain::Scope;
use depot_domain::ids::new_id;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "depot_";

/// The `LISTEN`/`NOTIFY` channel of credential changes. Payload: the key id
/// (`key_…`) of a changed or deleted key, or `org:<org id>` for an org.
pub const CHANGES_CHANNEL: &str = "depot_credentials";

/// A notification's payload prefix naming an org rather than a key.
pub const ORG_CHANGE_PREFIX: &str = "org:";

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A fresh API key in clear; shown once.
pub fn generate_key() -> String {
    // `new_id` gives 20 base-36 characters (~103 bits); two of them make a
    // key with more than 200 bits of entropy.
    let a = new_id("k");
    let b = new_id("k");
    format!("{KEY_PREFIX}{}{}", &a[2..], &b[2..])
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub org_id: String,
    pub org_slug: String,
    pub org_name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }

    /// Highest scope held; scopes are hierarchical.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= needed)
    }
}

pub async fn create(
    client: &impl GenericClient,
    org_id: &str,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, String)> {
    let key = generate_key();
    let id = new_id("key");
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let stmt = client
        .prepare_cached(
            "INSERT INTO api_keys (id, org_id, name, key_hash, scopes, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[&id, &org_id, &name, &hash_key(&key), &scopes, &expires_at],
        )
        .await?;
    Ok((id, key))
}

/// Equality of two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub async fn find(client: &impl GenericClient, key: &str) -> Result<Option<KeyRecord>> {
    let stmt = client
        .prepare_cached(
            "SELECT k.id, k.org_id, o.slug, o.name, k.scopes, k.expires_at, k.revoked_at,
                    k.key_hash
             FROM api_keys k JOIN orgs o ON o.id = k.org_id
             WHERE k.key_hash = $1",
        )
        .await?;
    let digest = hash_key(key);
    let Some(row) = client.query_opt(&stmt, &[&digest]).await? else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.get(7);
    if !constant_time_eq(&stored, &digest) {
        return Ok(None);
    }
    let scopes: Vec<String> = row.get(4);
    let scopes = scopes
        .iter()
        .map(|s| s.parse::<Scope>().map_err(corrupt))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(KeyRecord {
        id: row.get(0),
        org_id: row.get(1),
        org_slug: row.get(2),
        org_name: row.get(3),
        scopes,
        expires_at: row.get(5),
        revoked_at: row.get(6),
    }))
}

/// Revoke a key of either kind; false when no such key. The change's
/// notification goes out when this statement commits.
pub async fn revoke(client: &impl GenericClient, key_id: &str) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "WITH a AS (
                 UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                 WHERE id = $1 RETURNING 1
             ), p AS (
                 UPDATE private_keys SET revoked_at = coalesce(revoked_at, now())
                 WHERE id = $1 RETURNING 1
             )
             SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM p)",
        )
        .await?;
    let n: i64 = client.query_one(&stmt, &[&key_id]).await?.get(0);
    Ok(n == 1)
}

/// A registered private key: the public half and whose it is.
#[derive(Debug, Clone)]
pub struct PrivateKeyRecord {
    pub id: String,
    pub org_id: String,
    pub org_slug: String,
    pub org_name: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Register the public half of a new private key; returns its id.
pub async fn create_private_key(
    client: &impl GenericClient,
    org_id: &str,
    name: &str,
    public_key: &[u8; 32],
) -> Result<String> {
    let id = new_id("key");
    let stmt = client
        .prepare_cached(
            "INSERT INTO private_keys (id, org_id, name, public_key) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    client
        .execute(&stmt, &[&id, &org_id, &name, &public_key.as_slice()])
        .await?;
    Ok(id)
}

/// The registered key with this public half, revoked or not.
pub async fn find_private_key(
    client: &impl GenericClient,
    public_key: &[u8; 32],
) -> Result<Option<PrivateKeyRecord>> {
    let stmt = client
        .prepare_cached(
            "SELECT k.id, k.org_id, o.slug, o.name, k.revoked_at
             FROM private_keys k JOIN orgs o ON o.id = k.org_id
             WHERE k.public_key = $1",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&public_key.as_slice()]).await?;
    Ok(row.map(|row| PrivateKeyRecord {
        id: row.get(0),
        org_id: row.get(1),
        org_slug: row.get(2),
        org_name: row.get(3),
        revoked_at: row.get(4),
    }))
}

/// What `depot-admin key list` shows of a key: never a secret, nor a hash.
#[derive(Debug, Clone)]
pub struct KeyListing {
    pub id: String,
    /// `api-key` or `private-key`.
    pub kind: &'static str,
    pub name: String,
    /// API keys' scopes; a private key's tokens carry their own.
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every key of an org, both kinds, oldest first.
pub async fn list(client: &impl GenericClient, org_id: &str) -> Result<Vec<KeyListing>> {
    let stmt = client
        .prepare_cached(
            "SELECT id, 'api-key' AS kind, name, scopes, created_at, expires_at, revoked_at
             FROM api_keys WHERE org_id = $1
             UNION ALL
             SELECT id, 'private-key', name, '{}'::text[], created_at, NULL, revoked_at
             FROM private_keys WHERE org_id = $1
             ORDER BY created_at, id",
        )
        .await?;
    let rows = client.query(&stmt, &[&org_id]).await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.get(1);
            Ok(KeyListing {
                id: row.get(0),
                kind: match kind.as_str() {
                    "api-key" => "api-key",
                    "private-key" => "private-key",
                    other => return Err(corrupt(format!("key kind {other:?}"))),
                },
                name: row.get(2),
                scopes: row.get(3),
                created_at: row.get(4),
                expires_at: row.get(5),
                revoked_at: row.get(6),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_and_compare() {
        let k = generate_key();
        assert!(k.starts_with(KEY_PREFIX));
        assert_eq!(k.len(), KEY_PREFIX.len() + 40);
        assert!(constant_time_eq(&hash_key(&k), &hash_key(&k)));
        assert!(!constant_time_eq(&hash_key(&k), &hash_key("other")));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
