//! The dense tensor every layer call exchanges, and its size limits.
//!
//! The WIT records and the wire tensor carry dimensions as `u32`; this type
//! keeps them as `usize` (what indexing wants). [`dims_to_u32`] and
//! [`Tensor::from_u32_dims`] are the two directions of that one
//! conversion, used by every boundary.

/// Largest tensor a layer accepts or declares, in elements (1 GiB of f32).
/// Shards come from users and packets from the network: a declared shape of
/// 10^12 elements must be refused up front, not discovered by the allocator.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// A tensor whose shape and data do not go together, or that is too large.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The shape's element count overflows or exceeds [`MAX_ELEMENTS`].
    #[error("shape {shape:?} exceeds the limit of {MAX_ELEMENTS} elements")]
    TooLarge {
        /// The refused shape.
        shape: Vec<usize>,
    },
    /// The data length is not the shape's element count.
    #[error("shape {shape:?} needs {want} values, got {got}")]
    Length {
        /// The declared shape.
        shape: Vec<usize>,
        /// Element count the shape needs.
        want: usize,
        /// Number of values supplied.
        got: usize,
    },
    /// A dimension that a `u32` (WIT, wire) cannot hold.
    #[error("dimension {0} too large")]
    Dimension(usize),
}

/// A dense row-major f32 tensor, the unit every layer call exchanges.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements in row-major order; [`Tensor::new`] checks that there
    /// are exactly the shape's element count.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that the data fills the shape exactly.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, TensorError> {
        let want = element_count(&shape)?;
        if want != data.len() {
            return Err(TensorError::Length {
                shape,
                want,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// [`Tensor::new`] from `u32` dimensions (WIT records, the wire).
    pub fn from_u32_dims(shape: &[u32], data: Vec<f32>) -> Result<Self, TensorError> {
        Tensor::new(shape.iter().map(|&d| d as usize).collect(), data)
    }
}

/// The shape as `u32` dimensions (WIT records, the wire), refusing any that
/// does not fit.
pub fn dims_to_u32(shape: &[usize]) -> Result<Vec<u32>, TensorError> {
    shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| TensorError::Dimension(d)))
        .collect()
}

/// A named parameter tensor (export, checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The parameter's name in its layer.
    pub name: String,
    /// The parameter's values.
    pub tensor: Tensor,
}

/// The loss of a batch and its gradient, from the last layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// The batch's scalar loss, of the layer's [`LossKind`](crate::LossKind).
    pub loss: f32,
    /// d loss / d output, to feed `backward`.
    pub grad: Tensor,
}

/// Element count of `shape`, refusing overflow and anything above [`MAX_ELEMENTS`].
pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| TensorError::TooLarge {
                shape: shape.to_vec(),
            })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_the_length_and_the_limit() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        assert_eq!(
            Tensor::new(vec![2, 3], vec![0.0; 5])
                .unwrap_err()
                .to_string(),
            "shape [2, 3] needs 6 values, got 5"
        );
        assert!(matches!(
            element_count(&[1 << 20, 1 << 20]),
            Err(TensorError::TooLarge { .. })
        ));
    }

    #[test]
    fn u32_dims_round_trip() {
        let t = Tensor::from_u32_dims(&[4, 2], vec![1.0; 8]).unwrap();
        assert_eq!(dims_to_u32(&t.shape).unwrap(), vec![4, 2]);
        if usize::BITS > 32 {
            assert_eq!(
                dims_to_u32(&[1 << 33]).unwrap_err(),
                TensorError::Dimension(1 << 33)
            );
        }
    }
}
