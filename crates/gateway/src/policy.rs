//! The upstream URL policy as the gateway applies it when a URL is stored:
//! syntax and scheme, then (unless private networks are allowed) every
//! address the host resolves to.

use crate::error::ApiError;
use depot_domain::policy::{PolicyError, check_syntax, is_forbidden_ip, literal_ip};
use depot_settings::Upstream;
use std::time::Duration;

pub async fn check_upstream_url(raw: &str, policy: &Upstream) -> Result<String, ApiError> {
    let refuse = |e: PolicyError| ApiError::invalid("upstream.url", e.to_string());
    let url = check_syntax(raw, &policy.allowed_schemes).map_err(refuse)?;
    if !policy.allow_private_networks {
        let addrs: Vec<std::net::IpAddr> = match literal_ip(&url) {
            Some(ip) => vec![ip],
            None => {
                let host = url.host_str().unwrap_or_default().to_string();
                let port = url.port_or_known_default().unwrap_or(443);
                let lookup = tokio::net::lookup_host((host, port));
                match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    _ => return Err(refuse(PolicyError::Unresolvable)),
                }
            }
        };
        if addrs.is_empty() {
            return Err(refuse(PolicyError::Unresolvable));
        }
        if addrs.into_iter().any(is_forbidden_ip) {
            return Err(refuse(PolicyError::PrivateAddress));
        }
    }
    Ok(url.to_string())
}
