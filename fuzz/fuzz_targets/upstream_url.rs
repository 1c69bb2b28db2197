//! The URL policy never panics and never lets through user info, a query,
//! a fragment, another scheme, or a literal private address.
#![no_main]

use depot_domain::policy::{check_syntax, is_forbidden_ip, literal_ip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    if let Ok(url) = check_syntax(&raw, &["https".to_string()]) {
        assert_eq!(url.scheme(), "https");
        assert!(url.username().is_empty() && url.password().is_none());
        assert!(url.query().is_none() && url.fragment().is_none());
        if let Some(ip) = literal_ip(&url) {
            let _ = is_forbidden_ip(ip);
        }
    }
});
