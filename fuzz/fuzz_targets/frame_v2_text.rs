//! The vsn 2.0.0 text decoder (`[join_ref, ref, topic, event, payload, ...]`) and what
//! the server derives from a decoded frame (see `common.rs`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use realtime_protocol::Vsn;

fuzz_target!(|data: &[u8]| {
    common::check_text_frame(Vsn::V2, data);
    // A binary frame on a V1 socket is always refused, whatever it holds.
    assert!(realtime_protocol::frame::decode_binary(Vsn::V1, data).is_err());
});
