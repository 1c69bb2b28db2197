//! Upstream URL policy, the pure half: syntax and address classification.
//! Resolving the host is I/O and happens in the callers (the gateway when a
//! URL is stored, the worker when a run starts), which then ask
//! [`is_forbidden_ip`] about every address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("url is not a valid absolute URL")]
    NotAUrl,
    #[error("url scheme {0:?} is not allowed")]
    Scheme(String),
    #[error("url must not contain user info; pass credentials in auth")]
    UserInfo,
    #[error("url must not contain a query or fragment")]
    QueryOrFragment,
    #[error("url has no host")]
    NoHost,
    #[error("url is longer than 2048 characters")]
    TooLong,
    #[error("url host resolves to a private or reserved address")]
    PrivateAddress,
    #[error("url host could not be resolved")]
    Unresolvable,
}

/// Check an upstream URL's syntax against the allowed schemes. Returns the
/// parsed URL; callers store `url.as_str()` (normalised form).
pub fn check_syntax(raw: &str, allowed_schemes: &[String]) -> Result<Url, PolicyError> {
    if raw.len() > 2048 {
        return Err(PolicyError::TooLong);
    }
    // `url` accepts things git would treat differently (leading blanks,
    // control characters); refuse them rather than normalise silently.
    if raw.trim() != raw || raw.chars().any(|c| c.is_control()) {
        return Err(PolicyError::NotAUrl);
    }
    let url = Url::parse(raw).map_err(|_| PolicyError::NotAUrl)?;
    if !allowed_schemes.iter().any(|s| s == url.scheme()) {
        return Err(PolicyError::Scheme(url.scheme().to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(PolicyError::UserInfo);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(PolicyError::QueryOrFragment);
    }
    match url.host() {
        None => Err(PolicyError::NoHost),
        Some(Host::Domain("")) => Err(PolicyError::NoHost),
        Some(_) => Ok(url),
    }
}

/// The URL's host as an address, when it is a literal one. (The `url` crate
/// already turns odd IPv4 spellings such as `0x7f000001` or `2130706433`
/// into `127.0.0.1`.)
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    }
}

/// What the address half of the policy must look at for `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The host is a literal address: nothing to resolve.
    Literal(IpAddr),
    /// Resolve this host and port, then call [`check_addresses`].
    Resolve(String, u16),
}

pub fn target(url: &Url) -> Target {
    match literal_ip(url) {
        Some(ip) => Target::Literal(ip),
        None => Target::Resolve(
            url.host_str().unwrap_or_default().to_string(),
            url.port_or_known_default().unwrap_or(443),
        ),
    }
}

/// The address half of the policy: every address the host resolved to
/// must be allowed (one forbidden answer is enough to refuse, since the
/// client may connect to any of them).
pub fn check_addresses(addrs: &[IpAddr]) -> Result<(), PolicyError> {
    if addrs.is_empty() {
        return Err(PolicyError::Unresolvable);
    }
    if addrs.iter().copied().any(is_forbidden_ip) {
        return Err(PolicyError::PrivateAddress);
    }
    Ok(())
}

/// Loopback, private, link-local (including the cloud metadata address),
/// CGNAT, unique-local, multicast, unspecified, documentation and other
/// reserved ranges; IPv4-mapped and -compatible IPv6 are judged as IPv4.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x64 && seg[1] == 0xff9b) // NAT64 reaches IPv4 space
        // IPv4-compatible (deprecated) ::a.b.c.d
        || (seg[..6].iter().all(|s| *s == 0) && forbidden_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn https() -> Vec<String> {
        vec!["https".into()]
    }

    #[test]
    fn syntax() {
        assert!(check_syntax("https://github.com/o/r.git", &https()).is_ok());
        for (raw, err) in [
            ("file:///etc/passwd", PolicyError::Scheme("file".into())),
            ("http://h/r", PolicyError::Scheme("http".into())),
            ("ext::sh -c id", PolicyError::Scheme("ext".into())),
            ("/srv/git/r.git", PolicyError::NotAUrl),
            ("https://u:p@h/r", PolicyError::UserInfo),
            ("https://u@h/r", PolicyError::UserInfo),
            ("https://h/r?x=1", PolicyError::QueryOrFragment),
            ("https://h/r#x", PolicyError::QueryOrFragment),
            (" https://h/r", PolicyError::NotAUrl),
            ("https://h/r\n", PolicyError::NotAUrl),
        ] {
            assert_eq!(check_syntax(raw, &https()), Err(err), "{raw}");
        }
    }

    #[test]
    fn addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_forbidden_ip(bad.parse().unwrap()), "{bad}");
        }
        for good in ["140.82.112.3", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_forbidden_ip(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn one_forbidden_answer_refuses_the_host() {
        let public: IpAddr = "140.82.112.3".parse().unwrap();
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(check_addresses(&[public]), Ok(()));
        assert_eq!(
            check_addresses(&[public, private]),
            Err(PolicyError::PrivateAddress)
        );
        assert_eq!(check_addresses(&[]), Err(PolicyError::Unresolvable));
        let url = check_syntax("https://github.com:8443/o/r", &https()).unwrap();
        assert_eq!(target(&url), Target::Resolve("github.com".into(), 8443));
        let url = check_syntax("https://[::1]/r", &https()).unwrap();
        assert_eq!(target(&url), Target::Literal("::1".parse().unwrap()));
    }

    #[test]
    fn odd_ipv4_spellings_are_literal_loopback() {
        for raw in [
            "https://0x7f000001/r",
            "https://2130706433/r",
            "https://0177.0.0.1/r",
            "https://127.1/r",
        ] {
            let url = check_syntax(raw, &https()).unwrap();
            let ip = literal_ip(&url).unwrap();
            assert!(is_forbidden_ip(ip), "{raw} -> {ip}");
        }
    }
}
