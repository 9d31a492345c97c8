//! The dummies' secret sign masks, folded into the next real layer.
//!
//! A dummy hop multiplies axis 1 of its tensor (features or channels) by a
//! secret ±1 mask D, forward and backward (the relay guest's `sign:` op).
//! The next real layer gets its first linear op's input weights multiplied
//! by the same D (`W·D` along the weight's input axis), so it computes
//! `(W·D)(D·x) = W·x` with every product bit-identical to the local run:
//! a sign flip is exact in IEEE arithmetic and `(−w)(−x) = w·x` bit for
//! bit, zeros included. Because D·D = I and D is orthogonal, SGD, momentum,
//! weight decay and Adam keep the folded weights equal to `W·D` bit for
//! bit (g' = g·D, m' = m·D, v' = v), and the designer un-folds the
//! exported weights with D again. The hops on both sides of a dummy then
//! see different bytes; what they can still compare is PROTOCOL.md §12.6.

use mixnn_grad::pb;
use mixnn_layer::NamedTensor;
use rand::Rng;

use super::PoolError;

/// Where a shard's input meets its first linear op: the weight that takes
/// a dummy's mask and the axis of that weight the mask runs along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fold {
    /// Initializer name of the weight.
    pub weight: String,
    /// The weight's dims.
    pub dims: Vec<usize>,
    /// The weight's axis that meets axis 1 of the shard's input.
    pub axis: usize,
}

impl Fold {
    /// Mask length: the input's width along axis 1.
    pub fn width(&self) -> usize {
        self.dims[self.axis]
    }

    /// Finds the fold of a shard: its data input must feed exactly one node,
    /// a `Gemm` (transA = 0), a `MatMul` (as the left operand) or a `Conv`
    /// (group = 1), whose weight is a float initializer.
    pub fn of(shard: &pb::ModelProto, index: usize) -> Result<Fold, PoolError> {
        let no = |why: String| PoolError::CannotMask { shard: index, why };
        let g = shard.graph.as_ref().ok_or_else(|| no("no graph".into()))?;
        let params = mixnn_shard::get_params(shard).map_err(|e| no(e.to_string()))?;
        let input = g
            .input
            .iter()
            .find(|i| !g.initializer.iter().any(|t| t.name == i.name))
            .ok_or_else(|| no("no data input".into()))?;
        let users: Vec<&pb::NodeProto> = g
            .node
            .iter()
            .filter(|n| n.input.contains(&input.name))
            .collect();
        let [node] = users[..] else {
            return Err(no(format!("its input feeds {} nodes", users.len())));
        };
        if node.input.first() != Some(&input.name) {
            return Err(no(format!(
                "its input is not {}'s first operand",
                node.op_type
            )));
        }
        let int = |name: &str, default: i64| {
            node.attribute
                .iter()
                .find(|a| a.name == name)
                .map_or(default, |a| a.i)
        };
        let axis = match node.op_type.as_str() {
            "Gemm" if int("transA", 0) == 0 => usize::from(int("transB", 0) != 0),
            "MatMul" => 0,
            "Conv" if int("group", 1) == 1 => 1,
            other => return Err(no(format!("its first op is {other}"))),
        };
        let weight = node.input.get(1).cloned().unwrap_or_default();
        let (_, dims, _) = params
            .iter()
            .find(|(n, _, _)| *n == weight)
            .ok_or_else(|| no(format!("weight `{weight}` is no float initializer")))?;
        if dims.len() < 2 || (node.op_type == "MatMul" && dims.len() != 2) {
            return Err(no(format!("weight `{weight}` has dims {dims:?}")));
        }
        Ok(Fold {
            weight,
            dims: dims.clone(),
            axis,
        })
    }

    /// `shard` with the weight's input axis multiplied by `mask` (true = −1).
    pub fn apply_to_shard(
        &self,
        shard: &pb::ModelProto,
        mask: &[bool],
        index: usize,
    ) -> Result<pb::ModelProto, PoolError> {
        let no = |why: String| PoolError::CannotMask { shard: index, why };
        let mut params = mixnn_shard::get_params(shard).map_err(|e| no(e.to_string()))?;
        params.retain(|(n, _, _)| *n == self.weight);
        for (_, _, values) in &mut params {
            self.flip(values, mask);
        }
        mixnn_shard::set_params(shard, &params).map_err(|e| no(e.to_string()))
    }

    /// Un-folds trained parameters (the same flips again: D·D = I).
    pub fn apply_to_params(&self, params: &mut [NamedTensor], mask: &[bool]) {
        for p in params.iter_mut().filter(|p| p.name == self.weight) {
            self.flip(&mut p.tensor.data, mask);
        }
    }

    fn flip(&self, values: &mut [f32], mask: &[bool]) {
        let inner: usize = self.dims[self.axis + 1..].iter().product();
        let width = self.width();
        for (i, v) in values.iter_mut().enumerate() {
            if mask.get((i / inner.max(1)) % width.max(1)) == Some(&true) {
                *v = f32::from_bits(v.to_bits() ^ 0x8000_0000);
            }
        }
    }
}

/// A fresh secret mask of `width` indices, never all `false` (the
/// identity would leave the dummy transparent).
pub fn random_mask<R: Rng>(width: usize, rng: &mut R) -> Vec<bool> {
    loop {
        let m: Vec<bool> = (0..width).map(|_| rng.gen_bool(0.5)).collect();
        if width == 0 || m.iter().any(|b| *b) {
            return m;
        }
    }
}

/// The relay guest's op for `mask`: `sign:` and one `0`/`1` per index.
pub fn relay_op(mask: &[bool]) -> String {
    let bits: String = mask.iter().map(|&b| if b { '1' } else { '0' }).collect();
    format!("sign:{bits}")
}

/// Two masks in a row (two dummies back to back) act as their product.
pub fn combine(a: &[bool], b: &[bool]) -> Vec<bool> {
    a.iter().zip(b).map(|(x, y)| x != y).collect()
}

/// The masks of a job: the relay op of each dummy hop (`None` for layer
/// hops), the shards with the masks folded in, and the folds to undo at
/// export.
pub struct Masks {
    /// Per cascade hop: the dummy's relay op.
    pub ops: Vec<Option<String>>,
    /// The model's shards, the ones after a dummy folded.
    pub shards: Vec<pb::ModelProto>,
    /// (shard index, fold, combined mask) of every folded shard.
    pub folds: Vec<(usize, Fold, Vec<bool>)>,
}

/// Draws a mask for every dummy in `roles` and folds each run of dummies'
/// combined mask into the real layer after it: the next layer hop, or the
/// designer's last shard when the pool's cascade ends on dummies.
pub fn plan<R: Rng>(
    roles: &[super::onion::Role],
    shards: &[pb::ModelProto],
    rng: &mut R,
) -> Result<Masks, PoolError> {
    use super::onion::Role;
    let mut out = Masks {
        ops: vec![None; roles.len()],
        shards: shards.to_vec(),
        folds: Vec::new(),
    };
    let mut start = 0;
    while start < roles.len() {
        if roles[start] != Role::Dummy {
            start += 1;
            continue;
        }
        let end = (start..roles.len())
            .find(|&j| roles[j] != Role::Dummy)
            .unwrap_or(roles.len());
        let next = match roles.get(end) {
            Some(Role::Layer(k)) => *k,
            _ => shards.len().saturating_sub(1),
        };
        let shard = shards.get(next).ok_or(PoolError::NoParams(next))?;
        let fold = Fold::of(shard, next)?;
        let mut combined = vec![false; fold.width()];
        for op in &mut out.ops[start..end] {
            let m = random_mask(fold.width(), rng);
            combined = combine(&combined, &m);
            *op = Some(relay_op(&m));
        }
        out.shards[next] = fold.apply_to_shard(&out.shards[next], &combined, next)?;
        out.folds.push((next, fold, combined));
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::onion::Role;
    use super::*;
    use rand::SeedableRng;

    fn shards() -> Vec<pb::ModelProto> {
        let model = mixnn_shard::mlp(3, 4, mixnn_shard::Form::Gemm);
        let plan = mixnn_shard::plan(&model, None).expect("plan");
        mixnn_shard::split(&model, &plan).expect("split")
    }

    /// Dummies in the middle fold into the next layer; a run of dummies at
    /// the end of the pool (keep_last) folds its product into the
    /// designer's last shard; un-folding gives the original weights back.
    #[test]
    fn masks_fold_into_the_next_real_layer_and_unfold_exactly() {
        let shards = shards();
        let roles = [
            Role::Layer(0),
            Role::Dummy,
            Role::Layer(1),
            Role::Dummy,
            Role::Dummy,
        ];
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let m = plan(&roles, &shards, &mut rng).expect("plan");
        let dummies: Vec<bool> = m.ops.iter().map(Option::is_some).collect();
        assert_eq!(dummies, [false, true, false, true, true]);
        let folded: Vec<usize> = m.folds.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(folded, [1, 2]);
        let bits = |op: &Option<String>| -> Vec<bool> {
            let op = op.as_deref().expect("a dummy op");
            op["sign:".len()..].bytes().map(|b| b == b'1').collect()
        };
        assert_eq!(m.folds[0].2, bits(&m.ops[1]));
        assert_eq!(m.folds[1].2, combine(&bits(&m.ops[3]), &bits(&m.ops[4])));
        assert_eq!(m.shards[0], shards[0], "nothing before a dummy changes");
        for (i, fold, mask) in &m.folds {
            assert!(mask.iter().any(|b| *b), "never the identity");
            assert_ne!(m.shards[*i], shards[*i]);
            let mut back: Vec<NamedTensor> = mixnn_shard::get_params(&m.shards[*i])
                .expect("params")
                .into_iter()
                .map(|(name, dims, data)| NamedTensor {
                    name,
                    tensor: mixnn_layer::Tensor::new(dims, data).expect("tensor"),
                })
                .collect();
            fold.apply_to_params(&mut back, mask);
            let want = mixnn_shard::get_params(&shards[*i]).expect("params");
            for (b, (name, _, data)) in back.iter().zip(&want) {
                assert_eq!(&b.name, name);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&b.tensor.data), bits(data));
            }
        }
    }

    /// Every shard after the first of both reference models, in both
    /// forms, can take a dummy's mask (Conv channels, Gemm/MatMul features).
    #[test]
    fn every_reference_shard_after_the_first_takes_a_mask() {
        for form in [mixnn_shard::Form::Gemm, mixnn_shard::Form::MatMulAdd] {
            for model in [
                mixnn_shard::mlp(3, 4, form),
                mixnn_shard::lenet5(3, 4, form),
            ] {
                let plan = mixnn_shard::plan(&model, None).expect("plan");
                let shards = mixnn_shard::split(&model, &plan).expect("split");
                for (k, s) in shards.iter().enumerate().skip(1) {
                    let f = Fold::of(s, k).expect("foldable");
                    assert!(f.width() > 0);
                }
            }
        }
    }
}
