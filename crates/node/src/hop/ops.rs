//! The ops of a job packet on its opened payload (PROTOCOL.md §12.4): the
//! end-to-end section, the control messages and the layer's calls, and the
//! witness a verified job's hop writes of what it computed (§12.9).

use mixnn_protocol::job::{
    self, E2eDirection, FailureKind, FromHop, HopFailure, JobPayload, ToHop, WireTensor, app_flags,
    witness,
};
use mixnn_sphinx::{Op, Processed};
use tracing::debug;

use super::{Failure, Seen, Stage};
use crate::jobs::{JobError, Jobs};

/// Does the op's work on `payload` in place. A failure becomes an error
/// message to the designer in the end-to-end section (and no tensor), so
/// the designer learns which hop failed and why; hops after it pass a
/// payload without a tensor on untouched.
pub(super) fn run(jobs: &Jobs, p: &Processed, payload: &mut JobPayload, seen: &mut Seen) {
    let app = (p.routing.flags >> 8) as u8;
    let key = p.e2e_key.as_bytes();
    let job = &p.routing.job.0;
    let computes = matches!(p.routing.op, Op::Forward | Op::Test | Op::Backward);
    if computes && payload.tensor.is_none() {
        // An earlier hop failed: its error travels on under one more
        // layer, like any section this hop is not the target of.
        job::e2e_layer(key, &mut payload.e2e);
        return;
    }
    // A verified job's compute sections end in a witness area the
    // end-to-end message does not cover (§12.9).
    let witness = computes.then(|| jobs.witness(job)).flatten();
    let tail = if witness.is_some() {
        witness::WITNESS_AREA
    } else {
        0
    };
    let to_hop = if app & app_flags::E2E_TARGET != 0 {
        let sealed = &payload.e2e[..payload.e2e.len().saturating_sub(tail)];
        match open_section(key, sealed) {
            Ok(m) => {
                seen.e2e_read = Some(kind_of(&m));
                Some(m)
            }
            Err(error) => {
                payload.tensor = None;
                fail(payload, key, seen, Stage::EndToEnd, error, tail);
                return;
            }
        }
    } else {
        job::e2e_layer(key, &mut payload.e2e);
        None
    };
    match (p.routing.op, to_hop) {
        (Op::Init, Some(m)) => match jobs.control(job, m, payload.e2e.len()) {
            Ok(answer) => reply(payload, key, &answer, 0),
            Err(error) => fail(payload, key, seen, Stage::Control, error, 0),
        },
        (Op::Forward | Op::Test | Op::Backward, to_hop) => {
            let Some(x) = payload.tensor.take() else {
                return;
            };
            let input = witness.as_ref().map(|w| w.tag(Some(&x)));
            match compute(jobs, p, x, to_hop, payload, tail) {
                Ok(()) => {
                    if let (Some(w), Some(input)) = (&witness, input) {
                        let slot = match p.routing.op {
                            Op::Backward => w.backward,
                            _ => w.forward,
                        };
                        let output = w.tag(payload.tensor.as_ref());
                        witness::mark(&mut payload.e2e, slot, &input, &output);
                    }
                }
                Err(error) => {
                    debug!(%error, "job op failed");
                    payload.tensor = None;
                    fail(payload, key, seen, Stage::Compute, error, tail);
                }
            }
        }
        _ => {}
    }
}

fn open_section(key: &[u8; 32], e2e: &[u8]) -> Result<ToHop, JobError> {
    let body = job::open_e2e(key, E2eDirection::ToHop, e2e)?;
    Ok(job::decode_msg::<ToHop>("end-to-end message", &body)?)
}

/// The job view's name of an end-to-end message.
fn kind_of(m: &ToHop) -> &'static str {
    match m {
        ToHop::Init { .. } => "init",
        ToHop::Labels(_) => "labels",
        ToHop::Export { .. } => "export",
        ToHop::Close => "close",
        ToHop::SaveState { .. } => "save-state",
        ToHop::LoadState { .. } => "load-state",
    }
}

/// The layer's work on tensor `x`; the result replaces the payload's tensor.
fn compute(
    jobs: &Jobs,
    p: &Processed,
    x: WireTensor,
    to_hop: Option<ToHop>,
    payload: &mut JobPayload,
    tail: usize,
) -> Result<(), JobError> {
    let app = (p.routing.flags >> 8) as u8;
    let job = &p.routing.job.0;
    match p.routing.op {
        Op::Forward => payload.tensor = Some(jobs.forward(job, x)?),
        Op::Test => payload.tensor = Some(jobs.infer(job, x)?),
        Op::Backward if app & app_flags::TURN != 0 => {
            let Some(ToHop::Labels(labels)) = to_hop else {
                return Err(JobError::NoLabels);
            };
            let (loss, dx) = jobs.turn(job, x, &labels)?;
            payload.tensor = dx;
            let answer = FromHop::Loss {
                bits: loss.to_bits(),
            };
            reply(payload, p.e2e_key.as_bytes(), &answer, tail);
        }
        Op::Backward => payload.tensor = jobs.backward(job, x)?,
        _ => {}
    }
    if let Some(t) = payload.tensor.as_mut() {
        jobs.lie_if_switched(t);
    }
    Ok(())
}

/// Replaces the end-to-end section with `error`, sealed from this hop.
fn fail(
    payload: &mut JobPayload,
    key: &[u8; 32],
    seen: &mut Seen,
    stage: Stage,
    error: JobError,
    tail: usize,
) {
    reply(payload, key, &FromHop::Error(error.to_failure()), tail);
    seen.failure = Some(Failure { stage, error });
}

/// Replaces the end-to-end section with `msg`, sealed from this hop at the
/// length of the section that came in (PROTOCOL.md §12.3), so the hops
/// after this one cannot tell a reply from a request by its size. A reply
/// that does not fit becomes a short error; a section too short even for
/// that (or none) gets the reply at its natural length. The last `tail`
/// bytes (a witness area) stay as they are after the reply.
fn reply(payload: &mut JobPayload, key: &[u8; 32], msg: &FromHop, tail: usize) {
    let kept = payload
        .e2e
        .split_off(payload.e2e.len().saturating_sub(tail));
    let len = payload.e2e.len();
    let too_large = || FromHop::Error(HopFailure::new(FailureKind::Encoding, "reply too large"));
    let fits = |m: &FromHop| {
        job::encode_msg("reply", m)
            .ok()
            .and_then(|b| job::seal_e2e_padded(key, E2eDirection::FromHop, &b, len).ok())
    };
    payload.e2e = fits(msg).or_else(|| fits(&too_large())).unwrap_or_else(|| {
        let body = job::encode_msg("reply", msg)
            .or_else(|_| job::encode_msg("reply", &too_large()))
            .unwrap_or_default();
        job::seal_e2e(key, E2eDirection::FromHop, &body)
    });
    payload.e2e.extend_from_slice(&kept);
}
