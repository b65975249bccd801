//! Deltas, full states and convergence between replicas.
#![allow(clippy::unwrap_used)]

use super::*;

fn delta(changes: LocalChanges) -> Delta {
    match changes {
        LocalChanges::Delta(d) => d,
        LocalChanges::Full(f) => panic!("expected a delta, got {f:?}"),
    }
}

fn applied(outcome: MergeOutcome) -> Diff {
    match outcome {
        MergeOutcome::Applied(d) => d,
        other => panic!("expected applied, got {other:?}"),
    }
}

#[test]
fn deltas_carry_compacted_changes() {
    let mut a = TopicPresence::new(A);
    let _ = a.track(1, "k1", obj(json!({})), "R1".into()); // clock 1
    let _ = a.track(2, "k2", obj(json!({})), "R2".into()); // clock 2
    let _ = a.track(3, "k3", obj(json!({})), "R3".into()); // clock 3
    let _ = a.untrack(2); // clock 4
    let _ = a.track(1, "k1", obj(json!({"v": 1})), "R5".into()); // clock 5: leaves tag 1
    let _ = a.untrack(3); // clock 6: tag 3 was added after 2, so it just disappears
    let d = delta(a.local_delta(2));
    assert_eq!((d.replica, d.from, d.to), (A, 2, 6));
    assert_eq!(d.joins.iter().map(|j| j.clock).collect::<Vec<_>>(), vec![5]);
    let mut leaves = d.leaves.clone();
    leaves.sort_unstable();
    assert_eq!(leaves, vec![1, 2]);
    let empty = delta(a.local_delta(6));
    assert_eq!(
        (empty.from, empty.to, empty.joins.len(), empty.leaves.len()),
        (6, 6, 0, 0)
    );
    assert!(matches!(a.local_delta(7), LocalChanges::Full(_)));
}

#[test]
fn local_delta_falls_back_to_full_state_when_history_is_gone() {
    let mut a = TopicPresence::new(A).with_history(2);
    for owner in 0..4 {
        let _ = a.track(owner, "k", obj(json!({})), format!("R{owner}"));
    }
    for owner in 0..3 {
        let _ = a.untrack(owner); // clocks 5, 6, 7; the first removal is forgotten
    }
    assert!(matches!(a.local_delta(4), LocalChanges::Full(_)));
    assert!(matches!(a.local_delta(5), LocalChanges::Delta(_)));
    let LocalChanges::Full(full) = a.local_delta(0) else {
        panic!()
    };
    assert_eq!((full.replica, full.clock), (A, 7));
    assert_eq!(full.entries.iter().map(|e| e.clock).collect::<Vec<_>>(), vec![4]);
    let mut b = TopicPresence::new(B);
    let _ = applied(b.merge(LocalChanges::Full(full)));
    assert_eq!(b.state_json(), a.state_json());
}

#[test]
fn a_gap_is_detected_and_nothing_is_applied() {
    let mut a = TopicPresence::new(A);
    let mut b = TopicPresence::new(B);
    let _ = a.track(1, "k", obj(json!({})), "R1".into());
    let first = a.local_delta(0);
    let _ = a.track(2, "k", obj(json!({})), "R2".into());
    let second = a.local_delta(1);
    assert_eq!(b.merge(second.clone()), MergeOutcome::NeedFullSync(A));
    assert!(b.is_empty());
    assert_eq!(b.known_clock(A), None);
    assert_eq!(applied(b.merge(first.clone())).joins.len(), 1);
    assert_eq!(applied(b.merge(second.clone())).joins.len(), 1);
    // Duplicates and echoes are stale.
    assert_eq!(b.merge(first), MergeOutcome::Stale);
    assert_eq!(b.merge(second), MergeOutcome::Stale);
    assert_eq!(a.merge(b.local_delta(0)), MergeOutcome::Stale); // B has no changes
    assert_eq!(a.merge(a.local_delta(0)), MergeOutcome::Stale);
    assert_eq!(b.known_clock(A), Some(2));
    assert_eq!(b.state_json(), a.state_json());
}

#[test]
fn malformed_deltas_ask_for_a_full_sync() {
    let mut b = TopicPresence::new(B);
    let e = |clock| TaggedEntry {
        clock,
        key: "k".into(),
        meta: Arc::new(Meta::new(format!("R{clock}"), None, Map::new())),
    };
    let bad = [
        Delta {
            replica: A,
            from: 3,
            to: 2,
            joins: vec![],
            leaves: vec![],
        },
        Delta {
            replica: A,
            from: 0,
            to: 2,
            joins: vec![e(3)],
            leaves: vec![],
        },
        Delta {
            replica: A,
            from: 0,
            to: 2,
            joins: vec![e(0)],
            leaves: vec![],
        },
        Delta {
            replica: A,
            from: 0,
            to: 2,
            joins: vec![e(1), e(1)],
            leaves: vec![],
        },
    ];
    for d in bad {
        assert_eq!(b.merge_delta(d), MergeOutcome::NeedFullSync(A));
    }
    assert!(b.is_empty());
}

#[test]
fn overlapping_delta_applies_exactly() {
    let mut a = TopicPresence::new(A);
    let mut b = TopicPresence::new(B);
    let _ = a.track(1, "k1", obj(json!({})), "R1".into()); // 1
    let _ = a.track(2, "k2", obj(json!({})), "R2".into()); // 2
    let _ = b.merge(a.local_delta(0));
    let _ = a.track(3, "k3", obj(json!({})), "R3".into()); // 3
    let _ = b.merge(a.local_delta(2));
    let _ = a.untrack(3); // 4: removes tag 3, which B holds
    let _ = a.untrack(1); // 5
    let _ = a.track(2, "k2", obj(json!({"v": 1})), "R6".into()); // 6
                                                                 // B knows up to 3; this delta starts at 1.
    let diff = applied(b.merge(a.local_delta(1)));
    let leaves: BTreeSet<_> = diff.leaves.iter().map(|(_, m)| m.phx_ref.as_str()).collect();
    let joins: BTreeSet<_> = diff.joins.iter().map(|(_, m)| m.phx_ref.as_str()).collect();
    assert_eq!(leaves, BTreeSet::from(["R1", "R2", "R3"]));
    assert_eq!(joins, BTreeSet::from(["R6"]));
    assert_eq!(b.state_json(), a.state_json());
    assert_eq!(b.known_clock(A), Some(6));
}

#[test]
fn merge_full_is_idempotent_and_ignores_older_states() {
    let mut a = TopicPresence::new(A);
    let mut b = TopicPresence::new(B);
    let _ = a.track(1, "k", obj(json!({"n": 1})), "R1".into());
    let _ = a.track(2, "k", obj(json!({"n": 2})), "R2".into());
    let old = a.full_state();
    let d1 = b.merge_full(old.replica, old.clock, old.entries.clone());
    assert_eq!(d1.joins.len(), 2);
    let d2 = b.merge_full(old.replica, old.clock, old.entries.clone());
    assert!(d2.is_empty());
    let _ = a.untrack(1);
    let _ = a.track(3, "j", obj(json!({})), "R3".into());
    let new = a.full_state();
    let d3 = b.merge_full(new.replica, new.clock, new.entries.clone());
    assert_eq!((d3.leaves.len(), d3.joins.len()), (1, 1));
    assert_eq!(d3.leaves[0].1.phx_ref, "R1");
    assert!(b.merge_full(new.replica, new.clock, new.entries).is_empty());
    // A late answer from before cannot undo what we know.
    assert!(b.merge_full(old.replica, old.clock, old.entries).is_empty());
    assert_eq!(b.state_json(), a.state_json());
    // Our own state echoed back is ignored.
    let own = b.full_state();
    assert!(b.merge_full(B, own.clock + 5, vec![]).is_empty());
    assert_eq!(b.len(), 2);
}

#[test]
fn remove_replica_leaves_exactly_its_entries() {
    let mut a = TopicPresence::new(A);
    let mut b = TopicPresence::new(B);
    let mut c = TopicPresence::new(ReplicaId(3));
    let _ = a.track(1, "shared", obj(json!({})), "A1".into());
    let _ = a.track(2, "a-only", obj(json!({})), "A2".into());
    let _ = c.track(1, "shared", obj(json!({})), "C1".into());
    let _ = b.track(1, "shared", obj(json!({})), "B1".into());
    let _ = b.merge(a.local_delta(0));
    let _ = b.merge(c.local_delta(0));
    assert_eq!(b.len(), 4);
    let diff = b.remove_replica(A);
    assert!(diff.joins.is_empty());
    let gone: BTreeSet<_> = diff
        .leaves
        .iter()
        .map(|(k, m)| (k.as_str(), m.phx_ref.as_str()))
        .collect();
    assert_eq!(gone, BTreeSet::from([("shared", "A1"), ("a-only", "A2")]));
    assert_eq!(refs_in(&b.state_json()).len(), 2);
    assert!(b.remove_replica(A).is_empty());
    assert!(b.remove_replica(B).is_empty(), "own entries stay");
    assert_eq!(b.known_clock(A), None);
    // If A comes back, its next delta asks for a sync, then everything returns.
    let _ = a.track(3, "x", obj(json!({})), "A3".into());
    assert_eq!(b.merge(a.local_delta(2)), MergeOutcome::NeedFullSync(A));
    let _ = applied(b.merge(a.local_delta(0)));
    assert_eq!(b.len(), 5);
}

#[test]
fn a_recreated_topic_resyncs_when_started_above_its_old_clock() {
    let mut b = TopicPresence::new(B);
    let mut a = TopicPresence::new(A);
    let _ = a.track(1, "k", obj(json!({})), "OLD".into());
    let _ = a.untrack(1);
    let _ = a.track(2, "k", obj(json!({})), "OLD2".into());
    let _ = b.merge(a.local_delta(0));
    assert_eq!(b.known_clock(A), Some(3));
    // A drops the topic (say B's delta about OLD2 were still in flight) and makes it again.
    let mut a = TopicPresence::starting_at(A, 1_000);
    let _ = a.track(3, "k", obj(json!({})), "NEW".into());
    assert_eq!(b.merge(a.local_delta(1_000)), MergeOutcome::NeedFullSync(A));
    let since = b.known_clock(A).unwrap();
    assert!(matches!(a.local_delta(since), LocalChanges::Full(_)));
    let diff = applied(b.merge(a.local_delta(since)));
    assert_eq!(diff.leaves[0].1.phx_ref, "OLD2");
    assert_eq!(diff.joins[0].1.phx_ref, "NEW");
    assert_eq!(b.state_json(), a.state_json());
    // Restarting at 0 instead would be silently ignored; this is why `starting_at` exists.
    let mut zero = TopicPresence::new(A);
    let _ = zero.track(4, "k", obj(json!({})), "LOST".into());
    assert_eq!(b.merge(zero.local_delta(0)), MergeOutcome::Stale);
}

/// Two replicas tracking, updating and untracking at random while their deltas are
/// duplicated and delivered in random order end up rendering the same state, and each
/// node's diffs, replayed like a client would, give exactly that state.
#[derive(Default, Debug)]
struct Seen {
    overlap: usize,
    full: usize,
    stale: usize,
    gaps: usize,
}

fn converge(seed: u64, history: usize) -> Seen {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = [A, B];
    let mut nodes = [
        TopicPresence::new(A).with_history(history),
        TopicPresence::new(B).with_history(history),
    ];
    let gens = [PhxRefGen::with_node(1), PhxRefGen::with_node(2)];
    let mut views = [ClientView::default(), ClientView::default()];
    let mut queue: Vec<(usize, LocalChanges)> = Vec::new();
    let mut now = 1_700_000_000_000_000_000u64;
    // Outcomes seen: overlapping deltas applied, full states merged, stale, gaps.
    let mut seen = Seen::default();
    let mut deliver = |nodes: &mut [TopicPresence; 2],
                       views: &mut [ClientView; 2],
                       queue: &mut Vec<(usize, LocalChanges)>,
                       i: usize| {
        let (to, changes) = queue.swap_remove(i);
        match &changes {
            LocalChanges::Full(_) => seen.full += 1,
            LocalChanges::Delta(d) => {
                let known = nodes[to].known_clock(d.replica).unwrap_or(0);
                seen.overlap += usize::from(d.from < known && known < d.to);
            }
        }
        match nodes[to].merge(changes) {
            MergeOutcome::Applied(diff) => views[to].apply(&diff),
            MergeOutcome::Stale => seen.stale += 1,
            MergeOutcome::NeedFullSync(r) => {
                seen.gaps += 1;
                let from = ids.iter().position(|id| *id == r).unwrap();
                let since = nodes[to].known_clock(r).unwrap_or(0);
                queue.push((to, nodes[from].local_delta(since)));
            }
        }
    };
    for _ in 0..3_000 {
        if rng.random_bool(0.55) {
            let n = rng.random_range(0..2);
            let owner = rng.random_range(0..12u64);
            // The key is fixed per channel; several channels share each key.
            let key = ["k\"1", "k2", "ü3"][(owner % 3) as usize];
            now += rng.random_range(0..3);
            let since = nodes[n].clock();
            let diff = if rng.random_bool(0.3) {
                nodes[n].untrack(owner)
            } else {
                let payload = obj(json!({"v": rng.random_range(0..3), "n": n}));
                nodes[n].track(owner, key, payload, gens[n].next(now))
            };
            if let Some(diff) = diff {
                views[n].apply(&diff);
            }
            if nodes[n].clock() > since {
                let changes = nodes[n].local_delta(since);
                for _ in 0..rng.random_range(1..3) {
                    queue.push((1 - n, changes.clone()));
                }
            }
        } else if !queue.is_empty() {
            let i = rng.random_range(0..queue.len());
            deliver(&mut nodes, &mut views, &mut queue, i);
        }
    }
    while !queue.is_empty() {
        let i = rng.random_range(0..queue.len());
        deliver(&mut nodes, &mut views, &mut queue, i);
    }
    assert_eq!(nodes[0].known_clock(B), Some(nodes[1].clock()));
    assert_eq!(nodes[1].known_clock(A), Some(nodes[0].clock()));
    let state = nodes[0].state_json();
    assert_eq!(state, nodes[1].state_json());
    let refs = refs_in(&state);
    assert_eq!(refs.len(), nodes[0].len());
    assert_eq!(nodes[0].local.len() + nodes[1].local.len(), nodes[0].len());
    assert!(!refs.is_empty());
    for view in &views {
        assert_eq!(view.0, refs);
    }
    // Metas under one key are oldest first.
    for group in parse(&state).as_object().unwrap().values() {
        let times: Vec<_> = group["metas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ref_time(m["phx_ref"].as_str().unwrap()).unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
    seen
}

#[test]
fn replicas_converge_under_reordering_and_duplication() {
    let seen: Vec<_> = (0..20).map(|seed| converge(seed, DEFAULT_HISTORY)).collect();
    // Every merge path was exercised.
    assert!(seen.iter().any(|s| s.overlap > 0), "{seen:?}");
    assert!(seen.iter().all(|s| s.stale > 0 && s.gaps > 0), "{seen:?}");
}

#[test]
fn replicas_converge_when_history_is_short() {
    let seen: Vec<_> = (100..120).map(|seed| converge(seed, 1)).collect();
    assert!(seen.iter().all(|s| s.full > 0), "{seen:?}");
}

#[test]
fn a_thousand_clients_track_and_render() {
    let refs = PhxRefGen::with_node(9);
    let mut p = TopicPresence::new(A);
    let started = std::time::Instant::now();
    let mut seen = HashSet::new();
    for owner in 0..1_000u64 {
        let key = format!("user-{owner}");
        let d = p
            .track(
                owner,
                &key,
                obj(json!({"online_at": "2025-01-01T00:00:00Z"})),
                refs.next(owner),
            )
            .unwrap();
        assert!(seen.insert(d.joins[0].1.phx_ref.clone()));
        // Every join is followed by a full state for the joiner.
        let _ = p.state_json();
    }
    let state = parse(&p.state_json());
    assert_eq!(state.as_object().unwrap().len(), 1_000);
    assert_eq!(p.len(), 1_000);
    for owner in 0..1_000u64 {
        assert!(p.untrack(owner).is_some());
    }
    assert!(p.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
