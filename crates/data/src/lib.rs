//! Data sets for mixnn: MNIST-style IDX files and batching.
//!
//! Training must be reproducible bit for bit across engines and runs, so the
//! data path is deterministic end to end: pixels are scaled to [0, 1] the
//! same way everywhere, and the epoch order is a pure function of
//! (seed, epoch).

mod dataset;
mod idx;

use std::path::PathBuf;

use thiserror::Error;

pub use dataset::{Dataset, Mnist, load_mnist};
pub use idx::{Images, MAX_IDX_BYTES, read_idx_images, read_idx_labels};

/// What can go wrong reading a data set; every variant names the file.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file (under any accepted name) does not exist.
    #[error("data file not found: {}", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
    Missing {
        /// The paths that were tried.
        tried: Vec<PathBuf>,
    },

    /// Reading failed (permissions, corrupt gzip stream...).
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Not an IDX file of the expected kind.
    #[error("{}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} (not an unsigned-byte IDX file of this rank?)", .path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// The file ends before the header or the data it announces.
    #[error("{}: truncated file, missing {what}", .path.display())]
    Truncated { path: PathBuf, what: String },

    /// Bytes follow the announced data (a different or corrupt file).
    #[error("{}: file is longer than its header announces ({expected} data bytes)", .path.display())]
    TrailingData { path: PathBuf, expected: u64 },

    /// The header announces more data than we accept.
    #[error("{}: header dims {dims:?} announce more than {cap} bytes", .path.display())]
    TooLarge {
        path: PathBuf,
        dims: Vec<usize>,
        cap: u64,
    },

    /// Images and labels files disagree on the number of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", .images_path.display(), .labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },

    /// Train and test images have different sizes.
    #[error(
        "train images are {train_rows}x{train_cols} but test images are {test_rows}x{test_cols}"
    )]
    ShapeMismatch {
        train_rows: usize,
        train_cols: usize,
        test_rows: usize,
        test_cols: usize,
    },
}
