//! The `phx_join` payload parser (`JoinRequest::parse`, which never fails) and what the
//! server builds from it: the join reply (valid JSON echoing each binding with its id) and
//! each `postgres_changes` binding's parameters (parsed or an error text).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use realtime_protocol::join::JoinRequest;

fuzz_target!(|data: &[u8]| {
    let join = JoinRequest::parse(data);
    // Parsing is a pure function of the bytes.
    assert_eq!(join, JoinRequest::parse(data));
    common::check_join(&join);
});
