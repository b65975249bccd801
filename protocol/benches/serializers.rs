//! Micro-benchmarks of the wire serializers.
//!
//! `cargo bench -p realtime-protocol` (criterion; `-- --quick` for a short run).
//!
//! * `broadcast`: a JSON broadcast (`{"type":"broadcast","event":…,"payload":…}`, ~100 B
//!   payload) encoded for V1 and V2 receivers; a user broadcast encoded as V2 binary type 4
//!   and as V1 JSON.
//! * `user_broadcast_binary`: decoding a client's V2 binary push (type 3).
//! * `inbound_text`: decoding a V1 / V2 text broadcast push.
//! * `join_reply`: a join reply with two `postgres_changes` bindings (ids hashed).
//! * `postgres_changes`: the frame of one INSERT (ids + data, V1 and V2 envelopes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use realtime_protocol::broadcast::{BroadcastMessage, Encoding};
use realtime_protocol::encode::{self, Status};
use realtime_protocol::frame::{decode_binary, decode_text};
use realtime_protocol::join::join_reply_response;
use realtime_protocol::Vsn;
use serde_json::{json, Map, Value};

const TOPIC: &str = "realtime:room-42";
const PAYLOAD: &str =
    r##"{"user":"8d9f3c1e-4b2a-4c3d-9e8f-0a1b2c3d4e5f","x":1024.5,"y":768.25,"color":"#ff8800","seq":123456}"##;

fn broadcast(c: &mut Criterion) {
    let map = BroadcastMessage::Map(Bytes::from(format!(
        r#"{{"type":"broadcast","event":"cursor","payload":{PAYLOAD}}}"#
    )));
    let user = BroadcastMessage::User {
        event: "cursor".into(),
        metadata: None,
        encoding: Encoding::Json,
        body: Bytes::from_static(PAYLOAD.as_bytes()),
    };
    let mut g = c.benchmark_group("broadcast");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_v1", |b| b.iter(|| black_box(&map).encode(Vsn::V1, TOPIC)));
    g.bench_function("json_v2", |b| b.iter(|| black_box(&map).encode(Vsn::V2, TOPIC)));
    g.bench_function("user_v2_binary", |b| b.iter(|| black_box(&user).encode(Vsn::V2, TOPIC)));
    g.bench_function("user_v1_json", |b| b.iter(|| black_box(&user).encode(Vsn::V1, TOPIC)));
    g.finish();
}

/// A client's V2 binary push: `03 J R T E M enc | join_ref | ref | topic | event | meta | payload`.
fn type3(join_ref: &str, ref_: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        3,
        join_ref.len() as u8,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        1,
    ];
    for s in [join_ref, ref_, topic, event] {
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn inbound(c: &mut Criterion) {
    let binary = type3("1", "7", TOPIC, "cursor", PAYLOAD.as_bytes());
    let mut g = c.benchmark_group("user_broadcast_binary");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| {
        b.iter(|| decode_binary(Vsn::V2, black_box(&binary)).unwrap().topic.len())
    });
    g.bench_function("encode", |b| {
        b.iter(|| {
            realtime_protocol::broadcast::user_broadcast_frame(
                black_box(TOPIC),
                "cursor",
                b"",
                Encoding::Json,
                PAYLOAD.as_bytes(),
            )
        })
    });
    g.finish();

    let v1 = format!(
        r#"{{"topic":"{TOPIC}","event":"broadcast","payload":{{"type":"broadcast","event":"cursor","payload":{PAYLOAD}}},"ref":"7","join_ref":"1"}}"#
    );
    let v2 = format!(r#"["1","7","{TOPIC}","broadcast",{{"type":"broadcast","event":"cursor","payload":{PAYLOAD}}}]"#);
    let mut g = c.benchmark_group("inbound_text");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_v1", |b| {
        b.iter(|| decode_text(Vsn::V1, black_box(v1.as_bytes())).unwrap().topic.len())
    });
    g.bench_function("decode_v2", |b| {
        b.iter(|| decode_text(Vsn::V2, black_box(v2.as_bytes())).unwrap().topic.len())
    });
    g.finish();
}

fn join_reply(c: &mut Criterion) {
    let bindings: Vec<Map<String, Value>> = [
        json!({"event": "INSERT", "schema": "public", "table": "messages", "filter": "room_id=eq.42"}),
        json!({"event": "*", "schema": "public", "table": "profiles"}),
    ]
    .into_iter()
    .map(|v| match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    })
    .collect();
    let mut g = c.benchmark_group("join_reply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("postgres_changes_2_bindings_v1", |b| {
        b.iter(|| {
            let response = join_reply_response(black_box(&bindings));
            encode::reply(Vsn::V1, Some("1"), Some("1"), TOPIC, Status::Ok, &response)
        })
    });
    g.bench_function("empty_v2", |b| {
        b.iter(|| {
            encode::reply(
                Vsn::V2,
                Some("1"),
                Some("1"),
                black_box(TOPIC),
                Status::Ok,
                r#"{"postgres_changes":[]}"#,
            )
        })
    });
    g.finish();
}

fn postgres_changes(c: &mut Criterion) {
    let data = r#"{"schema":"public","table":"messages","commit_timestamp":"2026-11-23T10:11:12.345Z","type":"INSERT","errors":null,"columns":[{"name":"id","type":"int8"},{"name":"room_id","type":"int4"},{"name":"body","type":"text"},{"name":"created_at","type":"timestamptz"}],"record":{"id":123456,"room_id":42,"body":"hello, world","created_at":"2026-11-23T10:11:12.345678+00:00"}}"#;
    let ids = [38_137_613u32, 1_234_567];
    let mut g = c.benchmark_group("postgres_changes");
    g.throughput(Throughput::Elements(1));
    for (name, vsn) in [("frame_v1", Vsn::V1), ("frame_v2", Vsn::V2)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                // As the server builds it: the shared `data`, this channel's ids.
                let mut body = Vec::with_capacity(data.len() + 32);
                body.extend_from_slice(b"{\"ids\":");
                serde_json::to_writer(&mut body, black_box(&ids)).unwrap();
                body.extend_from_slice(b",\"data\":");
                body.extend_from_slice(data.as_bytes());
                body.push(b'}');
                encode::fastlane(vsn, TOPIC, "postgres_changes", &body)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, broadcast, inbound, join_reply, postgres_changes);
criterion_main!(benches);
