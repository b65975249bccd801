//! The vsn 2.0.0 binary decoder (type 3, user broadcast push). Whatever decodes must
//! re-encode to the same frame, decode again to the same fields, and the broadcast the
//! server makes of it must reach V2 receivers as a type-4 frame with the same strings and
//! body and V1 receivers as JSON they can parse.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use realtime_protocol::frame::{decode_binary, Payload, ProtocolError};
use realtime_protocol::{Encoding, Vsn};

fuzz_target!(|data: &[u8]| {
    let msg = match decode_binary(Vsn::V2, data) {
        Ok(msg) => msg,
        Err(e) => {
            // The error says why; check the obvious ones against the header.
            match data.first() {
                None => assert_eq!(e, ProtocolError::Truncated),
                Some(&k) if k != 3 => assert_eq!(e, ProtocolError::UnsupportedBinaryKind(k)),
                _ => {}
            }
            return;
        }
    };
    let Payload::UserBroadcast {
        event,
        metadata,
        encoding,
        body,
    } = msg.payload
    else {
        panic!("a binary frame decoded to a JSON payload");
    };
    assert_eq!(msg.event, "broadcast");

    // Re-encode the type-3 frame: it must be byte-identical to the input.
    let join_ref = msg.join_ref.as_deref().unwrap_or_default();
    let ref_ = msg.ref_.as_deref().unwrap_or_default();
    let len = |s: &[u8]| u8::try_from(s.len()).expect("decoded header string longer than 255 bytes");
    let mut frame = vec![
        3,
        len(join_ref.as_bytes()),
        len(ref_.as_bytes()),
        len(msg.topic.as_bytes()),
        len(event.as_bytes()),
        len(metadata),
        u8::from(encoding == Encoding::Json),
    ];
    for part in [
        join_ref.as_bytes(),
        ref_.as_bytes(),
        msg.topic.as_bytes(),
        event.as_bytes(),
        metadata,
        body,
    ] {
        frame.extend_from_slice(part);
    }
    assert_eq!(frame, data, "decode → encode is not the identity");
    let again = decode_binary(Vsn::V2, &frame).expect("re-encoded frame decodes");
    assert_eq!(again.topic, msg.topic);
    assert_eq!(again.ref_, msg.ref_);

    // The broadcast the server builds from it, encoded for each receiver.
    common::check_event(&msg);
});
