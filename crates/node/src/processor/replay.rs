//! The node's replay cache, shared by the packet workers and persisted in
//! the data dir.
//!
//! Why persist: mix keys survive a restart (`mixkeys`), so a replay cache
//! that did not would accept, after a restart, every packet of the current
//! key epochs a second time, re-sealed under the same one-time key. Each
//! epoch's tags are appended to `replay/<epoch>.tags` (owner-only, 16 bytes
//! a tag) as they are inserted, under the cache's lock, before the packet
//! goes on: a crash of the process loses nothing (the bytes are in the
//! kernel); the files are fsynced in batches ([`Replay::sync`], about once a
//! second), so a power loss forgets at most the last second's tags. A
//! restart reads back the files of the epochs whose keys are still in use
//! and deletes the others; a file holds at most the per-epoch cap.
//!
//! The lock is taken only for the check and insert ([`ReplayCheck`]): the
//! Diffie-Hellman step and the MAC of many packets run in parallel.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use mixnn_sphinx::{REPLAY_TAG_LEN, ReplayCache, ReplayCheck, ReplayTag, SphinxError};
use tracing::warn;

/// The directory of the tag files inside the data dir.
pub const REPLAY_DIR: &str = "replay";

struct State {
    cache: ReplayCache,
    dir: Option<PathBuf>,
    files: HashMap<u32, File>,
    unsynced: bool,
}

/// The shared, persisted replay cache.
pub struct Replay {
    state: Mutex<State>,
}

impl Replay {
    /// A cache of `max_per_epoch` tags per epoch, persisted under
    /// `data_dir` (in memory only without one); reads back the tags of
    /// `epochs` and deletes the files of any other epoch.
    pub fn open(data_dir: Option<&Path>, max_per_epoch: usize, epochs: &[u32]) -> Self {
        let mut state = State {
            cache: ReplayCache::new(max_per_epoch),
            dir: data_dir.map(|d| d.join(REPLAY_DIR)),
            files: HashMap::new(),
            unsynced: false,
        };
        if let Some(dir) = state.dir.clone() {
            if let Err(e) = mixnn_p2p::secret_file::ensure_private_dir(&dir) {
                warn!(dir = %dir.display(), error = %e, "replay tags will not survive a restart");
                state.dir = None;
            } else {
                load(&mut state.cache, &dir, epochs);
            }
        }
        Replay {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps only the epochs `keep` says, in memory and on disk.
    pub fn retain_epochs(&self, keep: impl Fn(u32) -> bool) {
        let mut s = self.lock();
        let gone: Vec<u32> = s.cache.epochs().into_iter().filter(|e| !keep(*e)).collect();
        s.cache.retain_epochs(&keep);
        for e in gone {
            s.files.remove(&e);
            if let Some(dir) = &s.dir {
                let _ = std::fs::remove_file(dir.join(file_name(e)));
            }
        }
    }

    /// Tags held for `epoch`.
    pub fn len(&self, epoch: u32) -> usize {
        self.lock().cache.len(epoch)
    }

    /// The cap per epoch.
    pub fn max_per_epoch(&self) -> usize {
        self.lock().cache.max_per_epoch()
    }

    /// Flushes the tag files to disk if tags were appended since the last
    /// call.
    pub fn sync(&self) {
        let mut s = self.lock();
        if !std::mem::take(&mut s.unsynced) {
            return;
        }
        for f in s.files.values() {
            if let Err(e) = f.sync_data() {
                warn!(error = %e, "syncing the replay tags");
            }
        }
    }

    /// A handle for [`mixnn_sphinx::process`] that locks the cache only
    /// inside the check.
    pub fn checker(&self) -> Checker<'_> {
        Checker(self)
    }
}

/// See [`Replay::checker`].
pub struct Checker<'a>(&'a Replay);

impl ReplayCheck for Checker<'_> {
    fn check_and_insert(&mut self, epoch: u32, tag: &ReplayTag) -> Result<(), SphinxError> {
        let mut s = self.0.lock();
        s.cache.check_and_insert(epoch, tag)?;
        if let Err(e) = append(&mut s, epoch, tag) {
            warn!(epoch, error = %e, "cannot persist a replay tag");
        }
        Ok(())
    }
}

fn file_name(epoch: u32) -> String {
    format!("{epoch}.tags")
}

fn append(s: &mut State, epoch: u32, tag: &ReplayTag) -> std::io::Result<()> {
    let Some(dir) = &s.dir else { return Ok(()) };
    let file = match s.files.entry(epoch) {
        std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(open_private(&dir.join(file_name(epoch)))?)
        }
    };
    file.write_all(&tag.0)?;
    s.unsynced = true;
    Ok(())
}

/// Reads back the tag files of `epochs` (a trailing partial tag, from a
/// crash mid-write, is ignored) and deletes every other file in `dir`.
fn load(cache: &mut ReplayCache, dir: &Path, epochs: &[u32]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let max_bytes = (cache.max_per_epoch() * REPLAY_TAG_LEN) as u64;
    for entry in entries.flatten() {
        let path = entry.path();
        let epoch = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tags"))
            .and_then(|n| n.parse::<u32>().ok());
        match epoch {
            Some(e) if epochs.contains(&e) => {
                let mut bytes = Vec::new();
                let read =
                    File::open(&path).and_then(|f| f.take(max_bytes).read_to_end(&mut bytes));
                if let Err(err) = read {
                    warn!(path = %path.display(), error = %err, "reading replay tags");
                }
                for chunk in bytes.chunks_exact(REPLAY_TAG_LEN) {
                    let mut tag = [0u8; REPLAY_TAG_LEN];
                    tag.copy_from_slice(chunk);
                    cache.restore(e, &ReplayTag(tag));
                }
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn open_private(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}
