//! API keys. The key is `depot_` + 40 random characters; only its SHA-256
//! is stored. Lookup is by hash: an attacker who can time the index lookup
//! learns about hashes, not keys. The digest found is compared again in
//! constant time before the key is accepted, so no code path of ours ever
//! compares secret material with an early exit.

use crate::{GenericClient, Result, corrupt};
use chrono::{DateTime, Utc};
use depot_domain::Scope;
use depot_domain::ids::new_id;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "depot_";

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

/// Revoke a key; false when no such key.
pub async fn revoke(client: &impl GenericClient, key_id: &str) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        )
        .await?;
    Ok(client.execute(&stmt, &[&key_id]).await? == 1)
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
