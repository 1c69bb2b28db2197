//! The upstream as a run sees it: the URL re-checked against the current
//! policy (it may have changed since the URL was stored, and DNS may now
//! answer differently), and the credential decrypted for libgit2.
//!
//! The host is resolved here once per run, and the addresses that passed
//! the policy are the only ones the run's transport connects to
//! (`depot_gitsync::Net::addrs`): there is no second lookup for a DNS
//! answer to change between check and connect.
//!
//! The credential is opened for the origin of the very URL the run hands to
//! libgit2 (which follows no redirect), never for an origin recorded
//! anywhere else: a credential sealed for another origin, as when a row's
//! URL was edited in the database, does not open, and the run fails before
//! contacting anyone.

use depot_domain::policy::{PolicyError, Resolve, UrlPolicy, origin};
use depot_domain::{Failure, FailureCode};
use depot_gitsync::Credentials;
use depot_secrets::{Credential, KeyRing};
use depot_settings::Upstream as Policy;
use depot_store::repos::Upstream;
use std::net::{IpAddr, ToSocketAddrs};

/// The system's resolver.
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// Check the URL against the policy and return the addresses the run may
/// connect to. Errors here are permanent (retrying will not make a refused
/// URL allowed), except `upstream_unresolvable` (DNS may be down for a
/// moment).
pub(crate) fn vet(
    url: &str,
    policy: &Policy,
    resolver: &dyn Resolve,
) -> Result<Vec<IpAddr>, Failure> {
    let policy = UrlPolicy {
        allowed_schemes: &policy.allowed_schemes,
        allow_private_networks: policy.allow_private_networks,
    };
    match depot_domain::policy::vet(url, &policy, true, resolver) {
        Ok(vetted) => Ok(vetted.addrs),
        Err(PolicyError::Unresolvable) => Err(FailureCode::UpstreamUnresolvable.into()),
        Err(e) => Err(FailureCode::UpstreamRefused.with(e.to_string())),
    }
}

pub(crate) fn credentials(
    key: &KeyRing,
    upstream: &Upstream,
    repo_id: &str,
) -> Result<Option<Credentials>, Failure> {
    let Some(sealed) = &upstream.credential else {
        return Ok(None);
    };
    let Some(origin) = origin(&upstream.url) else {
        return Err(FailureCode::UpstreamRefused.with("url has no origin to send a credential to"));
    };
    if !depot_secrets::is_origin_bound(sealed) {
        tracing::warn!(
            repo_id,
            "credential sealed before origin binding; run `depot-admin secrets rotate` to bind it"
        );
    }
    let credential = key
        .open_credential(sealed, repo_id, &origin)
        .map_err(|e| FailureCode::CredentialUnreadable.with(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers a public address first, loopback after: a rebinding DNS.
    struct Rebinding(AtomicUsize);

    impl Resolve for Rebinding {
        fn resolve(&self, _host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(vec![if n == 0 {
                "93.184.215.14".parse().unwrap()
            } else {
                "127.0.0.1".parse().unwrap()
            }])
        }
    }

    fn policy() -> Policy {
        depot_settings::Settings::load_from(None, std::collections::HashMap::new())
            .unwrap()
            .upstream
    }

    #[test]
    fn vetting_resolves_once_and_pins_what_passed() {
        let dns = Rebinding(AtomicUsize::new(0));
        let addrs = vet("https://git.example.com/o/r.git", &policy(), &dns).unwrap();
        assert_eq!(addrs, vec!["93.184.215.14".parse::<IpAddr>().unwrap()]);
        assert_eq!(dns.0.load(Ordering::SeqCst), 1);
        // The next run asks again, and the rebound answer is refused.
        let again = vet("https://git.example.com/o/r.git", &policy(), &dns);
        assert!(
            again
                .unwrap_err()
                .to_string()
                .starts_with("upstream_refused")
        );
    }
}
