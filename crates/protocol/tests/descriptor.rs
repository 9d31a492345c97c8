//! Descriptor signing and verification: round trip, tampering, forgery,
//! expiry, and the size limits on decode.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use mixnn_protocol::cbor::CborError;
use mixnn_protocol::descriptor::{DESCRIPTOR_FORMAT, MAX_DESCRIPTOR_BYTES, peer_id_of};
use mixnn_protocol::{
    Capacity, DescriptorError, DirectoryRequest, DirectoryResponse, MixKeyInfo, NodeDescriptor,
    SignedDescriptor,
};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A descriptor of `key` with one address, epoch 1 and a 600 s lifetime,
/// signed by `key`.
fn signed(key: &SigningKey) -> SignedDescriptor {
    let d = descriptor(key, vec!["/ip4/127.0.0.1/tcp/1".into()], 1, 600);
    SignedDescriptor::sign(&d, key).unwrap()
}

fn descriptor(key: &SigningKey, addrs: Vec<String>, epoch: u64, ttl: u64) -> NodeDescriptor {
    let identity_key = key.verifying_key().to_bytes();
    NodeDescriptor {
        format: DESCRIPTOR_FORMAT,
        peer_id: peer_id_of(&identity_key).expect("valid key"),
        identity_key,
        addrs,
        mix_key: MixKeyInfo {
            epoch,
            epoch_secs: 3600,
            public: [7; 32],
        },
        capacity: Capacity {
            jobs: 4,
            memory_mib: 1024,
        },
        software: "mixnn/test".into(),
        issued_at: NOW,
        expires_at: NOW + ttl,
    }
}

fn addr_strategy() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (1u8..=254, 1u16..=65535).prop_map(|(o, p)| format!("/ip4/127.0.0.{o}/tcp/{p}")),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip(seed in any::<u8>(), addrs in addr_strategy(), epoch in any::<u64>(), ttl in 1u64..86_400) {
        let k = key(seed);
        let d = descriptor(&k, addrs, epoch, ttl);
        let signed = SignedDescriptor::sign(&d, &k).unwrap();
        let bytes = signed.to_bytes().unwrap();
        let back = SignedDescriptor::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &signed);
        prop_assert_eq!(back.verify_at(NOW).unwrap(), d);
    }

    #[test]
    fn any_flipped_body_bit_fails(seed in any::<u8>(), addrs in addr_strategy(), bit in any::<prop::sample::Index>()) {
        let k = key(seed);
        let signed = SignedDescriptor::sign(&descriptor(&k, addrs, 1, 600), &k).unwrap();
        let mut t = signed.clone();
        let i = bit.index(t.body.len() * 8);
        t.body[i / 8] ^= 1 << (i % 8);
        prop_assert!(t.verify_at(NOW).is_err());
    }

    #[test]
    fn any_flipped_signature_bit_fails(seed in any::<u8>(), bit in 0usize..512) {
        let k = key(seed);
        let mut t = signed(&k);
        t.signature[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(matches!(t.verify_at(NOW), Err(DescriptorError::BadSignature)));
    }

    #[test]
    fn expired_fails(seed in any::<u8>(), ttl in 1u64..86_400, late in 0u64..1_000_000) {
        let k = key(seed);
        let signed = SignedDescriptor::sign(&descriptor(&k, vec!["/ip4/127.0.0.1/tcp/1".into()], 1, ttl), &k).unwrap();
        let at = NOW + ttl + late;
        let expired = matches!(signed.verify_at(at), Err(DescriptorError::Expired { .. }));
        prop_assert!(expired);
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedDescriptor::from_bytes(&bytes).map(|s| s.verify_at(NOW));
        let _ = DirectoryRequest::decode(&bytes);
        let _ = DirectoryResponse::decode(&bytes);
    }
}

#[test]
fn tampered_field_with_original_signature_fails() {
    let k = key(1);
    let d = descriptor(&k, vec!["/ip4/127.0.0.1/tcp/4001".into()], 5, 600);
    let signed = SignedDescriptor::sign(&d, &k).unwrap();
    // Re-encode a changed descriptor (a valid body) under the old signature.
    let mut changed = d.clone();
    changed.addrs = vec!["/ip4/127.0.0.66/tcp/4001".into()];
    let forged = SignedDescriptor {
        body: mixnn_protocol::cbor::encode("t", &changed, MAX_DESCRIPTOR_BYTES).unwrap(),
        signature: signed.signature.clone(),
    };
    assert!(matches!(
        forged.verify_at(NOW),
        Err(DescriptorError::BadSignature)
    ));
}

#[test]
fn someone_elses_peer_id_fails() {
    let victim = key(1);
    let attacker = key(2);
    let mut d = descriptor(&attacker, vec!["/ip4/127.0.0.1/tcp/1".into()], 1, 600);
    d.peer_id = peer_id_of(&victim.verifying_key().to_bytes()).unwrap();
    // The signer refuses; a hand-made signature is refused by the verifier.
    assert!(matches!(
        SignedDescriptor::sign(&d, &attacker),
        Err(DescriptorError::PeerIdMismatch { .. })
    ));
    let body = mixnn_protocol::cbor::encode("t", &d, MAX_DESCRIPTOR_BYTES).unwrap();
    let mut input = b"mixnn/descriptor/v1\0".to_vec();
    input.extend_from_slice(&body);
    let sig = ed25519_dalek::Signer::sign(&attacker, &input)
        .to_bytes()
        .to_vec();
    let forged = SignedDescriptor {
        body,
        signature: sig,
    };
    assert!(matches!(
        forged.verify_at(NOW),
        Err(DescriptorError::PeerIdMismatch { .. })
    ));
    // The same body claiming the victim's key does not verify either.
    let mut d2 = d.clone();
    d2.identity_key = victim.verifying_key().to_bytes();
    let body2 = mixnn_protocol::cbor::encode("t", &d2, MAX_DESCRIPTOR_BYTES).unwrap();
    let forged2 = SignedDescriptor {
        body: body2,
        signature: forged.signature.clone(),
    };
    assert!(matches!(
        forged2.verify_at(NOW),
        Err(DescriptorError::BadSignature)
    ));
}

#[test]
fn wrong_signing_key_is_refused() {
    let d = descriptor(&key(1), vec!["/ip4/127.0.0.1/tcp/1".into()], 1, 600);
    assert!(matches!(
        SignedDescriptor::sign(&d, &key(2)),
        Err(DescriptorError::WrongSigningKey)
    ));
}

#[test]
fn future_and_overlong_descriptors_fail() {
    let k = key(3);
    let s = signed(&k);
    assert!(matches!(
        s.verify_at(NOW - 3600),
        Err(DescriptorError::NotYetValid { .. })
    ));
    let long = descriptor(&k, vec!["/ip4/127.0.0.1/tcp/1".into()], 1, 3 * 86_400);
    assert!(matches!(
        SignedDescriptor::sign(&long, &k),
        Err(DescriptorError::BadLifetime { .. })
    ));
}

#[test]
fn limits_are_enforced() {
    let k = key(4);
    let many: Vec<String> = (0..17).map(|i| format!("/ip4/127.0.0.1/tcp/{i}")).collect();
    assert!(matches!(
        SignedDescriptor::sign(&descriptor(&k, many, 1, 600), &k),
        Err(DescriptorError::Invalid { field: "addrs", .. })
    ));
    let huge = vec![0u8; MAX_DESCRIPTOR_BYTES * 4];
    assert!(matches!(
        SignedDescriptor::from_bytes(&huge),
        Err(CborError::TooLarge { .. })
    ));
    let oversized = SignedDescriptor {
        body: vec![0xa0; MAX_DESCRIPTOR_BYTES + 1],
        signature: vec![0; 64],
    };
    assert!(matches!(
        oversized.verify_at(NOW),
        Err(DescriptorError::Encoding(CborError::TooLarge { .. }))
    ));
}

#[test]
fn non_canonical_body_fails() {
    let k = key(5);
    let s = signed(&k);
    let mut t = s.clone();
    t.body.push(0); // trailing byte
    assert!(matches!(
        t.verify_at(NOW),
        Err(DescriptorError::Encoding(_))
    ));
}

#[test]
fn directory_messages_round_trip() {
    let k = key(6);
    let s = signed(&k);
    for req in [
        DirectoryRequest::Publish(s.clone()),
        DirectoryRequest::List {
            offset: 3,
            limit: 10,
        },
    ] {
        assert_eq!(
            DirectoryRequest::decode(&req.encode().unwrap()).unwrap(),
            req
        );
    }
    for resp in [
        DirectoryResponse::Published,
        DirectoryResponse::Rejected {
            reason: "no".into(),
        },
        DirectoryResponse::Descriptors {
            entries: vec![s.clone(), s],
            total: 2,
        },
    ] {
        assert_eq!(
            DirectoryResponse::decode(&resp.encode().unwrap()).unwrap(),
            resp
        );
    }
}
