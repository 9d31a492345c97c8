//! One message of the job: its slots, the packet out, the answer back, and
//! the figures of the network report.

use std::time::{Duration, Instant};

use mixnn_protocol::job::witness::WITNESS_AREA;
use mixnn_protocol::job::{E2E_OVERHEAD, FromHop, LayerSpec, ToHop, WireTensor};
use mixnn_sphinx::Op;

use super::detect::Kind;
use super::endpoint::Received;
use super::onion::{self, Sent, Slot};
use super::{Phase, PoolCascade, PoolError, describe_role, describe_slot};
use crate::DesignerError;

impl PoolCascade {
    /// Sends every hop its spec and shard (a hop given `None`: nothing) in
    /// chunks that fill the job's control sections, all hops in one
    /// [`control_batch`](Self::control_batch).
    pub(super) fn init_hops(
        &mut self,
        inits: Vec<Option<(LayerSpec, Vec<u8>)>>,
    ) -> Result<(), DesignerError> {
        let mut msgs = Vec::with_capacity(inits.len());
        for init in inits {
            msgs.push(match init {
                Some((spec, shard)) => self.init_chunks(spec, &shard)?,
                None => Vec::new(),
            });
        }
        let answers = self.control_batch(msgs, Phase::Init)?;
        for (t, list) in answers.into_iter().enumerate() {
            let total = list.len();
            for (i, answer) in list.into_iter().enumerate() {
                match answer {
                    FromHop::Received { .. } if i + 1 < total => {}
                    FromHop::Ready { .. } if i + 1 == total => {}
                    other => return Err(unexpected(t, other)),
                }
            }
        }
        Ok(())
    }

    /// One hop's init messages: chunk 0 carries `spec`, each chunk fills
    /// what the control section leaves after the message's own fields.
    fn init_chunks(&self, spec: LayerSpec, shard: &[u8]) -> Result<Vec<ToHop>, DesignerError> {
        let probe = ToHop::Init {
            index: u32::MAX,
            total: u32::MAX,
            spec: Some(spec.clone()),
            bytes: Vec::new(),
        };
        let parts = self.chunked("init", &probe, shard)?;
        let total = parts.len() as u32;
        let mut spec = Some(spec);
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(i, part)| ToHop::Init {
                index: i as u32,
                total,
                spec: spec.take(),
                bytes: part.to_vec(),
            })
            .collect())
    }

    /// `data` cut into the chunks one control message carries: each fills
    /// what the control section leaves after the fields of `probe` (the
    /// message with its largest counters and no bytes). Empty data is one
    /// empty chunk, so the hop still hears of it.
    pub(super) fn chunked<'d>(
        &self,
        what: &'static str,
        probe: &ToHop,
        data: &'d [u8],
    ) -> Result<Vec<&'d [u8]>, DesignerError> {
        let fields = mixnn_protocol::cbor::encode(what, probe, usize::MAX)
            .map_err(PoolError::from)?
            .len();
        let chunk = self
            .control_section
            .saturating_sub(E2E_OVERHEAD + fields + 16)
            .max(1);
        Ok(if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(chunk).collect()
        })
    }

    /// Every layer hop's parts of one export (parameters or state), by hop
    /// (`None` for dummies): part 0 of all of them in one control batch,
    /// which tells each hop's part count, then the other parts in a second
    /// (PROTOCOL.md §12.5). `request(part)` is the message asking for a
    /// part; `take(hop, part, answer, bytes)` checks an answer, appends its
    /// bytes and returns the count it claims. A count past `max_parts`, or
    /// one that changes between parts, is refused before more is asked.
    pub(super) fn collect_parts(
        &mut self,
        request: impl Fn(u32) -> ToHop,
        take: impl Fn(usize, u32, FromHop, &mut Vec<u8>) -> Result<u32, DesignerError>,
        max_parts: u64,
    ) -> Result<Vec<Option<Vec<u8>>>, DesignerError> {
        let is_layer: Vec<bool> = (self.hops.iter())
            .map(|h| matches!(h.role, onion::Role::Layer(_)))
            .collect();
        let first = (is_layer.iter())
            .map(|&l| if l { vec![request(0)] } else { Vec::new() })
            .collect();
        let refused = |t: usize, parts: u32| -> DesignerError {
            PoolError::StateParts { hop: t + 1, parts }.into()
        };
        let mut bytes: Vec<Vec<u8>> = vec![Vec::new(); self.hops.len()];
        let mut totals = vec![0u32; self.hops.len()];
        for (t, answers) in self
            .control_batch(first, Phase::Export)?
            .into_iter()
            .enumerate()
        {
            for a in answers {
                totals[t] = take(t, 0, a, &mut bytes[t])?;
                if !part_count_ok(totals[t], max_parts) {
                    return Err(refused(t, totals[t]));
                }
            }
        }
        let rest = (totals.iter())
            .map(|&n| (1..n).map(&request).collect())
            .collect();
        for (t, answers) in self
            .control_batch(rest, Phase::Export)?
            .into_iter()
            .enumerate()
        {
            for (i, a) in answers.into_iter().enumerate() {
                let total = take(t, i as u32 + 1, a, &mut bytes[t])?;
                if total != totals[t] {
                    return Err(refused(t, total));
                }
            }
        }
        Ok(is_layer
            .into_iter()
            .zip(bytes)
            .map(|(l, b)| l.then_some(b))
            .collect())
    }

    /// Sends `msgs[t]` to hop `t` (in order, per hop) among blank messages
    /// that no hop is the target of, `pad_hops` packets per round for as
    /// many rounds as the longest list has messages, in a random order.
    /// Every hop sees the same number of control packets whatever its
    /// position, its shard or the cascade's length (PROTOCOL.md §12.5).
    /// Returns each hop's answers in order.
    pub(super) fn control_batch(
        &mut self,
        msgs: Vec<Vec<ToHop>>,
        phase: Phase,
    ) -> Result<Vec<Vec<FromHop>>, DesignerError> {
        use rand::seq::SliceRandom;
        let rounds = msgs.iter().map(Vec::len).max().unwrap_or(0);
        let mut order: Vec<Option<usize>> = msgs
            .iter()
            .enumerate()
            .flat_map(|(t, m)| std::iter::repeat_n(Some(t), m.len()))
            .collect();
        order.resize(rounds * self.pad_hops.max(msgs.len()), None);
        order.shuffle(&mut self.rng);
        let mut queues: Vec<std::collections::VecDeque<ToHop>> =
            msgs.into_iter().map(Into::into).collect();
        let mut answers: Vec<Vec<FromHop>> = queues.iter().map(|_| Vec::new()).collect();
        for target in order {
            match target.and_then(|t| Some((t, queues[t].pop_front()?))) {
                Some((t, msg)) => answers[t].push(self.control(t, msg, phase)?),
                None => {
                    let slots = (0..self.hops.len())
                        .map(|j| Slot::new(j, Op::Relay))
                        .collect();
                    self.exchange(slots, None, None, phase)?;
                }
            }
        }
        Ok(answers)
    }

    /// A control message to hop `t`: every other hop relays.
    pub(super) fn control(
        &mut self,
        t: usize,
        msg: ToHop,
        phase: Phase,
    ) -> Result<FromHop, DesignerError> {
        let slots: Vec<Slot> = (0..self.hops.len())
            .map(|j| {
                if j == t {
                    Slot::target(j, Op::Init, 0)
                } else {
                    Slot::new(j, Op::Relay)
                }
            })
            .collect();
        let (_, reply) = self.exchange(slots, None, Some((t, msg)), phase)?;
        reply.ok_or_else(|| PoolError::NoAnswer { hop: t + 1 }.into())
    }

    /// Sends one message and waits for its answer, at most the detection
    /// bound of its kind ([`super::detect`]); a closed link to an end of the
    /// cascade fails it at once.
    pub(super) fn exchange(
        &mut self,
        slots: Vec<Slot>,
        tensor: Option<WireTensor>,
        e2e: Option<(usize, ToHop)>,
        phase: Phase,
    ) -> Result<(Option<WireTensor>, Option<FromHop>), DesignerError> {
        let start = Instant::now();
        self.refresh_keys(false);
        let target = e2e.as_ref().map(|(t, _)| *t);
        let batch = tensor
            .as_ref()
            .and_then(|t| t.shape.first())
            .map(|&b| b as usize);
        let kind = Kind::of(phase, batch);
        let first = self.hops[slots[0].hop].peer;
        let section = if tensor.is_some() {
            self.compute_section
        } else {
            self.control_section
        };
        let what = describe_exchange(phase, batch, slots.len(), target);
        let witnessed = tensor.is_some() && self.witness.is_some();
        let sent_tag = (self.witness.as_ref()).map(|w| w.tag(tensor.as_ref()));
        let (header, pattern) = self.header_for(&slots)?;
        let (bytes, sent) = onion::build(
            &self.g,
            self.class,
            header,
            slots,
            tensor,
            e2e,
            section,
            witnessed,
            &mut self.rng,
        )?;
        self.ep.send(first, bytes)?;
        self.build_ahead(pattern, &sent.slots);
        let (bound, rule) = self.detect.bound(kind);
        let answer = self.await_answer(&sent, bound, start, &what, &rule.to_string())?;
        let payload = onion::open(&self.g, &sent, answer)?;
        let hops = &self.hops;
        let describe = |s: &Slot| describe_slot(hops, s);
        let sealed = match witnessed {
            true => payload.e2e.len().saturating_sub(WITNESS_AREA),
            false => payload.e2e.len(),
        };
        let reply = onion::reply(&sent, &payload.e2e[..sealed], target, describe)?;
        if let (true, Some(w), Some(sent_tag)) = (witnessed, &self.witness, sent_tag) {
            let received = w.tag(payload.tensor.as_ref());
            let reading =
                (w.read(&sent, &payload.e2e, sent_tag, received)).ok_or(PoolError::NoWitness)?;
            self.readings.push(reading);
        }
        if let Some(k) = kind {
            self.detect.record(k, start.elapsed());
        }
        self.account(&sent, phase, start);
        Ok((payload.tensor, reply))
    }

    /// The header for a message over `slots` (the one built ahead for
    /// this route, or a new one) and the route's pattern, which
    /// [`build_ahead`](Self::build_ahead) takes back once the message is
    /// sent (hashed once per message).
    pub(super) fn header_for(
        &mut self,
        slots: &[Slot],
    ) -> Result<(onion::Header, super::prebuild::Key), DesignerError> {
        let pattern = super::prebuild::key(slots, &self.hops);
        let header = match self.prebuilt.as_ref().and_then(|p| p.take(&pattern)) {
            Some(h) => h,
            None => onion::header(
                &self.g,
                self.class,
                &self.hops,
                slots,
                self.ep.node_id(),
                &mut self.rng,
            )?,
        };
        Ok((header, pattern))
    }

    /// Asks for the next header over `slots` to be built while the
    /// message just sent is in flight (training repeats its routes).
    pub(super) fn build_ahead(&self, pattern: super::prebuild::Key, slots: &[Slot]) {
        if let Some(p) = &self.prebuilt {
            p.request(pattern, self.class, &self.hops, slots, self.ep.node_id());
        }
    }

    /// The answer to `sent` within `bound`, or the typed failure: lost
    /// (no answer in time) or a closed link to an end of the cascade.
    pub(super) fn await_answer(
        &mut self,
        sent: &Sent,
        bound: Duration,
        start: Instant,
        what: &str,
        rule: &str,
    ) -> Result<Vec<u8>, DesignerError> {
        let ends = self.end_links();
        match self.ep.receive(&sent.exit_id, bound, &ends) {
            Ok(a) => Ok(a),
            Err(Received::TimedOut) => {
                let keys_refreshed = self.refresh_keys(true);
                Err(PoolError::Lost {
                    exchange: what.to_string(),
                    waited_ms: start.elapsed().as_millis() as u64,
                    rule: rule.to_string(),
                    keys_refreshed,
                }
                .into())
            }
            Err(Received::LinkClosed { hop }) => {
                let h = &self.hops[hop];
                Err(PoolError::LinkClosed {
                    hop: hop + 1,
                    role: describe_role(h.role),
                    peer: h.peer.to_base58(),
                    exchange: what.to_string(),
                    after_ms: start.elapsed().as_millis() as u64,
                }
                .into())
            }
            Err(Received::Stopped) => {
                Err(DesignerError::Pool("the designer's peer stopped".into()))
            }
        }
    }

    /// The cascade's ends (hop index, peer): the only nodes the designer
    /// holds links to.
    pub(super) fn end_links(&self) -> Vec<(usize, libp2p::PeerId)> {
        let n = self.hops.len();
        let mut ends = vec![(0, self.hops[0].peer)];
        if n > 1 {
            ends.push((n - 1, self.hops[n - 1].peer));
        }
        ends
    }

    fn account(&mut self, sent: &Sent, phase: Phase, start: Instant) {
        self.net.messages += 1;
        self.net.hop_crossings += sent.slots.len() as u64;
        let s = start.elapsed().as_secs_f64();
        match phase {
            Phase::Init => self.net.init_seconds += s,
            Phase::Train => {
                self.net.train_seconds += s;
                self.net.train_messages += 1;
                self.net.train_hop_crossings += sent.slots.len() as u64;
            }
            Phase::Test => self.net.test_seconds += s,
            Phase::Export => self.net.export_seconds += s,
        }
    }

    /// Every hop in cascade order, doing `op`.
    pub(super) fn forward_slots(&self, op: Op) -> Vec<Slot> {
        (0..self.hops.len()).map(|j| Slot::new(j, op)).collect()
    }

    /// Every hop in reverse order, backward.
    pub(super) fn backward_slots(&self) -> Vec<Slot> {
        (0..self.hops.len())
            .rev()
            .map(|j| Slot::new(j, Op::Backward))
            .collect()
    }

    /// Closes the job on every hop, in one control batch (best effort: a
    /// failure is logged).
    pub fn close(&mut self) {
        let msgs = self.hops.iter().map(|_| vec![ToHop::Close]).collect();
        if let Err(e) = self.control_batch(msgs, Phase::Export) {
            tracing::warn!(error = %e, "closing the job");
        }
    }
}

/// Names an exchange for the errors: its phase, batch and route length.
fn describe_exchange(
    phase: Phase,
    batch: Option<usize>,
    crossings: usize,
    target: Option<usize>,
) -> String {
    let name = match phase {
        Phase::Init => "init message",
        Phase::Train => "training message",
        Phase::Test => "test message",
        Phase::Export => "control message",
    };
    let batch = batch.map(|b| format!("batch {b}, ")).unwrap_or_default();
    let to = target
        .map(|t| format!(" to hop {}", t + 1))
        .unwrap_or_default();
    format!("{name}{to} ({batch}{crossings} hop crossings)")
}

/// An answer hop `t` should not have given.
pub(super) fn unexpected(t: usize, answer: FromHop) -> DesignerError {
    PoolError::UnexpectedAnswer {
        hop: t + 1,
        answer: Box::new(answer),
    }
    .into()
}

/// Whether a hop's announced part count is one the designer will ask for:
/// at least one part, at most `max_parts`.
fn part_count_ok(total: u32, max_parts: u64) -> bool {
    total >= 1 && u64::from(total) <= max_parts
}

#[cfg(test)]
mod part_tests {
    use super::part_count_ok;
    use mixnn_protocol::job::{EXPORT_PART_BYTES, MAX_EXPORT_PARTS, MAX_STATE_BYTES};

    #[test]
    fn a_hop_cannot_announce_more_export_parts_than_a_state_holds() {
        assert!(part_count_ok(1, MAX_EXPORT_PARTS));
        assert!(part_count_ok(MAX_EXPORT_PARTS as u32, MAX_EXPORT_PARTS));
        assert!(!part_count_ok(
            MAX_EXPORT_PARTS as u32 + 1,
            MAX_EXPORT_PARTS
        ));
        assert!(!part_count_ok(u32::MAX, MAX_EXPORT_PARTS));
        assert!(!part_count_ok(0, MAX_EXPORT_PARTS));
        // The cap covers the largest state a hop may hold, and no more.
        assert!(MAX_EXPORT_PARTS * EXPORT_PART_BYTES as u64 >= MAX_STATE_BYTES);
        assert!((MAX_EXPORT_PARTS - 1) * (EXPORT_PART_BYTES as u64) < MAX_STATE_BYTES);
    }
}
