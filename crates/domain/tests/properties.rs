//! Property tests for the rules every request and run goes through: glob
//! normalisation and matching, and the upstream URL policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_domain::policy::{check_syntax, embedded_ipv4, is_forbidden_ip, literal_ip};
use depot_domain::{RefGlobs, RefGlobsInput};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ref-name-like strings: path segments of safe characters.
fn ref_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9][a-z0-9._-]{0,8}", 1..4).prop_map(|parts| parts.join("/"))
}

/// IPv4 addresses in ranges the policy refuses: private, loopback,
/// link-local (metadata), CGNAT.
fn forbidden_v4() -> impl Strategy<Value = Ipv4Addr> {
    (
        prop::sample::select(vec![
            (10u8, 0u8, 255u8),
            (127, 0, 255),
            (169, 254, 254),
            (172, 16, 31),
            (192, 168, 168),
            (100, 64, 127),
        ]),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|((a, lo, hi), b, c, d)| Ipv4Addr::new(a, lo.max(b.min(hi)), c, d))
}

fn v6(seg: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(seg))
}

fn halves(v4: Ipv4Addr) -> (u16, u16) {
    let [a, b, c, d] = v4.octets();
    (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
}

fn any_input() -> impl Strategy<Value = Option<RefGlobsInput>> {
    prop::option::of(
        (prop::option::of(".{0,40}"), prop::option::of(".{0,40}"))
            .prop_map(|(branches, tags)| RefGlobsInput { branches, tags }),
    )
}

proptest! {
    /// Normalisation never panics; when it succeeds both keys are present,
    /// the result compiles, and normalising it again changes nothing.
    #[test]
    fn normalisation_is_total_and_idempotent(input in any_input()) {
        if let Ok(globs) = RefGlobs::normalize(input) {
            prop_assert!(globs.compile().is_ok());
            let again = RefGlobs::normalize(Some(RefGlobsInput {
                branches: Some(globs.branches.clone()),
                tags: Some(globs.tags.clone()),
            }))
            .unwrap();
            prop_assert_eq!(again, globs);
        }
    }

    /// A literal name matches itself in its own namespace and nowhere else;
    /// `*` matches every name; "" matches none.
    #[test]
    fn literal_star_and_empty(name in ref_name(), other in ref_name()) {
        let exact = RefGlobs::normalize(Some(RefGlobsInput { branches: Some(name.clone()), tags: None }))
            .unwrap()
            .compile()
            .unwrap();
        let head = format!("refs/heads/{name}");
        let tag = format!("refs/tags/{name}");
        let note = format!("refs/notes/{name}");
        let other_head = format!("refs/heads/{other}");
        prop_assert!(exact.matches(&head));
        prop_assert!(!exact.matches(&tag));
        prop_assert_eq!(exact.matches(&other_head), other == name);
        let all = RefGlobs::all().compile().unwrap();
        prop_assert!(all.matches(&head));
        prop_assert!(all.matches(&tag));
        prop_assert!(!all.matches(&note));
        let none = RefGlobs { branches: String::new(), tags: String::new() }.compile().unwrap();
        prop_assert!(!none.matches(&head));
    }

    /// A comma list matches exactly the union of its patterns.
    #[test]
    fn comma_list_is_a_union(a in ref_name(), b in ref_name(), probe in ref_name()) {
        let compile = |s: &str| {
            RefGlobs::normalize(Some(RefGlobsInput { branches: Some(s.to_string()), tags: None }))
                .unwrap()
                .compile()
                .unwrap()
        };
        let both = compile(&format!("{a}/*,{b}"));
        let left = compile(&format!("{a}/*"));
        let right = compile(&b);
        let full = format!("refs/heads/{probe}");
        prop_assert_eq!(both.matches(&full), left.matches(&full) || right.matches(&full));
    }

    /// The policy never panics and never accepts user info, a query, a
    /// fragment or a scheme outside the allowed list.
    #[test]
    fn policy_refuses_what_it_must(raw in ".{0,80}") {
        let allowed = vec!["https".to_string()];
        if let Ok(url) = check_syntax(&raw, &allowed) {
            prop_assert_eq!(url.scheme(), "https");
            prop_assert!(url.username().is_empty() && url.password().is_none());
            prop_assert!(url.query().is_none() && url.fragment().is_none());
            prop_assert!(url.host().is_some());
        }
    }

    /// However an IPv4 loopback or private address is spelled in the URL,
    /// it is recognised as forbidden.
    #[test]
    fn odd_spellings_of_private_addresses(a in prop::sample::select(vec![127u8, 10]), b: u8, c: u8, d: u8, style in 0..3usize) {
        let ip = Ipv4Addr::new(a, b, c, d);
        let n = u32::from(ip);
        let host = match style {
            0 => format!("{n}"),
            1 => format!("0x{n:x}"),
            _ => format!("0{:o}.{b}.{c}.{d}", a),
        };
        let url = check_syntax(&format!("https://{host}/r.git"), &["https".to_string()]).unwrap();
        let parsed = literal_ip(&url).unwrap();
        prop_assert_eq!(parsed, IpAddr::V4(ip));
        prop_assert!(is_forbidden_ip(parsed));
    }

    /// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
    #[test]
    fn mapped_addresses_follow_ipv4(a: u8, b: u8, c: u8, d: u8) {
        let v4 = Ipv4Addr::new(a, b, c, d);
        let mapped: Ipv6Addr = v4.to_ipv6_mapped();
        prop_assert_eq!(is_forbidden_ip(IpAddr::V6(mapped)), is_forbidden_ip(IpAddr::V4(v4)));
    }

    /// 6to4 (`2002:AABB:CCDD::/48`) is judged as the IPv4 address it
    /// tunnels to, whatever the rest of the address holds.
    #[test]
    fn six_to_four_follows_its_embedded_ipv4(a: u8, b: u8, c: u8, d: u8, rest: [u16; 5]) {
        let v4 = Ipv4Addr::new(a, b, c, d);
        let (hi, lo) = halves(v4);
        let ip = v6([0x2002, hi, lo, rest[0], rest[1], rest[2], rest[3], rest[4]]);
        prop_assert_eq!(is_forbidden_ip(ip), is_forbidden_ip(IpAddr::V4(v4)));
    }

    /// 6to4 towards a private, loopback or metadata address is refused.
    #[test]
    fn six_to_four_of_a_private_address_is_refused(v4 in forbidden_v4(), rest: [u16; 5]) {
        let (hi, lo) = halves(v4);
        let ip = v6([0x2002, hi, lo, rest[0], rest[1], rest[2], rest[3], rest[4]]);
        prop_assert!(is_forbidden_ip(ip), "{ip}");
    }

    /// NAT64 in the well-known prefix `64:ff9b::/96` is judged as the IPv4
    /// address the gateway translates it to.
    #[test]
    fn nat64_follows_its_embedded_ipv4(a: u8, b: u8, c: u8, d: u8) {
        let v4 = Ipv4Addr::new(a, b, c, d);
        let (hi, lo) = halves(v4);
        let ip = v6([0x64, 0xff9b, 0, 0, 0, 0, hi, lo]);
        prop_assert_eq!(embedded_ipv4(Ipv6Addr::from([0x64, 0xff9b, 0, 0, 0, 0, hi, lo])), Some(v4));
        prop_assert_eq!(is_forbidden_ip(ip), is_forbidden_ip(IpAddr::V4(v4)));
    }

    /// NAT64 towards a private, loopback or metadata address is refused.
    #[test]
    fn nat64_of_a_private_address_is_refused(v4 in forbidden_v4()) {
        let (hi, lo) = halves(v4);
        let ip = v6([0x64, 0xff9b, 0, 0, 0, 0, hi, lo]);
        prop_assert!(is_forbidden_ip(ip), "{ip}");
    }

    /// The rest of `64:ff9b::/32` (local-use NAT64 prefixes) puts the IPv4
    /// address where the operator chose: refused whole.
    #[test]
    fn nat64_outside_the_well_known_prefix_is_refused(mid in any::<[u16; 4]>().prop_filter("outside ::/96", |m| m.iter().any(|s| *s != 0)), tail: [u16; 2]) {
        let ip = v6([0x64, 0xff9b, mid[0], mid[1], mid[2], mid[3], tail[0], tail[1]]);
        prop_assert!(is_forbidden_ip(ip), "{ip}");
    }

    /// Every Teredo address (`2001::/32`) is refused.
    #[test]
    fn teredo_is_refused(rest: [u16; 6]) {
        let ip = v6([0x2001, 0, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5]]);
        prop_assert!(is_forbidden_ip(ip), "{ip}");
    }

    /// Every site-local address (`fec0::/10`) is refused.
    #[test]
    fn site_local_is_refused(low in 0u16..0x40, rest: [u16; 7]) {
        let ip = v6([0xfec0 | low, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6]]);
        prop_assert!(is_forbidden_ip(ip), "{ip}");
    }

    /// Each form is also refused when it arrives as a URL's literal host.
    #[test]
    fn literal_ipv6_hosts_of_each_form_are_refused(v4 in forbidden_v4(), form in 0..4usize, rest: [u16; 5]) {
        let (hi, lo) = halves(v4);
        let seg = match form {
            0 => [0x2002, hi, lo, rest[0], rest[1], rest[2], rest[3], rest[4]],
            1 => [0x64, 0xff9b, 0, 0, 0, 0, hi, lo],
            2 => [0x2001, 0, rest[0], rest[1], rest[2], rest[3], hi, lo],
            _ => [0xfec0 | (rest[0] & 0x3f), rest[1], rest[2], rest[3], rest[4], 0, hi, lo],
        };
        let ip = Ipv6Addr::from(seg);
        let url = check_syntax(&format!("https://[{ip}]/r.git"), &["https".to_string()]).unwrap();
        let parsed = literal_ip(&url).unwrap();
        prop_assert_eq!(parsed, IpAddr::V6(ip));
        prop_assert!(is_forbidden_ip(parsed), "{ip}");
    }
}
