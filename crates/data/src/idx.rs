//! The IDX file format of MNIST and Fashion-MNIST.
//!
//! An IDX file is a 4-byte magic (two zero bytes, the element type, the
//! number of dimensions), one big-endian u32 per dimension, then the data.
//! Files may be gzipped; we detect that by the gzip magic (1f 8b), not by the
//! file name, because people rename and decompress files freely.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::DataError;

/// Element type code of unsigned bytes, the only one MNIST uses.
const UBYTE: u8 = 0x08;

/// Largest data payload we accept from one file (1 GiB). MNIST's largest
/// file is 47 MB; the cap keeps a hostile header (or a small gzip file that
/// inflates to an honest but huge header's worth) from asking for more. A
/// data set holds its images as f32, four times the bytes, so the cap is
/// what bounds a run's memory: at most 5 GiB while the file is converted.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Decoded IDX3 file: `count` images of `rows` x `cols` grey levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// Number of images.
    pub count: usize,
    /// Pixel rows per image.
    pub rows: usize,
    /// Pixel columns per image.
    pub cols: usize,
    /// `count * rows * cols` bytes, image after image, row-major.
    pub pixels: Vec<u8>,
}

/// Reads an IDX3 unsigned-byte image file (gzipped or plain).
pub fn read_idx_images(path: &Path) -> Result<Images, DataError> {
    let (dims, pixels) = read_idx(path, 3)?;
    Ok(Images {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels,
    })
}

/// Reads an IDX1 unsigned-byte label file (gzipped or plain).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let (_, labels) = read_idx(path, 1)?;
    Ok(labels)
}

/// Opens a file, transparently gunzipping it if it starts with 1f 8b.
fn open(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = file.read(&mut magic[got..]).map_err(io)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let chained = head.chain(file);
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(GzDecoder::new(chained)))
    } else {
        Ok(Box::new(chained))
    }
}

/// Reads exactly `buf.len()` bytes or reports how many were there.
fn read_full(r: &mut dyn Read, buf: &mut [u8], path: &Path) -> Result<usize, DataError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(DataError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(got)
}

/// Reads an unsigned-byte IDX file with `rank` dimensions; returns the dims
/// and the data, checking the magic, the size and that nothing follows.
fn read_idx(path: &Path, rank: u8) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let mut r = open(path)?;
    let truncated = |what: String| DataError::Truncated {
        path: path.to_path_buf(),
        what,
    };
    let mut magic = [0u8; 4];
    if read_full(&mut *r, &mut magic, path)? < 4 {
        return Err(truncated("the 4-byte magic number".into()));
    }
    let expected = [0, 0, UBYTE, rank];
    if magic != expected {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: u32::from_be_bytes(magic),
            expected: u32::from_be_bytes(expected),
        });
    }
    let mut dims = Vec::with_capacity(rank as usize);
    for i in 0..rank {
        let mut d = [0u8; 4];
        if read_full(&mut *r, &mut d, path)? < 4 {
            return Err(truncated(format!("dimension {i} of the header")));
        }
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let size = dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
    if size > MAX_IDX_BYTES {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            dims,
            cap: MAX_IDX_BYTES,
        });
    }
    // No preallocation from the header: a lying header on a short file
    // only costs what the file really holds.
    let mut data = Vec::new();
    let read = r
        .by_ref()
        .take(size)
        .read_to_end(&mut data)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if (read as u64) < size {
        return Err(truncated(format!(
            "data: header {dims:?} announces {size} bytes, the file holds {read}"
        )));
    }
    let mut extra = [0u8; 1];
    if read_full(&mut *r, &mut extra, path)? != 0 {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            expected: size,
        });
    }
    Ok((dims, data))
}
