//! The vsn 1.0.0 text decoder (`{"topic","event","payload","ref","join_ref"?}`) and
//! everything the server derives from a decoded frame: decode → encode → decode keeps the
//! fields, the typed event (join config, broadcast re-encodings) never panics.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use realtime_protocol::Vsn;

fuzz_target!(|data: &[u8]| {
    common::check_text_frame(Vsn::V1, data);
});
