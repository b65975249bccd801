//! A replication connection lost in the middle of a large transaction: Postgres streams
//! the whole transaction again on the next session, and what was already delivered before
//! the loss must not be delivered twice (issue 15 §1: 855 of 3,000 rows arrived twice).
//!
//! Each test commits one large transaction of which a subscriber wants one row in a
//! hundred (so the client keeps up and the server is the one still delivering), kills the
//! server's walsender with `pg_terminate_backend` as soon as the first wanted row arrives,
//! checks that the kill really interrupted the transaction (the slot had not acknowledged
//! it), and asserts that every wanted row then arrives exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

/// Rows in the transaction, and one in `EVERY` is wanted by the subscriber.
const ROWS: i64 = 300_000;
const EVERY: i64 = 100;
const WANTED: usize = (ROWS / EVERY) as usize;

const ROLES: &str =
    "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;";

/// The walsender streaming `slot` and the position the slot acknowledged.
async fn walsender(pg: &Pg, slot: &str) -> (Option<i32>, String) {
    let c = pg.client().await;
    let row = c
        .query_one(
            "select active_pid, confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get::<_, Option<String>>(1).unwrap_or_default())
}

/// Waits until `slot` is streamed by a walsender (other than `not`).
async fn wait_streamed(pg: &Pg, slot: &str, not: Option<i32>) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let (Some(pid), _) = walsender(pg, slot).await {
            if Some(pid) != not {
                return pid;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{slot} never streamed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits the large transaction with `insert` (SQL that inserts `ROWS` rows) and returns
/// the WAL insert position just before its commit record.
async fn commit_large_transaction(pg: &Pg, insert: &str) -> String {
    let mut c = pg.client().await;
    let tx = c.transaction().await.unwrap();
    tx.batch_execute(insert).await.unwrap();
    let before_commit: String = tx
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    before_commit
}

/// Parses `X/Y`.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Terminates the walsender of `slot` and asserts that the transaction whose commit follows
/// `before_commit` was not acknowledged yet (so Postgres will stream it again). Returns when
/// the server streams again.
async fn kill_walsender_mid_transaction(pg: &Pg, slot: &str, before_commit: &str) {
    let (pid, _) = walsender(pg, slot).await;
    let pid = pid.expect("a walsender streams the slot");
    let c = pg.client().await;
    let killed: bool = c
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed, "pg_terminate_backend({pid})");
    // Wait for that walsender to be gone before reading the acknowledged position.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let confirmed = loop {
        let (now, confirmed) = walsender(pg, slot).await;
        if now != Some(pid) {
            break confirmed;
        }
        assert!(tokio::time::Instant::now() < deadline, "walsender {pid} did not exit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        lsn(&confirmed) <= lsn(before_commit),
        "the walsender must be killed before the transaction is acknowledged \
         (confirmed {confirmed}, commit after {before_commit}): make the transaction larger"
    );
    wait_streamed(pg, slot, Some(pid)).await;
}

/// Receives until every one of the `WANTED` rows arrived (by the key `key` extracts from a
/// frame, `None` for frames to ignore), then a quiet second; returns how often each came.
async fn collect(c: &mut Client, first: u64, key: impl Fn(&Frame) -> Option<u64>) -> HashMap<u64, usize> {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    *seen.entry(first).or_default() += 1;
    while seen.len() < WANTED {
        // Postgres decodes the whole transaction again before resending it.
        let f = c
            .recv_within(Duration::from_secs(40))
            .await
            .unwrap_or_else(|| panic!("only {} of {WANTED} rows arrived", seen.len()));
        assert!(!matches!(f, Frame::Close(_)), "closed after {} rows", seen.len());
        if let Some(k) = key(&f) {
            *seen.entry(k).or_default() += 1;
        }
    }
    // Anything still queued (a duplicate of a late row) arrives within this second.
    while let Some(f) = c.recv_within(Duration::from_secs(1)).await {
        if let Some(k) = key(&f) {
            *seen.entry(k).or_default() += 1;
        }
    }
    seen
}

fn assert_each_once(seen: &HashMap<u64, usize>) {
    let mut twice: Vec<u64> = seen.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    twice.sort_unstable();
    let expected: Vec<u64> = (1..=WANTED as u64).map(|i| i * EVERY as u64).collect();
    let mut got: Vec<u64> = seen.keys().copied().collect();
    got.sort_unstable();
    assert_eq!(got, expected, "every wanted row arrives");
    assert!(
        twice.is_empty(),
        "{} of {WANTED} rows arrived more than once (first: {:?})",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_resumes_a_large_transaction_without_duplicates() {
    let pg = Pg::start();
    pg.exec(&format!(
        "{ROLES}
         grant usage on schema public to anon, authenticated, service_role;
         create table public.items (id bigint primary key, body text);
         grant select on public.items to anon, authenticated;
         create publication supabase_realtime for table public.items;"
    ))
    .await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;
    let mut c = s.connect("2.0.0").await;
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "items", "filter": "body=eq.hit"}]);
    let (_, reply) = c
        .join_with("realtime:items", config(json!({"postgres_changes": binding})), None)
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let sys = tokio::time::timeout(Duration::from_secs(10), c.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL", "{sys:?}");

    let before_commit = commit_large_transaction(
        &pg,
        &format!(
            "insert into items select g, case when g % {EVERY} = 0 then 'hit' else 'miss' end \
             from generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    let id = |f: &Frame| -> Option<u64> {
        (f.event() == "postgres_changes").then(|| f.payload()["data"]["record"]["id"].as_u64().unwrap())
    };
    let first = loop {
        let f = c
            .recv_within(Duration::from_secs(30))
            .await
            .expect("the first row within 30 s");
        if let Some(k) = id(&f) {
            break k;
        }
    };
    kill_walsender_mid_transaction(&pg, "realtime_rs", &before_commit).await;
    let seen = collect(&mut c, first, |f: &Frame| {
        if f.event() == "system" {
            // The outage notice and `Subscribed to PostgreSQL` again are expected.
            return None;
        }
        id(f)
    })
    .await;
    assert_each_once(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_from_database_resumes_a_large_transaction_without_duplicates() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;
    let slot = "realtime_rs_messages";
    wait_streamed(&pg, slot, None).await;
    let mut c = s.connect("2.0.0").await;
    c.join("realtime:hit", config(json!({}))).await;

    let before_commit = commit_large_transaction(
        &pg,
        &format!(
            "insert into realtime.messages (topic, extension, event, payload, private) \
             select case when g % {EVERY} = 0 then 'hit' else 'miss' end, 'broadcast', 'ev', \
                    jsonb_build_object('n', g), false \
             from generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    let n = |f: &Frame| -> Option<u64> {
        let Frame::Binary(b) = f else { return None };
        // Type 4: topic, event and metadata lengths, encoding, then the four parts.
        let at = 5 + b[1] as usize + b[2] as usize + b[3] as usize;
        let payload: Value = serde_json::from_slice(&b[at..]).unwrap();
        Some(payload["n"].as_u64().unwrap())
    };
    let first = loop {
        let f = c
            .recv_within(Duration::from_secs(30))
            .await
            .expect("the first message within 30 s");
        if let Some(k) = n(&f) {
            break k;
        }
    };
    kill_walsender_mid_transaction(&pg, slot, &before_commit).await;
    let seen = collect(&mut c, first, n).await;
    assert_each_once(&seen);
}
