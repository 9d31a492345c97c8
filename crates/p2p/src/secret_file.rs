//! Secret key files: created owner-only, refused when readable by others,
//! replaced atomically, and held in zeroizing buffers.
//!
//! Why here: the node and the bootstrap each persist an ed25519 identity
//! (and the node its mix keys), and a secret file is easy to get subtly
//! wrong (a moment with default permissions, a torn write on crash); one
//! implementation is audited once. It lives in the p2p crate, not in
//! `mixnn-protocol`, because that one does no I/O.
//!
//! The identity file holds the 32-byte ed25519 seed and nothing else; the
//! public key and peer id are derived from it.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Length of an ed25519 seed.
pub const IDENTITY_SEED_LEN: usize = 32;

/// Errors reading or writing a secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// A file-system operation on `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory operated on (the secret file, its
        /// temporary `.tmp` sibling, or its directory).
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable or writable by group or others (Unix only).
    #[error(
        "{} has mode {mode:o}: a key file must be readable by its owner only; \
         run `chmod 600 {}` if you trust its contents, or move it away to create a new identity",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The refused file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o777`), shown in octal.
        mode: u32,
    },
    /// The file is not a regular file or has the wrong length.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The refused file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The OS random source could not produce a new secret.
    #[error("the system random source failed: {0}")]
    Random(#[source] getrandom::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SecretFileError + '_ {
    move |source| SecretFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) if missing; a new directory is owner-only.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SecretFileError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Reads a secret file of at most `max_len` bytes; `None` if it does not
/// exist. Refuses a file that group or others may read or write.
pub fn read_secret(
    path: &Path,
    max_len: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>, SecretFileError> {
    // Checks run on the opened handle, so they describe the file we read
    // even if the path is swapped in between.
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if !meta.is_file() {
        return Err(SecretFileError::Corrupt {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > max_len as u64 {
        return Err(SecretFileError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{} bytes, more than the {max_len} expected", meta.len()),
        });
    }
    // Sized by the file, not the cap: zeroize clears the whole capacity on
    // drop, so a cap-sized buffer would write every page of it (1 GiB for a
    // model) whatever the file holds. Reserved up front so the secret is
    // never copied by a reallocation (a growing file may still grow it).
    let mut buf = Zeroizing::new(Vec::with_capacity(
        usize::try_from(meta.len())
            .map_or(max_len, |n| n.min(max_len))
            .saturating_add(1),
    ));
    file.take(max_len as u64)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    Ok(Some(buf))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename); the
/// file is created owner-only (0600) so it never exists with wider access.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), SecretFileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A temporary file left by a crash is incomplete by definition.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        // Makes the rename durable; not all platforms allow it, and the file
        // itself is already synced, so a failure here is not an error.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Fills a zeroizing buffer from the system random source.
pub fn random_secret<const N: usize>() -> Result<Zeroizing<[u8; N]>, SecretFileError> {
    let mut buf = Zeroizing::new([0u8; N]);
    getrandom::fill(buf.as_mut()).map_err(SecretFileError::Random)?;
    Ok(buf)
}

/// Loads the ed25519 seed at `path`, or creates one if the file does not
/// exist. Returns the seed and whether it was created now.
pub fn load_or_create_identity(
    path: &Path,
) -> Result<(Zeroizing<[u8; IDENTITY_SEED_LEN]>, bool), SecretFileError> {
    if let Some(bytes) = read_secret(path, IDENTITY_SEED_LEN)? {
        let seed: [u8; IDENTITY_SEED_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretFileError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{} bytes; an identity file holds exactly {IDENTITY_SEED_LEN}",
                        bytes.len()
                    ),
                })?;
        return Ok((Zeroizing::new(seed), false));
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        ensure_private_dir(dir)?;
    }
    let seed = random_secret::<IDENTITY_SEED_LEN>()?;
    write_secret(path, seed.as_ref())?;
    Ok((seed, true))
}
