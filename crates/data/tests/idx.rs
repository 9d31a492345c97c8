//! IDX reading on small hand-made files: plain and gzipped, and every
//! malformed case with an error naming the file.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use mixnn_data::{DataError, Dataset, MAX_IDX_BYTES, load_mnist, read_idx_images, read_idx_labels};

fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, rank];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

/// 3 images of 2x3 with pixels 0..18, and labels 7 8 9.
fn images_bytes() -> Vec<u8> {
    idx(3, &[3, 2, 3], &(0u8..18).collect::<Vec<_>>())
}
fn labels_bytes() -> Vec<u8> {
    idx(1, &[3], &[7, 8, 9])
}

#[test]
fn plain_and_gzipped_read_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = read_idx_images(&write(dir.path(), "a", &images_bytes())).expect("plain");
    assert_eq!((plain.count, plain.rows, plain.cols), (3, 2, 3));
    assert_eq!(plain.pixels, (0u8..18).collect::<Vec<_>>());
    // Detected by magic, not by name: gz content without .gz, plain with .gz.
    let g = read_idx_images(&write(dir.path(), "b", &gz(&images_bytes()))).expect("gz");
    assert_eq!(g, plain);
    let p = read_idx_images(&write(dir.path(), "c.gz", &images_bytes())).expect("plain .gz");
    assert_eq!(p, plain);
    let l = read_idx_labels(&write(dir.path(), "l.gz", &gz(&labels_bytes()))).expect("labels");
    assert_eq!(l, vec![7, 8, 9]);
}

#[test]
fn wrong_magic_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "labels-as-images", &labels_bytes());
    let e = read_idx_images(&p).expect_err("labels are not images");
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("labels-as-images") && msg.contains("magic"),
        "{msg}"
    );
    let p = write(dir.path(), "text.gz", &gz(b"hello, world, not idx"));
    assert!(matches!(
        read_idx_labels(&p),
        Err(DataError::BadMagic { .. })
    ));
}

#[test]
fn truncated_and_oversized_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = images_bytes();
    for n in [0, 3, 9, 15, full.len() - 1] {
        let p = write(dir.path(), &format!("t{n}"), &full[..n]);
        let e = read_idx_images(&p).expect_err("truncated");
        assert!(matches!(e, DataError::Truncated { .. }), "{n}: {e}");
        assert!(e.to_string().contains(&format!("t{n}")), "{e}");
        // The same through gzip.
        let p = write(dir.path(), &format!("t{n}.gz"), &gz(&full[..n]));
        assert!(matches!(
            read_idx_images(&p),
            Err(DataError::Truncated { .. })
        ));
    }
    let msg = read_idx_images(&write(dir.path(), "short", &full[..full.len() - 1]))
        .expect_err("short")
        .to_string();
    assert!(
        msg.contains("announces 18 bytes, the file holds 17"),
        "{msg}"
    );
    // A cut gzip stream is an error too, never a silent short read.
    let z = gz(&full);
    assert!(read_idx_images(&write(dir.path(), "cutgz", &z[..z.len() - 6])).is_err());
    // Extra bytes after the data.
    let mut long = full.clone();
    long.push(0);
    let e = read_idx_images(&write(dir.path(), "long", &long)).expect_err("trailing");
    assert!(matches!(e, DataError::TrailingData { .. }), "{e}");
    // A header announcing 2^96 bytes on a tiny file.
    let huge = idx(3, &[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3]);
    let e = read_idx_images(&write(dir.path(), "huge", &huge)).expect_err("huge");
    assert!(matches!(e, DataError::TooLarge { .. }), "{e}");
    // A header announcing the cap on a tiny file: no allocation up front.
    let big = idx(1, &[MAX_IDX_BYTES as u32], &[1, 2, 3]);
    let e = read_idx_labels(&write(dir.path(), "big", &big)).expect_err("big");
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    // One byte past the cap (4 GiB - 1, which a u32 dimension allows): refused
    // from the header, before a byte of data is read or inflated.
    for n in [MAX_IDX_BYTES as u32 + 1, u32::MAX] {
        let past = gz(&idx(1, &[n], &[1, 2, 3]));
        let e = read_idx_labels(&write(dir.path(), "past", &past)).expect_err("past");
        assert!(matches!(e, DataError::TooLarge { .. }), "{e}");
    }
}

fn mnist_dir(dir: &Path, train_labels: &[u8], gzipped: bool) {
    let (i, l) = (
        images_bytes(),
        idx(1, &[train_labels.len() as u32], train_labels),
    );
    let files = [
        ("train-images-idx3-ubyte", i.clone()),
        ("train-labels-idx1-ubyte", l),
        ("t10k-images-idx3-ubyte", i),
        ("t10k-labels-idx1-ubyte", labels_bytes()),
    ];
    for (name, bytes) in files {
        if gzipped {
            write(dir, &format!("{name}.gz"), &gz(&bytes));
        } else {
            write(dir, name, &bytes);
        }
    }
}

#[test]
fn load_mnist_accepts_either_name_and_checks_counts() {
    for gzipped in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        mnist_dir(dir.path(), &[1, 2, 3], gzipped);
        let m = load_mnist(dir.path()).expect("load");
        assert_eq!(m.train.count, 3);
        assert_eq!(m.test.labels, vec![7, 8, 9]);
        assert_eq!(m.train.images.len(), 18);
        assert_eq!(m.train.images[17], 17.0 / 255.0);
        assert!(m.train.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    mnist_dir(dir.path(), &[1, 2], false);
    let e = load_mnist(dir.path()).expect_err("3 images, 2 labels");
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("train-labels-idx1-ubyte"), "{e}");
}

#[test]
fn missing_files_name_the_paths_tried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = load_mnist(dir.path()).expect_err("empty dir");
    assert!(matches!(e, DataError::Missing { .. }));
    let msg = e.to_string();
    let want = dir.path().join("train-images-idx3-ubyte");
    assert!(
        msg.contains(&*want.to_string_lossy()) && msg.contains(".gz"),
        "{msg}"
    );
    let e = read_idx_labels(&dir.path().join("nope")).expect_err("missing");
    assert!(e.to_string().contains("nope"), "{e}");
}

fn toy(count: usize) -> Dataset {
    Dataset {
        images: (0..count * 4).map(|v| v as f32).collect(),
        labels: (0..count).map(|v| (v % 10) as u8).collect(),
        count,
        rows: 2,
        cols: 2,
    }
}

#[test]
fn epoch_order_is_a_deterministic_permutation() {
    let d = toy(1000);
    let a = d.epoch_order(42, 0);
    assert_eq!(a, d.epoch_order(42, 0));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(a, (0..1000).collect::<Vec<_>>());
    assert_ne!(a, d.epoch_order(42, 1));
    assert_ne!(a, d.epoch_order(43, 0));
    assert!(toy(0).epoch_order(1, 0).is_empty());
}

#[test]
fn subset_and_batch() {
    let d = toy(10);
    let s = d.subset(3);
    assert_eq!((s.count, s.labels.len(), s.images.len()), (3, 3, 12));
    assert_eq!(d.subset(99), d);
    let (x, y) = d.batch(&[4, 1]);
    assert_eq!(x, vec![16.0, 17.0, 18.0, 19.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(y, vec![4i64, 1]);
    let (x, y) = d.batch(&[]);
    assert!(x.is_empty() && y.is_empty());
}
