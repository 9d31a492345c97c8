//! The frame codec of packet streams: a 4-byte big-endian length, then the
//! packet.
//!
//! Every packet has one of the configured lengths (the public size classes);
//! the prefix lets the receiver skip a frame of a wrong length and stay in
//! sync, while a length above the largest class is reported without reading
//! on, since only a broken or hostile peer sends it and reading it would mean
//! buffering what the peer asks for.
//!
//! A 4-byte length costs the sender nothing, so the reader allocates a
//! packet buffer only after the inbound byte budget admitted its length
//! ([`Frame::Refused`] otherwise: the frame is read into the scratch buffer
//! and thrown away), and once a frame has begun the rest of it must arrive
//! within the frame deadline ([`ReadError::Stalled`]): a peer that sends
//! half a frame and stops holds neither budget nor a reader for long.

use std::time::Duration;

use futures::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{Budget, SizeClasses};

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// What [`read_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A packet of one of the size classes; its length is taken from the
    /// budget (the receiver gives it back).
    Packet(Vec<u8>),
    /// A frame of this length, no size class but not above the largest: read
    /// and thrown away (the stream stays in sync).
    Skipped(usize),
    /// A frame of a size class that the budget did not admit: read into the
    /// scratch buffer and thrown away, nothing allocated.
    Refused(usize),
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
    /// A frame began but did not end within the frame deadline.
    Stalled,
}

/// How a reader admits frames: the byte budget a packet's buffer is taken
/// from, and how long the rest of a frame may take once its first byte came.
pub(super) struct Admission<'a> {
    /// The inbound byte budget.
    pub(super) budget: &'a Budget,
    /// Deadline for the rest of a frame after its first byte.
    pub(super) deadline: Duration,
}

/// Reads the next frame. `scratch` is the buffer skipped and refused frames
/// are read into, so a frame of a wrong length or over budget costs no
/// allocation. Waiting for a frame's first byte has no deadline (a link is
/// idle between packets); the rest of the frame has `admit.deadline`.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    sizes: &SizeClasses,
    scratch: &mut [u8],
    admit: &Admission<'_>,
) -> Result<Frame, ReadError> {
    let mut len_buf = [0u8; PREFIX];
    r.read_exact(&mut len_buf[..1])
        .await
        .map_err(ReadError::Closed)?;
    match tokio::time::timeout(admit.deadline, read_rest(r, sizes, scratch, admit, len_buf)).await {
        Ok(frame) => frame,
        Err(_) => Err(ReadError::Stalled),
    }
}

/// The rest of a frame whose first prefix byte is in `len_buf[0]`.
async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    sizes: &SizeClasses,
    scratch: &mut [u8],
    admit: &Admission<'_>,
    mut len_buf: [u8; PREFIX],
) -> Result<Frame, ReadError> {
    r.read_exact(&mut len_buf[1..])
        .await
        .map_err(ReadError::Truncated)?;
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > sizes.largest() {
        return Ok(Frame::Oversize(len));
    }
    if sizes.contains(len) {
        if let Some(held) = admit.budget.hold(len) {
            // Given back if the read fails or is cut at the deadline.
            let mut data = vec![0u8; len];
            r.read_exact(&mut data)
                .await
                .map_err(ReadError::Truncated)?;
            held.keep();
            return Ok(Frame::Packet(data));
        }
        skip(r, len, scratch).await?;
        return Ok(Frame::Refused(len));
    }
    skip(r, len, scratch).await?;
    Ok(Frame::Skipped(len))
}

/// Reads `len` bytes into `scratch` (or a byte at a time without one) and
/// throws them away.
async fn skip<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    scratch: &mut [u8],
) -> Result<(), ReadError> {
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
    Ok(())
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
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::io::Cursor;

    use super::*;

    fn framed(packets: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        futures::executor::block_on(write_frames(&mut out, packets)).unwrap();
        out.into_inner()
    }

    const DEADLINE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn frames_round_trip_and_wrong_lengths_are_skipped_in_sync() {
        let sizes = SizeClasses::new(&[4, 8]);
        let budget = Budget::new(1 << 20);
        let admit = Admission {
            budget: &budget,
            deadline: DEADLINE,
        };
        let bytes = framed(&[vec![1; 4], vec![2; 6], vec![3; 8]]);
        let mut r = Cursor::new(bytes);
        let mut scratch = [0u8; 4];
        let got = read_frame(&mut r, &sizes, &mut scratch, &admit).await;
        assert_eq!(got.unwrap(), Frame::Packet(vec![1; 4]));
        let got = read_frame(&mut r, &sizes, &mut scratch, &admit).await;
        assert_eq!(got.unwrap(), Frame::Skipped(6));
        let got = read_frame(&mut r, &sizes, &mut scratch, &admit).await;
        assert_eq!(got.unwrap(), Frame::Packet(vec![3; 8]));
        assert_eq!(
            budget.used(),
            12,
            "each packet holds its length of the budget"
        );
        let got = read_frame(&mut r, &sizes, &mut scratch, &admit).await;
        assert!(matches!(got, Err(ReadError::Closed(_))));
    }

    #[tokio::test]
    async fn oversize_is_reported_unread_and_truncation_is_told_apart() {
        let sizes = SizeClasses::new(&[4]);
        let budget = Budget::new(1 << 20);
        let admit = Admission {
            budget: &budget,
            deadline: DEADLINE,
        };
        let mut r = Cursor::new(framed(&[vec![0; 5]]));
        let got = read_frame(&mut r, &sizes, &mut [0u8; 16], &admit).await;
        assert_eq!(got.unwrap(), Frame::Oversize(5));
        assert_eq!(r.position(), PREFIX as u64);

        let mut cut = framed(&[vec![9; 4]]);
        cut.pop();
        let got = read_frame(&mut Cursor::new(cut), &sizes, &mut [0u8; 16], &admit).await;
        assert!(matches!(got, Err(ReadError::Truncated(_))));
        assert_eq!(budget.used(), 0, "a truncated frame gives its budget back");
    }

    /// A hostile peer claims a 1 MiB packet (a valid class) while the
    /// budget has room for less: nothing is allocated or taken, the frame is
    /// skipped through the scratch buffer and the stream stays in sync.
    #[tokio::test]
    async fn a_claimed_length_over_budget_allocates_nothing() {
        const BIG: usize = 1 << 20;
        let sizes = SizeClasses::new(&[4, BIG as u32]);
        let budget = Budget::new(BIG - 1);
        let admit = Admission {
            budget: &budget,
            deadline: DEADLINE,
        };
        let mut r = Cursor::new(framed(&[vec![7; BIG], vec![1; 4]]));
        let mut scratch = [0u8; 1024];
        let got = read_frame(&mut r, &sizes, &mut scratch, &admit).await;
        assert_eq!(got.unwrap(), Frame::Refused(BIG));
        assert_eq!(budget.used(), 0);
        let got = read_frame(&mut r, &sizes, &mut scratch, &admit).await;
        assert_eq!(got.unwrap(), Frame::Packet(vec![1; 4]));
    }

    /// Yields its bytes, then never again (a peer that stopped mid-frame).
    struct Stalls(Cursor<Vec<u8>>);

    impl AsyncRead for Stalls {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.0.position() as usize == self.0.get_ref().len() {
                return Poll::Pending;
            }
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    /// Half a frame, then silence: the reader is cut at the frame deadline
    /// and the budget the frame held is given back.
    #[tokio::test]
    async fn a_half_frame_is_cut_at_the_deadline() {
        let sizes = SizeClasses::new(&[64]);
        let budget = Budget::new(1 << 20);
        let admit = Admission {
            budget: &budget,
            deadline: Duration::from_millis(200),
        };
        let mut half = framed(&[vec![5; 64]]);
        half.truncate(PREFIX + 32);
        let mut r = Stalls(Cursor::new(half));
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            read_frame(&mut r, &sizes, &mut [0u8; 16], &admit),
        )
        .await
        .expect("the reader must not wait for the rest forever");
        assert!(matches!(got, Err(ReadError::Stalled)));
        assert_eq!(budget.used(), 0);
    }
}
