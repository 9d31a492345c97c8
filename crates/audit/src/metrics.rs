//! Image similarity as He et al. scored their reconstructions: SSIM and
//! PSNR on grey images with pixel values in `[0, 1]`.
//!
//! The definitions follow scikit-image (`structural_similarity(a, b,
//! data_range=1.0)` and `peak_signal_noise_ratio(a, b, data_range=1.0)`)
//! rather than the original Wang et al. Gaussian window, because the
//! paper's figures, and the 0.3 "unrecognisable" line, were computed with
//! it. No published crate computes that variant: the ones we found use an
//! 11×11 Gaussian window or non-overlapping blocks, which give different
//! numbers on 28×28 images. The tests compare with values scikit-image
//! computed once (`tests/fixtures/`).

/// Side of scikit-image's default square window (uniform weights).
pub const WINDOW: usize = 7;
/// SSIM's luminance constant factor: `C1 = (K1 · data_range)²`.
pub const K1: f64 = 0.01;
/// SSIM's contrast constant factor: `C2 = (K2 · data_range)²`.
pub const K2: f64 = 0.03;

/// Why two images cannot be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// The pixel buffers do not match the stated `height × width`.
    #[error("images of {a} and {b} pixels for a {height}x{width} grid")]
    Size {
        /// Pixels in the first image.
        a: usize,
        /// Pixels in the second image.
        b: usize,
        /// Stated height.
        height: usize,
        /// Stated width.
        width: usize,
    },
    /// SSIM's data range is not finite and positive (e.g. the range of a
    /// constant image).
    #[error("SSIM data range {0} is not positive (a constant reconstruction?)")]
    Range(f64),
    /// The image is smaller than the SSIM window on some side.
    #[error("a {height}x{width} image is smaller than the {WINDOW}x{WINDOW} SSIM window")]
    TooSmall {
        /// Stated height.
        height: usize,
        /// Stated width.
        width: usize,
    },
}

fn check(a: &[f32], b: &[f32], height: usize, width: usize) -> Result<(), MetricsError> {
    let n = height.checked_mul(width);
    if n != Some(a.len()) || n != Some(b.len()) {
        return Err(MetricsError::Size {
            a: a.len(),
            b: b.len(),
            height,
            width,
        });
    }
    Ok(())
}

/// Mean structural similarity of two `height × width` grey images with
/// values in `[0, 1]` (data range 1), as scikit-image's
/// `structural_similarity(a, b, data_range=1.0)` computes it:
///
/// - a **7×7 uniform window** (every pixel weighs 1/49), not the 11×11
///   Gaussian of Wang et al.;
/// - local means `μ`, and *sample* variances and covariance (the window
///   sums of squares and products, centred, times `49/48`);
/// - `S = (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2))`
///   with `C1 = 0.01²`, `C2 = 0.03²`;
/// - the mean of `S` over the window centres at least 3 pixels (the
///   window's half-width) from every edge, i.e. over the windows that lie
///   entirely inside the image; so the filter's border mode never matters.
///
/// Computed in f64. A result is in `[-1, 1]`; identical images give 1.
pub fn ssim(a: &[f32], b: &[f32], height: usize, width: usize) -> Result<f64, MetricsError> {
    ssim_with_range(a, b, height, width, 1.0)
}

/// [`ssim`] with the constants scaled to `data_range` instead of 1:
/// `C1 = (0.01 · data_range)²`, `C2 = (0.03 · data_range)²`, as
/// scikit-image's `structural_similarity(a, b, data_range=...)`. He et
/// al.'s code passes the reconstruction's own range (`b.max() - b.min()`,
/// see [`reconstruction_range`]); a range that is not finite and positive
/// is [`MetricsError::Range`].
pub fn ssim_with_range(
    a: &[f32],
    b: &[f32],
    height: usize,
    width: usize,
    data_range: f64,
) -> Result<f64, MetricsError> {
    check(a, b, height, width)?;
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(MetricsError::Range(data_range));
    }
    if height < WINDOW || width < WINDOW {
        return Err(MetricsError::TooSmall { height, width });
    }
    let np = (WINDOW * WINDOW) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = ((K1 * data_range).powi(2), (K2 * data_range).powi(2));
    let mut total = 0.0;
    let mut count = 0usize;
    for top in 0..=height - WINDOW {
        for left in 0..=width - WINDOW {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for r in top..top + WINDOW {
                for c in left..left + WINDOW {
                    let x = f64::from(a[r * width + c]);
                    let y = f64::from(b[r * width + c]);
                    sa += x;
                    sb += y;
                    saa += x * x;
                    sbb += y * y;
                    sab += x * y;
                }
            }
            let (ua, ub) = (sa / np, sb / np);
            let va = cov_norm * (saa / np - ua * ua);
            let vb = cov_norm * (sbb / np - ub * ub);
            let vab = cov_norm * (sab / np - ua * ub);
            let num = (2.0 * ua * ub + c1) * (2.0 * vab + c2);
            let den = (ua * ua + ub * ub + c1) * (va + vb + c2);
            total += num / den;
            count += 1;
        }
    }
    Ok(total / count as f64)
}

/// `max − min` of an image's pixels: the `data_range` He et al.'s code
/// gives SSIM (the reconstruction's, after clipping to `[0, 1]`).
pub fn reconstruction_range(b: &[f32]) -> f64 {
    let (lo, hi) = b
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    f64::from(hi) - f64::from(lo)
}

/// Peak signal-to-noise ratio in dB for data range 1:
/// `10 · log10(1 / MSE)`, as scikit-image's
/// `peak_signal_noise_ratio(a, b, data_range=1.0)`. Identical images give
/// `+∞` (scikit-image does the same, with a warning).
pub fn psnr(a: &[f32], b: &[f32], height: usize, width: usize) -> Result<f64, MetricsError> {
    check(a, b, height, width)?;
    if a.is_empty() {
        return Err(MetricsError::TooSmall { height, width });
    }
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    Ok(10.0 * (1.0 / mse).log10())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_score_one_and_infinity() {
        let a: Vec<f32> = (0..100).map(|i| (i % 7) as f32 / 7.0).collect();
        assert!((ssim(&a, &a, 10, 10).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(psnr(&a, &a, 10, 10).unwrap(), f64::INFINITY);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let a = vec![0.0f32; 36];
        assert!(matches!(
            ssim(&a, &a, 6, 6),
            Err(MetricsError::TooSmall { .. })
        ));
        assert!(matches!(
            psnr(&a, &a[..35], 6, 6),
            Err(MetricsError::Size { .. })
        ));
    }
}
