//! Mix-key rotation: one key per epoch, the previous one kept for the grace
//! period, everything persisted owner-only across restarts.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_node::MixKeyStore;

const EPOCH: u64 = 100;
const GRACE: u64 = 30;
const T0: u64 = 1_700_000_000; // an epoch boundary for EPOCH = 100

#[test]
fn rotates_keeps_grace_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = MixKeyStore::open(dir.path(), EPOCH, GRACE, T0 + 5).unwrap();
    let e0 = T0 / EPOCH;
    let (cur, k0) = s.current(T0 + 5).unwrap();
    assert_eq!(cur, e0);
    assert!(!s.rotate(T0 + 50).unwrap(), "same epoch: nothing to do");

    // Next epoch: a new key; the old one still usable inside the grace.
    assert!(s.rotate(T0 + EPOCH + 1).unwrap());
    let (cur, k1) = s.current(T0 + EPOCH + 1).unwrap();
    assert_eq!(cur, e0 + 1);
    assert_ne!(k0.to_bytes(), k1.to_bytes());
    assert!(s.secret(e0, T0 + EPOCH + GRACE - 1).is_some());
    assert!(s.secret(e0, T0 + EPOCH + GRACE).is_none(), "grace is over");
    assert!(s.secret(e0 + 5, T0 + EPOCH + 1).is_none(), "future epoch");

    // A restart inside the grace period sees both keys.
    drop(s);
    let s = MixKeyStore::open(dir.path(), EPOCH, GRACE, T0 + EPOCH + 2).unwrap();
    assert_eq!(s.epochs(), vec![e0, e0 + 1]);
    let old = s.secret(e0, T0 + EPOCH + 2).unwrap();
    assert_eq!(
        x25519_dalek::PublicKey::from(&old).to_bytes(),
        k0.to_bytes()
    );

    // After the grace period the old key is gone from memory and disk.
    drop(s);
    let s = MixKeyStore::open(dir.path(), EPOCH, GRACE, T0 + EPOCH + GRACE).unwrap();
    assert_eq!(s.epochs(), vec![e0 + 1]);
    drop(s);
    let s = MixKeyStore::open(dir.path(), EPOCH, GRACE, T0 + EPOCH + GRACE + 1).unwrap();
    assert_eq!(s.epochs(), vec![e0 + 1]);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.path().join(mixnn_node::mixkeys::MIX_KEY_FILE);
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn a_changed_epoch_length_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let s = MixKeyStore::open(dir.path(), EPOCH, GRACE, T0).unwrap();
    let (_, k) = s.current(T0).unwrap();
    drop(s);
    let s = MixKeyStore::open(dir.path(), EPOCH * 2, GRACE, T0).unwrap();
    let (e, k2) = s.current(T0).unwrap();
    assert_eq!(e, T0 / (EPOCH * 2));
    assert_ne!(k.to_bytes(), k2.to_bytes());
}

#[test]
fn a_corrupt_key_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(mixnn_node::mixkeys::MIX_KEY_FILE);
    std::fs::write(&p, b"not cbor at all").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = MixKeyStore::open(dir.path(), EPOCH, GRACE, T0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("mix-key file"), "{err}");
}
