//! stub
use crate::GradError;
use crate::pb;
use crate::rules::Ctx;
pub(crate) fn relu(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn sigmoid(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn tanh(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn softmax(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn log_softmax(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
