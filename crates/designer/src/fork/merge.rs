//! The merge of a fork-join job and its gradient, in plain sequential
//! Rust over f32.
//!
//! The merge is the one op of a fork-join that no shard holds: it takes
//! one tensor from each branch, so it runs where both meet, in the
//! designer. It has no parameters; it is a few lines of arithmetic whose
//! every result must be the same wherever the job runs (the local
//! reference and the pool run share this code, so they agree bit for bit).
//!
//! Element-wise merges follow numpy broadcasting as ONNX does; a gradient
//! is summed back over the broadcast axes in output order (sequential, so
//! deterministic). `Max` splits the gradient of a tie evenly between the
//! two inputs, as PyTorch's `maximum` does: the subgradient is then the
//! same whichever branch happens to be the first input.

use mixnn_layer::Tensor;
use mixnn_shard::fork::MergeOp;

use crate::DesignerError;

/// The merge's output for inputs `a` (merge input 0) and `b` (input 1).
pub fn forward(op: MergeOp, a: &Tensor, b: &Tensor) -> Result<Tensor, DesignerError> {
    match op {
        MergeOp::Concat { axis } => concat(axis, a, b),
        _ => {
            let plan = Broadcast::new(&a.shape, &b.shape)?;
            let mut out = Vec::with_capacity(plan.len());
            plan.for_each(|_, ia, ib| {
                let (x, y) = (a.data[ia], b.data[ib]);
                out.push(match op {
                    MergeOp::Add => x + y,
                    MergeOp::Mul => x * y,
                    MergeOp::Mean => (x + y) * 0.5,
                    // Only `Concat` reaches the other arm.
                    MergeOp::Max | MergeOp::Concat { .. } => {
                        if y > x {
                            y
                        } else {
                            x
                        }
                    }
                });
            });
            tensor(plan.out, out)
        }
    }
}

/// The gradients of the merge's two inputs, given those inputs and the
/// gradient `dy` of its output.
pub fn backward(
    op: MergeOp,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor), DesignerError> {
    if let MergeOp::Concat { axis } = op {
        return split_concat(axis, a, b, dy);
    }
    let plan = Broadcast::new(&a.shape, &b.shape)?;
    if dy.shape != plan.out {
        return Err(DesignerError::Merge(format!(
            "output gradient of shape {:?}, merge output {:?}",
            dy.shape, plan.out
        )));
    }
    let mut da = vec![0.0f32; a.data.len()];
    let mut db = vec![0.0f32; b.data.len()];
    plan.for_each(|o, ia, ib| {
        let (x, y, g) = (a.data[ia], b.data[ib], dy.data[o]);
        let (ga, gb) = match op {
            MergeOp::Add => (g, g),
            MergeOp::Mul => (g * y, g * x),
            MergeOp::Mean => (g * 0.5, g * 0.5),
            MergeOp::Max | MergeOp::Concat { .. } => {
                if x > y {
                    (g, 0.0)
                } else if y > x {
                    (0.0, g)
                } else {
                    (g * 0.5, g * 0.5)
                }
            }
        };
        da[ia] += ga;
        db[ib] += gb;
    });
    Ok((tensor(a.shape.clone(), da)?, tensor(b.shape.clone(), db)?))
}

fn tensor(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, DesignerError> {
    Tensor::new(shape, data).map_err(|e| DesignerError::Merge(e.to_string()))
}

/// Numpy broadcasting of two shapes: the output shape and, for every
/// output element in row-major order, the element of each input it reads.
struct Broadcast {
    out: Vec<usize>,
    /// Per output axis, the stride of `a` and of `b` along it (0 where
    /// that input is broadcast).
    strides: Vec<(usize, usize)>,
}

impl Broadcast {
    fn new(a: &[usize], b: &[usize]) -> Result<Broadcast, DesignerError> {
        let rank = a.len().max(b.len());
        let dim = |s: &[usize], k: usize| {
            (k + s.len())
                .checked_sub(rank)
                .map_or(1, |i| s.get(i).copied().unwrap_or(1))
        };
        let mut out = Vec::with_capacity(rank);
        for k in 0..rank {
            let (x, y) = (dim(a, k), dim(b, k));
            out.push(match (x, y) {
                _ if x == y => x,
                (1, _) => y,
                (_, 1) => x,
                _ => {
                    return Err(DesignerError::Merge(format!(
                        "the branches' outputs {a:?} and {b:?} do not broadcast (axis {k}: {x} against {y})"
                    )));
                }
            });
        }
        let strides_of = |s: &[usize]| {
            let mut st = vec![0usize; rank];
            let mut acc = 1usize;
            for k in (0..rank).rev() {
                let d = dim(s, k);
                st[k] = if d == 1 { 0 } else { acc };
                acc *= d;
            }
            st
        };
        // Checked before anything is allocated: one input is the untrusted
        // branch's output, whose shape the pool's last hop chose, and a
        // lying hop's [K, 1, 1] against a trusted [B, F] would otherwise ask
        // for K·B·F values.
        mixnn_layer::element_count(&out).map_err(|_| {
            DesignerError::Merge(format!(
                "the branches' outputs {a:?} and {b:?} broadcast to {out:?}, more than the {} \
                 values a tensor may hold",
                mixnn_layer::MAX_ELEMENTS
            ))
        })?;
        let (sa, sb) = (strides_of(a), strides_of(b));
        Ok(Broadcast {
            out,
            strides: sa.into_iter().zip(sb).collect(),
        })
    }

    fn len(&self) -> usize {
        self.out.iter().product()
    }

    /// Calls `f(output index, index in a, index in b)` for every output
    /// element in row-major order.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let n = self.len();
        let mut idx = vec![0usize; self.out.len()];
        let (mut ia, mut ib) = (0usize, 0usize);
        for o in 0..n {
            f(o, ia, ib);
            // Advance the multi-index like an odometer, moving both input
            // offsets along.
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                ia += self.strides[k].0;
                ib += self.strides[k].1;
                if idx[k] < self.out[k] {
                    break;
                }
                ia -= self.strides[k].0 * idx[k];
                ib -= self.strides[k].1 * idx[k];
                idx[k] = 0;
            }
        }
    }
}

/// Rows of a concat: how many outer blocks, and each input's block length.
fn concat_rows(
    axis: usize,
    a: &[usize],
    b: &[usize],
) -> Result<(usize, usize, usize), DesignerError> {
    let same_rest = a.len() == b.len()
        && axis < a.len()
        && a.iter()
            .zip(b)
            .enumerate()
            .all(|(k, (x, y))| k == axis || x == y);
    if !same_rest {
        return Err(DesignerError::Merge(format!(
            "cannot concatenate {a:?} and {b:?} along axis {axis}"
        )));
    }
    let outer: usize = a[..axis].iter().product();
    Ok((
        outer,
        a[axis..].iter().product(),
        b[axis..].iter().product(),
    ))
}

fn concat(axis: usize, a: &Tensor, b: &Tensor) -> Result<Tensor, DesignerError> {
    let (outer, la, lb) = concat_rows(axis, &a.shape, &b.shape)?;
    let mut out = Vec::with_capacity(a.data.len() + b.data.len());
    for o in 0..outer {
        out.extend_from_slice(&a.data[o * la..(o + 1) * la]);
        out.extend_from_slice(&b.data[o * lb..(o + 1) * lb]);
    }
    let mut shape = a.shape.clone();
    shape[axis] += b.shape[axis];
    tensor(shape, out)
}

fn split_concat(
    axis: usize,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor), DesignerError> {
    let (outer, la, lb) = concat_rows(axis, &a.shape, &b.shape)?;
    if dy.data.len() != outer * (la + lb) {
        return Err(DesignerError::Merge(format!(
            "output gradient of shape {:?} for a concat of {:?} and {:?}",
            dy.shape, a.shape, b.shape
        )));
    }
    let (mut da, mut db) = (
        Vec::with_capacity(a.data.len()),
        Vec::with_capacity(b.data.len()),
    );
    for row in dy.data.chunks_exact(la + lb) {
        da.extend_from_slice(&row[..la]);
        db.extend_from_slice(&row[la..]);
    }
    Ok((tensor(a.shape.clone(), da)?, tensor(b.shape.clone(), db)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn seq(shape: &[usize], scale: f32, shift: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) * scale + shift)
            .collect::<Vec<_>>();
        t(shape, &data)
    }

    /// Loss = Σ w·y with fixed weights: its gradient through the merge,
    /// against central finite differences, for every op and a broadcast.
    #[test]
    fn gradients_match_finite_differences() {
        let cases: Vec<(MergeOp, Vec<usize>, Vec<usize>)> = vec![
            (MergeOp::Concat { axis: 1 }, vec![2, 3], vec![2, 2]),
            (MergeOp::Concat { axis: 1 }, vec![2, 2, 2], vec![2, 1, 2]),
            (MergeOp::Concat { axis: 0 }, vec![1, 3], vec![2, 3]),
            (MergeOp::Add, vec![2, 3], vec![2, 3]),
            (MergeOp::Mul, vec![2, 3], vec![3]),
            (MergeOp::Mul, vec![2, 1, 4], vec![3, 1]),
            (MergeOp::Mean, vec![2, 3], vec![1, 3]),
            (MergeOp::Max, vec![2, 3], vec![2, 3]),
        ];
        for (op, sa, sb) in cases {
            let a = seq(&sa, 0.1, 0.03);
            let b = seq(&sb, 0.07, -0.02);
            let y = forward(op, &a, &b).unwrap();
            let w = seq(&y.shape, 0.05, 0.01);
            let loss = |a: &Tensor, b: &Tensor| -> f64 {
                let y = forward(op, a, b).unwrap();
                y.data
                    .iter()
                    .zip(&w.data)
                    .map(|(y, w)| f64::from(*y) * f64::from(*w))
                    .sum()
            };
            let (da, db) = backward(op, &a, &b, &w).unwrap();
            let eps = 1e-3f32;
            for (which, grad) in [(0, &da), (1, &db)] {
                for i in 0..grad.data.len() {
                    let (mut ap, mut bp) = (a.clone(), b.clone());
                    let (mut am, mut bm) = (a.clone(), b.clone());
                    if which == 0 {
                        ap.data[i] += eps;
                        am.data[i] -= eps;
                    } else {
                        bp.data[i] += eps;
                        bm.data[i] -= eps;
                    }
                    let fd = (loss(&ap, &bp) - loss(&am, &bm)) / (2.0 * f64::from(eps));
                    let g = f64::from(grad.data[i]);
                    assert!(
                        (fd - g).abs() < 1e-3,
                        "{op:?} {sa:?}x{sb:?} input {which} elem {i}: fd {fd} grad {g}"
                    );
                }
            }
        }
    }

    #[test]
    fn concat_puts_the_first_input_first_along_the_axis() {
        let a = t(&[2, 1], &[1.0, 2.0]);
        let b = t(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let y = forward(MergeOp::Concat { axis: 1 }, &a, &b).unwrap();
        assert_eq!(y.shape, vec![2, 3]);
        assert_eq!(y.data, vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }

    #[test]
    fn max_ties_split_the_gradient_evenly() {
        let a = t(&[3], &[1.0, 2.0, 3.0]);
        let b = t(&[3], &[1.0, 5.0, 0.0]);
        let y = forward(MergeOp::Max, &a, &b).unwrap();
        assert_eq!(y.data, vec![1.0, 5.0, 3.0]);
        let (da, db) = backward(MergeOp::Max, &a, &b, &t(&[3], &[2.0, 2.0, 2.0])).unwrap();
        assert_eq!(da.data, vec![1.0, 0.0, 2.0]);
        assert_eq!(db.data, vec![1.0, 2.0, 0.0]);
    }

    #[test]
    fn broadcast_gradient_sums_over_the_broadcast_axis() {
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2], &[10.0, 20.0]);
        let y = forward(MergeOp::Add, &a, &b).unwrap();
        assert_eq!(y.data, vec![11.0, 22.0, 13.0, 24.0]);
        let (_, db) = backward(MergeOp::Add, &a, &b, &t(&[2, 2], &[1.0; 4])).unwrap();
        assert_eq!(db.data, vec![2.0, 2.0]);
    }

    #[test]
    fn shapes_that_do_not_fit_are_clear_errors() {
        let a = t(&[2, 3], &[0.0; 6]);
        let b = t(&[2, 2], &[0.0; 4]);
        let e = forward(MergeOp::Mul, &a, &b).unwrap_err().to_string();
        assert!(e.contains("do not broadcast"), "{e}");
        let e = forward(MergeOp::Concat { axis: 0 }, &a, &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot concatenate"), "{e}");
        let e = backward(MergeOp::Add, &a, &a, &b).unwrap_err().to_string();
        assert!(e.contains("output gradient"), "{e}");
    }

    /// A pool answer of a shape chosen to broadcast against the trusted
    /// branch into billions of values is refused before any allocation.
    #[test]
    fn a_broadcast_past_the_tensor_cap_is_refused_before_allocating() {
        let k = 1 << 17;
        let lying = t(&[k, 1, 1], &vec![0.0; k]);
        let trusted = t(&[64, 1 << 12], &vec![0.0; 64 << 12]);
        for op in [MergeOp::Add, MergeOp::Mul, MergeOp::Mean, MergeOp::Max] {
            let e = forward(op, &lying, &trusted).unwrap_err().to_string();
            assert!(e.contains("more than the"), "{e}");
        }
    }
}
