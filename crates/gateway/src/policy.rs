//! The upstream URL policy as the gateway applies it when a URL is stored:
//! syntax and scheme, then (unless private networks are allowed) every
//! address the host resolves to.

use crate::error::ApiError;
use depot_domain::policy::{PolicyError, Target, check_addresses, check_syntax, target};
use depot_settings::Upstream;
use std::time::Duration;

pub async fn check_upstream_url(raw: &str, policy: &Upstream) -> Result<String, ApiError> {
    check_url(raw, policy, "upstream.url").await
}

/// The policy for a URL given as request field `field` (an upstream's, a
/// webhook target's).
pub async fn check_url(raw: &str, policy: &Upstream, field: &str) -> Result<String, ApiError> {
    let refuse = |e: PolicyError| ApiError::invalid(field, e.to_string());
    let url = check_syntax(raw, &policy.allowed_schemes).map_err(refuse)?;
    if !policy.allow_private_networks {
        let addrs = match target(&url) {
            Target::Literal(ip) => vec![ip],
            Target::Resolve(host, port) => {
                let lookup = tokio::net::lookup_host((host, port));
                match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    _ => return Err(refuse(PolicyError::Unresolvable)),
                }
            }
        };
        check_addresses(&addrs).map_err(refuse)?;
    }
    Ok(url.to_string())
}
