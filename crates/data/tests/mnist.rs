//! The bundled MNIST matches the sanity figures of data/mnist/README.md.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use mixnn_data::{load_mnist, read_idx_images};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

#[test]
fn bundled_mnist_matches_its_readme() {
    let m = load_mnist(&dir()).expect("bundled MNIST loads");
    assert_eq!(
        (m.train.count, m.train.rows, m.train.cols),
        (60_000, 28, 28)
    );
    assert_eq!((m.test.count, m.test.rows, m.test.cols), (10_000, 28, 28));
    assert_eq!(&m.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    let mut counts = [0usize; 10];
    for &l in &m.test.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(
        counts,
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // Scaling is exact: byte / 255 recovers the byte.
    let sum = |v: &[f32]| v.iter().map(|&p| (p * 255.0).round() as u64).sum::<u64>();
    assert_eq!(sum(&m.train.images), 1_567_298_545);
    assert_eq!(sum(&m.test.images), 264_923_200);
    let raw = read_idx_images(&dir().join("t10k-images-idx3-ubyte.gz")).expect("raw");
    assert_eq!(
        raw.pixels.iter().map(|&p| p as u64).sum::<u64>(),
        264_923_200
    );
}
