//! Builds the layer guests (`guest-layers/`, a workspace of its own) for
//! wasm32-wasip2 and hands their paths to the crate, which embeds them.
//!
//! A newcomer types `cargo test` and nothing else, so this script also
//! installs the wasm target through rustup when it is missing. Set
//! `MIXNN_GUEST_DIR` to a folder holding prebuilt `mixnn_guest_standard.wasm`,
//! `mixnn_guest_relay.wasm` and `mixnn_guest_hostile.wasm` to skip the nested build.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const GUESTS: [&str; 3] = [
    "mixnn_guest_standard",
    "mixnn_guest_relay",
    "mixnn_guest_hostile",
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=MIXNN_GUEST_DIR");

    let dir = match std::env::var_os("MIXNN_GUEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            for p in ["guest-layers", "crates/layer", "crates/grad", "wit"] {
                println!("cargo:rerun-if-changed={}", root.join(p).display());
            }
            build_guests(&root)
        }
    };
    for g in GUESTS {
        let src = dir.join(format!("{g}.wasm"));
        let dst = out.join(format!("{g}.wasm"));
        if let Err(e) = std::fs::copy(&src, &dst) {
            panic!(
                "guest {} not found ({e}); the guest build above should have produced it",
                src.display()
            );
        }
    }
}

fn build_guests(root: &Path) -> PathBuf {
    ensure_target();
    let target_dir = root.join("target/guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("guest-layers"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer cargo's settings (target, flags, wrappers such as clippy's)
    // are for the host build; the guest build must not inherit them.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep = k == "CARGO_HOME" || k == "CARGO_MAKEFLAGS" || k == "CARGO_NET_OFFLINE";
        if !keep
            && (k.starts_with("CARGO_")
                || k.starts_with("RUSTC")
                || k.starts_with("RUSTFLAGS")
                || k == "RUSTDOC")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
    let status = cmd.status().expect("running cargo for the guests");
    if !status.success() {
        panic!("building the layer guests failed (see the output above)");
    }
    target_dir.join(TARGET).join("release")
}

/// Installs the wasm target with rustup when the sysroot lacks it.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    if sysroot.is_some_and(|s| s.join("lib/rustlib").join(TARGET).exists()) {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (once)");
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|s| s.success());
    if !matches!(ok, Ok(true)) {
        panic!("could not install the {TARGET} target: run `rustup target add {TARGET}`");
    }
}
