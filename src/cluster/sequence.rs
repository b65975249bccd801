//! Row changes relayed in order, even across an engine outage. Core pub/sub keeps
//! nothing: a batch the leader published while the engine was away (or while a follower
//! was not subscribed yet) is simply gone, and the leader's slot has moved past it. So
//! each batch carries its place in the leader's run (a term, counted each time a node
//! takes the lease, and a sequence number), the leader keeps what it sent for a while
//! ([`Sent`]), and a follower that sees a hole asks for it and holds what came after it
//! ([`Sequencer`]), delivering in order once the hole is filled or given up.
//!
//! A follower learns of a hole from a later batch, or from the leader's span (sent with
//! its stream states every second), which also says what the leader no longer keeps.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use super::rows::Relayed;

/// How long a leader keeps a relayed batch for followers that missed it.
pub const KEEP_FOR: Duration = Duration::from_secs(120);
/// At most this many bytes of relayed batches are kept (the oldest go first).
pub const KEEP_BYTES: usize = 32 << 20;
/// A hole still open after this long is given up: what came after it is delivered.
const GIVE_UP: Duration = Duration::from_secs(5);
/// A hole is asked for again at this interval (the request itself may have been lost).
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// Beyond this many batches held behind a hole, it is given up at once.
const MAX_HELD: usize = 100_000;
/// Runs left behind whose late batches are delivered as they come.
const RETIRED: usize = 8;

/// One leadership: the leader's incarnation and the term it took the lease in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub origin: u64,
    pub term: u32,
}

/// What a leader has sent in its current term and still keeps: `first..=last`
/// (`first == last + 1`: nothing kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub term: u32,
    pub first: u64,
    pub last: u64,
}

/// The leader's relayed batches, kept for resending.
#[derive(Debug)]
pub struct Sent {
    term: u32,
    last: u64,
    kept: VecDeque<(u64, Instant, Bytes)>,
    bytes: usize,
    keep_bytes: usize,
}

impl Sent {
    pub fn new(keep_bytes: usize) -> Sent {
        Sent {
            term: 0,
            last: 0,
            kept: VecDeque::new(),
            bytes: 0,
            keep_bytes,
        }
    }

    /// This node took the lease: a new run, numbered from 1.
    pub fn start_term(&mut self) {
        self.term = self.term.wrapping_add(1);
        self.last = 0;
        self.kept.clear();
        self.bytes = 0;
    }

    /// The term and sequence number of the next batch.
    pub fn upcoming(&self) -> (u32, u64) {
        (self.term, self.last + 1)
    }

    /// Keeps the batch numbered `seq` ([`Sent::upcoming`]) as sent, dropping what is too
    /// old or too much.
    pub fn keep(&mut self, seq: u64, bytes: Bytes, now: Instant) {
        self.last = seq;
        self.bytes += bytes.len();
        self.kept.push_back((seq, now, bytes));
        self.prune(now);
    }

    fn prune(&mut self, now: Instant) {
        while let Some((_, at, bytes)) = self.kept.front() {
            let too_old = now.saturating_duration_since(*at) > KEEP_FOR;
            if !too_old && self.bytes <= self.keep_bytes {
                break;
            }
            self.bytes -= bytes.len();
            self.kept.pop_front();
        }
    }

    /// What is kept now.
    pub fn span(&mut self, now: Instant) -> Span {
        self.prune(now);
        Span {
            term: self.term,
            first: self.kept.front().map_or(self.last + 1, |(seq, _, _)| *seq),
            last: self.last,
        }
    }

    /// The kept batches numbered `from..=to` of `term` (none for another term).
    pub fn resend(&self, term: u32, from: u64, to: u64) -> Vec<Bytes> {
        if term != self.term {
            return Vec::new();
        }
        self.kept
            .iter()
            .filter(|(seq, _, _)| (from..=to).contains(seq))
            .map(|(_, _, bytes)| bytes.clone())
            .collect()
    }
}

/// A follower's request to the leader of `run`: resend `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub run: Run,
    pub from: u64,
    pub to: u64,
}

/// What the follower does after an event: deliver these batches (in order), and ask.
#[derive(Debug, Default)]
pub struct Step {
    pub deliver: Vec<Relayed>,
    pub ask: Option<Ask>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Following {
    /// No leader heard yet (a node just started): the first run is taken from where it is.
    Nothing,
    /// A leader was followed (or this node led): the next run is taken from its start.
    Between,
    /// In a run, waiting for batch `next`.
    Run { run: Run, next: u64 },
}

/// An open hole: batches up to `known` exist, and `next` has not arrived.
#[derive(Debug, Clone, Copy)]
struct Hole {
    known: u64,
    since: Instant,
    asked: Instant,
}

/// A follower's ordering of relayed batches.
#[derive(Debug)]
pub struct Sequencer {
    following: Following,
    held: BTreeMap<u64, Relayed>,
    hole: Option<Hole>,
    retired: VecDeque<Run>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer {
            following: Following::Nothing,
            held: BTreeMap::new(),
            hole: None,
            retired: VecDeque::new(),
        }
    }
}

impl Sequencer {
    /// A batch numbered `seq` of `run`.
    pub fn batch(&mut self, run: Run, seq: u64, relayed: Relayed, now: Instant) -> Step {
        let mut step = Step::default();
        if self.retired.contains(&run) {
            // A late batch of a run left behind: the delivery dedupe drops what was
            // delivered already.
            step.deliver.push(relayed);
            return step;
        }
        self.enter(run, seq, &mut step);
        let Following::Run { next, .. } = self.following else {
            return step;
        };
        if seq >= next {
            self.held.entry(seq).or_insert(relayed);
        }
        self.advance(now, None, &mut step);
        step
    }

    /// The leader of `origin` keeps `span` of its run.
    pub fn span(&mut self, origin: u64, span: Span, now: Instant) -> Step {
        let mut step = Step::default();
        let run = Run {
            origin,
            term: span.term,
        };
        if self.retired.contains(&run) {
            return step;
        }
        // A node that just started follows from here; otherwise a new run from its start.
        self.enter(run, span.last.saturating_add(1), &mut step);
        let Following::Run { next, .. } = self.following else {
            return step;
        };
        if span.first > next {
            // Gone from the leader too: what arrived beyond is delivered, the rest is lost.
            let lost = (span.first - next).saturating_sub(self.held.range(next..span.first).count() as u64);
            if lost > 0 {
                warn!(
                    batches = lost,
                    "cluster: row changes missed while the engine was away are no longer kept by the leader; lost on this node"
                );
                crate::observability::metrics::cluster_dropped(lost as usize);
            }
            let rest = self.held.split_off(&span.first);
            step.deliver
                .extend(std::mem::replace(&mut self.held, rest).into_values());
            self.following = Following::Run { run, next: span.first };
            self.hole = None;
        }
        self.advance(now, Some(span.last), &mut step);
        step
    }

    /// Time passes: a hole is asked for again, or given up.
    pub fn tick(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        let (Some(hole), Following::Run { run, next }) = (self.hole, self.following) else {
            return step;
        };
        if now.saturating_duration_since(hole.since) >= GIVE_UP {
            self.give_up();
            self.advance(now, None, &mut step);
        } else if now.saturating_duration_since(hole.asked) >= ASK_AGAIN {
            self.hole = Some(Hole { asked: now, ..hole });
            step.ask = Some(Ask {
                run,
                from: next,
                to: hole.known,
            });
        }
        step
    }

    /// The engine link is back: ask the leader for whatever came after what arrived.
    pub fn resubscribed(&self) -> Option<Ask> {
        match self.following {
            Following::Run { run, next } => Some(Ask {
                run,
                from: next,
                to: u64::MAX,
            }),
            _ => None,
        }
    }

    /// This node took the lease: what is held is delivered, and the next leader's run
    /// is followed from its start.
    pub fn leading(&mut self) -> Vec<Relayed> {
        if let Following::Run { run, .. } = self.following {
            self.retire(run);
        }
        self.following = Following::Between;
        self.hole = None;
        std::mem::take(&mut self.held).into_values().collect()
    }

    /// Follows `run` if it is not the one followed: from `start` when no leader was
    /// heard before, else from its first batch (what is held of the run left behind is
    /// delivered first).
    fn enter(&mut self, run: Run, start: u64, step: &mut Step) {
        let next = match self.following {
            Following::Run { run: current, .. } if current == run => return,
            Following::Nothing => start,
            Following::Between => 1,
            Following::Run { run: current, .. } => {
                self.retire(current);
                step.deliver.extend(std::mem::take(&mut self.held).into_values());
                self.hole = None;
                1
            }
        };
        self.following = Following::Run { run, next };
    }

    fn retire(&mut self, run: Run) {
        if self.retired.len() == RETIRED {
            self.retired.pop_front();
        }
        self.retired.push_back(run);
    }

    /// Delivers what follows on, drops what came twice, and opens or closes the hole
    /// (`known`: the leader said it sent up to there). A hole is asked for when it opens;
    /// [`Sequencer::tick`] asks again.
    fn advance(&mut self, now: Instant, known: Option<u64>, step: &mut Step) {
        let Following::Run { run, mut next } = self.following else {
            return;
        };
        // Resent batches that arrived already.
        self.held = self.held.split_off(&next);
        while let Some(relayed) = self.held.remove(&next) {
            step.deliver.push(relayed);
            next = next.saturating_add(1);
        }
        self.following = Following::Run { run, next };
        let known = self
            .held
            .last_key_value()
            .map(|(seq, _)| *seq)
            .max(self.hole.map(|h| h.known))
            .max(known)
            .filter(|known| *known >= next);
        let Some(known) = known else {
            self.hole = None;
            return;
        };
        match &mut self.hole {
            Some(hole) => hole.known = known,
            None => {
                self.hole = Some(Hole {
                    known,
                    since: now,
                    asked: now,
                });
                step.ask = Some(Ask {
                    run,
                    from: next,
                    to: known,
                });
            }
        }
        if self.held.len() > MAX_HELD {
            self.give_up();
            self.advance(now, None, step);
        }
    }

    /// Stops waiting for the hole: skips to the first batch held (or past what the
    /// leader said it sent).
    fn give_up(&mut self) {
        let (Some(hole), Following::Run { run, next }) = (self.hole.take(), self.following) else {
            return;
        };
        let resume = self
            .held
            .first_key_value()
            .map_or(hole.known.saturating_add(1), |(seq, _)| *seq);
        let lost = resume.saturating_sub(next);
        warn!(
            batches = lost,
            "cluster: row changes the leader did not resend in time are lost on this node"
        );
        crate::observability::metrics::cluster_dropped(usize::try_from(lost).unwrap_or(usize::MAX));
        self.following = Following::Run { run, next: resume };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Batch;

    const A: Run = Run { origin: 7, term: 1 };
    const B: Run = Run { origin: 9, term: 1 };

    /// A distinguishable relayed batch: `n` in its offsets.
    fn r(n: usize) -> Relayed {
        Relayed {
            batch: Batch::default(),
            offsets: vec![n],
        }
    }

    fn delivered(step: &Step) -> Vec<usize> {
        step.deliver.iter().map(|r| r.offsets[0]).collect()
    }

    #[test]
    fn batches_in_order_are_delivered_at_once_and_duplicates_dropped() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        // A node that just started follows from the first batch it sees.
        assert_eq!(delivered(&s.batch(A, 5, r(5), now)), [5]);
        assert_eq!(delivered(&s.batch(A, 6, r(6), now)), [6]);
        let again = s.batch(A, 6, r(6), now);
        assert!(again.deliver.is_empty() && again.ask.is_none());
    }

    #[test]
    fn a_hole_is_asked_for_and_what_follows_it_held_until_filled() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, 1, r(1), now);
        let step = s.batch(A, 4, r(4), now);
        assert!(step.deliver.is_empty());
        assert_eq!(step.ask, Some(Ask { run: A, from: 2, to: 4 }));
        assert!(s.batch(A, 5, r(5), now).ask.is_none(), "asked once, not per batch");
        assert_eq!(delivered(&s.batch(A, 3, r(3), now)), Vec::<usize>::new());
        assert_eq!(delivered(&s.batch(A, 2, r(2), now)), [2, 3, 4, 5]);
        assert!(s.tick(now + GIVE_UP).deliver.is_empty(), "no hole left");
    }

    #[test]
    fn the_leaders_span_reveals_a_hole_at_the_tail() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, 1, r(1), now);
        let span = Span {
            term: 1,
            first: 1,
            last: 3,
        };
        assert_eq!(s.span(7, span, now).ask, Some(Ask { run: A, from: 2, to: 3 }));
        assert!(s.tick(now + Duration::from_millis(500)).ask.is_none());
        let later = now + ASK_AGAIN;
        assert_eq!(s.tick(later).ask, Some(Ask { run: A, from: 2, to: 3 }), "asked again");
        s.batch(A, 2, r(2), later);
        assert_eq!(delivered(&s.batch(A, 3, r(3), later)), [3]);
        assert!(s.tick(later + GIVE_UP).ask.is_none());
    }

    #[test]
    fn a_hole_not_filled_in_time_is_given_up() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, 1, r(1), now);
        s.batch(A, 3, r(3), now);
        assert!(s.tick(now + Duration::from_secs(2)).deliver.is_empty());
        assert_eq!(delivered(&s.tick(now + GIVE_UP)), [3]);
        assert_eq!(delivered(&s.batch(A, 4, r(4), now + GIVE_UP)), [4]);
        // The hole's batch, resent late, is not delivered out of order.
        assert!(s.batch(A, 2, r(2), now + GIVE_UP).deliver.is_empty());
    }

    #[test]
    fn what_the_leader_no_longer_keeps_is_skipped() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, 1, r(1), now);
        s.batch(A, 6, r(6), now);
        let span = Span {
            term: 1,
            first: 5,
            last: 7,
        };
        let step = s.span(7, span, now);
        assert_eq!(delivered(&step), Vec::<usize>::new());
        assert_eq!(step.ask, Some(Ask { run: A, from: 5, to: 7 }));
        assert_eq!(delivered(&s.batch(A, 5, r(5), now)), [5, 6]);
    }

    #[test]
    fn a_new_leader_is_followed_from_its_first_batch() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, 10, r(10), now);
        s.batch(A, 12, r(12), now);
        // B took over: what is held of A goes out, B is followed from 1.
        let step = s.batch(B, 2, r(102), now);
        assert_eq!(delivered(&step), [12]);
        assert_eq!(step.ask, Some(Ask { run: B, from: 1, to: 2 }));
        assert_eq!(delivered(&s.batch(B, 1, r(101), now)), [101, 102]);
        // A late batch of A is passed on (the delivery dedupe drops repeats).
        assert_eq!(delivered(&s.batch(A, 11, r(11), now)), [11]);
        // A new term of the same node is a new run.
        let a2 = Run { origin: 7, term: 2 };
        assert_eq!(delivered(&s.batch(a2, 1, r(201), now)), [201]);
    }

    #[test]
    fn a_node_that_just_started_follows_from_the_leaders_span() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        let span = Span {
            term: 1,
            first: 1,
            last: 40,
        };
        let step = s.span(7, span, now);
        assert!(step.ask.is_none() && step.deliver.is_empty());
        assert_eq!(delivered(&s.batch(A, 41, r(41), now)), [41]);
    }

    #[test]
    fn a_new_leader_heard_first_by_its_span_is_asked_from_its_start() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, 3, r(3), now);
        let span = Span {
            term: 1,
            first: 1,
            last: 2,
        };
        assert_eq!(s.span(9, span, now).ask, Some(Ask { run: B, from: 1, to: 2 }));
        assert_eq!(
            s.resubscribed(),
            Some(Ask {
                run: B,
                from: 1,
                to: u64::MAX
            })
        );
    }

    #[test]
    fn numbers_at_the_ends_of_the_range_do_not_panic() {
        let (mut s, now) = (Sequencer::default(), Instant::now());
        s.batch(A, u64::MAX, r(1), now);
        s.batch(A, u64::MAX, r(1), now);
        let span = Span {
            term: 1,
            first: 0,
            last: u64::MAX,
        };
        s.span(7, span, now);
        s.tick(now + GIVE_UP);
        let fresh = Span {
            term: 5,
            first: u64::MAX,
            last: u64::MAX,
        };
        Sequencer::default().span(3, fresh, now);
        let mut s = Sequencer::default();
        s.batch(A, 1, r(1), now);
        s.span(7, fresh_of(1), now);
        s.tick(now + GIVE_UP);
    }

    fn fresh_of(term: u32) -> Span {
        Span {
            term,
            first: 2,
            last: u64::MAX,
        }
    }

    #[test]
    fn the_leader_resends_what_it_keeps_within_time_and_bytes() {
        let now = Instant::now();
        let mut sent = Sent::new(10);
        sent.start_term();
        for i in 0..3u8 {
            let (term, seq) = sent.upcoming();
            assert_eq!((term, seq), (1, u64::from(i) + 1));
            sent.keep(seq, Bytes::from(vec![i; 4]), now);
        }
        // 12 bytes > 10: the first went.
        assert_eq!(
            sent.span(now),
            Span {
                term: 1,
                first: 2,
                last: 3
            }
        );
        assert_eq!(sent.resend(1, 1, 3), [Bytes::from(vec![1; 4]), Bytes::from(vec![2; 4])]);
        assert!(sent.resend(2, 1, 3).is_empty(), "another term");
        assert_eq!(
            sent.span(now + KEEP_FOR + Duration::from_secs(1)),
            Span {
                term: 1,
                first: 4,
                last: 3
            }
        );
        sent.start_term();
        assert_eq!(sent.upcoming(), (2, 1));
    }
}
