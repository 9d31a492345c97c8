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
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O or gzip error.
        #[source]
        source: std::io::Error,
    },

    /// Not an IDX file of the expected kind.
    #[error("{}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} (not an unsigned-byte IDX file of this rank?)", .path.display())]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// The magic number the file starts with.
        found: u32,
        /// The magic of an unsigned-byte IDX file of the expected rank.
        expected: u32,
    },

    /// The file ends before the header or the data it announces.
    #[error("{}: truncated file, missing {what}", .path.display())]
    Truncated {
        /// The truncated file.
        path: PathBuf,
        /// What is missing (the magic number, a header dimension, or data bytes).
        what: String,
    },

    /// Bytes follow the announced data (a different or corrupt file).
    #[error("{}: file is longer than its header announces ({expected} data bytes)", .path.display())]
    TrailingData {
        /// The over-long file.
        path: PathBuf,
        /// Data bytes the header announces.
        expected: u64,
    },

    /// The header announces more data than we accept.
    #[error("{}: header dims {dims:?} announce more than {cap} bytes", .path.display())]
    TooLarge {
        /// The file being read.
        path: PathBuf,
        /// The dimensions the header announces.
        dims: Vec<usize>,
        /// The largest accepted payload in bytes ([`MAX_IDX_BYTES`]).
        cap: u64,
    },

    /// Images and labels files disagree on the number of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", .images_path.display(), .labels_path.display())]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Number of images it holds.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Number of labels it holds.
        labels: usize,
    },

    /// Train and test images have different sizes.
    #[error(
        "train images are {train_rows}x{train_cols} but test images are {test_rows}x{test_cols}"
    )]
    ShapeMismatch {
        /// Pixel rows of a training image.
        train_rows: usize,
        /// Pixel columns of a training image.
        train_cols: usize,
        /// Pixel rows of a test image.
        test_rows: usize,
        /// Pixel columns of a test image.
        test_cols: usize,
    },
}
