//! The shared RLS check runs in a snapshot that sees the round's transactions: it proves
//! so in its own statement, and when it cannot (a commit streamed before Postgres made it
//! visible), it waits and checks again instead of judging the row missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::Pg;
use realtime::postgres_changes::catalog::Catalog;
use realtime::postgres_changes::filter::Cell;
use realtime::postgres_changes::pool::Pool;
use realtime::postgres_changes::rls::Viewer;
use realtime::postgres_changes::rls_shared::{Group, Row, SharedRls};
use realtime::postgres_changes::visibility::Pending;

const OWNER: &str = "11111111-1111-1111-1111-111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_waits_for_a_transaction_it_does_not_see_yet() {
    let pg = Pg::start();
    pg.exec(realtime::dev::ROLES_SQL).await;
    pg.exec(
        "create table public.notes (id int primary key, owner uuid);
         alter table public.notes enable row level security;
         grant select on public.notes to authenticated;
         create policy own on public.notes for select to authenticated using (owner = auth.uid());",
    )
    .await;
    let pool = Arc::new(Pool::new(pg.url().parse().unwrap(), 2));
    let admin = pg.client().await;
    let oid: u32 = admin
        .query_one("select 'public.notes'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let table = Catalog::new(pool.clone()).table(oid).await.unwrap().unwrap();

    // A transaction that is not visible yet: still open.
    let writer = pg.client().await;
    writer.batch_execute("begin").await.unwrap();
    writer
        .execute(&format!("insert into public.notes values (1, '{OWNER}')"), &[])
        .await
        .unwrap();
    let txid: i64 = writer.query_one("select txid_current()", &[]).await.unwrap().get(0);
    let xid = (txid & 0xffff_ffff) as u32;

    let claims: Arc<str> = Arc::from(format!(r#"{{"role":"authenticated","sub":"{OWNER}"}}"#));
    let groups = [Group {
        viewer: Viewer {
            role: "authenticated",
            claims: &claims,
            sub: Some(OWNER),
        },
        claims: &claims,
    }];
    let key = vec!["1".to_owned()];
    let image = [Cell::Text("1"), Cell::Text(OWNER)];
    let rows = [Row {
        key: &key,
        image: Some(&image),
    }];
    let shared = SharedRls::default();

    // Told of no transaction, the check answers from a snapshot without the row.
    let blind = shared
        .check(&pool, &table, "authenticated", &groups, &rows, &Pending::new(&[]))
        .await
        .expect("shared");
    assert_eq!(blind.sees(0, 0), Some(false));

    // Told of it, the check notices its snapshot misses it and waits for the commit.
    let commit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer.batch_execute("commit").await.unwrap();
    });
    let pending = Pending::new(&[xid]);
    let answer = shared
        .check(&pool, &table, "authenticated", &groups, &rows, &pending)
        .await
        .expect("shared");
    commit.await.unwrap();
    assert_eq!(
        answer.sees(0, 0),
        Some(true),
        "the row committed while the check waited"
    );
    assert!(
        pending.unseen().is_empty(),
        "later statements of the round need not prove it again"
    );
}
