//! Row changes in a cluster (issue 11 §3): one replication slot per database, streamed by
//! one node (the leader, by a PostgreSQL advisory lock), relayed to every node, each
//! applying filters and RLS for its own subscribers; a leader killed with `kill -9` is
//! replaced and no change is lost or delivered twice. Real processes: PostgreSQL 15,
//! redis-server or nats-server, and two `realtime` nodes; each test runs once per engine.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::engine_server::{EngineServer, Kind};
use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

const SCHEMA: &str = r#"
create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table public.items (id bigint primary key, body text);
grant select on public.items to anon;
create publication supabase_realtime for table public.items;
"#;

async fn node(engine: &EngineServer, pg: &Pg, name: &str) -> Server {
    Server::start_with(&[
        ("CLUSTER_URL", &engine.url()),
        ("NODE_ID", name),
        ("DATABASE_URL", &pg.url()),
        ("CLUSTER_UNSUBSCRIBE_DELAY_MS", "300"),
    ])
    .await
}

/// `cluster.leader` of a node's `/api/health`.
async fn leads(s: &Server) -> bool {
    let (_, _, body) = s.http("GET", "/api/health", &[], b"").await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["cluster"]["leader"].as_bool().expect("cluster.leader in /api/health")
}

/// Two nodes, the first holding the replication lease before the second starts.
async fn leader_then_follower(engine: &EngineServer, pg: &Pg) -> (Server, Server) {
    let first = node(engine, pg, "first").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leads(&first).await {
        assert!(tokio::time::Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (first, node(engine, pg, "second").await)
}

/// A connection subscribed to the inserts of `public.items`, once Postgres Changes say
/// they are live on its node.
async fn watcher(s: &Server) -> Client {
    let mut c = s.connect("1.0.0").await;
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": "items"}]);
    c.join("realtime:items", config(json!({"postgres_changes": bindings})))
        .await;
    let sys = tokio::time::timeout(Duration::from_secs(20), c.recv_event("system"))
        .await
        .expect("system message within 20 s");
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL", "{sys:?}");
    c
}

/// The ids of inserted rows `c` receives until `n` arrived or `within` passed.
async fn ids(c: &mut Client, n: usize, within: Duration) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = c.recv_within(left).await else {
            break;
        };
        if f.event() == "postgres_changes" {
            out.push(f.payload()["data"]["record"]["id"].as_i64().expect("id"));
        }
    }
    out
}

async fn row_changes_reach_every_node_from_one_stream(kind: Kind) {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let engine = EngineServer::start(kind).await;
    let (a, b) = (node(&engine, &pg, "a").await, node(&engine, &pg, "b").await);
    let (mut on_a, mut on_b) = (watcher(&a).await, watcher(&b).await);
    assert_eq!(
        u8::from(leads(&a).await) + u8::from(leads(&b).await),
        1,
        "exactly one node leads replication"
    );

    for id in 1..=50 {
        pg.exec(&format!("insert into public.items values ({id}, 'x')")).await;
    }
    let expected: Vec<i64> = (1..=50).collect();
    assert_eq!(ids(&mut on_a, 50, Duration::from_secs(15)).await, expected, "node a");
    assert_eq!(ids(&mut on_b, 50, Duration::from_secs(15)).await, expected, "node b");
    on_a.expect_silence(Duration::from_millis(300)).await;
    on_b.expect_silence(Duration::from_millis(300)).await;

    // One walsender per slot, whatever the number of nodes.
    let streams: i64 = pg
        .client()
        .await
        .query_one("select count(*) from pg_stat_replication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        streams, 2,
        "Postgres Changes and Broadcast from Database, each streamed once"
    );

    // Broadcast from Database crosses like any broadcast.
    let mut room_a = a.connect("2.0.0").await;
    room_a.join("realtime:room", config(json!({}))).await;
    let mut room_b = b.connect("2.0.0").await;
    room_b.join("realtime:room", config(json!({}))).await;
    pg.exec(r#"select realtime.send('{"n": 1}', 'ev', 'room', false)"#)
        .await;
    for c in [&mut room_a, &mut room_b] {
        let Frame::Binary(_) = c.recv().await else {
            panic!("a type 4 broadcast expected")
        };
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

async fn a_killed_leader_is_replaced_and_no_change_is_lost_or_doubled(kind: Kind) {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let engine = EngineServer::start(kind).await;
    let (mut first, second) = leader_then_follower(&engine, &pg).await;
    let mut on_second = watcher(&second).await;
    assert!(!leads(&second).await);

    const N: i64 = 120;
    let url = pg.url();
    let inserts = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        for id in 1..=N {
            client
                .batch_execute(&format!("insert into public.items values ({id}, 'x')"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill();
    let killed = tokio::time::Instant::now();
    let deadline = killed + Duration::from_secs(20);
    while !leads(&second).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second node did not take over within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the second node leads {:?} after the leader was killed",
        killed.elapsed()
    );
    inserts.await.unwrap();

    let got = ids(&mut on_second, N as usize, Duration::from_secs(30)).await;
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(got.len(), unique.len(), "a change was delivered twice: {got:?}");
    assert_eq!(
        unique,
        (1..=N).collect(),
        "every change committed during the failover arrives"
    );
    on_second.expect_silence(Duration::from_millis(500)).await;
}

async fn a_transaction_in_flight_when_the_leader_dies_arrives_once(kind: Kind) {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let engine = EngineServer::start(kind).await;
    let (mut first, second) = leader_then_follower(&engine, &pg).await;
    // A fraction of the rows, so the client keeps up while the nodes work through them.
    let mut c = second.connect("1.0.0").await;
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": "items", "filter": "body=eq.hit"}]);
    c.join("realtime:items", config(json!({"postgres_changes": bindings})))
        .await;
    let sys = tokio::time::timeout(Duration::from_secs(20), c.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL");

    const ROWS: i64 = 300_000;
    const EVERY: i64 = 100;
    pg.exec(&format!(
        "insert into public.items select g, case when g % {EVERY} = 0 then 'hit' else 'miss' end \
         from generate_series(1, {ROWS}) g"
    ))
    .await;
    // Kill the leader while the transaction is being delivered.
    let mut got = ids(&mut c, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the transaction started arriving");
    first.kill();
    got.extend(ids(&mut c, (ROWS / EVERY) as usize - 1, Duration::from_secs(60)).await);
    c.expect_silence(Duration::from_millis(500)).await;
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(
        got.len(),
        unique.len(),
        "{} of {} rows arrived twice",
        got.len() - unique.len(),
        got.len()
    );
    assert_eq!(
        unique,
        (1..=ROWS / EVERY).map(|i| i * EVERY).collect(),
        "every matching row arrives"
    );
}

/// `cluster.engine_connected` of a node's `/api/health`.
async fn engine_connected(s: &Server) -> bool {
    let (_, _, body) = s.http("GET", "/api/health", &[], b"").await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["cluster"]["engine_connected"]
        .as_bool()
        .expect("cluster.engine_connected in /api/health")
}

async fn engine_link_until(s: &Server, up: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while engine_connected(s).await != up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine link of a node is not {} after 15 s",
            if up { "up" } else { "down" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn row_changes_committed_while_the_engine_is_down_reach_every_node_after(kind: Kind) {
    let pg = Pg::start();
    pg.exec(SCHEMA).await;
    let mut engine = EngineServer::start(kind).await;
    let (leader, follower) = leader_then_follower(&engine, &pg).await;
    let (mut on_leader, mut on_follower) = (watcher(&leader).await, watcher(&follower).await);
    pg.exec("insert into public.items values (1, 'before')").await;
    for c in [&mut on_leader, &mut on_follower] {
        assert_eq!(ids(c, 1, Duration::from_secs(15)).await, [1]);
    }

    engine.kill().await;
    engine_link_until(&leader, false).await;
    engine_link_until(&follower, false).await;
    for id in 2..=20 {
        pg.exec(&format!("insert into public.items values ({id}, 'during')"))
            .await;
    }
    // The leader's own subscribers are served meanwhile.
    let during: Vec<i64> = (2..=20).collect();
    assert_eq!(ids(&mut on_leader, 19, Duration::from_secs(15)).await, during);

    engine.start_again().await;
    let back = tokio::time::Instant::now();
    engine_link_until(&follower, true).await;
    for id in 21..=30 {
        pg.exec(&format!("insert into public.items values ({id}, 'after')"))
            .await;
    }
    let expected: Vec<i64> = (2..=30).collect();
    assert_eq!(
        ids(&mut on_follower, 29, Duration::from_secs(20)).await,
        expected,
        "the follower's subscriber gets what was committed while the engine was down, once and in order"
    );
    eprintln!("the follower caught up {:?} after the engine returned", back.elapsed());
    assert_eq!(
        ids(&mut on_leader, 10, Duration::from_secs(15)).await,
        (21..=30).collect::<Vec<_>>()
    );
    on_follower.expect_silence(Duration::from_millis(500)).await;
    on_leader.expect_silence(Duration::from_millis(300)).await;
}

per_engine!(
    row_changes_reach_every_node_from_one_stream,
    a_killed_leader_is_replaced_and_no_change_is_lost_or_doubled,
    a_transaction_in_flight_when_the_leader_dies_arrives_once,
    row_changes_committed_while_the_engine_is_down_reach_every_node_after,
);
