//! The pipelined test phase: up to W test batches in flight at once.
//!
//! A training step must wait for its answer (the next step needs the
//! weights it changed), but the test phase changes no weight, so its
//! batches are independent: while batch i crosses hop 3, batch i+1 can
//! cross hop 2. One at a time, every hop but one idles; with W in flight
//! the cascade works like an assembly line and the test phase is bounded by
//! its slowest hop instead of the sum of all hops and links.
//!
//! Each batch is its own packet of the job's one length, built exactly as
//! the sequential phase builds it (`exchange`), with its own exit id; the
//! answers come back in any order and are matched to their batch by that
//! id, so every output is the sequential phase's, bit for bit. The table
//! of batches in flight never holds more than W entries. Fault detection
//! still holds per packet: each one has its own deadline, its send time
//! plus the measured bound of its kind (`Kind::Window`, measured apart from
//! one-at-a-time test messages because its answer time includes the wait
//! behind the batches ahead of it), so a lost answer is noticed even while
//! the others keep arriving; a closed link to an end fails at once.

use std::time::{Duration, Instant};

use mixnn_layer::Tensor;
use mixnn_protocol::job::WireTensor;
use mixnn_sphinx::Op;

use super::detect::Kind;
use super::endpoint::Received;
use super::onion::{self, Sent};
use super::{PoolCascade, PoolError, describe_role, describe_slot};
use crate::DesignerError;

/// Most batches a test phase may keep in flight: far more than a cascade
/// of at most 16 hops can overlap, and a bound on the designer's table and
/// on the packets queued at the first hop.
pub const MAX_TEST_WINDOW: usize = 64;

/// A test batch in flight.
struct InFlight {
    /// The batch's index in the stream.
    index: usize,
    sent: Sent,
    start: Instant,
    /// Its detection bound and how it was set, for the error.
    bound: Duration,
    rule: String,
    batch: usize,
}

impl PoolCascade {
    /// Test batches kept in flight by [`crate::Model::infer_stream`]
    /// (1: one at a time, the sequential phase).
    pub fn test_window(&self) -> usize {
        self.test_window
    }

    /// Sets how many test batches [`crate::Model::infer_stream`] keeps in
    /// flight, clamped to `1..=`[`MAX_TEST_WINDOW`]. A verified job
    /// (`--verify-replicas`) reads each packet's witnesses in order and
    /// always runs one at a time.
    pub fn set_test_window(&mut self, window: usize) {
        self.test_window = window.clamp(1, MAX_TEST_WINDOW);
    }

    /// The pipelined test phase over `batches` (see the module doc):
    /// `done(i, y)` gets batch i's output as soon as its answer is in.
    pub(super) fn infer_pipelined(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<Tensor, DesignerError>>,
        done: &mut dyn FnMut(usize, Tensor) -> Result<(), DesignerError>,
    ) -> Result<(), DesignerError> {
        let wall = Instant::now();
        let result = self.run_window(batches, done);
        self.net.test_seconds += wall.elapsed().as_secs_f64();
        result
    }

    /// Keeps the window full while batches remain, handing each answer to
    /// `done`; the first error ends it (answers still in flight are then
    /// stale: [`super::endpoint::Endpoint::receive_any`] drops them).
    fn run_window(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<Tensor, DesignerError>>,
        done: &mut dyn FnMut(usize, Tensor) -> Result<(), DesignerError>,
    ) -> Result<(), DesignerError> {
        let window = self.test_window;
        let mut flight: Vec<InFlight> = Vec::with_capacity(window);
        let mut next = batches.enumerate();
        let mut more = true;
        loop {
            while more && flight.len() < window {
                match next.next() {
                    Some((i, x)) => flight.push(self.send_test(i, x?, window)?),
                    None => more = false,
                }
            }
            if flight.is_empty() {
                return Ok(());
            }
            let (i, y) = self.answer_one(&mut flight)?;
            done(i, y)?;
        }
    }

    /// Builds and sends the test packet of batch `index` (through the
    /// designer's first shard if it keeps one).
    fn send_test(
        &mut self,
        index: usize,
        x: Tensor,
        window: usize,
    ) -> Result<InFlight, DesignerError> {
        let start = Instant::now();
        let mut z = x;
        if let Some(l) = self.first.as_mut() {
            z = l.infer(&z)?;
        }
        let batch = z.shape.first().copied().unwrap_or(0);
        let tensor = WireTensor::try_from(z).map_err(|source| PoolError::Tensor {
            what: "test input",
            source,
        })?;
        self.refresh_keys(false);
        let slots = self.forward_slots(Op::Test);
        let first = self.hops[slots[0].hop].peer;
        let (header, pattern) = self.header_for(&slots)?;
        let (bytes, sent) = onion::build(
            &self.g,
            self.class,
            header,
            slots,
            Some(tensor),
            None,
            self.compute_section,
            false,
            &mut self.rng,
        )?;
        self.ep.send(first, bytes)?;
        self.build_ahead(pattern, &sent.slots);
        let (bound, rule) = self.detect.bound(Some(Kind::Window { batch, window }));
        Ok(InFlight {
            index,
            sent,
            start,
            bound,
            rule: rule.to_string(),
            batch,
        })
    }

    /// Waits for the first answer to any batch in `flight`, until the
    /// earliest deadline among them; removes that batch and returns its
    /// index and output.
    fn answer_one(&mut self, flight: &mut Vec<InFlight>) -> Result<(usize, Tensor), DesignerError> {
        let ends = self.end_links();
        let due = (flight.iter().enumerate())
            .min_by_key(|(_, f)| f.start + f.bound)
            .map(|(k, f)| (k, f.start + f.bound))
            .ok_or_else(|| DesignerError::Pool("no test batch in flight".into()))?;
        let ids: Vec<[u8; 32]> = flight.iter().map(|f| f.sent.exit_id).collect();
        let got = self.ep.receive_any(|a| ids.contains(a), due.1, &ends);
        let answer = match got {
            Ok(a) => a,
            Err(r) => return Err(self.window_failure(r, &flight[due.0], flight.len())),
        };
        let k = (flight.iter())
            .position(|f| answer.get(1..33) == Some(&f.sent.exit_id[..]))
            .ok_or_else(|| DesignerError::Pool("an answer to no batch in flight".into()))?;
        let f = flight.swap_remove(k);
        let payload = onion::open(&self.g, &f.sent, answer)?;
        let hops = &self.hops;
        onion::reply(&f.sent, &payload.e2e, None, |s| describe_slot(hops, s))?;
        let took = f.start.elapsed();
        self.detect.record(
            Kind::Window {
                batch: f.batch,
                window: self.test_window,
            },
            took,
        );
        self.net.messages += 1;
        self.net.hop_crossings += f.sent.slots.len() as u64;
        let t = payload.tensor.ok_or(PoolError::NoTensor("test output"))?;
        let mut y = Tensor::try_from(t).map_err(|source| PoolError::Tensor {
            what: "test output",
            source,
        })?;
        if let Some(l) = self.last.as_mut() {
            y = l.infer(&y)?;
        }
        Ok((f.index, y))
    }

    /// The typed failure of a window whose answers stopped: `late` is the
    /// batch whose deadline passed first (lost), or a link to an end closed.
    fn window_failure(&mut self, r: Received, late: &InFlight, inflight: usize) -> DesignerError {
        let what = format!(
            "test message (batch {}, {} hop crossings, {inflight} in flight)",
            late.batch,
            late.sent.slots.len()
        );
        let after_ms = late.start.elapsed().as_millis() as u64;
        match r {
            Received::TimedOut => PoolError::Lost {
                exchange: what,
                waited_ms: after_ms,
                rule: late.rule.clone(),
                keys_refreshed: self.refresh_keys(true),
            }
            .into(),
            Received::LinkClosed { hop } => {
                let h = &self.hops[hop];
                PoolError::LinkClosed {
                    hop: hop + 1,
                    role: describe_role(h.role),
                    peer: h.peer.to_base58(),
                    exchange: what,
                    after_ms,
                }
                .into()
            }
            Received::Stopped => DesignerError::Pool("the designer's peer stopped".into()),
        }
    }
}
