//! Builds the layer guests (`guest-layers/`, a workspace of its own) for
//! wasm32-wasip2, and the pure-wasm product kernel (`guest-layers/matmul`, a
//! core module) for wasm32-wasip1, and hands their paths to the crate, which
//! embeds them.
//!
//! A newcomer types `cargo test` and nothing else, so this script also
//! installs the wasm targets through rustup when they are missing. Set
//! `MIXNN_GUEST_DIR` to a folder holding prebuilt `mixnn_guest_standard.wasm`,
//! `mixnn_guest_relay.wasm`, `mixnn_guest_hostile.wasm` and
//! `mixnn_guest_matmul.wasm` to skip the nested builds.

// A build script reports failure by panicking with the reason; that is its
// interface with cargo, not a crash on outside data.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const KERNEL_TARGET: &str = "wasm32-wasip1";
const GUESTS: [&str; 4] = [
    "mixnn_guest_standard",
    "mixnn_guest_relay",
    "mixnn_guest_hostile",
    "mixnn_guest_matmul",
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
            for p in [
                "guest-layers",
                "crates/layer",
                "crates/grad",
                "crates/onnx",
                "crates/types",
                "wit",
            ] {
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

/// Builds both guest workspaces; returns the one folder holding every
/// `.wasm` (the kernel is copied next to the components).
fn build_guests(root: &Path) -> PathBuf {
    let target_dir = root.join("target/guest");
    let out = cargo_build(&root.join("guest-layers"), TARGET, &target_dir);
    let kernel = cargo_build(
        &root.join("guest-layers/matmul"),
        KERNEL_TARGET,
        &target_dir,
    );
    let name = "mixnn_guest_matmul.wasm";
    if let Err(e) = std::fs::copy(kernel.join(name), out.join(name)) {
        panic!("product kernel {name} not built: {e}");
    }
    out
}

/// `cargo build --release` of the workspace in `dir` for `target`; returns
/// the folder the artifacts land in.
fn cargo_build(dir: &Path, target: &str, target_dir: &Path) -> PathBuf {
    ensure_target(target);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(target_dir);
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
        panic!(
            "building the guests in {} failed (see the output above)",
            dir.display()
        );
    }
    target_dir.join(target).join("release")
}

/// Installs a wasm target with rustup when the sysroot lacks it.
fn ensure_target(target: &str) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    if sysroot.is_some_and(|s| s.join("lib/rustlib").join(target).exists()) {
        return;
    }
    println!("cargo:warning=installing the {target} target with rustup (once)");
    let ok = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .map(|s| s.success());
    if !matches!(ok, Ok(true)) {
        panic!("could not install the {target} target: run `rustup target add {target}`");
    }
}
