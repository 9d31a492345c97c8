//! A layer's whole training state over the job protocol (issue 11):
//! `SaveState` sends a snapshot in parts, `LoadState` takes one in chunks
//! and imports it, so a job can roll every layer back to a checkpoint and
//! continue bit for bit. The bytes are the layer's own format; the hop
//! only bounds and orders them.

use std::time::Instant;

use mixnn_protocol::job::{
    FromHop, MAX_STATE_BYTES, max_state_bytes, max_state_chunks, state_part_len,
};

use super::{JobError, Jobs, State, lock};

/// A ready job's state transfers: at most one snapshot being sent and one
/// state being received.
#[derive(Default)]
pub(super) struct Transfer {
    snapshot: Option<Snapshot>,
    incoming: Option<Incoming>,
}

/// A state taken at part 0 and the part size fixed then, so every part of
/// one snapshot has the same cut whatever comes later.
struct Snapshot {
    bytes: Vec<u8>,
    part_bytes: usize,
}

/// A state being received: its announced chunk count, the next index
/// expected, and the bytes so far.
struct Incoming {
    total: u32,
    next: u32,
    bytes: Vec<u8>,
}

impl Jobs {
    /// Part `part` of the layer's state; part 0 (or a first request) takes
    /// a fresh snapshot whose parts fit a section of `section_len` bytes.
    pub(super) fn save_state(
        &self,
        handle: &[u8; 32],
        part: u32,
        section_len: usize,
    ) -> Result<FromHop, JobError> {
        let job = self.get(handle)?;
        let mut job = lock(&job);
        job.last_used = Instant::now();
        let State::Ready {
            guest, transfer, ..
        } = &mut job.state
        else {
            return Err(JobError::NotInitialised);
        };
        if part == 0 || transfer.snapshot.is_none() {
            let bytes = self.timed(|| guest.export_state())?;
            if bytes.len() as u64 > MAX_STATE_BYTES {
                return Err(JobError::StateTooLarge(MAX_STATE_BYTES));
            }
            let part_bytes = state_part_len(section_len);
            transfer.snapshot = Some(Snapshot { bytes, part_bytes });
        }
        let Some(snap) = transfer.snapshot.as_ref() else {
            return Err(JobError::StatePart { part, total: 0 });
        };
        let total = snap.bytes.len().div_ceil(snap.part_bytes).max(1);
        let total = u32::try_from(total).map_err(|_| JobError::StateTooLarge(MAX_STATE_BYTES))?;
        if part >= total {
            return Err(JobError::StatePart { part, total });
        }
        let start = part as usize * snap.part_bytes;
        let end = (start + snap.part_bytes).min(snap.bytes.len());
        Ok(FromHop::StatePart {
            part,
            total,
            bytes: snap.bytes[start..end].to_vec(),
        })
    }

    /// Stores chunk `index` of a state to load, in order; on the last one
    /// imports it into the guest. Any refused chunk drops the load; a state
    /// the guest refuses leaves the layer as it was.
    pub(super) fn load_state(
        &self,
        handle: &[u8; 32],
        index: u32,
        total: u32,
        bytes: Vec<u8>,
    ) -> Result<FromHop, JobError> {
        let job = self.get(handle)?;
        let mut job = lock(&job);
        job.last_used = Instant::now();
        let State::Ready {
            guest,
            params,
            transfer,
            ..
        } = &mut job.state
        else {
            return Err(JobError::NotInitialised);
        };
        let refuse = |why: String| JobError::StateChunk { index, total, why };
        let max_chunks = max_state_chunks(*params);
        if total == 0 || total > max_chunks || index >= total {
            transfer.incoming = None;
            return Err(refuse(format!(
                "a load has 1..={max_chunks} chunks, indexed below the count"
            )));
        }
        if index == 0 {
            transfer.incoming = Some(Incoming {
                total,
                next: 0,
                bytes: Vec::new(),
            });
        }
        let Some(incoming) = transfer.incoming.as_mut() else {
            return Err(refuse("no load under way (chunk 0 starts one)".into()));
        };
        let why = if incoming.total != total {
            Some(format!("this load has {} chunks", incoming.total))
        } else if index < incoming.next {
            Some(format!("a duplicate; expected chunk {}", incoming.next))
        } else if index > incoming.next {
            Some(format!("out of order; expected chunk {}", incoming.next))
        } else {
            None
        };
        if let Some(why) = why {
            transfer.incoming = None;
            return Err(refuse(why));
        }
        let cap = max_state_bytes(*params);
        if (incoming.bytes.len() + bytes.len()) as u64 > cap {
            transfer.incoming = None;
            return Err(JobError::StateTooLarge(cap));
        }
        incoming.bytes.extend_from_slice(&bytes);
        incoming.next += 1;
        if incoming.next < total {
            return Ok(FromHop::Received { index });
        }
        let state = std::mem::take(&mut incoming.bytes);
        transfer.incoming = None;
        transfer.snapshot = None;
        self.timed(|| guest.import_state(&state))?;
        Ok(FromHop::StateLoaded)
    }
}
