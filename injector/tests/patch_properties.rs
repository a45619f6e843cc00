//! The admission patch over generated documents (proptest): for any two
//! JSON documents, the diff applied to the first gives the second, by this
//! crate's `apply` and by an independent RFC 6902 implementation
//! (json-patch), and a document's diff with itself is empty. Keys with `/`
//! and `~` (annotation keys have them) are among those generated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mirrord_injector::patch::{apply, diff};
use proptest::prelude::*;
use serde_json::Value;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("mirrord.dev/inject".to_owned()),
        Just("x~y".to_owned()),
        Just("~1".to_owned()),
        Just(String::new()),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::from),
        prop_oneof![Just("x"), Just("y"), Just("")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn the_diff_turns_one_document_into_the_other(a in json(), b in json()) {
        let ops = diff(&a, &b);
        let mut ours = a.clone();
        apply(&mut ours, &ops).unwrap();
        prop_assert_eq!(&ours, &b);
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        let mut theirs = a.clone();
        json_patch::patch(&mut theirs, &patch).unwrap();
        prop_assert_eq!(&theirs, &b);
        prop_assert!(diff(&b, &b).is_empty());
    }
}
