//! Decoding each message layout, and refusing malformed ones.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn text(s: &str) -> Cell {
    Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn is_decode_err<T: std::fmt::Debug>(r: Result<T, WalError>) -> String {
    match r {
        Err(WalError::Decode(m)) => m,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// One message of every tag and shape, for the generic checks below.
fn samples() -> Vec<LogicalMessage> {
    let rel = Relation {
        id: 16384,
        namespace: "public".into(),
        name: "notes".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                flags_key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            },
            Column {
                flags_key: false,
                name: "body".into(),
                type_oid: 1043,
                type_modifier: 259,
            },
        ],
    };
    let row = TupleData(vec![
        text("1"),
        Cell::Null,
        Cell::Unchanged,
        Cell::Binary(Bytes::from_static(&[0, 1])),
    ]);
    vec![
        LogicalMessage::Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: 815_000_000_123_456,
            xid: 734,
        },
        LogicalMessage::Commit {
            flags: 0,
            commit_lsn: Lsn(0x16_B374_D848),
            end_lsn: Lsn(0x16_B374_D878),
            commit_time: 815_000_000_123_456,
        },
        LogicalMessage::Origin {
            commit_lsn: Lsn(7),
            name: "node_a".into(),
        },
        LogicalMessage::Relation(rel.clone()),
        LogicalMessage::Relation(Relation {
            namespace: String::new(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![],
            ..rel.clone()
        }),
        LogicalMessage::Relation(Relation {
            replica_identity: ReplicaIdentity::Nothing,
            ..rel.clone()
        }),
        LogicalMessage::Relation(Relation {
            replica_identity: ReplicaIdentity::Index,
            ..rel
        }),
        LogicalMessage::Type {
            id: 16390,
            namespace: "public".into(),
            name: "mood".into(),
        },
        LogicalMessage::Insert {
            relation_id: 16384,
            new: row.clone(),
        },
        LogicalMessage::Insert {
            relation_id: 1,
            new: TupleData(vec![]),
        },
        LogicalMessage::Update {
            relation_id: 16384,
            old: None,
            new: row.clone(),
        },
        LogicalMessage::Update {
            relation_id: 16384,
            old: Some(OldTuple::Key(TupleData(vec![text("1"), Cell::Null]))),
            new: row.clone(),
        },
        LogicalMessage::Update {
            relation_id: 16384,
            old: Some(OldTuple::Full(row.clone())),
            new: row.clone(),
        },
        LogicalMessage::Delete {
            relation_id: 16384,
            old: OldTuple::Key(TupleData(vec![text("1"), Cell::Null])),
        },
        LogicalMessage::Delete {
            relation_id: 16384,
            old: OldTuple::Full(row),
        },
        LogicalMessage::Truncate {
            options: 3,
            relation_ids: vec![16384, 16390],
        },
        LogicalMessage::Truncate {
            options: 0,
            relation_ids: vec![],
        },
        LogicalMessage::Message {
            transactional: true,
            lsn: Lsn(99),
            prefix: "app".into(),
            content: Bytes::from_static(b"hello\0world"),
        },
        LogicalMessage::Message {
            transactional: false,
            lsn: Lsn(100),
            prefix: String::new(),
            content: Bytes::new(),
        },
    ]
}

fn encoded(m: &LogicalMessage) -> Vec<u8> {
    let mut v = Vec::new();
    encode(m, &mut v);
    v
}

#[test]
fn verified_insert_example_from_pg15() {
    // `insert into notes values (3, null, null, null)`, relid 16384 (wal-rls.md §3.4).
    let b = hex("49 00004000 4E 0004 74 00000001 33 6E 6E 6E");
    assert_eq!(b.len(), 17);
    let m = decode(&b).unwrap();
    assert_eq!(
        m,
        LogicalMessage::Insert {
            relation_id: 16384,
            new: TupleData(vec![text("3"), Cell::Null, Cell::Null, Cell::Null]),
        }
    );
    assert_eq!(encoded(&m), b);
}

#[test]
fn begin_and_commit_have_their_verified_sizes() {
    // B is 21 bytes and C 26 bytes in total (verified on PG15).
    let b = hex("42 00000016B374D848 0002E53C3A8F1E40 000002DE");
    assert_eq!(b.len(), 21);
    match decode(&b).unwrap() {
        LogicalMessage::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            assert_eq!(final_lsn.to_string(), "16/B374D848");
            assert_eq!(commit_time, 0x0002_E53C_3A8F_1E40);
            assert_eq!(xid, 734);
        }
        other => panic!("{other:?}"),
    }
    let c = hex("43 00 00000016B374D848 00000016B374D878 0002E53C3A8F1E40");
    assert_eq!(c.len(), 26);
    match decode(&c).unwrap() {
        LogicalMessage::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            assert_eq!(flags, 0);
            assert_eq!(commit_lsn, Lsn(0x16_B374_D848));
            assert_eq!(end_lsn, Lsn(0x16_B374_D878));
            assert_eq!(commit_time, 0x0002_E53C_3A8F_1E40);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn relation_message_by_hand() {
    // R, relid 16384, "public", "notes", 'd', 2 columns: key "id" int8, "body" text.
    let mut b = vec![b'R'];
    b.extend_from_slice(&16384u32.to_be_bytes());
    b.extend_from_slice(b"public\0notes\0d");
    b.extend_from_slice(&2i16.to_be_bytes());
    b.extend_from_slice(b"\x01id\0");
    b.extend_from_slice(&20u32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(b"\x00body\0");
    b.extend_from_slice(&25u32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    let LogicalMessage::Relation(r) = decode(&b).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(r.id, 16384);
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("public", "notes"));
    assert_eq!(r.replica_identity, ReplicaIdentity::Default);
    assert_eq!(r.columns.len(), 2);
    assert!(r.columns[0].flags_key && !r.columns[1].flags_key);
    assert_eq!((r.columns[1].name.as_str(), r.columns[1].type_oid), ("body", 25));
    assert_eq!(r.columns[0].type_modifier, -1);
}

#[test]
fn update_with_key_then_new_tuple() {
    // PK-changing UPDATE: 'K' with the key and 'n' for the other column, then 'N'.
    let b = hex("55 00004000 4B 0002 74 00000001 31 6E 4E 0002 74 00000001 32 74 00000002 6869");
    let m = decode(&b).unwrap();
    assert_eq!(
        m,
        LogicalMessage::Update {
            relation_id: 16384,
            old: Some(OldTuple::Key(TupleData(vec![text("1"), Cell::Null]))),
            new: TupleData(vec![text("2"), text("hi")]),
        }
    );
}

#[test]
fn every_sample_round_trips() {
    for m in samples() {
        let b = encoded(&m);
        assert_eq!(decode(&b).unwrap(), m, "{b:02x?}");
        assert_eq!(decode_bytes(&Bytes::from(b)).unwrap(), m);
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for m in samples() {
        let b = encoded(&m);
        for cut in 0..b.len() {
            is_decode_err(decode(&b[..cut]));
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for m in samples() {
        let mut b = encoded(&m);
        b.push(0);
        let e = is_decode_err(decode(&b));
        assert!(e.contains("trailing"), "{e}");
    }
}

#[test]
fn unknown_tags_and_kinds_are_rejected() {
    for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', b'x', 0] {
        let e = is_decode_err(decode(&[tag, 0, 0, 0, 0]));
        assert!(e.contains("unknown pgoutput message tag"), "{e}");
    }
    // Insert without 'N'.
    is_decode_err(decode(&hex("49 00004000 4B 0000")));
    // Update: old tuple not followed by 'N'.
    is_decode_err(decode(&hex("55 00004000 4F 0000 4F 0000")));
    // Update with an unknown tuple kind.
    is_decode_err(decode(&hex("55 00004000 58 0000")));
    // Delete needs 'K' or 'O'.
    is_decode_err(decode(&hex("44 00004000 4E 0000")));
    // Unknown cell kind.
    is_decode_err(decode(&hex("49 00004000 4E 0001 78")));
    // Unknown replica identity.
    let mut r = vec![b'R', 0, 0, 0, 1, 0, 0, b'x'];
    r.extend_from_slice(&0i16.to_be_bytes());
    is_decode_err(decode(&r));
    is_decode_err(decode(&[]));
}

#[test]
fn huge_or_negative_declared_lengths_fail_without_allocating() {
    // Text cell claiming 2^31-1 bytes.
    is_decode_err(decode(&hex("49 00004000 4E 0001 74 7FFFFFFF 33")));
    // Negative text length.
    is_decode_err(decode(&hex("49 00004000 4E 0001 74 FFFFFFFF")));
    is_decode_err(decode(&hex("49 00004000 4E 0001 62 80000000")));
    // 32767 cells declared, 1 present.
    is_decode_err(decode(&hex("49 00004000 4E 7FFF 6E")));
    // Negative cell count.
    is_decode_err(decode(&hex("49 00004000 4E FFFF")));
    // Truncate claiming 2^31-1 relations; negative count.
    is_decode_err(decode(&hex("54 7FFFFFFF 00 00004000")));
    is_decode_err(decode(&hex("54 FFFFFFFF 00")));
    // Relation claiming 32767 columns.
    let mut r = vec![b'R', 0, 0, 0, 1, 0, 0, b'd'];
    r.extend_from_slice(&i16::MAX.to_be_bytes());
    r.extend_from_slice(b"\x00a\0\0\0\0\x19\xff\xff\xff\xff");
    is_decode_err(decode(&r));
    // Negative column count.
    let mut r = vec![b'R', 0, 0, 0, 1, 0, 0, b'd'];
    r.extend_from_slice(&(-1i16).to_be_bytes());
    is_decode_err(decode(&r));
    // Message content claiming 2^31-1 bytes; negative length.
    let mut m = vec![b'M', 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 0];
    m.extend_from_slice(&i32::MAX.to_be_bytes());
    is_decode_err(decode(&m));
    let mut m = vec![b'M', 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 0];
    m.extend_from_slice(&(-5i32).to_be_bytes());
    is_decode_err(decode(&m));
}

#[test]
fn strings_without_nul_fail() {
    is_decode_err(decode(b"O\0\0\0\0\0\0\0\x01origin"));
    is_decode_err(decode(b"Y\0\0\0\x01public\0mood"));
}

#[test]
fn invalid_utf8_names_are_replaced_not_fatal() {
    let m = decode(b"Y\0\0\0\x01pub\xfflic\0mood\0").unwrap();
    assert_eq!(
        m,
        LogicalMessage::Type {
            id: 1,
            namespace: "pub\u{fffd}lic".into(),
            name: "mood".into()
        }
    );
}

#[test]
fn unknown_column_flag_bits_are_ignored() {
    let mut b = vec![b'R', 0, 0, 0, 1, b's', 0, b't', 0, b'd'];
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(b"\x03a\0\0\0\0\x17\xff\xff\xff\xff");
    let LogicalMessage::Relation(r) = decode(&b).unwrap() else {
        panic!()
    };
    assert!(r.columns[0].flags_key);
    assert_eq!(r.columns[0].type_oid, 23);
}

#[test]
fn decode_bytes_slices_without_copying() {
    let b = Bytes::from(hex("49 00004000 4E 0001 74 00000003 616263"));
    let LogicalMessage::Insert { new, .. } = decode_bytes(&b).unwrap() else {
        panic!()
    };
    let Cell::Text(v) = &new.0[0] else { panic!() };
    assert_eq!(&v[..], b"abc");
    // Same allocation: the value points into the message.
    assert_eq!(v.as_ptr(), b[b.len() - 3..].as_ptr());
}

#[test]
fn message_flags() {
    let m = encoded(&LogicalMessage::Message {
        transactional: true,
        lsn: Lsn(1),
        prefix: "p".into(),
        content: Bytes::from_static(b"x"),
    });
    assert_eq!(m[1], 1);
    let mut nt = m.clone();
    nt[1] = 0;
    assert!(matches!(
        decode(&nt).unwrap(),
        LogicalMessage::Message {
            transactional: false,
            ..
        }
    ));
}

#[test]
fn timestamps_convert_to_unix() {
    assert_eq!(pg_to_unix_micros(0), 946_684_800_000_000);
    // 2025-11-19T00:22:40.877123Z
    assert_eq!(pg_to_unix_micros(816_826_960_877_123), 1_763_511_760_877_123);
    assert_eq!(pg_to_unix_micros(i64::MAX), i64::MAX);
    assert_eq!(pg_to_unix_micros(i64::MIN), i64::MIN + 946_684_800_000_000);
}
