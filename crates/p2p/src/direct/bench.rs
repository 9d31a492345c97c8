//! The pieces of a direct connection, apart, for the hop latency budget
//! (`mixnn bench hop`): a handshaken loopback connection whose sending
//! end seals and writes, and whose receiving end reads and opens, as
//! separate calls so each can be timed.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use snow::StatelessTransportState;

use super::noise::{self, NoiseError, open_packet, seal_packet};

/// The sending end.
pub struct BenchSender {
    stream: TcpStream,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    wire: Vec<u8>,
}

/// The receiving end.
pub struct BenchReceiver {
    stream: TcpStream,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    wire: Vec<u8>,
}

/// Why the loopback connection failed.
#[derive(Debug, thiserror::Error)]
#[error("loopback direct connection: {0}")]
pub struct BenchError(String);

impl BenchError {
    /// An error saying `what` went wrong.
    pub fn new(what: String) -> Self {
        Self(what)
    }
}

impl From<NoiseError> for BenchError {
    fn from(e: NoiseError) -> Self {
        Self(e.to_string())
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

/// A handshaken connection over 127.0.0.1 (Noise XX, as a direct link).
pub fn loopback() -> Result<(BenchSender, BenchReceiver), BenchError> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let kb = noise::builder()?
        .generate_keypair()
        .map_err(NoiseError::from)?;
    let responder = std::thread::spawn(move || -> Result<_, BenchError> {
        let (mut s, _) = l.accept()?;
        noise::tune(&s)?;
        let hs = noise::builder()?
            .local_private_key(&kb.private)
            .and_then(snow::Builder::build_responder)
            .map_err(NoiseError::from)?;
        let (t, _) = noise::handshake(&mut s, hs)?;
        Ok((s, t))
    });
    let ka = noise::builder()?
        .generate_keypair()
        .map_err(NoiseError::from)?;
    let mut c = TcpStream::connect(addr)?;
    noise::tune(&c)?;
    let hs = noise::builder()?
        .local_private_key(&ka.private)
        .and_then(snow::Builder::build_initiator)
        .map_err(NoiseError::from)?;
    let (ta, _) = noise::handshake(&mut c, hs)?;
    let (s, tb) = responder
        .join()
        .map_err(|_| BenchError("responder thread".into()))??;
    s.set_read_timeout(None)?;
    c.set_write_timeout(None)?;
    Ok((
        BenchSender {
            stream: c,
            transport: Arc::new(ta),
            nonce: 0,
            wire: Vec::new(),
        },
        BenchReceiver {
            stream: s,
            transport: Arc::new(tb),
            nonce: 0,
            wire: Vec::new(),
        },
    ))
}

impl BenchSender {
    /// Seals `packet` into the wire buffer (the Noise stage).
    pub fn seal(&mut self, packet: &[u8]) -> Result<(), BenchError> {
        self.wire.clear();
        Ok(seal_packet(
            &self.transport,
            &mut self.nonce,
            packet,
            &mut self.wire,
        )?)
    }

    /// Writes the sealed bytes (the send stage).
    pub fn write(&mut self) -> Result<(), BenchError> {
        Ok(self.stream.write_all(&self.wire)?)
    }
}

impl BenchReceiver {
    /// Reads the wire bytes of a packet of `len` bytes (the receive stage:
    /// waiting for them included).
    pub fn read(&mut self, len: usize) -> Result<(), BenchError> {
        self.wire.resize(noise::wire_len(len), 0);
        Ok(self.stream.read_exact(&mut self.wire)?)
    }

    /// Opens the bytes read into `out` (the Noise stage).
    pub fn open(&mut self, out: &mut Vec<u8>) -> Result<(), BenchError> {
        Ok(open_packet(
            &self.transport,
            &mut self.nonce,
            &self.wire,
            out,
        )?)
    }
}
