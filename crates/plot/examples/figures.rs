//! Writes a sample of each figure (numbers shaped like the papers') so
//! their look can be checked by eye: `cargo run --release -p mixnn-plot
//! --example figures -- DIR` writes DIR/figure3.png, DIR/tradeoff.png and
//! DIR/grid.png.

use std::path::PathBuf;

use mixnn_plot::{Series, TradeoffPoint, figure3, image_grid, tradeoff};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let curve = |start: f64, gain: f64| -> Vec<f64> {
        (0..10)
            .map(|e| start + gain * (1.0 - 0.6f64.powi(e)))
            .collect()
    };
    let series = [
        Series {
            label: "distributed (pool)".into(),
            accuracy: curve(0.905, 0.07),
            seconds: vec![48.2, 45.1, 46.3, 44.9, 45.5, 47.0, 45.2, 44.8, 45.9, 45.1],
        },
        Series {
            label: "single-process wasm".into(),
            accuracy: curve(0.91, 0.068),
            seconds: vec![14.1, 13.2, 13.4, 13.1, 13.3, 13.2, 13.6, 13.0, 13.2, 13.3],
        },
        Series {
            label: "single-process native".into(),
            accuracy: curve(0.91, 0.068),
            seconds: vec![6.3, 5.9, 6.0, 5.8, 6.1, 5.9, 5.9, 6.0, 5.8, 5.9],
        },
    ];
    figure3(
        "MixNN Figure 3: MNIST, paper MLP, 10 epochs",
        &series,
        &dir.join("figure3.png"),
    )?;

    // He et al. 2020's shape: accuracy falls and SSIM falls as σ grows.
    let points: Vec<TradeoffPoint> = [0.0, 0.2, 0.5, 0.8, 1.2, 2.0]
        .iter()
        .map(|&s: &f64| TradeoffPoint {
            label: format!("σ={s}"),
            ssim: 0.99 - 0.35 * s.min(1.6),
            accuracy: 0.99 - 0.03 * s * s,
        })
        .collect();
    tradeoff(
        &dir.join("tradeoff.png"),
        "conv1 cut: Gaussian noise",
        &points,
        0.95,
    )?;

    // A ring and its blurred "reconstruction".
    let ring = |blur: f32| -> Vec<f32> {
        (0..28 * 28)
            .map(|i| {
                let (x, y) = ((i % 28) as f32 - 13.5, (i / 28) as f32 - 13.5);
                let d = ((x * x + y * y).sqrt() - 8.0).abs();
                (1.0 - d / (2.0 + blur)).max(0.0)
            })
            .collect()
    };
    image_grid(
        &dir.join("grid.png"),
        &[vec![ring(0.0), ring(3.0)], vec![ring(0.5), ring(6.0)]],
        28,
        28,
    )?;
    println!(
        "wrote figure3.png, tradeoff.png and grid.png to {}",
        dir.display()
    );
    Ok(())
}
