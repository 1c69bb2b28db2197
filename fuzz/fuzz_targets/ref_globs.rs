//! Glob normalisation and matching never panic, and what normalises
//! compiles.
#![no_main]

use depot_domain::{RefGlobs, RefGlobsInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let branches = parts.next().map(str::to_string);
    let tags = parts.next().map(str::to_string);
    let probe = parts.next().unwrap_or("main");
    if let Ok(globs) = RefGlobs::normalize(Some(RefGlobsInput { branches, tags })) {
        let matcher = globs.compile().expect("normalised globs compile");
        let _ = matcher.matches(&format!("refs/heads/{probe}"));
        let _ = matcher.matches(&format!("refs/tags/{probe}"));
    }
});
