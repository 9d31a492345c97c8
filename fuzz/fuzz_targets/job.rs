//! Fuzz target `job`: arbitrary bytes into everything a hop decodes from a
//! job payload (`mixnn_protocol::job`, PROTOCOL.md §12). The properties
//! checked are the decoders' promises: no panic, no allocation beyond what
//! the input carries, nothing unauthenticated accepted, and whatever decodes
//! encodes back to the same bytes.
//!
//! Each input is used as:
//! 1. a whole job payload (`JobPayload::decode`): the encoding has one form,
//!    so a decoded payload re-encodes to exactly the input;
//! 2. a sealed end-to-end section (`open_e2e`, both directions): it must not
//!    open unless it is the seal of its body under the fixture key;
//! 3. the body of a section sealed here and opened again (round trip), and
//!    an end-to-end message (`decode_msg` as `ToHop` and as `FromHop`): a
//!    message that decodes encodes to bytes that decode to the same encoding;
//! 4. the same, reached the way a hop reaches it: the end-to-end section of
//!    a decoded payload, opened and decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mixnn_protocol::job::{
    E2eDirection, FromHop, JobPayload, MAX_E2E_BODY, ToHop, decode_msg, encode_msg, open_e2e,
    seal_e2e,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The hop's end-to-end key in every run.
const KEY: [u8; 32] = [0x5a; 32];
const DIRECTIONS: [E2eDirection; 2] = [E2eDirection::ToHop, E2eDirection::FromHop];

/// A message that decodes re-encodes, and its encoding is a fixed point.
/// (Compared as bytes: messages carry f32 fields, and NaN != NaN.)
fn message_round_trip<T: Serialize + DeserializeOwned>(what: &'static str, body: &[u8]) {
    let Ok(msg) = decode_msg::<T>(what, body) else {
        return;
    };
    let once = encode_msg(what, &msg).expect("a decoded message encodes");
    let back = decode_msg::<T>(what, &once).expect("an encoded message decodes");
    let twice = encode_msg(what, &back).expect("a decoded message encodes");
    assert_eq!(once, twice, "{what}: encoding is not a fixed point");
}

fn messages(body: &[u8]) {
    message_round_trip::<ToHop>("to-hop message", body);
    message_round_trip::<FromHop>("from-hop message", body);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = JobPayload::decode(data) {
        assert_eq!(p.encoded_len(), data.len());
        assert_eq!(p.encode(), data, "a decoded payload re-encodes differently");
        for dir in DIRECTIONS {
            if let Ok(body) = open_e2e(&KEY, dir, &p.e2e) {
                messages(&body);
            }
        }
    }

    for dir in DIRECTIONS {
        if let Ok(body) = open_e2e(&KEY, dir, data) {
            assert_eq!(
                seal_e2e(&KEY, dir, &body),
                data,
                "an unsealed section opened"
            );
        }
        let sealed = seal_e2e(&KEY, dir, data);
        match open_e2e(&KEY, dir, &sealed) {
            Ok(body) => assert_eq!(body, data),
            Err(e) => assert!(data.len() > MAX_E2E_BODY, "own seal refused: {e}"),
        }
        let other = match dir {
            E2eDirection::ToHop => E2eDirection::FromHop,
            E2eDirection::FromHop => E2eDirection::ToHop,
        };
        assert!(
            open_e2e(&KEY, other, &sealed).is_err(),
            "a seal opened the other way"
        );
    }

    messages(data);
});
