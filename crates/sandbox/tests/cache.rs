//! The compiled-guest cache trusts only this user's private files: an
//! artifact (or cache directory) that someone else could have written is
//! not loaded as native code; the guest is compiled afresh.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use mixnn_sandbox::{GuestKind, Limits, Sandbox, SandboxOptions};

fn relay_from_cache(cache: &Path) -> bool {
    let sb = Sandbox::new(SandboxOptions {
        limits: Limits::default(),
        cache_dir: Some(cache.to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    sb.guest(GuestKind::Relay).unwrap().from_cache()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_cached_guest_others_could_write_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    assert!(!relay_from_cache(&cache));
    assert!(relay_from_cache(&cache), "a private artifact is loaded");
    let artifact = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();

    chmod(&artifact, 0o666);
    assert!(
        !relay_from_cache(&cache),
        "a world-writable artifact is not loaded"
    );
    chmod(&artifact, 0o600);
    chmod(&cache, 0o777);
    assert!(
        !relay_from_cache(&cache),
        "an artifact in a world-writable dir is not loaded"
    );
    chmod(&cache, 0o700);
    assert!(relay_from_cache(&cache));

    // Another owner (only root can hand a file to someone else).
    if std::os::unix::fs::chown(&artifact, Some(4242), None).is_ok() {
        assert!(
            !relay_from_cache(&cache),
            "an artifact of another user is not loaded"
        );
    }
}
