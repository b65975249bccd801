//! Micro-benchmarks of the pgoutput decoder and the value→JSON writer.
//!
//! `cargo bench -p realtime-wal` (criterion; `-- --quick` for a short run).
//!
//! * `insert_10_columns`: one Insert of a 10-column row of mixed types (int8, int4, text,
//!   bool, float8, numeric, timestamptz, uuid, jsonb, text[]): decode, JSON, both.
//! * `transaction_1000_rows`: Begin, Relation, 1,000 such Inserts, Commit: decode and
//!   assemble every message, then write each row's JSON record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use realtime_wal::change::{Assembler, Event};
use realtime_wal::pgoutput::{self, Cell, Column, LogicalMessage, Relation, ReplicaIdentity, TupleData};
use realtime_wal::value::{self, write_json, write_string};
use realtime_wal::Lsn;

const TEXT_ARRAY: u32 = 1009;
const REL: u32 = 16_384;

fn columns() -> Vec<(&'static str, u32)> {
    vec![
        ("id", value::INT8),
        ("grp", value::INT4),
        ("title", value::TEXT),
        ("done", value::BOOL),
        ("score", value::FLOAT8),
        ("price", value::NUMERIC),
        ("created_at", value::TIMESTAMPTZ),
        ("owner", value::UUID),
        ("meta", value::JSONB),
        ("tags", TEXT_ARRAY),
    ]
}

fn relation() -> LogicalMessage {
    LogicalMessage::Relation(Relation {
        id: REL,
        namespace: "public".into(),
        name: "todos".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns()
            .into_iter()
            .enumerate()
            .map(|(i, (name, type_oid))| Column {
                flags_key: i == 0,
                name: name.into(),
                type_oid,
                type_modifier: -1,
            })
            .collect(),
    })
}

fn row(i: u64) -> TupleData {
    let values = [
        i.to_string(),
        (i % 10).to_string(),
        format!("buy milk and \"bread\" #{i}"),
        "t".into(),
        "3.14159265358979".into(),
        "12345.6789".into(),
        "2026-11-23 10:11:12.345678+00".into(),
        "8d9f3c1e-4b2a-4c3d-9e8f-0a1b2c3d4e5f".into(),
        r#"{"a": 1, "b": [true, null, "x"], "c": {"d": 2.5}}"#.into(),
        r#"{red,green,"light blue"}"#.into(),
    ];
    TupleData(values.into_iter().map(|v| Cell::Text(Bytes::from(v))).collect())
}

fn encoded(msg: &LogicalMessage) -> Bytes {
    let mut out = Vec::new();
    pgoutput::encode(msg, &mut out);
    Bytes::from(out)
}

/// The `record` object Postgres Changes delivers for a row.
fn record_json(types: &[(&str, u32)], row: &TupleData, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, ((name, oid), cell)) in types.iter().zip(&row.0).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        match cell {
            Cell::Text(b) => write_json(*oid, std::str::from_utf8(b).unwrap(), out),
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

fn insert(c: &mut Criterion) {
    let types = columns();
    let bytes = encoded(&LogicalMessage::Insert {
        relation_id: REL,
        new: row(42),
    });
    let tuple = row(42);
    let mut g = c.benchmark_group("insert_10_columns");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| {
        b.iter(|| pgoutput::decode_bytes(black_box(&bytes)).unwrap())
    });
    let mut out = Vec::with_capacity(1024);
    g.bench_function("json", |b| {
        b.iter(|| {
            out.clear();
            record_json(&types, black_box(&tuple), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("decode_json", |b| {
        b.iter(|| {
            let LogicalMessage::Insert { new, .. } = pgoutput::decode_bytes(black_box(&bytes)).unwrap() else {
                unreachable!()
            };
            out.clear();
            record_json(&types, &new, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn transaction(c: &mut Criterion) {
    let types = columns();
    let mut messages = vec![
        encoded(&LogicalMessage::Begin {
            final_lsn: Lsn(0x1_0000_0000),
            commit_time: 817_000_000_000_000,
            xid: 1234,
        }),
        encoded(&relation()),
    ];
    for i in 0..1000 {
        messages.push(encoded(&LogicalMessage::Insert {
            relation_id: REL,
            new: row(i),
        }));
    }
    messages.push(encoded(&LogicalMessage::Commit {
        flags: 0,
        commit_lsn: Lsn(0x1_0000_0000),
        end_lsn: Lsn(0x1_0000_0100),
        commit_time: 817_000_000_000_000,
    }));
    let mut g = c.benchmark_group("transaction_1000_rows");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_assemble", |b| {
        b.iter(|| {
            let mut assembler = Assembler::new();
            let mut n = 0usize;
            for m in &messages {
                if let Some(Event::Change(_)) = assembler.push(pgoutput::decode_bytes(m).unwrap()).unwrap() {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    let mut out = Vec::with_capacity(1 << 20);
    g.bench_function("decode_assemble_json", |b| {
        b.iter(|| {
            let mut assembler = Assembler::new();
            out.clear();
            for m in &messages {
                if let Some(Event::Change(change)) = assembler.push(pgoutput::decode_bytes(m).unwrap()).unwrap() {
                    if let Some(new) = &change.new {
                        record_json(&types, new, &mut out);
                    }
                }
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, insert, transaction);
criterion_main!(benches);
