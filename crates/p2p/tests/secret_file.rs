//! Identity key files: created owner-only, stable across loads, refused
//! when others may read them or when their length is wrong.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_p2p::secret_file::{SecretFileError, load_or_create_identity};

#[test]
fn created_once_then_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/identity.key");
    let (a, created) = load_or_create_identity(&path).unwrap();
    assert!(created);
    let (b, created) = load_or_create_identity(&path).unwrap();
    assert!(!created);
    assert_eq!(*a, *b);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }
}

#[cfg(unix)]
#[test]
fn group_readable_key_is_refused_with_a_clear_error() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    load_or_create_identity(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = load_or_create_identity(&path).unwrap_err();
    assert!(matches!(err, SecretFileError::TooOpen { mode: 0o640, .. }));
    let msg = err.to_string();
    assert!(msg.contains("chmod 600"), "{msg}");
}

#[cfg(unix)]
#[test]
fn wrong_length_is_corrupt() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    std::fs::write(&path, [1u8; 31]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        load_or_create_identity(&path),
        Err(SecretFileError::Corrupt { .. })
    ));
}
