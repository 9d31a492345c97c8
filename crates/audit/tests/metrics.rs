//! SSIM and PSNR against values scikit-image computed once
//! (`fixtures/make_skimage_fixture.py`, scikit-image 0.2x:
//! `structural_similarity(a, b, data_range=1.0)`,
//! `peak_signal_noise_ratio(a, b, data_range=1.0)`), on 28×28 pairs stored
//! as bytes (pixel = byte / 255), so no Python runs here.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixnn_audit::{MetricsError, psnr, reconstruction_range, ssim, ssim_with_range};
use serde_json::Value;

#[test]
fn ssim_and_psnr_match_scikit_image() {
    let text = include_str!("fixtures/skimage_ssim_psnr.json");
    let fixture: Value = serde_json::from_str(text).unwrap();
    let pairs = fixture["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 5, "fixture has too few pairs");
    let image = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| (p.as_f64().unwrap() / 255.0) as f32)
            .collect()
    };
    for p in pairs {
        let name = p["name"].as_str().unwrap();
        let (a, b) = (image(&p["a"]), image(&p["b"]));
        let want_ssim = p["ssim"].as_f64().unwrap();
        let want_psnr = p["psnr"].as_f64().unwrap();
        let got_ssim = ssim(&a, &b, 28, 28).unwrap();
        let got_psnr = psnr(&a, &b, 28, 28).unwrap();
        // f32 pixels (as the product stores them) against f64 in Python:
        // agreement to 1e-6 is far below any figure we report.
        assert!(
            (got_ssim - want_ssim).abs() < 1e-6,
            "{name}: SSIM {got_ssim} vs scikit-image {want_ssim}"
        );
        assert!(
            (got_psnr - want_psnr).abs() < 1e-5,
            "{name}: PSNR {got_psnr} vs scikit-image {want_psnr}"
        );
        // He et al.'s convention: the reconstruction's own range.
        match p["ssim_reconstruction_range"].as_f64() {
            Some(want) => {
                let got = ssim_with_range(&a, &b, 28, 28, reconstruction_range(&b)).unwrap();
                assert!(
                    (got - want).abs() < 1e-6,
                    "{name}: SSIM (range of b) {got} vs scikit-image {want}"
                );
            }
            None => {
                let e = ssim_with_range(&a, &b, 28, 28, reconstruction_range(&b));
                assert!(matches!(e, Err(MetricsError::Range(_))), "{name}: {e:?}");
            }
        }
        // Symmetric, as the definition is.
        assert!((ssim(&b, &a, 28, 28).unwrap() - got_ssim).abs() < 1e-12);
    }
}
