//! What the plotted figures share: the pixel buffer, axis ranges that any
//! data fits into, tick labels, marker shapes and error mapping.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::PlotError;

/// The drawing area over an RGB pixel buffer.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Values beyond this magnitude are drawn at it: keeps `hi - lo` finite,
/// so every coordinate plotters computes stays finite too.
const LIMIT: f64 = 1e300;

/// A white RGB buffer of `width` x `height` pixels.
pub fn blank(width: u32, height: u32) -> Vec<u8> {
    vec![255; width as usize * height as usize * 3]
}

/// The drawing area over `rgb`, filled white.
pub fn area(rgb: &mut [u8], (width, height): (u32, u32)) -> Result<Area<'_>, PlotError> {
    let backend = BitMapBackend::with_buffer_and_format(rgb, (width, height)).map_err(draw_err)?;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    Ok(root)
}

/// Any plotters error, as text (its error types are generic over the
/// backend and not worth exposing).
pub fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// A range covering the finite values (and `must` ones), with a margin,
/// never empty, never wider than plotters can map: one value gets a unit
/// around it, NaN and infinities are ignored, nothing finite at all gives
/// `[0, 1]`.
pub fn range(values: impl IntoIterator<Item = f64>, must: &[f64]) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .chain(must.iter().copied())
        .filter(|v| v.is_finite())
        .map(clamp)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    // Tiny spans (or none) widen to a size plotters' tick search handles.
    let min_span = (lo.abs().max(hi.abs()) * 1e-6).max(1e-9);
    let (lo, hi) = if hi - lo < min_span {
        let mid = lo / 2.0 + hi / 2.0;
        let half = if lo == hi {
            min_span.max(0.5)
        } else {
            min_span
        };
        (mid - half, mid + half)
    } else {
        (lo, hi)
    };
    let pad = (hi - lo) * 0.05;
    (clamp(lo - pad), clamp(hi + pad))
}

/// Brings a finite value within the drawable magnitude.
pub fn clamp(v: f64) -> f64 {
    v.clamp(-LIMIT, LIMIT)
}

/// A tick label short enough for the margin at any magnitude: plain
/// decimals in the usual range, scientific notation outside it.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// Cuts `s` to `max` characters, marking the cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(2)).collect();
        out.push_str("..");
        out
    }
}

/// Marker shapes, so series that draw on top of each other (bit-identical
/// runs) stay distinguishable.
#[derive(Clone, Copy, Debug)]
pub enum Marker {
    /// A filled square.
    Square,
    /// A filled circle.
    Circle,
    /// A filled diamond.
    Diamond,
    /// A filled triangle.
    Triangle,
}

/// Draws `marker` of `radius` pixels centred on pixel `at` of `area`.
pub fn marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    marker: Marker,
    radius: i32,
    at: CT::From,
    colour: RGBColor,
) -> Result<(), PlotError>
where
    CT::From: Clone,
{
    let style = colour.filled();
    let r = radius;
    let result = match marker {
        Marker::Square => {
            area.draw(&(EmptyElement::at(at) + Rectangle::new([(-r, -r), (r, r)], style)))
        }
        Marker::Circle => area.draw(&(EmptyElement::at(at) + Circle::new((0, 0), r, style))),
        Marker::Diamond => {
            let corners = vec![(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)];
            area.draw(&(EmptyElement::at(at) + Polygon::new(corners, style)))
        }
        Marker::Triangle => {
            area.draw(&(EmptyElement::at(at) + TriangleMarker::new((0, 0), r + 1, style)))
        }
    };
    result.map_err(draw_err)
}

/// Runs of consecutive finite points: a NaN or infinite value ends a line
/// segment rather than drawing to a made-up place.
pub fn segments(points: &[Option<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|p| p.is_none())
        .filter(|run| !run.is_empty())
        .map(|run| run.iter().flatten().copied().collect())
        .collect()
}

/// The colour triple as plotters' colour.
pub fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// A chart with two `f64` axes on the bitmap backend.
pub type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The grid, ticks and axis captions every figure draws the same way:
/// light grey grid lines, labels through [`tick`] (the x labels through
/// `x_label`), `descs` as the (x, y) captions (an empty one is left out).
pub fn mesh(
    chart: &mut Chart<'_, '_>,
    family: FontFamily,
    descs: (&str, &str),
    x_labels: usize,
    x_label: &dyn Fn(&f64) -> String,
) -> Result<(), PlotError> {
    let font = (family, 16);
    let y_label = |v: &f64| tick(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(x_labels)
        .y_labels(8)
        .x_label_formatter(x_label)
        .y_label_formatter(&y_label)
        .x_desc(descs.0)
        .label_style(font)
        .axis_desc_style(font)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(225, 225, 225));
    if !descs.1.is_empty() {
        mesh.y_desc(descs.1);
    }
    mesh.draw().map_err(draw_err)
}
