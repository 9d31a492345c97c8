//! stub
use crate::GradError;
use crate::pb;
use crate::rules::Ctx;
pub(crate) fn reshape_like(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn identity(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn concat(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
