//! The upstream as a run sees it: the URL re-checked against the current
//! policy (it may have changed since the URL was stored, and DNS may now
//! answer differently), and the credential decrypted for libgit2.

use depot_domain::policy::{check_syntax, is_forbidden_ip, literal_ip};
use depot_gitsync::Credentials;
use depot_secrets::{Credential, KeyRing};
use depot_settings::Upstream as Policy;
use depot_store::repos::Upstream;
use std::net::ToSocketAddrs;

/// The host did not resolve: the only error here worth retrying.
pub(crate) const UNRESOLVABLE: &str = "upstream_unresolvable";

/// Errors here are permanent (retrying will not make a refused URL allowed),
/// except [`UNRESOLVABLE`].
pub(crate) fn check_url(url: &str, policy: &Policy) -> Result<(), String> {
    let parsed =
        check_syntax(url, &policy.allowed_schemes).map_err(|e| format!("upstream_refused: {e}"))?;
    if policy.allow_private_networks {
        return Ok(());
    }
    let addrs: Vec<std::net::IpAddr> = match literal_ip(&parsed) {
        Some(ip) => vec![ip],
        None => {
            let host = parsed.host_str().unwrap_or_default();
            let port = parsed.port_or_known_default().unwrap_or(443);
            (host, port)
                .to_socket_addrs()
                .map_err(|_| UNRESOLVABLE.to_string())?
                .map(|a| a.ip())
                .collect()
        }
    };
    if addrs.is_empty() || addrs.into_iter().any(is_forbidden_ip) {
        return Err("upstream_refused: url host resolves to a private or reserved address".into());
    }
    Ok(())
}

pub(crate) fn credentials(
    key: &KeyRing,
    upstream: &Upstream,
    repo_id: &str,
) -> Result<Option<Credentials>, String> {
    let Some(sealed) = &upstream.credential else {
        return Ok(None);
    };
    let credential = key
        .open_credential(sealed, repo_id)
        .map_err(|e| format!("credential_unreadable: {e}"))?;
    Ok(Some(match credential {
        Credential::Token {
            token,
            token_username,
        } => Credentials::Token {
            token,
            username: token_username,
        },
        Credential::UsernamePassword { username, password } => {
            Credentials::UsernamePassword { username, password }
        }
    }))
}
