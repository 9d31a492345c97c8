//! Static types and shapes of a model's tensors, from tract's own analysis.
//!
//! tract knows every op it can run (Conv and the pools included), so asking
//! it rather than re-implementing ONNX shape rules gives exactly the shapes
//! the guests will see.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceNode};

use crate::pb;
use crate::pb::tensor_proto::DataType;

/// Why tract could not load a model at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// tract refused the model (tract's own message, with its causes).
    #[error("{0}")]
    Load(String),
    /// tract panicked: it is not written for hostile input.
    #[error("tract panicked while analysing the model")]
    Panicked,
}

/// Why the fact of a named tensor cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactError {
    /// No node output or graph input has that name.
    #[error("tensor '{0}' is not in the model")]
    Missing(String),
    /// tract has no fact for it.
    #[error("tensor '{name}': {reason}")]
    Tract {
        /// Tensor name.
        name: String,
        /// tract's message.
        reason: String,
    },
}

/// A model loaded and analysed by tract.
pub struct Analysed {
    model: InferenceModel,
    outlets: HashMap<String, OutletId>,
    error: Option<String>,
}

/// What tract inferred about one tensor.
pub struct TensorFact<'a> {
    fact: &'a InferenceFact,
    node: &'a InferenceNode,
}

/// Loads `model` into tract and runs its type analysis. A model tract cannot
/// load is an error; a failed analysis is not (the facts it reached before
/// failing stay readable, see [`Analysed::error`]). With
/// `ignore_output_shapes`, the declared output shapes do not constrain the
/// analysis (they may carry a symbolic batch dim). A panic inside tract is
/// caught and reported as [`InferError::Panicked`].
pub fn analyse(model: &pb::ModelProto, ignore_output_shapes: bool) -> Result<Analysed, InferError> {
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        let onnx = tract_onnx::onnx().with_ignore_output_shapes(ignore_output_shapes);
        let mut parsed = onnx
            .parse(model, None)
            .map_err(|e| InferError::Load(format!("{e:#}")))?;
        let error = parsed.model.analyse(false).err().map(|e| format!("{e:#}"));
        Ok(Analysed {
            model: parsed.model,
            outlets: parsed.outlets_by_name,
            error,
        })
    }));
    parsed.unwrap_or(Err(InferError::Panicked))
}

impl Analysed {
    /// tract's message when the analysis stopped before the end.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Names of every tensor the model defines (in no particular order).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.outlets.keys().map(String::as_str)
    }

    /// The fact of the tensor `name`.
    pub fn fact(&self, name: &str) -> Result<TensorFact<'_>, FactError> {
        let outlet = self
            .outlets
            .get(name)
            .ok_or_else(|| FactError::Missing(name.to_string()))?;
        let fact = self
            .model
            .outlet_fact(*outlet)
            .map_err(|e| FactError::Tract {
                name: name.to_string(),
                reason: format!("{e:#}"),
            })?;
        Ok(TensorFact {
            fact,
            node: &self.model.nodes()[outlet.node],
        })
    }
}

impl TensorFact<'_> {
    /// The shape, when every dim is a known number.
    pub fn shape(&self) -> Option<Vec<usize>> {
        self.fact
            .shape
            .as_concrete_finite()
            .ok()
            .flatten()
            .map(|s| s.to_vec())
    }

    /// The element type, when known.
    pub fn datum_type(&self) -> Option<DatumType> {
        self.fact.datum_type.concretize()
    }

    /// Whether the element type is known to be a float type.
    pub fn is_float(&self) -> bool {
        self.datum_type().is_some_and(|dt| dt.is_float())
    }

    /// tract's rendering of the type and shape, for messages.
    pub fn describe(&self) -> String {
        self.fact.format_dt_shape()
    }

    /// Name of the node that produces the tensor.
    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    /// tract's name of the producing node's op.
    pub fn op_name(&self) -> String {
        self.node.op.name().to_string()
    }
}

/// The ONNX `DataType` code of a tract datum type, if ONNX has one.
pub fn onnx_type(dt: DatumType) -> Option<i32> {
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
