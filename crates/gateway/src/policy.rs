//! The upstream URL policy as the gateway applies it when a URL is stored
//! (`depot_domain::policy::vet`, with the system's resolver bounded in
//! time): syntax and scheme, then (unless private networks are allowed)
//! every address the host resolves to.

use crate::error::ApiError;
use depot_domain::policy::{PolicyError, UrlPolicy, vet};
use depot_settings::Upstream;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

/// How long the host's lookup may take before the URL counts as
/// unresolvable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn check_upstream_url(raw: &str, policy: &Upstream) -> Result<String, ApiError> {
    check_url(raw, policy, "upstream.url").await
}

/// The policy for a URL given as request field `field` (an upstream's, a
/// webhook target's).
pub async fn check_url(raw: &str, policy: &Upstream, field: &str) -> Result<String, ApiError> {
    let refuse = |e: PolicyError| ApiError::invalid(field, e.to_string());
    let (raw, allowed_schemes) = (raw.to_owned(), policy.allowed_schemes.clone());
    let allow_private_networks = policy.allow_private_networks;
    // The lookup blocks, as tokio's own `lookup_host` does on a blocking
    // thread; a lookup past the timeout is left to finish there.
    let vetted = tokio::task::spawn_blocking(move || {
        let policy = UrlPolicy {
            allowed_schemes: &allowed_schemes,
            allow_private_networks,
        };
        vet(&raw, &policy, false, &system_resolve)
    });
    match tokio::time::timeout(LOOKUP_TIMEOUT, vetted).await {
        Ok(Ok(Ok(vetted))) => Ok(vetted.url.to_string()),
        Ok(Ok(Err(e))) => Err(refuse(e)),
        _ => Err(refuse(PolicyError::Unresolvable)),
    }
}

fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}
