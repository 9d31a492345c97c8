//! The payload class of a job: one packet length for all its messages.

use mixnn_grad::pb;
use mixnn_sphinx::Geometry;

use super::PoolError;
use crate::DesignerError;

/// The payload class a job uses: the smallest that carries the largest
/// tensor of the job, i.e. the inputs of the pool's shards `lo..=hi` (as
/// f32; image input as bytes when the first shard is remote) at every
/// batch size used, plus room for framing and end-to-end messages. Public
/// so a harness can give cover traffic the job's class.
pub fn payload_class(
    g: &Geometry,
    shards: &[pb::ModelProto],
    lo: usize,
    hi: usize,
    batches: &[usize],
) -> Result<usize, DesignerError> {
    let mut largest = 0usize;
    let last = hi.min(shards.len().saturating_sub(1));
    for (i, shard) in shards.iter().enumerate().take(last + 1).skip(lo) {
        let shape = mixnn_layer::declared_input_shape(shard)
            .map_err(|source| DesignerError::Layer { index: i, source })?;
        let per_sample: usize = shape.get(1..).unwrap_or_default().iter().product();
        let width = if i == 0 { 1 } else { 4 };
        for &b in batches {
            largest = largest.max(per_sample.saturating_mul(b).saturating_mul(width));
        }
    }
    // Output of the last shard on the test path (classes per sample), the
    // tensor framing and the fixed-length end-to-end section.
    g.class_for(largest + 1024 + super::onion::compute_section_len(batches))
        .map_err(|source| PoolError::NoClass { largest, source }.into())
}
