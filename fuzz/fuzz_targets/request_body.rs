//! The gateway's strict body reader never panics on any byte string, and
//! every refusal names a field.
#![no_main]

use depot_gateway::json;
use depot_gateway::routes::repos::RepoBody;
use depot_gateway::routes::syncs::SyncBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let refusals = match json::parse_object(data) {
        Ok(map) => [
            json::from_object::<SyncBody>(&map).err(),
            json::from_object::<RepoBody>(&map).err(),
        ],
        Err(e) => [Some(e), None],
    };
    for e in refusals.into_iter().flatten() {
        assert!(e.details.as_ref().is_some_and(|d| d.contains_key("field")));
    }
});
