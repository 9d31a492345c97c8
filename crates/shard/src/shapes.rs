//! Shape and type inference through tract, for the tensors between shards.
//!
//! Using tract's own analysis (see [`mixnn_onnx::analyse`], shared with
//! mixnn-grad) rather than re-implementing ONNX shape rules means the shapes
//! in the plan are exactly the ones the guests will see.

use std::collections::HashMap;

use mixnn_onnx::onnx_type;

use crate::pb;
use crate::{MAX_TENSOR_ELEMENTS, ShardError};

/// Concrete element type (as an ONNX `DataType` code) and shape of a tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub elem_type: i32,
    pub shape: Vec<usize>,
}

/// Infers the types of the named tensors of a model already checked by
/// [`crate::guard::validate`]. Errors name the failing node and op (tract's
/// analyser says "Failed analyse for node #i \"name\" Op"), and any tensor
/// whose shape stays symbolic (e.g. a dynamic batch axis).
pub fn infer(
    model: &pb::ModelProto,
    names: &[&str],
) -> Result<HashMap<String, TensorType>, ShardError> {
    let onnx = tract_onnx::onnx();
    if let Some(graph) = &model.graph {
        for (ix, n) in graph.node.iter().enumerate() {
            let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
            if !default_domain || !onnx.op_register.0.contains_key(&n.op_type) {
                return Err(ShardError::Unsupported {
                    node: crate::graph::node_label(n, ix),
                    op: n.op_type.clone(),
                    reason: format!(
                        "tract-onnx {} has no implementation of this op{}",
                        TRACT_VERSION,
                        if default_domain {
                            String::new()
                        } else {
                            format!(" in domain '{}'", n.domain)
                        }
                    ),
                });
            }
        }
    }
    // tract is not written for hostile input; mixnn-onnx turns a panic
    // inside it into an error instead of taking the caller down.
    let analysed =
        mixnn_onnx::analyse(model, false).map_err(|e| ShardError::Shape(e.to_string()))?;
    if let Some(e) = analysed.error() {
        return Err(ShardError::Shape(e.to_string()));
    }
    let mut out = HashMap::new();
    for &name in names {
        let fact = analysed
            .fact(name)
            .map_err(|e| ShardError::Shape(e.to_string()))?;
        let who = || {
            format!(
                "tensor '{name}' (output of node '{}' {})",
                fact.node_name(),
                fact.op_name()
            )
        };
        let shape = fact.shape().ok_or_else(|| {
            ShardError::Shape(format!(
                "{} has no concrete shape ({}); declare fixed input dims, e.g. a fixed batch size",
                who(),
                fact.describe()
            ))
        })?;
        let total = shape
            .iter()
            .fold(1u128, |acc, &d| acc.saturating_mul(d as u128));
        if total > MAX_TENSOR_ELEMENTS as u128 {
            return Err(ShardError::TooLarge {
                what: who(),
                elements: total,
                cap: MAX_TENSOR_ELEMENTS,
            });
        }
        let dt = fact
            .datum_type()
            .ok_or_else(|| ShardError::Shape(format!("{} has no concrete type", who())))?;
        let elem_type = onnx_type(dt).ok_or_else(|| {
            ShardError::Shape(format!("{} has type {dt:?}, not an ONNX type", who()))
        })?;
        out.insert(name.to_string(), TensorType { elem_type, shape });
    }
    Ok(out)
}

/// The tract-onnx release whose op set we accept (the guests run the same).
const TRACT_VERSION: &str = "0.23.9";
