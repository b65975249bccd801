//! Integration tests of the replication transport against a real PostgreSQL 15
//! (throwaway clusters from `support`). Every wait is bounded.
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use realtime_test_pg::{PasswordAuth, PgCluster};
use realtime_wal::stream::{ReplicationMessage, ReplicationOptions, ReplicationStream};
use realtime_wal::{Lsn, WalError};

/// Upper bound for any single wait on the server.
const WAIT: Duration = Duration::from_secs(20);

fn opts(slot: &str, publication: &str, temporary_slot: bool) -> ReplicationOptions {
    ReplicationOptions {
        slot: slot.into(),
        publication: publication.into(),
        temporary_slot,
        application_name: "realtime-rs".into(),
    }
}

async fn connect(config: &tokio_postgres::Config, o: &ReplicationOptions) -> ReplicationStream {
    tokio::time::timeout(WAIT, ReplicationStream::connect(config, o))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

async fn try_connect(config: &tokio_postgres::Config, o: &ReplicationOptions) -> Result<ReplicationStream, WalError> {
    tokio::time::timeout(WAIT, ReplicationStream::connect(config, o))
        .await
        .expect("connect timed out")
}

fn tcp_config(url: &str) -> tokio_postgres::Config {
    url.parse().unwrap()
}

/// Creates `public.<table>(id int primary key, v text)` and a publication for it.
async fn table_and_publication(pg: &PgCluster, table: &str, publication: &str) {
    pg.execute(&format!(
        "create table public.{table} (id int primary key, v text);
         create publication {publication} for table public.{table};"
    ))
    .await;
}

/// The next pgoutput payload, skipping keepalives.
async fn next_data(s: &mut ReplicationStream) -> Bytes {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, s.recv())
            .await
            .expect("no XLogData within the deadline")
            .unwrap_or_else(|e| panic!("recv failed: {e}"));
        if let ReplicationMessage::XLogData { data, .. } = msg {
            assert!(!data.is_empty(), "empty pgoutput message");
            return data;
        }
    }
}

/// pgoutput messages up to and including the next Commit, and that Commit's end_lsn.
async fn next_txn(s: &mut ReplicationStream) -> (Vec<Bytes>, Lsn) {
    let mut msgs = Vec::new();
    loop {
        let data = next_data(s).await;
        let is_commit = data[0] == b'C';
        msgs.push(data);
        if is_commit {
            let end = commit_end_lsn(msgs.last().unwrap());
            return (msgs, end);
        }
    }
}

/// Commit (proto v1): 'C' · Int8 flags · Int64 commit_lsn · Int64 end_lsn · Int64 ts.
fn commit_end_lsn(c: &[u8]) -> Lsn {
    assert_eq!(c[0], b'C');
    assert_eq!(c.len(), 26, "Commit is 26 bytes");
    Lsn(u64::from_be_bytes(c[10..18].try_into().unwrap()))
}

/// Text cells of an Insert (proto v1): 'I' · Int32 relid · 'N' · Int16 n · per column
/// 'n' | 'u' | 't' Int32 len bytes.
fn insert_values(m: &[u8]) -> Vec<Option<String>> {
    assert_eq!(m[0], b'I');
    assert_eq!(m[5], b'N');
    let n = i16::from_be_bytes([m[6], m[7]]) as usize;
    let mut pos = 8;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = m[pos];
        pos += 1;
        match kind {
            b'n' | b'u' => out.push(None),
            b't' => {
                let len = u32::from_be_bytes(m[pos..pos + 4].try_into().unwrap()) as usize;
                pos += 4;
                out.push(Some(String::from_utf8(m[pos..pos + len].to_vec()).unwrap()));
                pos += len;
            }
            other => panic!("unexpected tuple kind {other}"),
        }
    }
    assert_eq!(pos, m.len(), "Insert fully consumed");
    out
}

fn tags(msgs: &[Bytes]) -> String {
    msgs.iter().map(|m| m[0] as char).collect()
}

/// Inserts one row and checks its transaction arrives (see [`expect_insert`]).
async fn one_insert_round_trip(pg: &PgCluster, s: &mut ReplicationStream, table: &str, id: i32, v: &str) -> Lsn {
    pg.execute(&format!("insert into public.{table} values ({id}, '{v}')"))
        .await;
    expect_insert(s, id, v).await
}

/// The next transaction is B [R] I C for the row (id, v); R comes only with the first change
/// of a relation in a session. Returns the Commit's end_lsn.
async fn expect_insert(s: &mut ReplicationStream, id: i32, v: &str) -> Lsn {
    let (msgs, end) = next_txn(s).await;
    let t = tags(&msgs);
    assert!(t == "BRIC" || t == "BIC", "{t}");
    let insert = &msgs[msgs.len() - 2];
    assert_eq!(insert_values(insert), vec![Some(id.to_string()), Some(v.to_owned())]);
    end
}

/// Polls `recv` at most `polls` times, then drops it: a cancellation at whatever await point
/// it had reached (typically between two reads of one frame). `None` = cancelled.
async fn recv_with_poll_budget(s: &mut ReplicationStream, polls: u32) -> Option<Result<ReplicationMessage, WalError>> {
    let mut fut = std::pin::pin!(s.recv());
    let mut n = 0;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => {
            n += 1;
            if n >= polls {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
    })
    .await
}

fn slot_lsn_sql(slot: &str) -> String {
    format!("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = '{slot}'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_trust_streams_one_insert_as_b_r_i_c() {
    let pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    let mut s = connect(&tcp_config(&pg.url()), &opts("rs_tcp", "pub", true)).await;

    // The application_name reached the walsender.
    pg.wait_for_text(
        "select application_name from pg_stat_replication where application_name = 'realtime-rs'",
        Some("realtime-rs"),
        WAIT,
    )
    .await;
    // A fresh session: Begin, Relation, Insert, Commit.
    pg.execute("insert into public.notes values (1, 'hello')").await;
    let (msgs, _) = next_txn(&mut s).await;
    assert_eq!(tags(&msgs), "BRIC");
    assert_eq!(insert_values(&msgs[2]), vec![Some("1".into()), Some("hello".into())]);

    // A temporary slot goes away with a clean close.
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
    pg.wait_for_text("select count(*)::text from pg_stat_replication", Some("0"), WAIT)
        .await;
    pg.wait_for_text("select count(*)::text from pg_replication_slots", Some("0"), WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_connection() {
    let pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    let mut s = connect(&pg.socket_config(), &opts("rs_unix", "pub", true)).await;
    one_insert_round_trip(&pg, &mut s, "notes", 7, "via socket").await;
    // The walsender really is on a Unix socket: client_addr is NULL for those.
    assert_eq!(
        pg.query_text("select coalesce(client_addr::text, 'local') from pg_stat_replication")
            .await
            .as_deref(),
        Some("local")
    );
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_md5_authentication() {
    let pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    pg.create_password_role("rt_scram", "scram-pw", PasswordAuth::Scram)
        .await;
    pg.create_password_role("rt_md5", "md5-pw", PasswordAuth::Md5).await;

    let mut s = connect(
        &tcp_config(&pg.url_for("rt_scram", "scram-pw")),
        &opts("rs_scram", "pub", true),
    )
    .await;
    one_insert_round_trip(&pg, &mut s, "notes", 1, "scram").await;
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();

    let mut s = connect(
        &tcp_config(&pg.url_for("rt_md5", "md5-pw")),
        &opts("rs_md5", "pub", true),
    )
    .await;
    one_insert_round_trip(&pg, &mut s, "notes", 2, "md5").await;
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();

    // The server log names the method each session actually used (log_connections=on).
    let log = pg.server_log();
    assert!(
        log.contains("identity=\"rt_scram\" method=scram-sha-256"),
        "log:\n{log}"
    );
    assert!(log.contains("identity=\"rt_md5\" method=md5"), "log:\n{log}");

    // Wrong passwords: the server's 28P01, not transient.
    for user in ["rt_scram", "rt_md5"] {
        let err = try_connect(&tcp_config(&pg.url_for(user, "wrong")), &opts("rs_bad", "pub", true))
            .await
            .unwrap_err();
        match &err {
            WalError::Server { code, .. } => assert_eq!(code, "28P01", "{err}"),
            other => panic!("expected a server error, got {other:?}"),
        }
        assert!(!err.is_transient());
    }
    // No password at all: refused on our side.
    let cfg = tcp_config(&format!("postgres://rt_scram@127.0.0.1:{}/postgres", pg.port()));
    let err = try_connect(&cfg, &opts("rs_bad", "pub", true)).await.unwrap_err();
    assert!(matches!(err, WalError::Auth(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_slot_is_created_then_reused_across_reconnect_and_restart() {
    let mut pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    let cfg = tcp_config(&pg.url());
    let o = opts("rs_persist", "pub", false);
    let inactive = "select active::text from pg_replication_slots where slot_name = 'rs_persist'";

    // Created when missing.
    let mut s = connect(&cfg, &o).await;
    assert_eq!(
        pg.query_text("select temporary::text from pg_replication_slots where slot_name = 'rs_persist'")
            .await
            .as_deref(),
        Some("false")
    );
    let end1 = one_insert_round_trip(&pg, &mut s, "notes", 1, "one").await;
    s.set_flushed(end1);
    tokio::time::timeout(WAIT, s.send_status()).await.unwrap().unwrap();
    pg.wait_for_text(&slot_lsn_sql("rs_persist"), Some(&end1.to_string()), WAIT)
        .await;
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
    pg.wait_for_text(inactive, Some("false"), WAIT).await;

    // A change while disconnected arrives after reconnecting (the existing slot is reused
    // without error), and the acknowledged 'one' does not come again.
    pg.execute("insert into public.notes values (2, 'two')").await;
    let mut s = connect(&cfg, &o).await;
    let end2 = expect_insert(&mut s, 2, "two").await;
    assert!(end2 > end1);
    // Not acked via send_status: close() sends a final status update itself.
    s.set_flushed(end2);
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
    pg.wait_for_text(&slot_lsn_sql("rs_persist"), Some(&end2.to_string()), WAIT)
        .await;
    pg.wait_for_text(inactive, Some("false"), WAIT).await;

    // The slot survives a server restart, and a change made while the server was down for us
    // arrives. PG15 quirk: a confirmed_flush_lsn moved only by status updates is not written
    // to disk at shutdown (fixed in PG17), so after a restart the slot may resume from an
    // older persisted position and redeliver acknowledged transactions: at-least-once. Such
    // redeliveries are all at or before what was acked, in order.
    pg.execute("insert into public.notes values (3, 'three')").await;
    pg.restart();
    assert_eq!(
        pg.query_text("select count(*)::text from pg_replication_slots")
            .await
            .as_deref(),
        Some("1")
    );
    let mut s = connect(&cfg, &o).await;
    let mut ids = Vec::new();
    let end3 = loop {
        let (msgs, end) = next_txn(&mut s).await;
        let insert = msgs.iter().find(|m| m[0] == b'I').expect("an insert");
        let id = insert_values(insert)[0].clone().unwrap();
        ids.push(id.clone());
        if id == "3" {
            assert!(end > end2);
            break end;
        }
        assert!(end <= end2, "unacked transaction {id} before 'three'");
    };
    assert!(ids == ["3"] || ids == ["2", "3"] || ids == ["1", "2", "3"], "{ids:?}");
    eprintln!("after restart received {ids:?}");
    s.set_flushed(end3);
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
    pg.wait_for_text(&slot_lsn_sql("rs_persist"), Some(&end3.to_string()), WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_publication_fails_on_the_first_change() {
    let pg = PgCluster::start();
    pg.execute("create table public.notes (id int primary key, v text)")
        .await;
    // PG15 accepts START_REPLICATION with an unknown publication (CopyBothResponse) and only
    // fails when pgoutput loads the publications for the first decoded change.
    let mut s = connect(&tcp_config(&pg.url()), &opts("rs_nopub", "no_such_pub", true)).await;
    pg.execute("insert into public.notes values (1, 'x')").await;
    let deadline = Instant::now() + WAIT;
    let err = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.recv())
            .await
            .expect("no error within the deadline")
        {
            Ok(ReplicationMessage::Keepalive { .. }) => continue,
            Ok(m) => panic!("unexpected message {m:?}"),
            Err(e) => break e,
        }
    };
    match &err {
        WalError::Server { code, message } => {
            assert_eq!(code, "42704", "{err}");
            assert!(message.contains("no_such_pub"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(!err.is_transient());
    // The stream is dead afterwards.
    assert!(matches!(s.recv().await, Err(WalError::Io(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_keep_an_idle_connection_alive() {
    let pg = PgCluster::start_with(&[("wal_sender_timeout", "2s")]);
    table_and_publication(&pg, "notes", "pub").await;
    let mut s = connect(&tcp_config(&pg.url()), &opts("rs_idle", "pub", true)).await;
    let pid_sql = "select pid::text from pg_stat_replication where application_name = 'realtime-rs'";
    pg.wait_for_text("select count(*)::text from pg_stat_replication", Some("1"), WAIT)
        .await;
    let pid = pg.query_text(pid_sql).await.unwrap();

    // Idle for 5 s (2.5 × wal_sender_timeout) with only recv answering keepalives.
    let idle_until = Instant::now() + Duration::from_secs(5);
    let (mut keepalives, mut requested) = (0, 0);
    let mut last_wal_end = Lsn(0);
    while Instant::now() < idle_until {
        match tokio::time::timeout(idle_until - Instant::now(), s.recv()).await {
            Err(_) => break,
            Ok(Ok(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            })) => {
                keepalives += 1;
                requested += usize::from(reply_requested);
                last_wal_end = wal_end;
            }
            Ok(Ok(m)) => panic!("unexpected {m:?} while idle"),
            Ok(Err(e)) => panic!("connection dropped while idle: {e}"),
        }
    }
    assert!(
        requested >= 1,
        "walsender never asked for a reply ({keepalives} keepalives)"
    );
    assert_eq!(pg.query_text(pid_sql).await, Some(pid), "walsender restarted");

    // Still streaming, and a keepalive's wal_end can be acknowledged when nothing is pending.
    one_insert_round_trip(&pg, &mut s, "notes", 1, "after idle").await;
    assert!(last_wal_end > Lsn(0));
    s.set_flushed(last_wal_end);
    s.send_status().await.unwrap();
    pg.wait_for_text(&slot_lsn_sql("rs_idle"), Some(&last_wal_end.to_string()), WAIT)
        .await;
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_status_sets_confirmed_flush_lsn_exactly() {
    let pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    let mut s = connect(&tcp_config(&pg.url()), &opts("rs_ack", "pub", true)).await;
    let first = one_insert_round_trip(&pg, &mut s, "notes", 1, "a").await;
    let second = one_insert_round_trip(&pg, &mut s, "notes", 2, "b").await;
    assert!(second > first);

    s.set_flushed(first);
    s.send_status().await.unwrap();
    pg.wait_for_text(&slot_lsn_sql("rs_ack"), Some(&first.to_string()), WAIT)
        .await;

    s.set_flushed(second);
    s.set_flushed(first); // ignored: never backwards
    assert_eq!(s.flushed(), second);
    s.send_status().await.unwrap();
    pg.wait_for_text(&slot_lsn_sql("rs_ack"), Some(&second.to_string()), WAIT)
        .await;
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recv_is_cancel_safe() {
    const ROWS: i32 = 300;
    let pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    let mut s = connect(&tcp_config(&pg.url()), &opts("rs_cancel", "pub", true)).await;

    // Every 10th row is ~200 kB so frames span many socket reads and get cut mid-frame.
    let body = |i: i32| format!("row-{i}-{}", "x".repeat(if i % 10 == 0 { 200_000 } else { 10 }));
    let client = pg.client().await;
    let inserter = tokio::spawn(async move {
        for i in 0..ROWS {
            client
                .execute("insert into public.notes values ($1, $2)", &[&i, &body(i)])
                .await
                .unwrap();
        }
    });

    let mut seen = Vec::new();
    let (mut cancelled, mut rng) = (0u32, 0x2545_F491_4F6C_DD1Du64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < ROWS as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {ROWS} inserts after 60 s",
            seen.len()
        );
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Mix timer-based cancellation (tokio timers have 1 ms granularity) with dropping
        // the future after 1-3 polls (cancels between reads of one frame).
        let res = if rng % 4 == 0 {
            tokio::time::timeout(Duration::from_micros(1 + rng % 300), s.recv())
                .await
                .ok()
        } else {
            recv_with_poll_budget(&mut s, 1 + (rng >> 8) as u32 % 3).await
        };
        match res {
            None => cancelled += 1,
            Some(Err(e)) => panic!("recv failed: {e}"),
            Some(Ok(ReplicationMessage::XLogData { data, .. })) if data[0] == b'I' => {
                let vals = insert_values(&data);
                let id: i32 = vals[0].as_deref().unwrap().parse().unwrap();
                assert_eq!(vals[1].as_deref(), Some(body(id).as_str()), "row {id} intact");
                seen.push(id);
            }
            Some(Ok(_)) => {}
        }
    }
    tokio::time::timeout(WAIT, inserter).await.unwrap().unwrap();
    assert_eq!(
        seen,
        (0..ROWS).collect::<Vec<_>>(),
        "every insert exactly once, in order"
    );
    assert!(cancelled >= 20, "recv was cancelled only {cancelled} times");
    eprintln!("recv cancelled {cancelled} times");
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_formats_are_fixed_by_startup_options() {
    // Server defaults chosen to differ from what the decoder expects.
    let pg = PgCluster::start_with(&[
        ("timezone", "America/New_York"),
        ("datestyle", "SQL, DMY"),
        ("extra_float_digits", "0"),
        ("intervalstyle", "sql_standard"),
        ("bytea_output", "escape"),
    ]);
    pg.execute(
        "create table public.fmt (id int primary key, ts timestamptz, d date, f float8, iv interval, b bytea);
         create publication pub for table public.fmt;",
    )
    .await;
    // Sanity: an ordinary session really sees those defaults.
    let plain = pg
        .query_text("select '2025-11-03 09:32:55.123+00'::timestamptz::text")
        .await
        .unwrap();
    assert_ne!(plain, "2025-11-03 09:32:55.123+00");
    assert_eq!(
        pg.query_text("select (0.1::float8 + 0.2::float8)::text")
            .await
            .as_deref(),
        Some("0.3")
    );

    let mut s = connect(&tcp_config(&pg.url()), &opts("rs_fmt", "pub", true)).await;
    pg.execute(
        "insert into public.fmt values (1, '2025-11-03 10:32:55.123+01', '2025-11-03',
             0.1::float8 + 0.2::float8, '1 day 02:03:04', '\\x0102'::bytea)",
    )
    .await;
    pg.execute("insert into public.fmt values (2, '2025-11-03 09:32:55+00', null, 1e100, '-1 mon', '')")
        .await;
    let (msgs, _) = next_txn(&mut s).await;
    assert_eq!(tags(&msgs), "BRIC");
    let row = insert_values(&msgs[2]);
    let want = [
        "1",
        "2025-11-03 09:32:55.123+00",
        "2025-11-03",
        "0.30000000000000004",
        "1 day 02:03:04",
        "\\x0102",
    ];
    assert_eq!(row, want.iter().map(|v| Some(v.to_string())).collect::<Vec<_>>());

    let (msgs, _) = next_txn(&mut s).await;
    let row = insert_values(&msgs[1]);
    assert_eq!(row[1].as_deref(), Some("2025-11-03 09:32:55+00"));
    assert_eq!(row[2], None);
    assert_eq!(row[3].as_deref(), Some("1e+100"));
    assert_eq!(row[4].as_deref(), Some("-1 mons"));
    assert_eq!(row[5].as_deref(), Some("\\x"));
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn configuration_errors_need_no_server() {
    let o = opts("rs", "pub", true);
    let err = try_connect(&tcp_config("postgres://u@127.0.0.1:1/db?sslmode=require"), &o)
        .await
        .unwrap_err();
    assert!(matches!(&err, WalError::Config(m) if m.contains("TLS")), "{err:?}");
    assert!(!err.is_transient());

    let err = try_connect(
        &tcp_config("postgres://u@127.0.0.1:1/db"),
        &opts("Bad-Slot", "pub", true),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WalError::Config(_)), "{err:?}");

    // Nothing listens on port 1: a transient I/O error.
    let err = try_connect(&tcp_config("postgres://u@127.0.0.1:1/db"), &o)
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::Io(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_working_host_is_used() {
    let pg = PgCluster::start();
    table_and_publication(&pg, "notes", "pub").await;
    // A dead TCP host first, then the live Unix socket.
    let cfg: tokio_postgres::Config = format!(
        "host=127.0.0.1,{} port=1,{} user=postgres dbname=postgres",
        pg.socket_dir().display(),
        pg.port()
    )
    .parse()
    .unwrap();
    let mut s = connect(&cfg, &opts("rs_multi", "pub", true)).await;
    one_insert_round_trip(&pg, &mut s, "notes", 1, "multi").await;
    tokio::time::timeout(WAIT, s.close()).await.unwrap().unwrap();
}
