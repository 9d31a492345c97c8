//! On-disk cache of compiled guests. Cranelift needs seconds for the
//! standard guest (~7 s for an 18 MB component on this class of machine); a
//! node that restarts, or a designer run, should not pay that every time.
//!
//! The key covers the guest bytes and the engine's compatibility hash
//! (wasmtime version, target, settings), so a stale artifact is never loaded.
//! Files are written atomically with mode 0600: deserializing compiled code
//! trusts the file, so only this user may write it. Before loading, the
//! artifact and its directory are checked: owned by this user, not a
//! symlink, not writable by group or others; otherwise the artifact is not
//! loaded (a warning says why) and the guest is compiled afresh.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::{CompiledGuest, SandboxError};

pub(crate) fn compile(
    engine: &Engine,
    dir: Option<&Path>,
    name: &str,
    wasm: &[u8],
) -> Result<CompiledGuest, SandboxError> {
    let start = Instant::now();
    let err = |message: String| SandboxError::Compile {
        name: name.to_string(),
        message,
    };
    let Some(dir) = dir else {
        let component = Component::new(engine, wasm).map_err(|e| err(format!("{e:#}")))?;
        tracing::info!(
            guest = name,
            ms = start.elapsed().as_millis() as u64,
            "compiled guest (cache off)"
        );
        return Ok(CompiledGuest {
            name: name.to_string(),
            component,
            from_cache: false,
        });
    };
    let path = artifact_path(engine, dir, name, wasm);
    let trusted = match untrusted(dir, &path) {
        Some(why) if path.exists() => {
            tracing::warn!(
                guest = name,
                "refusing the cached compiled guest: {why}; recompiling"
            );
            false
        }
        _ => true,
    };
    if trusted && path.exists() {
        // Read into memory rather than `deserialize_file`, which maps the
        // file: a map turns someone truncating the file into SIGBUS in a
        // running node.
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                // SAFETY: the artifact was produced by `precompile_component` of
                // an engine with the same compatibility hash (it is in the file
                // name) and lives in a directory only this user can write
                // (0700 / 0600). wasmtime still checks its header and version.
                unsafe { Component::deserialize(engine, &bytes) }.map_err(|e| format!("{e:#}"))
            });
        match loaded {
            Ok(component) => {
                tracing::info!(
                    guest = name,
                    path = %path.display(),
                    ms = start.elapsed().as_millis() as u64,
                    "loaded cached compiled guest"
                );
                return Ok(CompiledGuest {
                    name: name.to_string(),
                    component,
                    from_cache: true,
                });
            }
            Err(e) => {
                tracing::warn!(guest = name, error = %e, "cached guest unusable; recompiling")
            }
        }
    }
    let bytes = engine
        .precompile_component(wasm)
        .map_err(|e| err(format!("{e:#}")))?;
    // SAFETY: these bytes were produced by this very engine a moment ago.
    let component =
        unsafe { Component::deserialize(engine, &bytes) }.map_err(|e| err(format!("{e:#}")))?;
    tracing::info!(
        guest = name,
        ms = start.elapsed().as_millis() as u64,
        "compiled guest with Cranelift"
    );
    if let Err(e) = store(dir, &path, &bytes) {
        tracing::warn!(guest = name, error = %e, dir = %dir.display(), "could not cache compiled guest");
    }
    Ok(CompiledGuest {
        name: name.to_string(),
        component,
        from_cache: false,
    })
}

/// Why the artifact at `path` in `dir` may have been written by someone
/// else, if it may: either is not owned by this user, is a symlink, or is
/// writable by group or others.
#[cfg(unix)]
fn untrusted(dir: &Path, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for p in [dir, path] {
        let m = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", p.display())),
        };
        if m.file_type().is_symlink() {
            return Some(format!("{} is a symbolic link", p.display()));
        }
        if m.uid() != me {
            return Some(format!(
                "{} is owned by uid {}, not by this user (uid {me})",
                p.display(),
                m.uid()
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Some(format!(
                "{} is writable by group or others (mode {:o})",
                p.display(),
                m.mode() & 0o777
            ));
        }
    }
    None
}

#[cfg(not(unix))]
fn untrusted(_dir: &Path, _path: &Path) -> Option<String> {
    None
}

fn artifact_path(engine: &Engine, dir: &Path, name: &str, wasm: &[u8]) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut d = Sha256::new();
    d.update(wasm);
    d.update(h.finish().to_le_bytes());
    let key = hex::encode(&d.finalize()[..12]);
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("{safe}-{key}.cwasm"))
}

fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    // Unique per writer, threads included: two sandboxes of one process
    // compiling the same guest must not rename each other's file away.
    static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut f = open_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

#[cfg(not(unix))]
fn open_private(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(p)
}
