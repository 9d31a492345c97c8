//! The leakage audit's trade-off figure: what a defence costs (test
//! accuracy) against what it buys (the attacker's reconstruction SSIM), one
//! labelled point per defence level, with the two lines a designer reads it
//! by: SSIM 0.3, below which He et al. count a reconstruction as
//! unrecognisable, and the accuracy the model must keep.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::chart::{self, draw_err, rgb};
use crate::{PlotError, colour, font};

/// Image size of the trade-off figure.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 640;
/// He et al.'s threshold: a reconstruction with SSIM below it is
/// unrecognisable.
pub const UNRECOGNISABLE_SSIM: f64 = 0.3;
const LABEL_MAX_CHARS: usize = 24;
const TITLE_MAX_CHARS: usize = 70;

/// One defence level as measured by the audit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TradeoffPoint {
    /// The level, printed beside the point, e.g. "σ=0.5" or "dropout 0.2".
    pub label: String,
    /// Mean SSIM of the attacker's reconstructions at this level.
    pub ssim: f64,
    /// Test accuracy of the defended model, as a fraction (0.95 = 95%).
    pub accuracy: f64,
}

/// Draws the trade-off of `points` with a horizontal line at accuracy
/// `target` (a fraction, e.g. 0.95) and writes it as a PNG (900 x 640) to
/// `path`.
///
/// Points with a NaN or infinite SSIM or accuracy are left out; the others
/// are joined in the order given (a sweep's order), so the curve reads as
/// the defence gets stronger.
pub fn tradeoff(
    path: &Path,
    title: &str,
    points: &[TradeoffPoint],
    target: f64,
) -> Result<(), PlotError> {
    crate::write(path, &tradeoff_png(title, points, target)?)
}

/// Same, into memory.
pub fn tradeoff_png(
    title: &str,
    points: &[TradeoffPoint],
    target: f64,
) -> Result<Vec<u8>, PlotError> {
    if !target.is_finite() {
        return Err(PlotError::NotFinite {
            what: "the accuracy line",
            value: target,
        });
    }
    let finite: Vec<&TradeoffPoint> = points
        .iter()
        .filter(|p| p.ssim.is_finite() && p.accuracy.is_finite())
        .collect();
    if finite.is_empty() {
        return Err(PlotError::NoPoints {
            points: points.len(),
        });
    }
    let mut rgb = chart::blank(WIDTH, HEIGHT);
    render(&mut rgb, title, &finite, target)?;
    crate::encode(&rgb, WIDTH, HEIGHT, png::ColorType::Rgb)
}

fn render(
    buf: &mut [u8],
    title: &str,
    points: &[&TradeoffPoint],
    target: f64,
) -> Result<(), PlotError> {
    let family = font::family()?;
    let root = chart::area(buf, (WIDTH, HEIGHT))?;
    // Accuracy is drawn in percent: the unit the paper and the audit quote.
    let pct = |a: f64| chart::clamp(a * 100.0);
    let (x_lo, x_hi) = chart::range(points.iter().map(|p| p.ssim), &[0.0, 1.0]);
    let (y_lo, y_hi) = chart::range(points.iter().map(|p| pct(p.accuracy)), &[pct(target)]);
    let mut chart = ChartBuilder::on(&root)
        .caption(chart::shorten(title, TITLE_MAX_CHARS), (family, 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(84)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(draw_err)?;
    let descs = ("SSIM of the attacker's reconstruction", "test accuracy (%)");
    chart::mesh(&mut chart, family, descs, 11, &|v| chart::tick(*v))?;

    let grey = RGBColor(90, 90, 90);
    let red = rgb(colour(3));
    let text = |size: u32, h: HPos, v: VPos| {
        TextStyle::from((family, size).into_font()).pos(Pos::new(h, v))
    };
    // The two reference lines first, so the points draw over them.
    let cut = UNRECOGNISABLE_SSIM;
    if (x_lo..=x_hi).contains(&cut) {
        chart
            .draw_series(DashedLineSeries::new(
                [(cut, y_lo), (cut, y_hi)],
                8,
                6,
                grey.stroke_width(2),
            ))
            .map_err(draw_err)?;
        let at = chart.backend_coord(&(cut, y_hi));
        root.draw_text(
            "unrecognisable below",
            &text(15, HPos::Left, VPos::Top),
            (at.0 + 6, at.1 + 4),
        )
        .map_err(draw_err)?;
    }
    let y_target = pct(target).clamp(y_lo, y_hi);
    chart
        .draw_series(LineSeries::new(
            [(x_lo, y_target), (x_hi, y_target)],
            red.stroke_width(2),
        ))
        .map_err(draw_err)?;
    let at = chart.backend_coord(&(x_hi, y_target));
    root.draw_text(
        &format!("{}% accuracy", chart::tick(pct(target))),
        &text(15, HPos::Right, VPos::Bottom),
        (at.0 - 6, at.1 - 4),
    )
    .map_err(draw_err)?;

    let blue = rgb(colour(0));
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (chart::clamp(p.ssim), pct(p.accuracy)))
        .collect();
    chart
        .draw_series(LineSeries::new(xy.clone(), blue.mix(0.5).stroke_width(1)))
        .map_err(draw_err)?;
    for (p, at) in points.iter().zip(&xy) {
        chart
            .draw_series(std::iter::once(Circle::new(*at, 5, blue.filled())))
            .map_err(draw_err)?;
        let px = chart.backend_coord(at);
        root.draw_text(
            &chart::shorten(&p.label, LABEL_MAX_CHARS),
            &text(15, HPos::Left, VPos::Bottom),
            (px.0 + 7, px.1 - 5),
        )
        .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}
