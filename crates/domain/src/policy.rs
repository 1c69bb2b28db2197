//! Upstream URL policy: syntax and address classification, assembled in
//! one place, [`vet`]. Resolving the host is I/O, so the callers (the
//! gateway when a URL is stored, the worker when a run starts) pass their
//! resolver in; every address it answers is then judged by
//! [`is_forbidden_ip`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Origin, Url};

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

/// The origin a stored credential is bound to: scheme, host and port, the
/// port always written out so that `https://h/x` and `https://h:443/y` are
/// one origin. Hosts come normalised by the URL parser (lower case,
/// punycode, canonical IP spelling). `None` when the URL has no such origin
/// (unparsable, or a scheme without a host and default port): a credential
/// can then be bound to nothing and must never be sent.
pub fn origin(raw: &str) -> Option<String> {
    match Url::parse(raw).ok()?.origin() {
        Origin::Tuple(scheme, host, port) => Some(format!("{scheme}://{host}:{port}")),
        Origin::Opaque(_) => None,
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

/// Name resolution as [`vet`] uses it, injected so that this crate does no
/// I/O and tests can play any DNS (a rebinding one, say).
pub trait Resolve {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>>;
}

impl<F> Resolve for F
where
    F: Fn(&str, u16) -> std::io::Result<Vec<IpAddr>>,
{
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        self(host, port)
    }
}

/// The deployment's URL policy (`upstream.allowed_schemes`,
/// `upstream.allow_private_networks`).
#[derive(Debug, Clone, Copy)]
pub struct UrlPolicy<'a> {
    pub allowed_schemes: &'a [String],
    pub allow_private_networks: bool,
}

/// What passed [`vet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vetted {
    pub url: Url,
    /// The addresses the host resolved to, every one allowed by the policy;
    /// the only ones a client may connect to. Empty when nothing was
    /// resolved (private networks allowed and no `pin` asked for).
    pub addrs: Vec<IpAddr>,
}

/// The whole URL policy: the syntax and scheme, then, unless private
/// networks are allowed, every address the host resolves to. With `pin`
/// the host is resolved in any case, once, and the answer returned: a
/// client that connects only to those addresses leaves no second lookup
/// for a DNS answer to change between check and connect.
///
/// A resolver error or an empty answer is [`PolicyError::Unresolvable`]
/// (the only error worth asking again about later).
pub fn vet(
    raw: &str,
    policy: &UrlPolicy<'_>,
    pin: bool,
    resolver: &dyn Resolve,
) -> Result<Vetted, PolicyError> {
    let url = check_syntax(raw, policy.allowed_schemes)?;
    if policy.allow_private_networks && !pin {
        return Ok(Vetted {
            url,
            addrs: Vec::new(),
        });
    }
    let addrs = match target(&url) {
        Target::Literal(ip) => vec![ip],
        Target::Resolve(host, port) => resolver
            .resolve(&host, port)
            .map_err(|_| PolicyError::Unresolvable)?,
    };
    if addrs.is_empty() {
        return Err(PolicyError::Unresolvable);
    }
    if !policy.allow_private_networks {
        check_addresses(&addrs)?;
    }
    Ok(Vetted { url, addrs })
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
/// CGNAT, unique-local, site-local, Teredo, multicast, unspecified,
/// documentation and other reserved ranges. IPv6 forms that carry an IPv4
/// address the network will end up connecting to (mapped, NAT64, 6to4,
/// IPv4-compatible) are judged as that IPv4 address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address is translated or tunnelled to, for the
/// forms where that address is where the packets really go:
/// - IPv4-mapped `::ffff:a.b.c.d` (the local stack speaks IPv4);
/// - NAT64 well-known prefix `64:ff9b::a.b.c.d` (RFC 6052): a NAT64 gateway
///   forwards to the IPv4 address, so `64:ff9b::10.0.0.1` is 10.0.0.1. Judged
///   rather than refused outright because DNS64 networks answer every
///   IPv4-only host (github.com among them) with exactly such an address;
/// - 6to4 `2002:AABB:CCDD::/48` (RFC 3056): tunnelled to A.B.C.D.
///
/// Teredo (`2001::/32`) also embeds IPv4 addresses, but obfuscated and of a
/// relay and a NAT, not of the host: it is refused whole in [`forbidden_v6`].
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = ip.segments();
    let from = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(from(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return Some(from(seg[1], seg[2]));
    }
    None
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
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (RFC 7526)
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
        || (seg[0] & 0xffc0) == 0xfec0 // site local fec0::/10 (deprecated, still routed inside sites)
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo 2001::/32
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        // NAT64 outside the well-known /96 (local-use 64:ff9b:1::/48, RFC
        // 8215): the IPv4 address sits where the operator chose, so it
        // cannot be judged.
        || (seg[0] == 0x64 && seg[1] == 0xff9b)
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

    fn policy(allowed: &[String], allow_private_networks: bool) -> UrlPolicy<'_> {
        UrlPolicy {
            allowed_schemes: allowed,
            allow_private_networks,
        }
    }

    fn answers(ips: &'static [&'static str]) -> impl Fn(&str, u16) -> std::io::Result<Vec<IpAddr>> {
        move |_, _| Ok(ips.iter().map(|ip| ip.parse().unwrap()).collect())
    }

    fn no_dns(_: &str, _: u16) -> std::io::Result<Vec<IpAddr>> {
        Err(std::io::Error::other("no dns"))
    }

    #[test]
    fn vetting_returns_the_allowed_answer_to_pin() {
        let https = https();
        let v = vet(
            "https://git.example.com/r.git",
            &policy(&https, false),
            false,
            &answers(&["93.184.215.14"]),
        )
        .unwrap();
        assert_eq!(v.url.as_str(), "https://git.example.com/r.git");
        assert_eq!(v.addrs, vec!["93.184.215.14".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn vetting_refuses_a_private_answer_unless_private_networks_are_allowed() {
        let https = https();
        let dns = answers(&["10.0.0.1"]);
        let url = "https://git.example.com/r.git";
        assert_eq!(
            vet(url, &policy(&https, false), false, &dns),
            Err(PolicyError::PrivateAddress)
        );
        let pinned = vet(url, &policy(&https, true), true, &dns).unwrap();
        assert_eq!(pinned.addrs, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn vetting_resolves_for_private_networks_only_when_asked_to_pin() {
        let https = https();
        let url = "https://nowhere.invalid/r.git";
        let v = vet(url, &policy(&https, true), false, &no_dns).unwrap();
        assert!(v.addrs.is_empty());
        assert_eq!(
            vet(url, &policy(&https, true), true, &no_dns),
            Err(PolicyError::Unresolvable)
        );
        assert_eq!(
            vet(url, &policy(&https, false), false, &answers(&[])),
            Err(PolicyError::Unresolvable)
        );
    }

    #[test]
    fn vetting_checks_the_syntax_before_resolving() {
        let https = https();
        assert_eq!(
            vet("http://h/r.git", &policy(&https, false), true, &no_dns),
            Err(PolicyError::Scheme("http".into()))
        );
        assert_eq!(
            vet(
                "https://127.0.0.1/r.git",
                &policy(&https, false),
                true,
                &no_dns
            ),
            Err(PolicyError::PrivateAddress)
        );
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
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::808:808",
            "fec0::1",
            "feff::1",
        ] {
            assert!(is_forbidden_ip(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "140.82.112.3",
            "2606:4700::1111",
            "8.8.8.8",
            "64:ff9b::140.82.112.3",
            "2002:8c52:7003::1",
        ] {
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
    fn origins_normalise_default_ports_and_ignore_paths() {
        let o = |raw: &str| origin(raw);
        assert_eq!(
            o("https://Git.Example.com/a.git").as_deref(),
            Some("https://git.example.com:443")
        );
        assert_eq!(
            o("https://git.example.com/a.git"),
            o("https://git.example.com:443/b/c.git")
        );
        assert_eq!(o("http://h/x"), o("http://h:80/y"));
        assert_ne!(o("https://h/x"), o("https://h:8443/x"));
        assert_ne!(o("https://h/x"), o("http://h:443/x"));
        assert_ne!(o("https://h/x"), o("https://h.example/x"));
        assert_eq!(
            o("https://[::1]:8443/r").as_deref(),
            Some("https://[::1]:8443")
        );
        assert_eq!(
            o("https://0x7f000001/r").as_deref(),
            Some("https://127.0.0.1:443")
        );
        assert_eq!(o("ssh://h/r"), None);
        assert_eq!(o("not a url"), None);
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
