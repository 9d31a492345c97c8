//! stub
use crate::GradError;
use crate::pb;
use crate::rules::Ctx;
pub(crate) fn add(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn sub(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn mul(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn div(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn neg(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn max(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn mean(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
pub(crate) fn sum(ctx: &mut Ctx, node: &pb::NodeProto, _gy: &[Option<String>]) -> Result<Vec<Option<String>>, GradError> { Err(ctx.unsupported(node)) }
