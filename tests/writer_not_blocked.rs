//! A connection keeps receiving while one of its own messages waits on the database
//! (issue 15 §4): a private join whose authorization is slow must not make the server cut
//! the client off as a slow consumer of a busy topic it already follows.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::json;

const ROLES: &str =
    "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;";

/// Reading `slow-room` takes at least half a second per probe row.
const SLOW_POLICY: &str = r#"
create policy "slow read" on realtime.messages for select to authenticated
  using (pg_sleep(0.5) is not null and (select realtime.topic()) = 'slow-room');
"#;

const MESSAGES: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_private_join_does_not_cut_off_a_busy_topic() {
    let pg = Pg::start();
    pg.exec(ROLES).await;
    let url = pg.url();
    // A small outbound queue: 200 messages is a tenth of a second of this topic.
    let s = Server::start_with(&[("DATABASE_URL", url.as_str()), ("OUTBOUND_QUEUE_MESSAGES", "200")]).await;
    pg.exec(SLOW_POLICY).await;

    let mut c = s.connect("2.0.0").await;
    c.join("realtime:busy", config(json!({}))).await;
    let mut publisher = s.connect("2.0.0").await;
    let pub_ref = publisher.join("realtime:busy", config(json!({}))).await;

    // 2,000 messages/s for two seconds: 10 every 5 ms.
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for batch in 0..MESSAGES / 10 {
            tick.tick().await;
            for k in 0..10 {
                let i = batch * 10 + k;
                let payload = json!({"type": "broadcast", "event": "m", "payload": {"i": i}});
                publisher
                    .push(Some(&pub_ref), None, "realtime:busy", "broadcast", payload)
                    .await;
            }
        }
        publisher
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let user = claims_token(
        json!({"role": "authenticated", "sub": "11111111-1111-1111-1111-111111111111", "exp": now() + 3600}),
    );
    let join_ref = c.make_ref();
    let mut private = config(json!({}));
    private["private"] = json!(true);
    c.push(
        Some(&join_ref),
        Some(&join_ref),
        "realtime:slow-room",
        "phx_join",
        json!({"config": private, "access_token": user}),
    )
    .await;

    let mut next = 0usize;
    let mut join_reply = None;
    while next < MESSAGES {
        let Some(frame) = c.recv_within(Duration::from_secs(10)).await else {
            panic!("nothing for 10 s after message {next}");
        };
        if let Frame::Close(code) = frame {
            panic!("connection closed ({code:?}) after {next} of {MESSAGES} messages; join reply: {join_reply:?}");
        }
        match frame.event() {
            "broadcast" => {
                let i = frame.payload()["payload"]["i"].as_u64().unwrap() as usize;
                assert_eq!(i, next, "messages out of order or lost");
                next += 1;
            }
            "phx_reply" if frame.json()[2] == "realtime:slow-room" => join_reply = Some(frame.payload().clone()),
            _ => {}
        }
    }
    let _publisher = sender.await.unwrap();
    if join_reply.is_none() {
        join_reply = Some(c.recv_event("phx_reply").await.payload().clone());
    }
    assert_eq!(join_reply.unwrap()["status"], "ok");
}
