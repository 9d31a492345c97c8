//! stub
use crate::GradError;
use crate::pb;
use crate::rules::Ctx;
pub(crate) fn gemm(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn matmul(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
