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
    // The pool's last shard's output comes back to the designer: with the
    // last shard remote that is classes per sample (inside the margin),
    // but a fork-join's untrusted branch returns its features.
    if let Some(per_sample) = shards
        .last()
        .filter(|_| hi >= shards.len())
        .and_then(declared_output_per_sample)
    {
        for &b in batches {
            largest = largest.max(per_sample.saturating_mul(b).saturating_mul(4));
        }
    }
    // The tensor framing and the fixed-length end-to-end section.
    g.class_for(largest + 1024 + super::onion::compute_section_len(batches))
        .map_err(|source| PoolError::NoClass { largest, source }.into())
}

/// Elements per sample of a shard's declared output, when every dimension
/// but the batch is a positive constant.
fn declared_output_per_sample(shard: &pb::ModelProto) -> Option<usize> {
    let out = shard.graph.as_ref()?.output.first()?;
    let Some(pb::type_proto::Value::TensorType(t)) = out.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let mut n = 1usize;
    for d in t.shape.as_ref()?.dim.iter().skip(1) {
        match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                n = n.checked_mul(usize::try_from(v).ok()?)?;
            }
            _ => return None,
        }
    }
    Some(n)
}
