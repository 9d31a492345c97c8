//! Gradient rules for the dense products: Gemm and MatMul.

use crate::GradError;
use crate::pb;
use crate::rules::{Ctx, Grads, a_int, input, output, with_dy};

/// Gemm: `Y = alpha * op(A) op(B) + beta * C`, op = optional transpose.
///
/// With `A' = op(A)`, `B' = op(B)`: `dA' = alpha dY B'^T`, `dB' = alpha A'^T dY`;
/// each is written as one Gemm with the transposes folded into its flags, so
/// no Transpose node is ever materialised. `dC = beta * dY` reduced to C's
/// (unidirectionally broadcast) shape.
pub(crate) fn gemm(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        let alpha = ctx.attr_float(node, "alpha", 1.0) as f64;
        let beta = ctx.attr_float(node, "beta", 1.0) as f64;
        let ta = ctx.attr_int(node, "transA", 0) != 0;
        let tb = ctx.attr_int(node, "transB", 0) != 0;
        let a = input(ctx, node, 0)?;
        let b = input(ctx, node, 1)?;
        // alpha is applied by a Mul rather than Gemm's attribute: tract's Gemm
        // builds its alpha constant in f32, which breaks f64 graphs.
        let gemm = |ctx: &mut Ctx, p: &str, q: &str, tp: bool, tq: bool| {
            let g = ctx.emit(
                "Gemm",
                &[p, q],
                vec![a_int("transA", tp as i64), a_int("transB", tq as i64)],
            );
            ctx.scale(&g, alpha)
        };
        if ctx.requires_grad(&a) {
            // transA=0: dA = dY B'^T;  transA=1: dA = (dY B'^T)^T = B' dY^T.
            out[0] = Some(if !ta {
                gemm(ctx, &dy, &b, false, !tb)
            } else {
                gemm(ctx, &b, &dy, tb, true)
            });
        }
        if ctx.requires_grad(&b) {
            // transB=0: dB = A'^T dY;  transB=1: dB = (A'^T dY)^T = dY^T A'.
            out[1] = Some(if !tb {
                gemm(ctx, &a, &dy, !ta, false)
            } else {
                gemm(ctx, &dy, &a, true, ta)
            });
        }
        if let Some(c) = node.input.get(2).filter(|c| !c.is_empty())
            && ctx.requires_grad(c)
        {
            let ys = ctx.shape(&output(ctx, node, 0)?)?;
            let cs = ctx.shape(c)?;
            let g = ctx
                .unbroadcast(&dy, &ys, &cs)
                .map_err(|e| ctx.node_error(node, e.to_string()))?;
            out[2] = Some(ctx.scale(&g, beta));
        }
        Ok(())
    })
}

/// The permutation swapping the last two axes of a rank-`r` tensor.
fn swap_last_two(r: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..r).collect();
    p.swap(r - 2, r - 1);
    p
}

/// MatMul with numpy semantics: 1-D operands are promoted to matrices (A to
/// `[1,K]`, B to `[K,1]`) and batch dims broadcast. `dA = dY B^T`,
/// `dB = A^T dY`, each reduced over the batch dims its operand broadcast.
pub(crate) fn matmul(ctx: &mut Ctx, node: &pb::NodeProto, gy: &[Option<String>]) -> Grads {
    with_dy(ctx, node, gy, |ctx, dy, out| {
        let a = input(ctx, node, 0)?;
        let b = input(ctx, node, 1)?;
        let need_a = ctx.requires_grad(&a);
        let need_b = ctx.requires_grad(&b);
        let a_s = ctx.shape(&a)?;
        let b_s = ctx.shape(&b)?;
        let y_s = ctx.shape(&output(ctx, node, 0)?)?;
        if a_s.is_empty() || b_s.is_empty() {
            return Err(ctx.node_error(node, "MatMul operands must have rank >= 1"));
        }
        let a1 = a_s.len() == 1;
        let b1 = b_s.len() == 1;
        let a2 = if a1 { vec![1, a_s[0]] } else { a_s.clone() };
        let b2 = if b1 { vec![b_s[0], 1] } else { b_s.clone() };
        let mut y2 = y_s.clone();
        if b1 {
            y2.push(1);
        }
        if a1 {
            y2.insert(y2.len() - 1, 1);
        }
        if y2.len() < 2 {
            return Err(ctx.node_error(node, format!("unexpected output shape {y_s:?}")));
        }
        let batch = &y2[..y2.len() - 2];
        let dy2 = if y2 != y_s {
            ctx.reshape(&dy, &y2)
        } else {
            dy.clone()
        };
        let a_m = if a1 { ctx.reshape(&a, &a2) } else { a.clone() };
        let b_m = if b1 { ctx.reshape(&b, &b2) } else { b.clone() };
        // The gradient of an operand of matrix shape `m2` (`m_s` before the
        // 1-D promotion), from the product `lhs @ rhs`.
        let operand = |ctx: &mut Ctx, lhs: &str, rhs: &str, m2: &[usize], m_s: &[usize]| {
            let g = ctx.emit("MatMul", &[lhs, rhs], vec![]);
            let mut g_s = batch.to_vec();
            g_s.extend_from_slice(&m2[m2.len() - 2..]);
            let mut g = ctx
                .unbroadcast(&g, &g_s, m2)
                .map_err(|e| ctx.node_error(node, e.to_string()))?;
            if m_s.len() == 1 {
                g = ctx.reshape(&g, m_s);
            }
            Ok::<_, GradError>(g)
        };
        if need_a {
            let bt = ctx.transpose(&b_m, &swap_last_two(b2.len()));
            out[0] = Some(operand(ctx, &dy2, &bt, &a2, &a_s)?);
        }
        if need_b {
            let at = ctx.transpose(&a_m, &swap_last_two(a2.len()));
            out[1] = Some(operand(ctx, &at, &dy2, &b2, &b_s)?);
        }
        Ok(())
    })
}
