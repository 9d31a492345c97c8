//! Shape and type inference through tract, for the tensors between shards.
//!
//! Using tract's own analysis (rather than re-implementing ONNX shape rules)
//! means the shapes in the plan are exactly the ones the guests will see.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::pb;
use crate::pb::tensor_proto::DataType;
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
    // tract is not written for hostile input; a panic inside it becomes an
    // error here instead of taking the caller down.
    let analysed = catch_unwind(AssertUnwindSafe(|| -> TractResult<_> {
        let mut parsed = onnx.parse(model, None)?;
        parsed.model.analyse(false)?;
        Ok(parsed)
    }));
    let parsed = match analysed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(ShardError::Shape(format!("{e:#}"))),
        Err(_) => {
            return Err(ShardError::Shape(
                "tract panicked while analysing the model".into(),
            ));
        }
    };
    let mut out = HashMap::new();
    for &name in names {
        let outlet = parsed
            .outlets_by_name
            .get(name)
            .ok_or_else(|| ShardError::Shape(format!("tensor '{name}' is not in the model")))?;
        let fact = parsed
            .model
            .outlet_fact(*outlet)
            .map_err(|e| ShardError::Shape(format!("tensor '{name}': {e:#}")))?;
        let who = || {
            let node = &parsed.model.nodes()[outlet.node];
            format!(
                "tensor '{name}' (output of node '{}' {})",
                node.name,
                node.op.name()
            )
        };
        let shape = fact
            .shape
            .as_concrete_finite()
            .ok()
            .flatten()
            .ok_or_else(|| {
                ShardError::Shape(format!(
                    "{} has no concrete shape ({}); declare fixed input dims, e.g. a fixed batch size",
                    who(),
                    fact.format_dt_shape()
                ))
            })?
            .to_vec();
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
            .datum_type
            .concretize()
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

fn onnx_type(dt: DatumType) -> Option<i32> {
    let t = match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Float16,
        DatumType::F32 => DataType::Float,
        DatumType::F64 => DataType::Double,
        _ => return None,
    };
    Some(t as i32)
}
