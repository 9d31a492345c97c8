//! Writes a sample Figure 3 (numbers shaped like the paper's) so the look of
//! the figure can be checked by eye: `cargo run --release -p mixnn-plot
//! --example figure3 -- /tmp/fig3.png`.

use mixnn_plot::{Series, figure3};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "fig3.png".into());
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
        path.as_ref(),
    )?;
    println!("wrote {path}");
    Ok(())
}
