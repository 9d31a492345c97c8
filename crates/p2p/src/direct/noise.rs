//! Noise on a direct connection: the XX handshake and the packet framing.
//!
//! Every message on the socket is a 2-byte big-endian length and a Noise
//! message of at most 65535 bytes, as libp2p's Noise frames them. A packet
//! is one small header message (its length, 4 bytes big-endian) followed
//! by its bytes in messages of at most [`CHUNK`] plaintext bytes each, so
//! a packet of the largest class is a few messages and one `write` call.
//! Nonces are counted per direction by whoever owns that direction (the
//! writer under its lock, the reader thread), so the transport state is
//! shared without a lock ([`snow::StatelessTransportState`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use snow::{HandshakeState, StatelessTransportState};

/// The Noise protocol of direct connections: the XX pattern with
/// AES-256-GCM, the packet path's fastest AEAD on CPUs with AES
/// instructions (PROTOCOL.md §15 and §2: every crossing seals and opens
/// a whole packet on its link).
pub(crate) const PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";
/// Largest Noise message.
pub(crate) const MAX_MSG: usize = 65535;
/// AEAD tag (GCM's, as Poly1305's, is 16 bytes).
const TAG: usize = 16;
/// Plaintext bytes per data message.
pub(crate) const CHUNK: usize = MAX_MSG - TAG;
/// Plaintext of the header message: the packet length.
const HEADER: usize = 4;
/// How long each handshake message may take; the whole handshake (three
/// messages) must end within three times this.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a direct connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoiseError {
    /// The socket failed or ended.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// A message did not decrypt or the handshake broke.
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    /// The peer broke the framing (a message of a length the protocol
    /// never sends).
    #[error("framing: {0}")]
    Framing(&'static str),
}

/// Socket buffers of a direct connection, each way: a few packets of the
/// largest class. Why set them: Linux starts a send buffer at 16 KiB and
/// grows it only as the connection proves itself, so a 64 KiB packet's
/// `write` would wait for the neighbour to read; with room for whole
/// packets the writer returns once the kernel has the bytes.
const SOCKET_BUFFER: usize = 4 << 20;

/// Sets a connected socket up for packets: no Nagle delay, buffers of
/// [`SOCKET_BUFFER`] (the kernel caps them at its maximum).
pub(crate) fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let r = socket2::SockRef::from(s);
    r.set_send_buffer_size(SOCKET_BUFFER)?;
    r.set_recv_buffer_size(SOCKET_BUFFER)
}

/// Builder for this process's direct-plane key pair and handshakes.
pub(crate) fn builder() -> Result<snow::Builder<'static>, NoiseError> {
    let params = PATTERN
        .parse()
        .map_err(|_| NoiseError::Framing("noise pattern"))?;
    Ok(snow::Builder::new(params))
}

fn write_msg(s: &mut TcpStream, msg: &[u8]) -> Result<(), NoiseError> {
    let len = u16::try_from(msg.len()).map_err(|_| NoiseError::Framing("message too long"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out)?;
    Ok(())
}

/// Fills `buf` from `s`, failing once `by` has passed with bytes still
/// missing. Why not the socket's read timeout alone: it bounds each `read`
/// call, so a peer that sends one byte just before each timeout could hold
/// a connection (its thread, its slot, a packet's queue budget) for as
/// long as it likes. The timeout still ends a read that gets nothing.
fn read_exact_by(s: &mut TcpStream, buf: &mut [u8], by: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if at < buf.len() && Instant::now() >= by {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer sends too slowly: deadline passed mid-message",
            ));
        }
    }
    Ok(())
}

fn read_msg<'a>(s: &mut TcpStream, buf: &'a mut [u8], by: Instant) -> Result<&'a [u8], NoiseError> {
    let mut len = [0u8; 2];
    read_exact_by(s, &mut len, by)?;
    let n = usize::from(u16::from_be_bytes(len));
    let buf = buf
        .get_mut(..n)
        .ok_or(NoiseError::Framing("message too long"))?;
    read_exact_by(s, buf, by)?;
    Ok(buf)
}

/// Runs the XX handshake on `s` (each message under
/// [`HANDSHAKE_TIMEOUT`]); returns the transport and the peer's static key.
pub(crate) fn handshake(
    s: &mut TcpStream,
    mut hs: HandshakeState,
) -> Result<(StatelessTransportState, [u8; 32]), NoiseError> {
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let by = Instant::now() + 3 * HANDSHAKE_TIMEOUT;
    let mut msg = vec![0u8; 1024];
    let mut scratch = vec![0u8; 1024];
    // XX: -> e; <- e, ee, s, es; -> s, se.
    let mut mine = hs.is_initiator();
    while !hs.is_handshake_finished() {
        if mine {
            let n = hs.write_message(&[], &mut msg)?;
            write_msg(s, &msg[..n])?;
        } else {
            let m = read_msg(s, &mut msg, by)?;
            hs.read_message(m, &mut scratch)?;
        }
        mine = !mine;
    }
    let remote: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(NoiseError::Framing("no remote static key"))?;
    Ok((hs.into_stateless_transport_mode()?, remote))
}

/// Appends `packet` to `out` as Noise messages (header, then chunks),
/// advancing `nonce` by one per message.
pub(crate) fn seal_packet(
    t: &StatelessTransportState,
    nonce: &mut u64,
    packet: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), NoiseError> {
    let len = u32::try_from(packet.len()).map_err(|_| NoiseError::Framing("packet too long"))?;
    let header = len.to_be_bytes();
    for part in std::iter::once(&header[..]).chain(packet.chunks(CHUNK)) {
        let at = out.len();
        let n = part.len() + TAG;
        out.resize(at + 2 + n, 0);
        out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
        t.write_message(*nonce, part, &mut out[at + 2..])?;
        *nonce += 1;
    }
    Ok(())
}

/// Bytes on the socket for a packet of `len` bytes.
pub fn wire_len(len: usize) -> usize {
    2 + HEADER + TAG + len.div_ceil(CHUNK) * (2 + TAG) + len
}

/// Decrypts a packet from the bytes [`seal_packet`] wrote (the budget
/// bench reads them off the socket first, to time the two apart).
pub(crate) fn open_packet(
    t: &StatelessTransportState,
    nonce: &mut u64,
    wire: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), NoiseError> {
    let mut at = 0;
    let mut next = |out: &mut [u8]| -> Result<usize, NoiseError> {
        let len = wire
            .get(at..at + 2)
            .ok_or(NoiseError::Framing("truncated"))?;
        let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let msg = wire
            .get(at + 2..at + 2 + n)
            .ok_or(NoiseError::Framing("truncated"))?;
        at += 2 + n;
        let k = t.read_message(*nonce, msg, out)?;
        *nonce += 1;
        Ok(k)
    };
    let mut header = [0u8; HEADER];
    next(&mut header)?;
    let len = u32::from_be_bytes(header) as usize;
    out.resize(len, 0);
    let mut done = 0;
    while done < len {
        let want = CHUNK.min(len - done);
        if next(&mut out[done..done + want])? != want {
            return Err(NoiseError::Framing("chunk of a wrong length"));
        }
        done += want;
    }
    Ok(())
}

/// The receiving end of a connection: its socket, transport, nonce and a
/// message buffer.
pub(crate) struct Opener {
    pub(crate) stream: TcpStream,
    pub(crate) transport: std::sync::Arc<StatelessTransportState>,
    nonce: u64,
    msg: Vec<u8>,
    /// When the packet being read must be complete (set by
    /// [`next_len`](Self::next_len)).
    by: Instant,
}

impl Opener {
    /// A reader of `stream` with `transport`'s receiving direction.
    pub(crate) fn new(
        stream: TcpStream,
        transport: std::sync::Arc<StatelessTransportState>,
    ) -> Self {
        Self {
            stream,
            transport,
            nonce: 0,
            msg: vec![0u8; MAX_MSG],
            by: Instant::now(),
        }
    }

    /// Reads one message of exactly `want` plaintext bytes (any length up
    /// to [`CHUNK`] when `want` is `None`) and decrypts it into `out`;
    /// returns the plaintext length.
    fn open_msg(&mut self, out: &mut [u8], want: Option<usize>) -> Result<usize, NoiseError> {
        let mut len = [0u8; 2];
        read_exact_by(&mut self.stream, &mut len, self.by)?;
        let n = usize::from(u16::from_be_bytes(len));
        if n < TAG || want.is_some_and(|w| n != w + TAG) || n - TAG > out.len() {
            return Err(NoiseError::Framing("message of a wrong length"));
        }
        let m = &mut self.msg[..n];
        read_exact_by(&mut self.stream, m, self.by)?;
        let k = self.transport.read_message(self.nonce, m, out)?;
        self.nonce += 1;
        Ok(k)
    }

    /// Waits (without a deadline) for the next packet's header and returns
    /// the packet length it announces; the rest of the packet must follow
    /// within `deadline`.
    pub(crate) fn next_len(&mut self, deadline: Duration) -> Result<usize, NoiseError> {
        self.stream.set_read_timeout(None)?;
        let mut first = [0u8; 1];
        self.stream.read_exact(&mut first)?;
        self.stream.set_read_timeout(Some(deadline))?;
        self.by = Instant::now() + deadline;
        let mut second = [0u8; 1];
        read_exact_by(&mut self.stream, &mut second, self.by)?;
        let n = usize::from(u16::from_be_bytes([first[0], second[0]]));
        if n != HEADER + TAG {
            return Err(NoiseError::Framing("packet header of a wrong length"));
        }
        let m = &mut self.msg[..n];
        read_exact_by(&mut self.stream, m, self.by)?;
        let mut header = [0u8; HEADER];
        self.transport.read_message(self.nonce, m, &mut header)?;
        self.nonce += 1;
        Ok(u32::from_be_bytes(header) as usize)
    }

    /// Reads and decrypts the packet body announced by [`next_len`](Self::next_len)
    /// into `out` (exactly the announced length).
    pub(crate) fn body(&mut self, out: &mut [u8]) -> Result<(), NoiseError> {
        let total = out.len();
        let mut at = 0;
        while at < total {
            let want = CHUNK.min(total - at);
            self.open_msg(&mut out[at..at + want], Some(want))?;
            at += want;
        }
        Ok(())
    }

    /// Reads and throws away a packet body of `len` bytes (a length that is
    /// no size class), keeping the stream in sync.
    pub(crate) fn skip(&mut self, len: usize) -> Result<(), NoiseError> {
        let mut scratch = vec![0u8; CHUNK.min(len)];
        let mut left = len;
        while left > 0 {
            let want = CHUNK.min(left);
            self.open_msg(&mut scratch[..want], Some(want))?;
            left -= want;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A peer that trickles bytes, each well within the socket's read
    /// timeout, is cut off once the message's deadline passes, instead of
    /// holding the reader for as long as it keeps trickling.
    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut r, _) = l.accept().unwrap();
        r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..40 {
                if w.write_all(&[1]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let mut buf = [0u8; 40];
        let by = Instant::now() + Duration::from_millis(200);
        let e = read_exact_by(&mut r, &mut buf, by).expect_err("cut off");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(r);
        writer.join().unwrap();
        // Bytes that arrive in time are read whole.
        let mut w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut r, _) = l.accept().unwrap();
        w.write_all(&[7; 40]).unwrap();
        let by = Instant::now() + Duration::from_secs(30);
        read_exact_by(&mut r, &mut buf, by).unwrap();
        assert_eq!(buf, [7; 40]);
    }

    /// One end after the handshake: its transport and the peer's key.
    type End = (StatelessTransportState, [u8; 32]);

    /// A handshake state with the static key `private`.
    fn state(private: &[u8], initiator: bool) -> HandshakeState {
        let b = builder().unwrap().local_private_key(private).unwrap();
        if initiator {
            b.build_initiator().unwrap()
        } else {
            b.build_responder().unwrap()
        }
    }

    /// Both ends, their sockets, and the two public keys.
    fn pair() -> (End, End, TcpStream, TcpStream, [u8; 32], [u8; 32]) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ka = builder().unwrap().generate_keypair().unwrap();
        let kb = builder().unwrap().generate_keypair().unwrap();
        let (pa, pb) = (ka.public.clone(), kb.public.clone());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let r = handshake(&mut s, state(&kb.private, false)).unwrap();
            (r, s)
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let a = handshake(&mut c, state(&ka.private, true)).unwrap();
        let (b, s) = t.join().unwrap();
        (a, b, c, s, pa.try_into().unwrap(), pb.try_into().unwrap())
    }

    /// Each side learns the other's static key; packets of several
    /// lengths (one, a few and many messages) arrive intact, and a
    /// flipped bit is refused.
    #[test]
    fn packets_cross_a_handshaken_connection_and_tampering_is_refused() {
        let ((ta, ra), (tb, rb), mut ca, sb, pa, pb) = pair();
        assert_eq!(ra, pb);
        assert_eq!(rb, pa);
        let mut opener = Opener::new(sb, Arc::new(tb));
        let mut nonce = 0;
        for len in [1usize, 2048, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 1 << 20] {
            let packet: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut out = Vec::new();
            seal_packet(&ta, &mut nonce, &packet, &mut out).unwrap();
            ca.write_all(&out).unwrap();
            let n = opener.next_len(Duration::from_secs(5)).unwrap();
            assert_eq!(n, len);
            let mut got = vec![0u8; n];
            opener.body(&mut got).unwrap();
            assert_eq!(got, packet);
        }
        let mut out = Vec::new();
        seal_packet(&ta, &mut nonce, &[9u8; 100], &mut out).unwrap();
        let last = out.len() - 1;
        out[last] ^= 1;
        ca.write_all(&out).unwrap();
        assert_eq!(opener.next_len(Duration::from_secs(5)).unwrap(), 100);
        let mut got = vec![0u8; 100];
        assert!(matches!(opener.body(&mut got), Err(NoiseError::Noise(_))));
    }
}
