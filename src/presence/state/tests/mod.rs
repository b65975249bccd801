//! Local changes and rendering.
#![allow(clippy::unwrap_used)]

mod replication;

use super::render::push_json_string;
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeSet, HashSet};

const A: ReplicaId = ReplicaId(1);
const B: ReplicaId = ReplicaId(2);

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// `(key, phx_ref)` of every meta in a `presence_state` payload.
fn refs_in(state: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (key, group) in parse(state).as_object().unwrap() {
        for meta in group["metas"].as_array().unwrap() {
            out.insert((key.clone(), meta["phx_ref"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// What a client sees after applying diffs the way phoenix.js `syncDiff` does.
#[derive(Default)]
struct ClientView(BTreeSet<(String, String)>);

impl ClientView {
    fn apply(&mut self, diff: &Diff) {
        // Round-trip through the wire format, as a client would.
        let v = parse(&diff.to_json());
        for (side, join) in [("joins", true), ("leaves", false)] {
            for (key, group) in v[side].as_object().unwrap() {
                for meta in group["metas"].as_array().unwrap() {
                    let r = (key.clone(), meta["phx_ref"].as_str().unwrap().to_owned());
                    if join {
                        self.0.insert(r);
                    } else {
                        assert!(self.0.remove(&r), "leave of unknown meta {r:?}");
                    }
                }
            }
        }
    }
}

/// Merged diffs (`absorb`) leave a client exactly where the diffs one by one would,
/// for random changes cut into random runs; a meta both joining and leaving within a
/// run is never sent.
#[test]
fn absorbed_diffs_apply_like_the_sequence_they_replace() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let mut p = TopicPresence::new(A);
        let mut one_by_one = ClientView::default();
        let mut merged_view = ClientView::default();
        let mut run = Diff::default();
        for step in 0..60 {
            let owner = rng.random_range(0..6u64);
            let diff = if rng.random_bool(0.3) {
                p.untrack(owner)
            } else {
                let payload = obj(json!({"v": rng.random_range(0..3)}));
                p.track(owner, &format!("k{}", owner % 3), payload, format!("R{step}"))
            };
            if let Some(d) = diff {
                one_by_one.apply(&d);
                run.absorb(d);
            }
            if rng.random_bool(0.25) {
                let sent = std::mem::take(&mut run);
                let joined: HashSet<&str> = sent.joins.iter().map(|(_, m)| &*m.phx_ref).collect();
                assert!(sent.leaves.iter().all(|(_, m)| !joined.contains(&*m.phx_ref)));
                merged_view.apply(&sent);
                assert_eq!(merged_view.0, one_by_one.0);
            }
        }
        merged_view.apply(&run);
        assert_eq!(merged_view.0, one_by_one.0);
        assert_eq!(merged_view.0, refs_in(&p.state_json()));
    }
}

#[test]
fn track_new_entry_joins_with_its_phx_ref() {
    let mut p = TopicPresence::new(A);
    let d = p
        .track(1, "user-1", obj(json!({"online_at": 1})), "REF1".into())
        .unwrap();
    assert!(d.leaves.is_empty());
    assert_eq!(d.joins.len(), 1);
    assert_eq!(d.joins[0].0, "user-1");
    assert_eq!(d.joins[0].1.phx_ref, "REF1");
    assert_eq!(d.joins[0].1.phx_ref_prev, None);
    assert_eq!(
        parse(&d.to_json()),
        json!({"joins": {"user-1": {"metas": [{"phx_ref": "REF1", "online_at": 1}]}}, "leaves": {}})
    );
    assert_eq!((p.len(), p.is_empty(), p.clock()), (1, false, 1));
    assert_eq!(
        p.entry(1).map(|(k, m)| (k, m.phx_ref.as_str())),
        Some(("user-1", "REF1"))
    );
}

#[test]
fn same_payload_again_is_no_diff() {
    let mut p = TopicPresence::new(A);
    let _ = p.track(1, "k", obj(json!({"a": 1, "b": [1, 2]})), "R1".into());
    assert_eq!(p.track(1, "k", obj(json!({"b": [1, 2], "a": 1})), "R2".into()), None);
    assert_eq!(p.clock(), 1);
    assert_eq!(p.entry(1).unwrap().1.phx_ref, "R1");
}

#[test]
fn changed_payload_is_one_diff_leaving_old_and_joining_new_with_prev() {
    let mut p = TopicPresence::new(A);
    let _ = p.track(1, "k", obj(json!({"status": "online"})), "R1".into());
    let d = p.track(1, "k", obj(json!({"status": "away"})), "R2".into()).unwrap();
    assert_eq!(
        parse(&d.to_json()),
        json!({
            "joins": {"k": {"metas": [{"phx_ref": "R2", "phx_ref_prev": "R1", "status": "away"}]}},
            "leaves": {"k": {"metas": [{"phx_ref": "R1", "status": "online"}]}}
        })
    );
    assert_eq!(p.len(), 1);
    assert_eq!(
        parse(&p.state_json()),
        json!({"k": {"metas": [{"phx_ref": "R2", "phx_ref_prev": "R1", "status": "away"}]}})
    );
    // A key change is an update too.
    let d = p.track(1, "k2", obj(json!({"status": "away"})), "R3".into()).unwrap();
    assert_eq!((d.leaves[0].0.as_str(), d.joins[0].0.as_str()), ("k", "k2"));
    assert_eq!(d.joins[0].1.phx_ref_prev.as_deref(), Some("R2"));
    assert_eq!(p.len(), 1);
}

#[test]
fn untrack_leaves_with_the_same_phx_ref() {
    let mut p = TopicPresence::new(A);
    let joined = p.track(7, "k", obj(json!({"x": true})), "R1".into()).unwrap();
    let left = p.untrack(7).unwrap();
    assert!(left.joins.is_empty());
    assert_eq!(left.leaves, joined.joins);
    assert_eq!(parse(&left.to_json())["leaves"]["k"]["metas"][0]["phx_ref"], "R1");
    assert!(p.is_empty());
    assert_eq!(p.state_json(), "{}");
    assert_eq!(p.untrack(7), None);
    assert_eq!(p.untrack(8), None);
}

#[test]
fn two_owners_with_one_key_are_listed_oldest_first() {
    let refs = PhxRefGen::with_node(1);
    let mut p = TopicPresence::new(A);
    let (r1, r2) = (refs.next(2_000), refs.next(3_000));
    // Tracked out of time order, rendered in time order.
    let _ = p.track(2, "same", obj(json!({"tab": 2})), r2.clone());
    let _ = p.track(1, "same", obj(json!({"tab": 1})), r1.clone());
    let _ = p.track(3, "other", obj(json!({})), refs.next(4_000));
    let state = parse(&p.state_json());
    let metas = state["same"]["metas"].as_array().unwrap();
    assert_eq!(metas.len(), 2);
    assert_eq!(
        (metas[0]["phx_ref"].as_str(), metas[1]["phx_ref"].as_str()),
        (Some(&*r1), Some(&*r2))
    );
    assert_eq!(state["other"]["metas"].as_array().unwrap().len(), 1);
    // An update moves the meta to the end: it is the newest.
    let r3 = refs.next(5_000);
    let _ = p.track(1, "same", obj(json!({"tab": 1, "v": 2})), r3.clone());
    let state = parse(&p.state_json());
    assert_eq!(state["same"]["metas"][1]["phx_ref"].as_str(), Some(&*r3));
}

#[test]
fn diff_json_always_has_both_keys_and_groups_by_key() {
    assert_eq!(Diff::default().to_json(), r#"{"joins":{},"leaves":{}}"#);
    assert!(Diff::default().is_empty());
    let m = |r: &str| Arc::new(Meta::new(r.into(), None, Map::new()));
    let d = Diff {
        joins: vec![("b".into(), m("1")), ("a".into(), m("2")), ("b".into(), m("3"))],
        leaves: vec![],
    };
    assert!(!d.is_empty());
    assert_eq!(
        d.to_json(),
        r#"{"joins":{"a":{"metas":[{"phx_ref":"2"}]},"b":{"metas":[{"phx_ref":"1"},{"phx_ref":"3"}]}},"leaves":{}}"#
    );
}

#[test]
fn keys_and_values_are_escaped_and_parse_back() {
    let nasty = "q\"b\\s/n\nr\rt\tb\u{8}f\u{c}z\u{0}\u{1f}é😀\u{2028}";
    let mut p = TopicPresence::new(A);
    let _ = p.track(
        1,
        nasty,
        obj(json!({ nasty: nasty, "n": [null, 1.5, {"x": nasty}] })),
        "R".into(),
    );
    let _ = p.track(2, "", obj(json!({})), "R2".into());
    let state = parse(&p.state_json());
    assert_eq!(state[nasty]["metas"][0][nasty], nasty);
    assert_eq!(state[nasty]["metas"][0]["n"][2]["x"], nasty);
    assert_eq!(state[""]["metas"][0]["phx_ref"], "R2");
    let mut quoted = String::new();
    push_json_string(&mut quoted, nasty);
    assert_eq!(quoted, serde_json::to_string(nasty).unwrap());
    let left = p.untrack(1).unwrap();
    assert_eq!(parse(&left.to_json())["leaves"][nasty]["metas"][0]["phx_ref"], "R");
}

#[test]
fn payload_phx_ref_never_duplicates_the_servers() {
    let mut p = TopicPresence::new(A);
    let d = p
        .track(
            1,
            "k",
            obj(json!({"phx_ref": "forged", "phx_ref_prev": "forged", "a": 1})),
            "REAL".into(),
        )
        .unwrap();
    let json = &d.joins[0].1.json;
    assert_eq!(json.matches("\"phx_ref\"").count(), 1, "{json}");
    assert_eq!(json.matches("\"phx_ref_prev\"").count(), 0, "{json}");
    assert_eq!(parse(json), json!({"phx_ref": "REAL", "a": 1}));
    // On update the server's prev wins as well.
    let d = p
        .track(1, "k", obj(json!({"phx_ref_prev": "forged", "a": 2})), "NEXT".into())
        .unwrap();
    assert_eq!(
        parse(&d.joins[0].1.json),
        json!({"phx_ref": "NEXT", "phx_ref_prev": "REAL", "a": 2})
    );
    // Forged refs alone are not a change.
    assert_eq!(p.track(1, "k", obj(json!({"phx_ref": "x", "a": 2})), "N".into()), None);
}

#[test]
fn meta_json_round_trips() {
    let m = Meta::new("R2".into(), Some("R1".into()), obj(json!({"a": {"b": [1]}})));
    assert_eq!(Meta::from_json(&m.json), Some(m.clone()));
    assert_eq!(Meta::from_json("[]"), None);
    assert_eq!(Meta::from_json("{\"a\":1}"), None);
    assert_eq!(Meta::from_json("{\"phx_ref\":1}"), None);
    assert_eq!(Meta::from_json("not json"), None);
}

#[test]
fn key_count_and_has_key_see_every_replicas_keys_once() {
    let gen = PhxRefGen::with_node(1);
    let mut p = TopicPresence::new(A);
    assert!(!p.has_key("a"));
    let _ = p.track(1, "a", obj(json!({})), gen.next(1));
    let _ = p.track(2, "a", obj(json!({})), gen.next(2));
    let _ = p.track(3, "ab", obj(json!({})), gen.next(3));
    assert_eq!((p.len(), p.key_count()), (3, 2));
    assert!(p.has_key("a") && p.has_key("ab") && !p.has_key("b") && !p.has_key(""));
    let _ = p.untrack(3);
    assert!(!p.has_key("ab"));
    assert_eq!(p.key_count(), 1);
}
