//! The frame codec of packet streams: a 4-byte big-endian length, then the
//! packet.
//!
//! Every packet has one of the configured lengths (the public size classes);
//! the prefix lets the receiver skip a frame of a wrong length and stay in
//! sync, while a length above the largest class is reported without reading
//! on, since only a broken or hostile peer sends it and reading it would mean
//! buffering what the peer asks for.

use futures::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::SizeClasses;

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// What [`read_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A packet of one of the size classes.
    Packet(Vec<u8>),
    /// A frame of this length, no size class but not above the largest: read
    /// and thrown away (the stream stays in sync).
    Skipped(usize),
    /// A frame of this length, above the largest class: left unread; the
    /// stream must be closed.
    Oversize(usize),
}

/// Why [`read_frame`] returned no frame.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended or failed between frames.
    Closed(std::io::Error),
    /// The stream ended or failed inside a frame.
    Truncated(std::io::Error),
}

/// Reads the next frame. `scratch` is the buffer skipped frames are read
/// into, so a frame of a wrong length costs no allocation.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    sizes: &SizeClasses,
    scratch: &mut [u8],
) -> Result<Frame, ReadError> {
    let mut len_buf = [0u8; PREFIX];
    r.read_exact(&mut len_buf)
        .await
        .map_err(ReadError::Closed)?;
    let len = u32::from_be_bytes(len_buf) as usize;
    if sizes.contains(len) {
        let mut data = vec![0u8; len];
        r.read_exact(&mut data)
            .await
            .map_err(ReadError::Truncated)?;
        return Ok(Frame::Packet(data));
    }
    if len > sizes.largest() {
        return Ok(Frame::Oversize(len));
    }
    let mut one = [0u8; 1];
    let buf: &mut [u8] = if scratch.is_empty() {
        &mut one
    } else {
        scratch
    };
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        r.read_exact(&mut buf[..n])
            .await
            .map_err(ReadError::Truncated)?;
        left -= n;
    }
    Ok(Frame::Skipped(len))
}

/// Writes `batch` as frames back to back, then flushes once.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &[Vec<u8>],
) -> std::io::Result<()> {
    for p in batch {
        let len = u32::try_from(p.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "packet over 4 GiB")
        })?;
        w.write_all(&len.to_be_bytes()).await?;
        w.write_all(p).await?;
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;

    use super::*;

    fn framed(packets: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        block_on(write_frames(&mut out, packets)).unwrap();
        out.into_inner()
    }

    #[test]
    fn frames_round_trip_and_wrong_lengths_are_skipped_in_sync() {
        let sizes = SizeClasses::new(&[4, 8]);
        let bytes = framed(&[vec![1; 4], vec![2; 6], vec![3; 8]]);
        let mut r = Cursor::new(bytes);
        let mut scratch = [0u8; 4];
        let mut next = || block_on(read_frame(&mut r, &sizes, &mut scratch));
        assert_eq!(next().unwrap(), Frame::Packet(vec![1; 4]));
        assert_eq!(next().unwrap(), Frame::Skipped(6));
        assert_eq!(next().unwrap(), Frame::Packet(vec![3; 8]));
        assert!(matches!(next(), Err(ReadError::Closed(_))));
    }

    #[test]
    fn oversize_is_reported_unread_and_truncation_is_told_apart() {
        let sizes = SizeClasses::new(&[4]);
        let mut r = Cursor::new(framed(&[vec![0; 5]]));
        let got = block_on(read_frame(&mut r, &sizes, &mut [0u8; 16]));
        assert_eq!(got.unwrap(), Frame::Oversize(5));
        assert_eq!(r.position(), PREFIX as u64);

        let mut cut = framed(&[vec![9; 4]]);
        cut.pop();
        let got = block_on(read_frame(&mut Cursor::new(cut), &sizes, &mut [0u8; 16]));
        assert!(matches!(got, Err(ReadError::Truncated(_))));
    }
}
