//! In-memory data sets, their deterministic epoch order, and batching.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::DataError;
use crate::idx::{read_idx_images, read_idx_labels};

/// Labelled images with pixels scaled to [0, 1] (byte / 255), the scaling
/// the paper's recipe and every engine in mixnn share.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `count * rows * cols` values, image after image, row-major.
    pub images: Vec<f32>,
    /// One class label per image, in image order.
    pub labels: Vec<u8>,
    /// Number of images (and labels).
    pub count: usize,
    /// Pixel rows per image.
    pub rows: usize,
    /// Pixel columns per image.
    pub cols: usize,
}

/// The MNIST (or Fashion-MNIST) train and test sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Mnist {
    /// The training set.
    pub train: Dataset,
    /// The test set.
    pub test: Dataset,
}

impl Dataset {
    /// Builds a data set from raw bytes; `labels` must hold one per image.
    fn from_bytes(
        images_path: &Path,
        images: crate::Images,
        labels_path: &Path,
        labels: Vec<u8>,
    ) -> Result<Dataset, DataError> {
        if images.count != labels.len() {
            return Err(DataError::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: images.count,
                labels_path: labels_path.to_path_buf(),
                labels: labels.len(),
            });
        }
        Ok(Dataset {
            images: images
                .pixels
                .iter()
                .map(|&p| f32::from(p) / 255.0)
                .collect(),
            labels,
            count: images.count,
            rows: images.rows,
            cols: images.cols,
        })
    }

    /// Values per image (`rows * cols`).
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The first `n` samples (all of them if `n >= count`), for quick runs
    /// (`--train-limit`) that still see the same data as a full run's start.
    pub fn subset(&self, n: usize) -> Dataset {
        let n = n.min(self.count);
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            count: n,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// A permutation of `0..count` that depends only on `(seed, epoch)`:
    /// ChaCha8 seeded from `seed`, one stream per epoch, so every run and
    /// every engine visits the samples in the same order, and any epoch's
    /// order can be recomputed alone (resuming from a checkpoint).
    pub fn epoch_order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..self.count).collect();
        order.shuffle(&mut rng);
        order
    }

    /// Gathers samples into one batch: images as `[idx.len(), rows, cols]`
    /// f32 values and labels as i64 (the type ONNX's NLL/Gather inputs use).
    ///
    /// # Panics
    /// If an index is `>= count`: indices come from [`Dataset::epoch_order`]
    /// or the caller's own arithmetic, so this is a programming error.
    pub fn batch(&self, idx: &[usize]) -> (Vec<f32>, Vec<i64>) {
        let len = self.image_len();
        let mut images = Vec::with_capacity(idx.len() * len);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            assert!(
                i < self.count,
                "sample index {i} out of range (data set has {})",
                self.count
            );
            images.extend_from_slice(&self.images[i * len..(i + 1) * len]);
            labels.push(i64::from(self.labels[i]));
        }
        (images, labels)
    }
}

/// `dir/name` if it exists, else `dir/name.gz`; an error naming both if
/// neither does.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if plain.is_file() {
        Ok(plain)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(DataError::Missing {
            tried: vec![plain, gz],
        })
    }
}

fn load_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset, DataError> {
    let ip = find(dir, images)?;
    let lp = find(dir, labels)?;
    let imgs = read_idx_images(&ip)?;
    let labs = read_idx_labels(&lp)?;
    Dataset::from_bytes(&ip, imgs, &lp, labs)
}

/// Loads MNIST or Fashion-MNIST from `dir`, which holds
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each gzipped
/// (`.gz`) or not.
pub fn load_mnist(dir: &Path) -> Result<Mnist, DataError> {
    let train = load_pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let test = load_pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(DataError::ShapeMismatch {
            train_rows: train.rows,
            train_cols: train.cols,
            test_rows: test.rows,
            test_cols: test.cols,
        });
    }
    Ok(Mnist { train, test })
}
