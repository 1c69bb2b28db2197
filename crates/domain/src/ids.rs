//! Public ids: opaque strings with a type prefix (`repo_…`, `sync_…`).

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new random id such as `sync_3k9x…`: 20 characters of base 36 carry
/// about 103 bits, so collisions are not a concern and ids leak nothing about
/// order or volume.
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 21);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..20 {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// True when `id` could have been made by [`new_id`] with `prefix`; lets the
/// API answer 404 for malformed ids without a database round trip.
pub fn looks_like(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_prefix_and_are_distinct() {
        let a = new_id("sync");
        let b = new_id("sync");
        assert!(a.starts_with("sync_"));
        assert_eq!(a.len(), 25);
        assert_ne!(a, b);
        assert!(looks_like("sync", &a));
        assert!(!looks_like("repo", &a));
        assert!(!looks_like("sync", "sync_"));
        assert!(!looks_like("sync", "sync_a'b"));
    }
}
