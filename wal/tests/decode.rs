//! The pgoutput decoder and the value conversion against PostgreSQL 15 itself.
//!
//! * `recorded_pg15_stream_*`: bytes recorded from a real walsender (`tests/data/`), so the
//!   decoder is checked against Postgres without a server.
//! * `values_match_to_jsonb`: for many values of every common type, `write_json(oid,
//!   col::text)` against `to_jsonb(col)` computed by the server, with the two documented
//!   Supabase differences (column NaN/Infinity → null, column bytea → hex without `\x`).
//! * `pgoutput_values_match_supabase_pipeline`: the same values inserted into published
//!   tables, read as pgoutput bytes, decoded, assembled and converted, against what Supabase's
//!   own pipeline makes of them: wal2json format 2 + `to_jsonb(text::type)` (bytea kept as
//!   text), when the wal2json plugin is installed; against the `to_jsonb` model otherwise.
//!
//! The live tests start a throwaway cluster (wal-rls.md §4.1: as root through `runuser -u
//! postgres`, Unix socket only) and are skipped with a message when no PostgreSQL binaries
//! are found. The harness is self-contained (no shared test support module).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use realtime_wal::change::{Assembler, ChangeKind, Event, OldTuple};
use realtime_wal::pgoutput::{self, Cell, LogicalMessage, ReplicaIdentity};
use realtime_wal::value::{self, write_array_json, write_json};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------
// Recorded bytes
// ---------------------------------------------------------------------------------------

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn recorded() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pg15_pgoutput_v1.hex");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(hex_decode)
        .collect()
}

fn text(c: &Cell) -> &str {
    match c {
        Cell::Text(b) => std::str::from_utf8(b).unwrap(),
        other => panic!("not a text cell: {other:?}"),
    }
}

#[test]
fn recorded_pg15_stream_decodes_and_reencodes_exactly() {
    let messages = recorded();
    assert_eq!(messages.len(), 36);
    let tags: String = messages.iter().map(|m| m[0] as char).collect();
    assert_eq!(tags, "BYRICBUCBUCBICBDCBRICBUCBDCBMICMBRTC");
    for m in &messages {
        let decoded = pgoutput::decode(m).unwrap();
        let mut again = Vec::new();
        pgoutput::encode(&decoded, &mut again);
        assert_eq!(&again, m, "{decoded:?}");
        // Every shorter prefix is an error, never a panic.
        for cut in 0..m.len().min(64) {
            assert!(pgoutput::decode(&m[..cut]).is_err());
        }
    }
}

#[test]
fn recorded_pg15_stream_assembles_into_the_expected_changes() {
    let mut a = Assembler::new();
    let mut events = Vec::new();
    for m in recorded() {
        if let Some(e) = a.push(pgoutput::decode(&m).unwrap()).unwrap() {
            events.push(e);
        }
    }
    // The enum type was announced before the relation that uses it.
    let mood = a.relations().type_oid("public", "mood").expect("Type message");
    let notes = a.relations().relations().find(|r| r.name == "notes").unwrap().clone();
    assert_eq!(notes.namespace, "public");
    assert_eq!(notes.replica_identity, ReplicaIdentity::Default);
    let cols: Vec<(&str, u32, bool)> = notes
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.flags_key))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("id", 20, true),
            ("body", 25, false),
            ("owner", 2950, false),
            ("big", 25, false),
            ("feel", mood, false)
        ]
    );
    let full = a
        .relations()
        .relations()
        .find(|r| r.name == "notes_full")
        .unwrap()
        .clone();
    assert_eq!(full.replica_identity, ReplicaIdentity::Full);
    // REPLICA IDENTITY FULL flags every column as key.
    assert!(full.columns.iter().all(|c| c.flags_key));

    let changes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Change(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 9);

    // INSERT with a TOASTed value sent in full.
    let ins = changes[0].new.as_ref().unwrap();
    assert_eq!(text(&ins.0[0]), "1");
    assert_eq!(text(&ins.0[3]).len(), 10_000);
    assert_eq!(text(&ins.0[4]), "happy");
    // UPDATE leaving the TOAST column alone: no old tuple, 'u' for it.
    assert_eq!(changes[1].kind, ChangeKind::Update);
    assert!(changes[1].old.is_none());
    assert_eq!(changes[1].new.as_ref().unwrap().0[3], Cell::Unchanged);
    // UPDATE of the key: 'K' with the old key and NULL placeholders.
    match &changes[2].old {
        Some(OldTuple::Key(t)) => {
            assert_eq!(text(&t.0[0]), "1");
            assert!(t.0[1..].iter().all(|c| *c == Cell::Null));
        }
        other => panic!("{other:?}"),
    }
    // DELETE with default identity: 'K'.
    assert_eq!(changes[4].kind, ChangeKind::Delete);
    assert!(matches!(changes[4].old, Some(OldTuple::Key(_))));
    // FULL identity: UPDATE and DELETE carry 'O' with the whole old row.
    match &changes[6].old {
        Some(OldTuple::Full(t)) => assert_eq!((text(&t.0[0]), text(&t.0[1])), ("1", "a")),
        other => panic!("{other:?}"),
    }
    match &changes[7].old {
        Some(OldTuple::Full(t)) => assert_eq!(text(&t.0[1]), "b"),
        other => panic!("{other:?}"),
    }
    // Transaction bounds: Begin/Commit pairs around every change, commit times in unix µs
    // (recorded in 2026: after 2020-01-01 and before 2100).
    let begins = events.iter().filter(|e| matches!(e, Event::Begin { .. })).count();
    let commits: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Commit {
                commit_lsn,
                end_lsn,
                commit_time_us,
            } => Some((*commit_lsn, *end_lsn, *commit_time_us)),
            _ => None,
        })
        .collect();
    assert_eq!(begins, 10);
    assert_eq!(commits.len(), 10);
    for (commit, end, t) in &commits {
        assert!(end > commit);
        assert!((1_577_836_800_000_000..4_102_444_800_000_000).contains(t), "{t}");
    }
    match events.last() {
        Some(Event::Commit { .. }) => {}
        other => panic!("{other:?}"),
    }
    match &events[events.len() - 2] {
        Event::Truncate { relations } => assert_eq!(relations[0].name, "notes_full"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn recorded_pg15_messages_carry_their_flags() {
    let msgs: Vec<_> = recorded()
        .iter()
        .map(|m| pgoutput::decode(m).unwrap())
        .filter(|m| matches!(m, LogicalMessage::Message { .. }))
        .collect();
    match &msgs[..] {
        [LogicalMessage::Message {
            transactional: true,
            prefix: p1,
            content: c1,
            ..
        }, LogicalMessage::Message {
            transactional: false,
            prefix: p2,
            content: c2,
            ..
        }] => {
            assert_eq!((p1.as_str(), &c1[..]), ("app", &b"payload"[..]));
            assert_eq!((p2.as_str(), &c2[..]), ("nt", &[0u8, 0xff][..]));
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// A throwaway PostgreSQL cluster
// ---------------------------------------------------------------------------------------

const PORT: u16 = 54329;

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
}

impl Cluster {
    /// Starts a cluster with `wal_level=logical` listening only on a Unix socket in its own
    /// directory, or `None` (after saying why) when PostgreSQL is not installed.
    fn start() -> Option<Cluster> {
        let Some(bin) = pg_bindir() else {
            eprintln!("SKIPPED: no PostgreSQL binaries (pg_config --bindir / /usr/lib/postgresql/*/bin)");
            return None;
        };
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rt-wal-decode-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_root = output("id", &["-u"]).trim() == "0";
        let cluster = Cluster { dir, bin, as_root };
        if as_root {
            // initdb refuses to run as root: the server runs as `postgres`.
            run(Command::new("chown").arg("postgres:postgres").arg(&cluster.dir));
        }
        let data = cluster.dir.join("data");
        run(cluster.pg("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]));
        let opts = format!(
            "-c wal_level=logical -c listen_addresses='' -c unix_socket_directories={} -p {PORT} -c fsync=off",
            cluster.dir.display()
        );
        run(cluster
            .pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]));
        Some(cluster)
    }

    fn pg(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    async fn connect(&self) -> Client {
        let conn = format!("host={} port={PORT} user=postgres dbname=postgres", self.dir.display());
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // The session settings the replication stream uses (output functions of logical
        // decoding run in the session that reads the slot).
        client
            .batch_execute("SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3")
            .await
            .unwrap();
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_bindir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect();
        v.sort();
        candidates.extend(v.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

fn run(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// A JSON reader that keeps numbers as their text, so digits are compared exactly
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    /// Last duplicate key wins, as in jsonb.
    Obj(BTreeMap<String, J>),
}

fn parse_json(s: &str) -> J {
    // Strict validity first (serde_json), then the exact-number tree.
    // (RawValue checks the syntax without converting numbers, which may not fit an f64.)
    serde_json::from_str::<Box<serde_json::value::RawValue>>(s).unwrap_or_else(|e| panic!("invalid JSON {s:?}: {e}"));
    let mut p = JsonReader { b: s.as_bytes(), i: 0 };
    let v = p.value();
    p.ws();
    assert_eq!(p.i, p.b.len(), "trailing data in {s:?}");
    v
}

struct JsonReader<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonReader<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn value(&mut self) -> J {
        self.ws();
        match self.b[self.i] {
            b'n' => {
                self.i += 4;
                J::Null
            }
            b't' => {
                self.i += 4;
                J::Bool(true)
            }
            b'f' => {
                self.i += 5;
                J::Bool(false)
            }
            b'"' => J::Str(self.string()),
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.b[self.i] == b']' {
                    self.i += 1;
                    return J::Arr(v);
                }
                loop {
                    v.push(self.value());
                    self.ws();
                    self.i += 1;
                    if self.b[self.i - 1] == b']' {
                        return J::Arr(v);
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.b[self.i] == b'}' {
                    self.i += 1;
                    return J::Obj(m);
                }
                loop {
                    self.ws();
                    let k = self.string();
                    self.ws();
                    self.i += 1; // ':'
                    let v = self.value();
                    m.insert(k, v);
                    self.ws();
                    self.i += 1;
                    if self.b[self.i - 1] == b'}' {
                        return J::Obj(m);
                    }
                }
            }
            _ => {
                let start = self.i;
                while self.i < self.b.len() && b"+-0123456789.eE".contains(&self.b[self.i]) {
                    self.i += 1;
                }
                J::Num(String::from_utf8(self.b[start..self.i].to_vec()).unwrap())
            }
        }
    }

    fn string(&mut self) -> String {
        let start = self.i;
        self.i += 1;
        while self.b[self.i] != b'"' {
            self.i += if self.b[self.i] == b'\\' { 2 } else { 1 };
        }
        self.i += 1;
        serde_json::from_slice(&self.b[start..self.i]).unwrap()
    }
}

/// A number's value independent of its spelling: sign, significant digits, power of ten.
fn number_value(s: &str) -> (bool, String, i64) {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(p) => (&s[..p], s[p + 1..].parse::<i64>().unwrap()),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let mut exp = exp - frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    exp += (digits.len() - trimmed.len()) as i64;
    if trimmed.is_empty() {
        return (false, String::new(), 0);
    }
    (neg, trimmed.to_owned(), exp)
}

/// Equality with numbers compared as text (`exact`) or by value (inside json documents,
/// which jsonb re-spells: `1.0e2` → `100`).
fn same(a: &J, b: &J, exact: bool) -> bool {
    match (a, b) {
        (J::Num(x), J::Num(y)) => {
            if exact {
                x == y
            } else {
                number_value(x) == number_value(y)
            }
        }
        (J::Arr(x), J::Arr(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y, exact)),
        (J::Obj(x), J::Obj(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy, exact))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------
// The values
// ---------------------------------------------------------------------------------------

/// (column type, SQL expressions inserted into it). NULL is included where it exercises a
/// path (the caller never calls `write_json` for NULL, so it is skipped in comparisons).
const CASES: &[(&str, &[&str])] = &[
    ("int2", &["0", "1", "-1", "32767", "-32768"]),
    ("int4", &["0", "42", "-2147483648", "2147483647"]),
    (
        "int8",
        &["0", "9007199254740993", "9223372036854775807", "-9223372036854775808"],
    ),
    ("oid", &["0", "16384", "4294967295"]),
    (
        "float4",
        &[
            "0",
            "'-0'",
            "1.5",
            "0.1",
            "3.4028235e38",
            "1e-45",
            "-1.17549435e-38",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "123456.789",
            "1e10",
            "16777217",
            "0.3",
        ],
    ),
    (
        "float8",
        &[
            "0",
            "'-0'",
            "1.5",
            "0.1",
            "1e100",
            "1.5e-7",
            "'5e-324'",
            "'1.7976931348623157e308'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "12345678901234567890",
            "-2.5e-10",
            "100",
            "1e15",
            "1e16",
            "1e17",
            "0.1 + 0.2",
            "-123.456e-30",
            "1e-5",
            "0.0001",
            "123456789012.5",
        ],
    ),
    (
        "numeric",
        &[
            "0",
            "1.10",
            "-0.5",
            "0.000",
            "123456789012345678901234567890.123456789",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1e-20",
            "1e20",
            "-1e-5",
            "'-0.00'",
            "99999999999999999999999999999999999999999",
        ],
    ),
    ("numeric(10,2)", &["3.14159", "-0.001", "12345678.9"]),
    ("bool", &["true", "false"]),
    (
        "text",
        &[
            "''",
            "'hello'",
            r#"'a"b\c'"#,
            r"E'line\nbreak\ttab\r'",
            r"E'\x01ctl\x1fx\x7f'",
            "'héllo ✓ 😀'",
            "'NULL'",
            "'{}'",
            "' spaced '",
            r"E'back\\slash'",
            "'</script>'",
            "repeat('long ', 1000)",
        ],
    ),
    ("varchar(10)", &["'abc'", "''", "'ten chars!'"]),
    ("char(5)", &["'ab'", "''", "'abcde'"]),
    ("name", &["'some_name'"]),
    ("\"char\"", &["'a'", "' '"]),
    (
        "uuid",
        &[
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
        ],
    ),
    (
        "json",
        &[
            r#"'{"b":1,"a":[1,2.50,{"c":null}]}'"#,
            "'[]'",
            r#"'"str"'"#,
            "'1.0e2'",
            "'null'",
            r#"' {"dup":1,"dup":2} '"#,
            "'true'",
            r#"'{"nested": {"deep": [[1], [2, {"x": "y"}]]}}'"#,
            r#"'"\u00e9\n"'"#,
            "'-0'",
        ],
    ),
    (
        "jsonb",
        &[
            r#"'{"b":1,"a":[1,2.50,{"c":null}]}'"#,
            "'[]'",
            r#"'"str"'"#,
            "'1.0e2'",
            "'null'",
            r#"'{"dup":1,"dup":2}'"#,
            "'{}'",
            "'12345678901234567890.5'",
        ],
    ),
    (
        "bytea",
        &[
            r"'\x'",
            r"'\x0102030405'",
            r"'\xdeadbeef'",
            "'abc'::bytea",
            r"E'\\000\\377'::bytea",
        ],
    ),
    (
        "timestamptz",
        &[
            "'2025-11-03 09:32:55.123+00'",
            "'2025-11-03 09:32:55+05:30'",
            "'2025-11-03 09:32:55.123456-08'",
            "'0044-03-15 12:00:00+00 BC'",
            "'infinity'",
            "'-infinity'",
            "'10000-01-01 00:00:00+00'",
            "'1900-01-01 00:00:00+00'",
            "'2000-01-01 00:00:00.1+00'",
            "'1970-01-01 00:00:00+00'",
            "'4713-11-24 00:00:00+00 BC'",
            "'294276-12-31 23:59:59.999999+00'",
        ],
    ),
    (
        "timestamp",
        &[
            "'2025-11-03 09:32:55.123'",
            "'2025-11-03 09:32:55'",
            "'0044-03-15 12:00:00 BC'",
            "'infinity'",
            "'-infinity'",
            "'10000-01-01 00:00:00.000001'",
        ],
    ),
    ("timestamptz(0)", &["'2025-11-03 09:32:55.6+00'"]),
    (
        "date",
        &[
            "'2025-11-03'",
            "'0044-03-15 BC'",
            "'infinity'",
            "'-infinity'",
            "'5874897-12-31'",
        ],
    ),
    (
        "time",
        &["'09:32:55.123'", "'24:00:00'", "'00:00:00'", "'23:59:59.999999'"],
    ),
    (
        "timetz",
        &[
            "'12:00:00+05:30'",
            "'12:00:00-08'",
            "'23:59:59.999999+14'",
            "'00:00:00+00'",
            "'01:02:03.5-03:30'",
        ],
    ),
    (
        "interval",
        &[
            "'1 day 02:00:00'",
            "'1 year 2 mons'",
            "'-00:00:01'",
            "'0'",
            "'3 days 04:05:06.789'",
            "'-1 year -2 days'",
        ],
    ),
    ("money", &["1.23", "-1000000"]),
    ("inet", &["'192.168.0.1/24'", "'::1'"]),
    ("cidr", &["'10.0.0.0/8'"]),
    ("macaddr", &["'08:00:2b:01:02:03'"]),
    ("point", &["'(1,2)'"]),
    ("box", &["'(1,2),(3,4)'"]),
    ("int4range", &["'[1,10)'", "'empty'"]),
    ("int4multirange", &["'{[1,3),[5,7)}'"]),
    ("tsvector", &["'a fat cat'"]),
    ("bit(3)", &["B'101'"]),
    ("varbit", &["B'1'"]),
    ("xml", &["'<a>b</a>'"]),
    ("pg_lsn", &["'16/B374D848'"]),
    ("xid8", &["'123'"]),
    ("int2vector", &["'1 2 3'", "''"]),
    ("oidvector", &["'23 25'"]),
    (
        "int4[]",
        &[
            "'{1,2,3}'",
            "'{}'",
            "'{{1,2},{3,4}}'",
            "'[0:1]={1,2}'",
            "'{1,NULL}'",
            "'{{{1}},{{2}}}'",
            "'[-1:-1]={7}'",
        ],
    ),
    ("int2[]", &["'{1,-1}'"]),
    (
        "text[]",
        &[
            r#"'{"a b","c\"d",NULL,"NULL","",x}'"#,
            r#"'{"a,b","{}","\\"}'"#,
            r#"'{"é ✓"}'"#,
            "'{{a,b},{c,d}}'",
            r#"ARRAY[E'tab\there', E'nl\n', ' lead', 'trail ', 'null', 'NuLL']"#,
        ],
    ),
    ("int8[]", &["'{9223372036854775807,-9223372036854775808}'"]),
    ("bool[]", &["'{t,f,NULL}'"]),
    ("float4[]", &["'{NaN,-0,3.4028235e38}'"]),
    ("float8[]", &["'{NaN,Infinity,-Infinity,1e100,-0,1.5e-7}'"]),
    ("numeric[]", &["'{1.10,NaN,Infinity,-Infinity,0.000}'"]),
    ("uuid[]", &["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"]),
    ("jsonb[]", &[r#"'{"{\"a\": 1}","[1, 2]",NULL,"\"s\"","1.0e2"}'"#]),
    ("json[]", &[r#"'{"{\"b\":1,\"a\":2}","1.0e2",null}'"#]),
    (
        "timestamptz[]",
        &[r#"'{"2025-11-03 09:32:55.123+00","2025-11-03 10:00:00+05:30",infinity}'"#],
    ),
    (
        "timestamp[]",
        &[r#"'{"2025-11-03 09:32:55","0044-03-15 12:00:00 BC"}'"#],
    ),
    ("date[]", &["'{2025-11-03,infinity}'"]),
    ("varchar[]", &[r#"'{x,"y,z"}'"#]),
    ("char(3)[]", &["'{a,bcd}'"]),
    ("bytea[]", &[r#"'{"\\x0102",NULL}'"#]),
    ("box[]", &["'{(1,2),(3,4);(0,0),(1,1)}'"]),
    ("interval[]", &["'{\"1 day\",00:00:01}'"]),
    ("time[]", &["'{09:32:55}'"]),
    ("timetz[]", &["'{12:00:00-08}'"]),
    ("oid[]", &["'{1,2}'"]),
    ("int4range[]", &[r#"'{"[1,2)",empty}'"#]),
    // User-defined: the consumer resolves these through the catalog (see `convert`).
    ("mood", &["'happy'", "'sad'"]),
    ("mood[]", &[r#"'{happy,sad,NULL}'"#, "'{}'"]),
    ("posint", &["1", "2147483647"]),
    ("money_domain", &["12.5"]),
];

const SETUP: &str = "create type mood as enum ('sad', 'ok', 'happy');
     create domain posint as int4 check (value > 0);
     create domain money_domain as numeric(12,2);";

/// What a consumer knows about a column type from the catalog.
#[derive(Clone, Copy, Debug)]
struct TypeInfo {
    oid: u32,
    /// `typbasetype` of a domain.
    base: Option<u32>,
    /// `typelem` of a user-defined array type.
    elem: Option<u32>,
}

async fn type_info(client: &Client, sql_type: &str) -> TypeInfo {
    let r = rows(
        client,
        &format!(
            "select t.oid, t.typbasetype, case when t.typcategory = 'A' then t.typelem else 0 end
             from pg_type t where t.oid = '{}'::regtype",
            sql_type.replace('\'', "''")
        ),
    )
    .await;
    let n = |i: usize| r[0][i].as_deref().unwrap().parse::<u32>().unwrap();
    TypeInfo {
        oid: n(0),
        base: Some(n(1)).filter(|&b| b != 0),
        elem: Some(n(2)).filter(|&e| e != 0),
    }
}

/// What the consumer does with a text cell: built-in types by OID; domains by their base
/// type; arrays of user-defined types by their element type.
fn convert(t: TypeInfo, text: &str) -> String {
    let mut out = Vec::new();
    if let Some(base) = t.base {
        write_json(base, text, &mut out);
    } else if let (Some(elem), None) = (t.elem, value::element_type(t.oid)) {
        write_array_json(elem, text, &mut out);
    } else {
        write_json(t.oid, text, &mut out);
    }
    String::from_utf8(out).unwrap()
}

/// Column types that Supabase's `realtime.cast` truncates: it casts the text to the type
/// named by the regtype, which has no type modifier, so `char(5)` becomes `character` =
/// `char(1)` (`'ab   '` → `"a"`) and `bit(3)` becomes `bit(1)`. Not reproduced (value.rs).
const TYPMOD_LOST_BY_SUPABASE: &[&str] = &["char(5)", "bit(3)", "char(3)[]"];

/// Types whose JSON has documents inside, which jsonb re-spells (`1.0e2` → `100`).
fn holds_json_documents(sql_type: &str) -> bool {
    sql_type.starts_with("json")
}

fn table_name(i: usize) -> String {
    format!("v{i}")
}

async fn create_tables(client: &Client) {
    client.batch_execute(SETUP).await.unwrap();
    for (i, (ty, literals)) in CASES.iter().enumerate() {
        let t = table_name(i);
        client
            .batch_execute(&format!("create table {t} (id serial primary key, v {ty})"))
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e}"));
        for lit in *literals {
            client
                .batch_execute(&format!("insert into {t} (v) values ({lit})"))
                .await
                .unwrap_or_else(|e| panic!("{ty} {lit}: {e}"));
        }
        // A NULL row too: NULL is a cell kind of its own, never a value to convert.
        client
            .batch_execute(&format!("insert into {t} (v) values (NULL)"))
            .await
            .unwrap();
    }
}

/// The Supabase differences from plain `to_jsonb` for a column value (see `value.rs`).
fn supabase_model(base_oid: u32, text: &str, to_jsonb: &str) -> J {
    match base_oid {
        value::FLOAT4 | value::FLOAT8 | value::NUMERIC if matches!(text, "NaN" | "Infinity" | "-Infinity") => J::Null,
        value::BYTEA => J::Str(text.strip_prefix("\\x").unwrap_or(text).to_owned()),
        _ => parse_json(to_jsonb),
    }
}

fn check(sql_type: &str, text: &str, ours: &str, expected: &J, failures: &mut Vec<String>) {
    let got = parse_json(ours);
    if !same(&got, expected, !holds_json_documents(sql_type)) {
        failures.push(format!("{sql_type} {text:?}: ours {ours} ≠ expected {expected:?}"));
    }
}

#[tokio::test]
async fn values_match_to_jsonb() {
    let Some(pg) = Cluster::start() else { return };
    let client = pg.connect().await;
    create_tables(&client).await;
    let mut failures = Vec::new();
    let mut compared = 0;
    for (i, (ty, _)) in CASES.iter().enumerate() {
        let info = type_info(&client, ty).await;
        let base = info.base.unwrap_or(info.oid);
        // `v` itself, not `v::text`: the simple query protocol returns the type's output
        // function text, which is what pgoutput sends (`bool::text` is "true", not "t";
        // `bpchar::text` drops the padding; `inet::text` adds the mask).
        for r in rows(
            &client,
            &format!("select v, to_jsonb(v)::text from {} order by id", table_name(i)),
        )
        .await
        {
            let (Some(text), Some(to_jsonb)) = (&r[0], &r[1]) else {
                assert!(r[0].is_none() && r[1].is_none());
                continue;
            };
            let ours = convert(info, text);
            check(ty, text, &ours, &supabase_model(base, text, to_jsonb), &mut failures);
            compared += 1;
        }
    }
    assert_eq!(compared, CASES.iter().map(|c| c.1.len()).sum::<usize>());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn pgoutput_values_match_supabase_pipeline() {
    let Some(pg) = Cluster::start() else { return };
    let client = pg.connect().await;
    let pkglib = output(&pg.bin.join("pg_config").to_string_lossy(), &["--pkglibdir"]);
    let pkglib = if pkglib.trim().is_empty() {
        output("pg_config", &["--pkglibdir"])
    } else {
        pkglib
    };
    let wal2json = Path::new(pkglib.trim()).join("wal2json.so").exists();
    // Separate statements: a slot cannot be created in a transaction that has written.
    client
        .batch_execute("create publication pub for all tables")
        .await
        .unwrap();
    client
        .batch_execute("select pg_create_logical_replication_slot('s_pgo', 'pgoutput')")
        .await
        .unwrap();
    if wal2json {
        client
            .batch_execute("select pg_create_logical_replication_slot('s_w2j', 'wal2json')")
            .await
            .unwrap();
    }
    create_tables(&client).await;

    let mut infos = HashMap::new();
    for (i, (ty, _)) in CASES.iter().enumerate() {
        infos.insert(table_name(i), (*ty, type_info(&client, ty).await));
    }

    // Ours: pgoutput bytes → decode → assemble → write_json, per table in insert order.
    // Per row: the pgoutput text and our JSON, both None for NULL.
    type Converted = (Option<String>, Option<String>);
    let mut ours: HashMap<String, Vec<Converted>> = HashMap::new();
    let mut assembler = Assembler::new();
    let data = rows(
        &client,
        "select encode(data, 'hex') from pg_logical_slot_get_binary_changes('s_pgo', NULL, NULL,
           'proto_version', '1', 'publication_names', 'pub')",
    )
    .await;
    for r in data {
        let msg = pgoutput::decode(&hex_decode(r[0].as_deref().unwrap())).unwrap();
        let Some(Event::Change(change)) = assembler.push(msg).unwrap() else {
            continue;
        };
        assert_eq!(change.kind, ChangeKind::Insert);
        let (_, info) = infos[&change.relation.name];
        let rel = &change.relation;
        assert_eq!(rel.columns[1].name, "v");
        assert_eq!(rel.columns[1].type_oid, info.oid, "{}", rel.name);
        let cell = &change.new.as_ref().unwrap().0[1];
        let entry = match cell {
            Cell::Null => (None, None),
            Cell::Text(b) => {
                let text = std::str::from_utf8(b).unwrap();
                (Some(text.to_owned()), Some(convert(info, text)))
            }
            other => panic!("{other:?}"),
        };
        ours.entry(rel.name.clone()).or_default().push(entry);
    }

    // The to_jsonb model, per table in insert order.
    let mut model: HashMap<String, Vec<J>> = HashMap::new();
    for (i, _) in CASES.iter().enumerate() {
        let t = table_name(i);
        let (_, info) = infos[&t];
        let base = info.base.unwrap_or(info.oid);
        for r in rows(&client, &format!("select v, to_jsonb(v)::text from {t} order by id")).await {
            let v = match (&r[0], &r[1]) {
                (Some(text), Some(j)) => supabase_model(base, text, j),
                _ => J::Null,
            };
            model.entry(t.clone()).or_default().push(v);
        }
    }

    // Supabase's pipeline: wal2json format 2, then to_jsonb(text::type) with bytea kept as
    // text (realtime.cast, written out here), when the plugin is installed.
    let mut expected = model.clone();
    if wal2json {
        client
            .batch_execute(
                r#"create function pipeline_cast(val text, ty regtype) returns jsonb language plpgsql as $f$
                   declare res jsonb;
                   begin
                     if ty = 'bytea'::regtype then return to_jsonb(val); end if;
                     execute format('select to_jsonb(%L::%s)', val, ty) into res;
                     return res;
                   end $f$"#,
            )
            .await
            .unwrap();
        let changes = rows(
            &client,
            "select w.data::jsonb ->> 'table',
                    (select jsonb_object_agg(c ->> 'name',
                              pipeline_cast((c -> 'value') #>> '{}', (c ->> 'typeoid')::oid::regtype))
                       from jsonb_array_elements(w.data::jsonb -> 'columns') c)::text
               from pg_logical_slot_get_changes('s_w2j', NULL, NULL, 'format-version', '2',
                      'include-type-oids', 'true', 'include-pk', 'true', 'include-transaction', 'false') w",
        )
        .await;
        let mut pipeline: HashMap<String, Vec<J>> = HashMap::new();
        for r in changes {
            let table = r[0].clone().unwrap();
            let J::Obj(mut record) = parse_json(r[1].as_deref().unwrap()) else {
                panic!()
            };
            pipeline.entry(table).or_default().push(record.remove("v").unwrap());
        }
        for (t, values) in pipeline {
            let (ty, _) = infos[&t];
            if TYPMOD_LOST_BY_SUPABASE.contains(&ty) {
                // Supabase's bug, deliberately not reproduced (value.rs): check that it is
                // still there, and compare ours with to_jsonb.
                assert_ne!(values, model[&t], "{ty}: Supabase no longer truncates; update value.rs");
            } else {
                expected.insert(t, values);
            }
        }
    } else {
        eprintln!("wal2json is not installed: compared with the to_jsonb model only");
    }

    let mut failures = Vec::new();
    let mut compared = 0;
    for (i, (ty, literals)) in CASES.iter().enumerate() {
        let t = table_name(i);
        let got = &ours[&t];
        let want = &expected[&t];
        assert_eq!(got.len(), literals.len() + 1, "{ty}");
        assert_eq!(got.len(), want.len(), "{ty}");
        for ((text, json), want) in got.iter().zip(want) {
            match (text, json) {
                (Some(text), Some(json)) => {
                    check(ty, text, json, want, &mut failures);
                    compared += 1;
                }
                _ => assert_eq!(*want, J::Null, "{ty}: NULL"),
            }
        }
    }
    assert_eq!(compared, CASES.iter().map(|c| c.1.len()).sum::<usize>());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
