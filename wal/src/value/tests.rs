//! Column and array values against what `to_jsonb` (and Supabase) give.

use super::builtin_types::BUILTIN_TYPES;
use super::*;

fn json(oid: u32, text: &str) -> String {
    let mut v = Vec::new();
    write_json(oid, text, &mut v);
    String::from_utf8(v).unwrap()
}

fn valid(oid: u32, text: &str) -> serde_json::Value {
    let s = json(oid, text);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{oid} {text:?} → {s:?}: {e}"))
}

#[test]
fn integers() {
    for oid in [INT2, INT4, INT8] {
        assert_eq!(json(oid, "0"), "0");
        assert_eq!(json(oid, "-32768"), "-32768");
        assert_eq!(json(oid, "42"), "42");
    }
    // Beyond 2^53: exact digits, not a float.
    assert_eq!(json(INT8, "9223372036854775807"), "9223372036854775807");
    assert_eq!(json(INT8, "-9223372036854775808"), "-9223372036854775808");
}

#[test]
fn oid_is_a_string_like_to_jsonb() {
    assert_eq!(json(OID, "16384"), "\"16384\"");
}

#[test]
fn floats_print_like_numeric() {
    assert_eq!(json(FLOAT8, "1.5"), "1.5");
    assert_eq!(json(FLOAT8, "-0"), "0");
    assert_eq!(json(FLOAT8, "0"), "0");
    assert_eq!(json(FLOAT8, "1e+100"), format!("1{}", "0".repeat(100)));
    assert_eq!(json(FLOAT8, "1.5e-07"), "0.00000015");
    assert_eq!(json(FLOAT8, "-1.5e-07"), "-0.00000015");
    assert_eq!(json(FLOAT8, "1e-05"), "0.00001");
    assert_eq!(json(FLOAT8, "1.2345e+2"), "123.45");
    assert_eq!(json(FLOAT8, "1.2e+5"), "120000");
    assert_eq!(json(FLOAT8, "1.2345678901234567e+19"), "12345678901234567000");
    assert_eq!(json(FLOAT8, "5e-324"), format!("0.{}5", "0".repeat(323)));
    assert_eq!(json(FLOAT8, "1.7976931348623157e+308").len(), 309);
    assert_eq!(json(FLOAT4, "3.4028235e+38"), "340282350000000000000000000000000000000");
    assert_eq!(json(FLOAT4, "0.1"), "0.1");
    assert_eq!(json(FLOAT8, "123456.789"), "123456.789");
}

#[test]
fn special_floats_are_null_as_columns_and_strings_in_arrays() {
    for oid in [FLOAT4, FLOAT8, NUMERIC] {
        for s in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(json(oid, s), "null", "{oid} {s}");
        }
    }
    assert_eq!(
        json(1022, "{NaN,Infinity,-Infinity,1.5}"),
        r#"["NaN","Infinity","-Infinity",1.5]"#
    );
    assert_eq!(json(1231, "{NaN,-Infinity}"), r#"["NaN","-Infinity"]"#);
}

#[test]
fn numeric_keeps_its_digits() {
    assert_eq!(json(NUMERIC, "1.10"), "1.10");
    assert_eq!(json(NUMERIC, "0.000"), "0.000");
    assert_eq!(json(NUMERIC, "-0.5"), "-0.5");
    let long = format!("{}.{}", "9".repeat(200), "1".repeat(100));
    assert_eq!(json(NUMERIC, &long), long);
}

#[test]
fn malformed_numbers_become_strings_or_normalised_numbers() {
    assert_eq!(json(INT4, "abc"), "\"abc\"");
    assert_eq!(json(INT4, ""), "\"\"");
    assert_eq!(json(INT4, "-"), "\"-\"");
    assert_eq!(json(INT4, "007"), "7");
    assert_eq!(json(INT4, "+7"), "7");
    assert_eq!(json(NUMERIC, "-0.00"), "0.00");
    assert_eq!(json(NUMERIC, ".5"), "0.5");
    assert_eq!(json(NUMERIC, "5."), "5");
    assert_eq!(json(NUMERIC, "1e999999999"), "\"1e999999999\"");
    assert_eq!(json(FLOAT8, "1e401"), "\"1e401\"");
    assert_eq!(json(FLOAT8, "1e"), "\"1e\"");
    assert_eq!(json(FLOAT8, "."), "\".\"");
    assert_eq!(json(FLOAT8, "1.2.3"), "\"1.2.3\"");
    assert_eq!(json(FLOAT8, "nan"), "\"nan\"");
}

#[test]
fn booleans_and_json() {
    assert_eq!(json(BOOL, "t"), "true");
    assert_eq!(json(BOOL, "f"), "false");
    assert_eq!(json(BOOL, "x"), "\"x\"");
    assert_eq!(json(JSONB, r#"{"a": [1, 2.5, null]}"#), r#"{"a": [1, 2.5, null]}"#);
    assert_eq!(json(JSON, " [1,2] "), " [1,2] ");
    assert_eq!(json(JSON, "\"s\""), "\"s\"");
}

#[test]
fn strings_escape_like_postgres() {
    assert_eq!(json(TEXT, "hello"), "\"hello\"");
    assert_eq!(json(TEXT, ""), "\"\"");
    assert_eq!(json(TEXT, "a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(json(TEXT, "\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
    assert_eq!(json(TEXT, "\u{1}\u{1f}"), r#""\u0001\u001f""#);
    assert_eq!(json(TEXT, "héllo ✓ 😀"), "\"héllo ✓ 😀\"");
    assert_eq!(json(TEXT, "\u{7f}"), "\"\u{7f}\"");
    assert_eq!(json(VARCHAR, "x"), "\"x\"");
    assert_eq!(
        json(UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
    );
    // Unknown OIDs (enums, extension types): their text as a string.
    assert_eq!(json(99999, "happy"), "\"happy\"");
}

#[test]
fn bytea_columns_drop_the_hex_prefix_but_elements_keep_it() {
    assert_eq!(json(BYTEA, "\\x0102030405"), "\"0102030405\"");
    assert_eq!(json(BYTEA, "\\x"), "\"\"");
    // escape format (bytea_output=escape) is not what the stream uses; kept whole.
    assert_eq!(json(BYTEA, "abc"), "\"abc\"");
    assert_eq!(json(1001, r#"{"\\x01",NULL}"#), r#"["\\x01",null]"#);
}

#[test]
fn timestamps() {
    assert_eq!(
        json(TIMESTAMPTZ, "2025-11-03 09:32:55.123+00"),
        "\"2025-11-03T09:32:55.123+00:00\""
    );
    assert_eq!(
        json(TIMESTAMPTZ, "2025-11-03 09:32:55+00"),
        "\"2025-11-03T09:32:55+00:00\""
    );
    assert_eq!(
        json(TIMESTAMPTZ, "2025-11-03 09:32:55.123456+05:30"),
        "\"2025-11-03T09:32:55.123456+05:30\""
    );
    assert_eq!(
        json(TIMESTAMPTZ, "2025-11-03 09:32:55-08"),
        "\"2025-11-03T09:32:55-08:00\""
    );
    assert_eq!(
        json(TIMESTAMPTZ, "1900-01-01 00:00:00+05:53:28"),
        "\"1900-01-01T00:00:00+05:53:28\""
    );
    assert_eq!(
        json(TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC"),
        "\"0044-03-15T12:00:00+00:00 BC\""
    );
    assert_eq!(
        json(TIMESTAMPTZ, "10000-01-01 00:00:00+00"),
        "\"10000-01-01T00:00:00+00:00\""
    );
    assert_eq!(json(TIMESTAMPTZ, "infinity"), "\"infinity\"");
    assert_eq!(json(TIMESTAMPTZ, "-infinity"), "\"-infinity\"");
    assert_eq!(
        json(TIMESTAMP, "2025-11-03 09:32:55.123"),
        "\"2025-11-03T09:32:55.123\""
    );
    assert_eq!(json(TIMESTAMP, "0044-03-15 12:00:00 BC"), "\"0044-03-15T12:00:00 BC\"");
    assert_eq!(json(TIMESTAMP, "infinity"), "\"infinity\"");
    // Not something Postgres sends: still valid JSON.
    assert_eq!(json(TIMESTAMPTZ, "a \"b"), r#""a \"b""#);
    valid(TIMESTAMPTZ, "x\n y");
}

#[test]
fn other_date_time_types_are_their_text() {
    assert_eq!(json(DATE, "2025-11-03"), "\"2025-11-03\"");
    assert_eq!(json(DATE, "0044-03-15 BC"), "\"0044-03-15 BC\"");
    assert_eq!(json(TIME, "09:32:55.123"), "\"09:32:55.123\"");
    assert_eq!(json(TIMETZ, "12:00:00-08"), "\"12:00:00-08\"");
    assert_eq!(json(INTERVAL, "1 day 02:00:00"), "\"1 day 02:00:00\"");
}

#[test]
fn arrays() {
    assert_eq!(json(1007, "{1,2,3}"), "[1,2,3]");
    assert_eq!(json(1007, "{}"), "[]");
    assert_eq!(json(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(json(1007, "[0:1]={1,2}"), "[1,2]");
    assert_eq!(json(1007, "[1:1][-2:-1]={{1,2}}"), "[[1,2]]");
    assert_eq!(json(1007, "{1,NULL,3}"), "[1,null,3]");
    assert_eq!(
        json(1009, r#"{"a b","c\"d",NULL,"NULL",e\\f}"#),
        r#"["a b","c\"d",null,"NULL","e\\f"]"#
    );
    assert_eq!(json(1009, r#"{"",x}"#), r#"["","x"]"#);
    assert_eq!(json(1009, "{ a , b }"), r#"["a","b"]"#);
    assert_eq!(json(1009, "{null,Null}"), "[null,null]");
    assert_eq!(json(1009, r#"{"é✓",ü}"#), r#"["é✓","ü"]"#);
    assert_eq!(json(1016, "{9223372036854775807}"), "[9223372036854775807]");
    assert_eq!(json(1000, "{t,f,NULL}"), "[true,false,null]");
    assert_eq!(json(1022, "{1e+100,-0}"), format!("[1{},0]", "0".repeat(100)));
    assert_eq!(json(1231, "{1.10,2}"), "[1.10,2]");
    assert_eq!(
        json(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
        r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#
    );
    assert_eq!(
        json(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#),
        r#"[{"a": 1},[1, 2],null]"#
    );
    assert_eq!(json(199, r#"{"{\"a\":1}"}"#), r#"[{"a":1}]"#);
    assert_eq!(
        json(1185, r#"{"2025-11-03 09:32:55.123+00","2025-11-03 10:00:00+05:30"}"#),
        r#"["2025-11-03T09:32:55.123+00:00","2025-11-03T10:00:00+05:30"]"#
    );
    assert_eq!(json(1115, r#"{"2025-11-03 09:32:55"}"#), r#"["2025-11-03T09:32:55"]"#);
    assert_eq!(json(1182, "{2025-11-03,infinity}"), r#"["2025-11-03","infinity"]"#);
    assert_eq!(json(1015, r#"{x,"y,z"}"#), r#"["x","y,z"]"#);
    assert_eq!(json(1014, r#"{"a  ",b}"#), r#"["a  ","b"]"#);
    assert_eq!(
        json(1020, "{(3,4),(1,2);(1,1),(0,0)}"),
        r#"["(3,4),(1,2)","(1,1),(0,0)"]"#
    );
    assert_eq!(json(INT2VECTOR, "1 2 3"), "[1,2,3]");
    assert_eq!(json(OIDVECTOR, "23 25"), r#"["23","25"]"#);
    assert_eq!(json(INT2VECTOR, ""), "[]");
}

#[test]
fn arrays_of_user_types_by_element() {
    let mut v = Vec::new();
    write_array_json(99999, r#"{happy,"very sad"}"#, &mut v);
    assert_eq!(v, br#"["happy","very sad"]"#);
}

#[test]
fn malformed_arrays_fall_back_to_strings() {
    for bad in [
        "",
        "{",
        "}",
        "{1,2",
        "{1,,2}",
        "{1,2}x",
        "{{1}",
        "{\"a}",
        "{\\",
        "{a\"b}",
        "[1:2]{1,2}",
        "[x]={1}",
        "{,}",
        "{{{{{{{1}}}}}}}",
        "1,2",
        "{1}{2}",
        "{a{b}",
    ] {
        assert_eq!(json(1007, bad), serde_json::to_string(bad).unwrap(), "{bad:?}");
    }
    // Six dimensions is Postgres' maximum and still an array.
    assert_eq!(json(1007, "{{{{{{1}}}}}}"), "[[[[[[1]]]]]]");
}

#[test]
fn every_output_is_valid_json_for_odd_input() {
    let inputs = [
        "",
        " ",
        "\"",
        "\\",
        "{",
        "{\"\\\"\"}",
        "\u{0}",
        "NaN",
        "-",
        "e5",
        "1e-400",
        "{NULL}",
        "{\u{1}}",
        "2025-11-03 x\"",
        "[0:0]={\"\\\u{1}\"}",
    ];
    let oids = [
        BOOL,
        BYTEA,
        INT8,
        INT2,
        INT4,
        TEXT,
        OID,
        FLOAT4,
        FLOAT8,
        NUMERIC,
        DATE,
        TIME,
        TIMESTAMP,
        TIMESTAMPTZ,
        INTERVAL,
        TIMETZ,
        UUID,
        1000,
        1001,
        1007,
        1009,
        1016,
        1022,
        1115,
        1185,
        1231,
        2951,
        1020,
        INT2VECTOR,
        OIDVECTOR,
        12345,
    ];
    for oid in oids {
        for t in inputs {
            valid(oid, t);
        }
    }
}

#[test]
fn type_names_and_elements() {
    assert_eq!(type_name(23), Some("int4"));
    assert_eq!(type_name(20), Some("int8"));
    assert_eq!(type_name(25), Some("text"));
    assert_eq!(type_name(16), Some("bool"));
    assert_eq!(type_name(1184), Some("timestamptz"));
    assert_eq!(type_name(2950), Some("uuid"));
    assert_eq!(type_name(3802), Some("jsonb"));
    assert_eq!(type_name(17), Some("bytea"));
    assert_eq!(type_name(1007), Some("_int4"));
    assert_eq!(type_name(1009), Some("_text"));
    assert_eq!(type_name(3904), Some("int4range"));
    assert_eq!(type_name(16384), None);
    assert_eq!(type_name(0), None);
    for (arr, elem) in [
        (1007, 23),
        (1009, 25),
        (1016, 20),
        (1000, 16),
        (1022, 701),
        (1231, 1700),
        (2951, 2950),
        (3807, 3802),
        (199, 114),
        (1185, 1184),
        (1115, 1114),
        (1182, 1082),
        (1015, 1043),
        (1014, 1042),
        (1001, 17),
    ] {
        assert_eq!(element_type(arr), Some(elem), "{arr}");
        assert_eq!(type_name(arr).map(|n| n.trim_start_matches('_')), type_name(elem));
    }
    assert_eq!(element_type(23), None);
    assert_eq!(element_type(99999), None);
    assert!(
        BUILTIN_TYPES.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted for binary search"
    );
}
