//! Property tests for list cursors and limits: a cursor round-trips, is
//! bound to its list, and no string a client sends makes decoding panic or
//! accept something `encode` did not make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_gateway::pagination::{decode, encode, limit};
use proptest::prelude::*;

proptest! {
    #[test]
    fn cursors_round_trip_within_their_list(seq in 0i64..=i64::MAX) {
        prop_assert_eq!(decode("s", &encode("s", seq)).unwrap(), seq);
        prop_assert_eq!(decode("r", &encode("r", seq)).unwrap(), seq);
        prop_assert!(decode("r", &encode("s", seq)).is_err());
    }

    #[test]
    fn any_string_is_refused_or_is_a_real_cursor(raw in ".{0,80}") {
        if let Ok(seq) = decode("s", &raw) {
            prop_assert!(seq >= 0);
            prop_assert_eq!(encode("s", seq), raw);
        }
    }

    #[test]
    fn limits_outside_1_to_100_are_refused(n in any::<i64>()) {
        let text = n.to_string();
        prop_assert_eq!(limit(Some(&text)).is_ok(), (1..=100).contains(&n));
    }
}

#[test]
fn refused_inputs_name_their_field() {
    let e = decode("s", "not a cursor").unwrap_err();
    assert_eq!(e.details.unwrap()["field"], "cursor");
    let e = limit(Some("0")).unwrap_err();
    assert_eq!(e.details.unwrap()["field"], "limit");
}
