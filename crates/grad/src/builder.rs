//! stub
use crate::{GradError, GradOptions, ParamSpec, TrainingGraphs, pb};
pub(crate) fn build(_model: &pb::ModelProto, _opts: &GradOptions) -> Result<TrainingGraphs, GradError> {
    Err(GradError::Invalid("not yet implemented".into()))
}
pub(crate) fn inference_graph(_model: &pb::ModelProto, _s: &[usize]) -> Result<(pb::ModelProto, Vec<ParamSpec>), GradError> {
    Err(GradError::Invalid("not yet implemented".into()))
}
