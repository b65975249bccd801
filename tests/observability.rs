//! Operations endpoints and logs against the real binary: `/healthcheck`, `/api/ping`,
//! `/api/health` (with and without a database, and after that database stops),
//! `/metrics` (values follow connections, joins, broadcasts, presence and limits; the
//! optional bearer token), and `LOG_FORMAT=json` with a connection id on each line.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

async fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let (status, h, body) = s.http("GET", path, headers, b"").await;
    (status, h, String::from_utf8(body).unwrap())
}

async fn health(s: &Server) -> (u16, Value) {
    let (status, _, body) = get(s, "/api/health", &[]).await;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("health is not JSON ({e}): {body}"));
    (status, v)
}

/// Polls `/api/health` until `pred` holds; panics with the last body otherwise.
async fn health_until(s: &Server, what: &str, pred: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v) = health(s).await;
        if pred(status, &v) {
            return (status, v);
        }
        if tokio::time::Instant::now() > deadline {
            panic!("health never reached `{what}`: {status} {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(s: &Server) -> String {
    let (status, headers, body) = get(s, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert!(ct.is_some_and(|c| c.starts_with("text/plain")), "{ct:?}");
    body
}

/// The value of the sample `series` (name plus labels exactly as rendered, e.g.
/// `realtime_joins_total{result="ok"}`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Polls `/metrics` until `series` satisfies `pred`.
async fn metric_until(s: &Server, series: &str, pred: impl Fn(f64) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics(s).await;
        if sample(&text, series).is_some_and(&pred) {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{series} never reached the expected value:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn healthcheck_and_ping_need_no_token() {
    let s = Server::start().await;
    let (status, _, body) = get(&s, "/healthcheck", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    for path in ["/api/ping", "/realtime/v1/api/ping"] {
        let (status, headers, body) = get(&s, path, &[]).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"message": "Success"})
        );
        assert!(headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json"));
    }
    // Other methods are still the REST API's (which does not know them).
    let (status, _, _) = s.http("POST", "/api/ping", &[], b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn health_follows_connections_and_channels() {
    let s = Server::start().await;
    let (status, h) = health(&s).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["healthy"], true);
    assert_eq!(h["connections"], 0);
    assert_eq!(h["channels"], 0);
    for k in [
        "db_connected",
        "replication_connected",
        "replication_lag_bytes",
        "replication_lag_seconds",
    ] {
        assert!(
            h.get(k).is_some_and(Value::is_null),
            "{k} should be null without a database: {h}"
        );
    }
    assert!(h["uptime_seconds"].is_u64(), "{h}");
    let (status, h2) = get(&s, "/realtime/v1/api/health", &[]).await.into_status_json();
    assert_eq!((status, &h2["healthy"]), (200, &json!(true)));

    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("1.0.0").await;
    health_until(&s, "2 connections", |_, v| v["connections"] == 2).await;
    let ja = a.join("realtime:one", config(json!({}))).await;
    a.join("realtime:two", config(json!({}))).await;
    b.join("realtime:one", config(json!({}))).await;
    let (_, v) = health_until(&s, "3 channels", |_, v| v["channels"] == 3).await;
    assert_eq!(v["connections"], 2);

    a.push(Some(&ja), Some("9"), "realtime:one", "phx_leave", json!({}))
        .await;
    a.recv_event("phx_reply").await;
    health_until(&s, "2 channels after a leave", |_, v| v["channels"] == 2).await;

    drop(b);
    let (_, v) = health_until(&s, "1 connection after a close", |_, v| v["connections"] == 1).await;
    assert_eq!(v["channels"], 1, "the closed socket's channel is gone too: {v}");
    drop(a);
    health_until(&s, "nothing left", |_, v| v["connections"] == 0 && v["channels"] == 0).await;
}

trait StatusJson {
    fn into_status_json(self) -> (u16, Value);
}

impl StatusJson for (u16, Vec<(String, String)>, String) {
    fn into_status_json(self) -> (u16, Value) {
        (self.0, serde_json::from_str(&self.2).unwrap())
    }
}

#[tokio::test]
async fn metrics_follow_joins_broadcasts_presence_and_limits() {
    let s = Server::start_with(&[("MAX_CHANNELS_PER_CLIENT", "2")]).await;
    let m = metrics(&s).await;
    assert_eq!(value(&m, "realtime_connections"), 0.0);
    assert_eq!(value(&m, r#"realtime_joins_total{result="ok"}"#), 0.0);
    assert_eq!(value(&m, r#"realtime_messages_out_total{event="broadcast"}"#), 0.0);
    assert!(m.contains("# TYPE realtime_fanout_duration_seconds histogram"), "{m}");
    assert!(m.contains("# TYPE realtime_connection_opens_total counter"), "{m}");
    let bytes_before = value(&m, "realtime_bytes_out_total");
    // The REST path is served too.
    let (status, _, _) = get(&s, "/realtime/v1/metrics", &[]).await;
    assert_eq!(status, 200);

    let mut a = s.connect("2.0.0").await;
    let mut b = s.connect("2.0.0").await;
    let ja = a
        .join(
            "realtime:room",
            config(json!({"presence": {"key": "a", "enabled": true}})),
        )
        .await;
    a.recv_event("presence_state").await;
    b.join("realtime:room", config(json!({}))).await;
    let m = metric_until(&s, r#"realtime_joins_total{result="ok"}"#, |v| v == 2.0).await;
    assert_eq!(value(&m, "realtime_connections"), 2.0);
    assert_eq!(value(&m, r#"realtime_channels{kind="public"}"#), 2.0);
    assert_eq!(value(&m, r#"realtime_channels{kind="private"}"#), 0.0);
    assert_eq!(value(&m, "realtime_connection_opens_total"), 2.0);
    assert_eq!(value(&m, r#"realtime_messages_in_total{event="phx_join"}"#), 2.0);

    // A broadcast from a (self: false) reaches b only: one out per recipient.
    a.push(
        Some(&ja),
        Some("5"),
        "realtime:room",
        "broadcast",
        json!({"type": "broadcast", "event": "ev", "payload": {"n": 1}}),
    )
    .await;
    b.recv_event("broadcast").await;
    let m = metric_until(&s, r#"realtime_messages_in_total{event="broadcast"}"#, |v| v == 1.0).await;
    assert_eq!(value(&m, r#"realtime_messages_out_total{event="broadcast"}"#), 1.0);
    assert!(value(&m, "realtime_fanout_duration_seconds_count") >= 1.0, "{m}");
    // Frames and bytes are counted once the write is flushed, which can be after the
    // client has read them: wait for each (a scrape is not a snapshot).
    metric_until(&s, "realtime_bytes_out_total", |v| v > bytes_before).await;
    metric_until(&s, "realtime_frames_out_total", |v| v >= 4.0).await;

    // Presence: one key tracked.
    a.push(
        Some(&ja),
        Some("6"),
        "realtime:room",
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"u": 1}}),
    )
    .await;
    a.recv_event("presence_diff").await;
    let m = metric_until(&s, "realtime_presence_keys", |v| v == 1.0).await;
    assert!(
        value(&m, r#"realtime_messages_out_total{event="presence_diff"}"#) >= 1.0,
        "{m}"
    );

    // A third channel is over MAX_CHANNELS_PER_CLIENT.
    a.join("realtime:second", config(json!({}))).await;
    let (_, reply) = a.join_with("realtime:third", config(json!({})), None).await;
    assert_eq!(reply.payload()["status"], "error", "{reply:?}");
    let m = metric_until(
        &s,
        r#"realtime_limit_rejections_total{reason="max_channels_per_client"}"#,
        |v| v == 1.0,
    )
    .await;
    assert_eq!(value(&m, r#"realtime_joins_total{result="refused"}"#), 1.0);
    assert_eq!(value(&m, r#"realtime_joins_total{result="ok"}"#), 3.0);

    drop(a);
    drop(b);
    // Teardown updates the close counter, the connection gauge and the channel
    // gauge at different moments (a scrape is not a snapshot), so each is
    // awaited on its own.
    metric_until(&s, r#"realtime_connection_closes_total{reason="peer"}"#, |v| v == 2.0).await;
    metric_until(&s, "realtime_connections", |v| v == 0.0).await;
    metric_until(&s, r#"realtime_channels{kind="public"}"#, |v| v == 0.0).await;
    let m = metric_until(&s, "realtime_presence_keys", |v| v == 0.0).await;
    assert_eq!(value(&m, r#"realtime_connection_closes_total{reason="slow"}"#), 0.0);
}

#[tokio::test]
async fn metrics_token_is_enforced_when_set() {
    let s = Server::start_with(&[("METRICS_TOKEN", "m3trics-t0ken")]).await;
    let (status, _, _) = get(&s, "/metrics", &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&s, "/metrics", &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(status, 401);
    // A valid client JWT is not the metrics token.
    let jwt = format!("Bearer {}", token("service_role", 60));
    let (status, _, _) = get(&s, "/metrics", &[("Authorization", &jwt)]).await;
    assert_eq!(status, 401);
    let (status, _, body) = get(&s, "/metrics", &[("Authorization", "Bearer m3trics-t0ken")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("realtime_connections 0"), "{body}");
    // Health and ping stay open.
    assert_eq!(health(&s).await.0, 200);
}

#[tokio::test]
async fn health_reports_the_database_and_its_loss() {
    let pg = Pg::start();
    pg.exec(
        "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
         create table public.items (id int primary key);
         create publication supabase_realtime for table public.items;",
    )
    .await;
    let s = Server::start_with(&[("DATABASE_URL", &pg.url())]).await;
    let (_, v) = health_until(&s, "healthy with a database", |status, v| {
        status == 200 && v["healthy"] == true
    })
    .await;
    assert_eq!(v["db_connected"], true, "{v}");
    assert_eq!(v["replication_connected"], true, "{v}");
    assert_eq!(v["replication"]["postgres_changes"], "streaming", "{v}");
    assert_eq!(v["replication"]["broadcast_from_database"], "streaming", "{v}");

    // Positions arrive with the first keepalive or transaction.
    pg.exec("insert into public.items values (1); select realtime.send('{}', 'e', 't', false);")
        .await;
    let (_, v) = health_until(&s, "lag reported", |_, v| {
        v["replication_lag_bytes"].is_u64() && v["replication_lag_seconds"].is_f64()
    })
    .await;
    assert!(v["replication_lag_seconds"].as_f64().unwrap() < 60.0, "{v}");
    let m = metric_until(
        &s,
        r#"realtime_replication_connected{stream="postgres_changes"}"#,
        |v| v == 1.0,
    )
    .await;
    assert_eq!(
        value(
            &m,
            r#"realtime_replication_connected{stream="broadcast_from_database"}"#
        ),
        1.0
    );
    assert!(
        sample(&m, r#"realtime_replication_lag_bytes{stream="postgres_changes"}"#).is_some(),
        "{m}"
    );

    pg.stop();
    let (status, v) = health_until(&s, "unhealthy once Postgres is gone", |status, v| {
        status == 503 && v["replication_connected"] == false
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(v["healthy"], false, "{v}");
    assert_eq!(v["db_connected"], false, "{v}");
    let m = metric_until(
        &s,
        r#"realtime_replication_connected{stream="postgres_changes"}"#,
        |v| v == 0.0,
    )
    .await;
    assert_eq!(
        value(
            &m,
            r#"realtime_replication_connected{stream="broadcast_from_database"}"#
        ),
        0.0
    );
    // Liveness is not readiness.
    let (status, _, _) = get(&s, "/healthcheck", &[]).await;
    assert_eq!(status, 200);

    pg.start_again();
    health_until(&s, "healthy again once Postgres is back", |status, v| {
        status == 200 && v["healthy"] == true && v["db_connected"] == true
    })
    .await;
}

#[tokio::test]
async fn json_logs_carry_the_connection_id() {
    let (s, mut lines) = Server::start_capturing_stderr(&[("LOG_FORMAT", "json"), ("RUST_LOG", "realtime=info")]).await;
    let mut c = s.connect("2.0.0").await;
    // An empty sub-topic is refused: logged with its reason and topic.
    let (_, reply) = c.join_with("realtime:", config(json!({})), None).await;
    assert_eq!(reply.payload()["status"], "error");
    drop(c);

    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut refused, mut closed) = (None, None);
    while refused.is_none() || closed.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .expect("log lines for the refused join and the close")
            .expect("stderr open");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        match v["message"].as_str() {
            Some("join refused") => refused = Some(v),
            Some("connection closed") => closed = Some(v),
            _ => {}
        }
    }
    let (refused, closed) = (refused.unwrap(), closed.unwrap());
    assert_eq!(refused["topic"], "realtime:", "{refused}");
    assert!(refused["reason"].is_string(), "{refused}");
    assert_eq!(closed["reason"], "peer", "{closed}");
    let id = closed["span"]["conn_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no conn_id: {closed}"));
    assert_eq!(refused["span"]["conn_id"], id, "both lines belong to one connection");
    let peer = closed["span"]["peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{closed}");
}

#[tokio::test]
async fn json_warnings_carry_the_connection_id_at_warn_level() {
    let (s, mut lines) = Server::start_capturing_stderr(&[("LOG_FORMAT", "json"), ("RUST_LOG", "warn")]).await;
    let mut c = s.connect("2.0.0").await;
    c.send_text("this is not a phoenix message").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let warning = loop {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .expect("a warning for the malformed message")
            .expect("stderr open");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["error_code"] == "MalformedWebSocketMessage" {
            break v;
        }
    };
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(warning["span"]["conn_id"].is_u64(), "{warning}");
}

/// An error retrying cannot fix (here: a role without the REPLICATION attribute) stops that
/// stream with one error log, and `/api/health` shows it, instead of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_error_that_needs_an_operator_stops_the_stream_and_shows_in_health() {
    let pg = Pg::start();
    pg.exec(
        "create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
         create role no_replication login;
         create table public.items (id int primary key);
         create publication supabase_realtime for table public.items;",
    )
    .await;
    let url = format!("postgres://no_replication@127.0.0.1:{}/postgres", pg.port);
    // Without migrations Broadcast from Database waits for its publication (not an error).
    let (s, mut lines) = Server::start_capturing_stderr(&[
        ("DATABASE_URL", url.as_str()),
        ("REALTIME_MIGRATIONS", "false"),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
    ])
    .await;
    let (status, v) = health_until(&s, "postgres_changes failed", |_, v| {
        v["replication"]["postgres_changes"] == "failed"
    })
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["healthy"], false, "{v}");
    assert_eq!(v["db_connected"], true, "{v}");
    assert_eq!(v["replication_connected"], false, "{v}");
    assert_eq!(
        v["replication"]["broadcast_from_database"], "waiting_for_publication",
        "{v}"
    );
    let reason = v["replication_errors"]["postgres_changes"].as_str().unwrap_or_default();
    assert!(reason.contains("42501"), "the server's error is shown: {v}");

    // Two seconds cover several reconnections at the initial backoff (250 ms doubling).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut stopped, mut retries) = (0, 0);
    while let Ok(line) = lines.try_recv() {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let message = v["message"].as_str().unwrap_or_default();
        if message.contains("replication stopped for good") {
            assert_eq!(v["level"], "ERROR", "{v}");
            assert_eq!(v["stream"], "postgres_changes", "{v}");
            stopped += 1;
        } else if message.contains("reconnecting") {
            retries += 1;
        }
    }
    assert_eq!((stopped, retries), (1, 0), "one error log and no retry");
    assert_eq!(health(&s).await.1["replication"]["postgres_changes"], "failed");
}
