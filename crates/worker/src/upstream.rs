//! The upstream as a run sees it: the URL re-checked against the current
//! policy (it may have changed since the URL was stored, and DNS may now
//! answer differently), and the credential decrypted for libgit2.
//!
//! The credential is opened for the origin of the very URL the run hands to
//! libgit2 (which follows no redirect), never for an origin recorded
//! anywhere else: a credential sealed for another origin, as when a row's
//! URL was edited in the database, does not open, and the run fails before
//! contacting anyone.

use depot_domain::policy::{Target, check_addresses, check_syntax, origin, target};
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
    let addrs = match target(&parsed) {
        Target::Literal(ip) => vec![ip],
        Target::Resolve(host, port) => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|_| UNRESOLVABLE.to_string())?
            .map(|a| a.ip())
            .collect(),
    };
    check_addresses(&addrs).map_err(|e| format!("upstream_refused: {e}"))?;
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
    let Some(origin) = origin(&upstream.url) else {
        return Err("upstream_refused: url has no origin to send a credential to".into());
    };
    if !depot_secrets::is_origin_bound(sealed) {
        tracing::warn!(
            repo_id,
            "credential sealed before origin binding; run `depot-admin secrets rotate` to bind it"
        );
    }
    let credential = key
        .open_credential(sealed, repo_id, &origin)
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
