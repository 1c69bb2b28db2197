//! The gateway's strict body reader never panics on any byte string, and
//! every refusal names a field.
#![no_main]

use depot_gateway::json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match json::parse_object(data) {
        Ok(map) => {
            let _ = json::only_keys(&map, &["direction", "ref_globs"], "");
            let _ = json::required_string(&map, "direction", "");
            if let Ok(json::Field::Present(globs)) = json::object(&map, "ref_globs", "") {
                let _ = json::opt_string(globs, "branches", "ref_globs");
                let _ = json::opt_string(globs, "tags", "ref_globs");
            }
        }
        Err(e) => assert!(e.details.as_ref().is_some_and(|d| d.contains_key("field"))),
    }
});
