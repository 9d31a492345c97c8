//! stub
use crate::{pb, FloatType};
/// Loss kinds.
pub enum LossKind { Nll, SoftmaxCrossEntropy }
/// Loss graph.
pub fn loss_graph(kind: LossKind, batch: usize, classes: usize) -> pb::ModelProto { loss_graph_typed(kind, batch, classes, FloatType::F32) }
/// Loss graph with float type.
pub fn loss_graph_typed(_kind: LossKind, _batch: usize, _classes: usize, _f: FloatType) -> pb::ModelProto { pb::ModelProto::default() }
