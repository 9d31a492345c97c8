//! The job directory on disk: the recipe, the model, the secret and the
//! checkpoints, written atomically and read back with bounds and digests.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use mixnn_p2p::secret_file::{ensure_private_dir, random_secret, read_secret, write_secret};
use sha2::{Digest, Sha256};

use super::recipe::{FORMAT_VERSION, JobRecipe};
use super::{Checkpoint, CheckpointError, Manifest, Position, StateEntry};

/// Checkpoints kept; older ones are removed after a new one is written.
pub const KEEP_CHECKPOINTS: usize = 3;

const JOB_FILE: &str = "job.json";
const MODEL_FILE: &str = "model.onnx";
const SECRET_FILE: &str = "secret";
const FAILED_FILE: &str = "failed_nodes.json";
/// The cascade left deployed (`train --keep-deployed`): its job handles
/// are the job's capability on each node, hence 0600 like the secret.
const DEPLOYED_FILE: &str = "deployed.json";
const CHECKPOINTS: &str = "checkpoints";
const MANIFEST: &str = "manifest.json";
/// Prefix of a checkpoint being written (or left by a crash).
const TMP_PREFIX: &str = ".tmp-";
/// Prefix of a checkpoint being replaced by a newer write of its step.
const OLD_PREFIX: &str = ".old-";

const MAX_JOB_BYTES: u64 = 1 << 20;
const MAX_MANIFEST_BYTES: u64 = 16 << 20;
const MAX_MODEL_BYTES: u64 = 1 << 30;
const MAX_STATE_BYTES: u64 = 4 << 30;
/// More states than any cascade has shards.
const MAX_STATES: usize = 4096;
/// Failed nodes a job directory remembers (far more than a job repairs).
const MAX_FAILED: usize = 4096;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A job directory (0700; its files 0600).
#[derive(Clone, Debug)]
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    /// Makes a new job directory at `root` (created if missing, refused if
    /// it already holds a job) with the recipe, a copy of the model and a
    /// fresh 32-byte job secret.
    pub fn create(root: &Path, recipe: &JobRecipe, model: &[u8]) -> Result<Self, CheckpointError> {
        if root.join(JOB_FILE).exists() {
            return Err(CheckpointError::Exists {
                path: root.to_path_buf(),
            });
        }
        ensure_private_dir(root)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        }
        let dir = JobDir {
            root: root.to_path_buf(),
        };
        let mut recipe = recipe.clone();
        recipe.model_sha256 = hex::encode(Sha256::digest(model));
        write_secret(&root.join(MODEL_FILE), model)?;
        let secret = random_secret::<32>()?;
        write_secret(&root.join(SECRET_FILE), secret.as_ref())?;
        let json = serde_json::to_vec_pretty(&recipe)
            .map_err(|e| invalid(&root.join(JOB_FILE), e.to_string()))?;
        // The recipe last: a directory with job.json is a whole job.
        write_secret(&root.join(JOB_FILE), &json)?;
        ensure_private_dir(&dir.checkpoints())?;
        Ok(dir)
    }

    /// Opens the job directory at `root`.
    pub fn open(root: &Path) -> Result<Self, CheckpointError> {
        if !root.join(JOB_FILE).is_file() {
            return Err(CheckpointError::NoJob {
                path: root.to_path_buf(),
            });
        }
        Ok(JobDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// The job's recipe.
    pub fn recipe(&self) -> Result<JobRecipe, CheckpointError> {
        let path = self.root.join(JOB_FILE);
        let bytes =
            read_secret(&path, MAX_JOB_BYTES as usize)?.ok_or_else(|| CheckpointError::NoJob {
                path: self.root.clone(),
            })?;
        let recipe: JobRecipe =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e.to_string()))?;
        if recipe.version != FORMAT_VERSION {
            return Err(invalid(
                &path,
                format!(
                    "format version {}, this build reads {FORMAT_VERSION}",
                    recipe.version
                ),
            ));
        }
        Ok(recipe)
    }

    /// The model bytes, checked against the recipe's digest.
    pub fn model(&self, recipe: &JobRecipe) -> Result<Vec<u8>, CheckpointError> {
        let path = self.root.join(MODEL_FILE);
        let bytes = read_secret(&path, MAX_MODEL_BYTES as usize)?
            .ok_or_else(|| invalid(&path, "missing"))?;
        if hex::encode(Sha256::digest(bytes.as_slice())) != recipe.model_sha256 {
            return Err(invalid(&path, "does not match the digest in job.json"));
        }
        Ok(bytes.to_vec())
    }

    /// The job's 32-byte secret (where the dummies sit, their masks).
    pub fn secret(&self) -> Result<[u8; 32], CheckpointError> {
        let path = self.root.join(SECRET_FILE);
        let bytes = read_secret(&path, 32)?.ok_or_else(|| invalid(&path, "missing"))?;
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| invalid(&path, format!("{} bytes, not 32", bytes.len())))
    }

    /// Identities (ed25519 keys) of the pool nodes that failed in this job,
    /// from `failed_nodes.json` (none if the file is absent): a resumed job
    /// avoids them up front, as the bootstraps may still list them.
    pub fn failed_nodes(&self) -> Result<Vec<[u8; 32]>, CheckpointError> {
        let path = self.root.join(FAILED_FILE);
        let max = MAX_FAILED * 70 + 64;
        let Some(bytes) = read_secret(&path, max)? else {
            return Ok(Vec::new());
        };
        let hexes: Vec<String> =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e.to_string()))?;
        hexes
            .iter()
            .map(|h| {
                let mut id = [0u8; 32];
                hex::decode_to_slice(h, &mut id)
                    .map_err(|e| invalid(&path, format!("{h:?}: {e}")))?;
                Ok(id)
            })
            .collect()
    }

    /// Adds `ids` to the failed nodes (atomically; each kept once, at most
    /// [`MAX_FAILED`], the newest kept).
    pub fn record_failed(&self, ids: &[[u8; 32]]) -> Result<(), CheckpointError> {
        let mut all = self.failed_nodes()?;
        let before = all.len();
        for id in ids {
            if !all.contains(id) {
                all.push(*id);
            }
        }
        if all.len() == before {
            return Ok(());
        }
        let drop = all.len().saturating_sub(MAX_FAILED);
        let hexes: Vec<String> = all[drop..].iter().map(hex::encode).collect();
        let path = self.root.join(FAILED_FILE);
        let json = serde_json::to_vec_pretty(&hexes).map_err(|e| invalid(&path, e.to_string()))?;
        Ok(write_secret(&path, &json)?)
    }

    /// Records the cascade left deployed, for `mixnn infer` to attach to
    /// (replacing any earlier record).
    pub fn write_deployed(&self, d: &crate::pool::Deployment) -> Result<(), CheckpointError> {
        let path = self.root.join(DEPLOYED_FILE);
        let json = serde_json::to_vec_pretty(d).map_err(|e| invalid(&path, e.to_string()))?;
        Ok(write_secret(&path, &json)?)
    }

    /// The cascade left deployed, if the job recorded one.
    pub fn deployed(&self) -> Result<Option<crate::pool::Deployment>, CheckpointError> {
        let path = self.root.join(DEPLOYED_FILE);
        let Some(bytes) = read_secret(&path, MAX_JOB_BYTES as usize)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| invalid(&path, e.to_string()))
    }

    /// Forgets the deployed cascade (it was closed).
    pub fn forget_deployed(&self) -> Result<(), CheckpointError> {
        let path = self.root.join(DEPLOYED_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Writes `cp` as checkpoint `checkpoints/<step>/` atomically (temporary
    /// directory, every file synced, rename, parent synced), then keeps the
    /// newest [`KEEP_CHECKPOINTS`]. Returns the bytes written.
    pub fn write_checkpoint(&self, cp: &Checkpoint) -> Result<u64, CheckpointError> {
        let dir = self.checkpoints();
        ensure_private_dir(&dir)?;
        self.clear_temporaries()?;
        let step = cp.position.step;
        let tmp = dir.join(format!("{TMP_PREFIX}{step}-{}", std::process::id()));
        make_private_dir(&tmp)?;
        let mut entries = Vec::with_capacity(cp.states.len());
        let mut written = 0u64;
        for (i, state) in cp.states.iter().enumerate() {
            let file = format!("shard{i}.state");
            write_private(&tmp.join(&file), state)?;
            written += state.len() as u64;
            entries.push(StateEntry {
                file,
                bytes: state.len() as u64,
                sha256: hex::encode(Sha256::digest(state)),
            });
        }
        let p = &cp.position;
        let manifest = Manifest {
            version: FORMAT_VERSION,
            step,
            epoch: p.epoch,
            batch: p.batch,
            loss_sum_bits: p.loss_sum.to_bits(),
            epoch_seconds: p.epoch_seconds,
            epochs: cp.epochs.clone(),
            states: entries,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| invalid(&tmp.join(MANIFEST), e.to_string()))?;
        write_private(&tmp.join(MANIFEST), &json)?;
        written += json.len() as u64;
        sync_dir(&tmp)?;
        let target = dir.join(step.to_string());
        if target.exists() {
            // The same step written again (a replay after a fallback): the
            // old copy is moved away first, so a crash leaves one or the other.
            let old = dir.join(format!("{OLD_PREFIX}{step}-{}", std::process::id()));
            fs::rename(&target, &old).map_err(io(&target))?;
            fs::rename(&tmp, &target).map_err(io(&target))?;
            fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            fs::rename(&tmp, &target).map_err(io(&target))?;
        }
        sync_dir(&dir)?;
        self.prune()?;
        Ok(written)
    }

    /// The steps of the checkpoints present (whole or not), oldest first.
    pub fn checkpoint_steps(&self) -> Result<Vec<u64>, CheckpointError> {
        let dir = self.checkpoints();
        let mut steps = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(steps),
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_digit())
                && let Ok(step) = name.parse::<u64>()
            {
                steps.push(step);
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    /// The newest checkpoint that is whole and matches its digests, and a
    /// warning for each newer one refused (e.g. `checkpoint step 300: state
    /// of shard 2 does not match its digest; using step 200`). Temporary
    /// directories of interrupted writes are never considered.
    pub fn latest_valid(&self) -> Result<(Checkpoint, Vec<String>), CheckpointError> {
        let mut problems: Vec<(u64, String)> = Vec::new();
        for step in self.checkpoint_steps()?.into_iter().rev() {
            match self.load(step) {
                Ok(cp) => {
                    let warnings = problems
                        .iter()
                        .map(|(s, why)| format!("checkpoint step {s}: {why}; using step {step}"))
                        .collect();
                    return Ok((cp, warnings));
                }
                Err(why) => problems.push((step, why)),
            }
        }
        Err(CheckpointError::NoValidCheckpoint {
            path: self.checkpoints(),
            problems: problems
                .into_iter()
                .map(|(s, why)| format!("checkpoint step {s}: {why}"))
                .collect(),
        })
    }

    /// Checkpoint `step`, verified; the error says what is wrong with it.
    fn load(&self, step: u64) -> Result<Checkpoint, String> {
        let dir = self.checkpoints().join(step.to_string());
        let bytes = read_bounded(&dir.join(MANIFEST), MAX_MANIFEST_BYTES)
            .map_err(|e| format!("manifest: {e} (an interrupted write?)"))?;
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| format!("manifest does not parse: {e}"))?;
        if m.version != FORMAT_VERSION {
            return Err(format!("manifest format version {}", m.version));
        }
        if m.step != step {
            return Err(format!("manifest names step {}", m.step));
        }
        if m.states.len() > MAX_STATES {
            return Err(format!("manifest lists {} states", m.states.len()));
        }
        let mut states = Vec::with_capacity(m.states.len());
        for (i, e) in m.states.iter().enumerate() {
            if e.file != format!("shard{i}.state") || e.bytes > MAX_STATE_BYTES {
                return Err(format!("manifest entry {i} is malformed"));
            }
            let state = read_bounded(&dir.join(&e.file), e.bytes)
                .map_err(|err| format!("state of shard {i}: {err}"))?;
            if state.len() as u64 != e.bytes {
                return Err(format!(
                    "state of shard {i} has {} bytes, the manifest says {}",
                    state.len(),
                    e.bytes
                ));
            }
            if hex::encode(Sha256::digest(&state)) != e.sha256 {
                return Err(format!("state of shard {i} does not match its digest"));
            }
            states.push(state);
        }
        Ok(Checkpoint {
            position: Position {
                epoch: m.epoch,
                batch: m.batch,
                step: m.step,
                loss_sum: f64::from_bits(m.loss_sum_bits),
                epoch_seconds: m.epoch_seconds,
            },
            epochs: m.epochs,
            states,
        })
    }

    /// Removes all but the newest [`KEEP_CHECKPOINTS`] checkpoints.
    fn prune(&self) -> Result<(), CheckpointError> {
        let steps = self.checkpoint_steps()?;
        let excess = steps.len().saturating_sub(KEEP_CHECKPOINTS);
        for step in &steps[..excess] {
            let p = self.checkpoints().join(step.to_string());
            fs::remove_dir_all(&p).map_err(io(&p))?;
        }
        Ok(())
    }

    /// Removes what interrupted writes left (`.tmp-*`, `.old-*`).
    fn clear_temporaries(&self) -> Result<(), CheckpointError> {
        let dir = self.checkpoints();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) || name.starts_with(OLD_PREFIX) {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }
}

/// A new owner-only directory.
fn make_private_dir(dir: &Path) -> Result<(), CheckpointError> {
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(io(dir))
}

/// Writes a new owner-only file and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Reads a file of at most `max` bytes; the size is checked before reading.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len > max {
        return Err(format!("{len} bytes, more than the {max} allowed"));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    Ok(buf)
}
