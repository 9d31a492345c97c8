//! The layout of Figure 3: a title, two panels sharing the epoch axis, and a
//! legend under both, so the eye can match a line across the two panels.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::chart::{self, Area, Marker, draw_err, rgb};
use crate::{PlotError, Series, font};

/// Distinct on white and to most colour-blind readers (matplotlib's
/// "tab10", first six).
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];
const SHAPES: [Marker; 4] = [
    Marker::Square,
    Marker::Circle,
    Marker::Diamond,
    Marker::Triangle,
];
/// Markers shrink from this radius with the series index: runs that are
/// bit-identical by design (wasm and native) draw exactly on top of each
/// other, and nested markers of different shape and size keep each visible.
const MARKER_MAX: i32 = 5;
const MARKER_MIN: i32 = 3;

const WIDTH: u32 = 1200;
const BASE_HEIGHT: u32 = 500;
const TITLE_BAND: u32 = 44;

const LEGEND_COLUMNS: usize = 3;
/// Room for two legend rows is always kept, so up to six series give the
/// same image size.
const LEGEND_MIN_ROWS: usize = 2;
/// More rows than this would crowd out the panels; the rest of the series
/// are summarised as "+N more".
const LEGEND_MAX_ROWS: usize = 6;
const LEGEND_ROW: u32 = 26;
/// Longer labels are cut so three entries fit in a row.
const LEGEND_MAX_CHARS: usize = 30;
/// A title longer than this would run off the image.
const TITLE_MAX_CHARS: usize = 90;

/// Picks what one panel shows out of a series.
type Values = fn(&Series) -> &[f64];

/// The image size for `series` series.
pub fn size(series: usize) -> (u32, u32) {
    let rows = legend_rows(series);
    (
        WIDTH,
        BASE_HEIGHT + LEGEND_ROW * (rows - LEGEND_MIN_ROWS) as u32,
    )
}

fn legend_rows(series: usize) -> usize {
    let entries = series.min(LEGEND_COLUMNS * LEGEND_MAX_ROWS);
    entries.div_ceil(LEGEND_COLUMNS).max(LEGEND_MIN_ROWS)
}

/// Paints the whole figure into `rgb`; `epochs` is the longest series (at
/// least 1).
pub fn render(
    rgb: &mut [u8],
    dim: (u32, u32),
    title: &str,
    series: &[Series],
    epochs: usize,
) -> Result<(), PlotError> {
    let family = font::family()?;
    let root = chart::area(rgb, dim)?;
    let title_style =
        TextStyle::from((family, 24).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    let title = chart::shorten(title, TITLE_MAX_CHARS);
    root.draw_text(
        &title,
        &title_style,
        (WIDTH as i32 / 2, TITLE_BAND as i32 / 2),
    )
    .map_err(draw_err)?;

    let legend_height = LEGEND_ROW * legend_rows(series.len()) as u32 + 14;
    let (body, legend_area) = root.split_vertically(dim.1 - legend_height);
    let (_, panels) = body.split_vertically(TITLE_BAND);
    let (left, right) = panels.split_horizontally(WIDTH / 2);
    let views: [(&str, Values, &Area); 2] = [
        ("test accuracy per epoch", |s| &s.accuracy, &left),
        ("training time per epoch (s)", |s| &s.seconds, &right),
    ];
    for (name, values, area) in views {
        panel(area, name, epochs, series, values, family)?;
    }
    legend(&legend_area, series, family)?;
    root.present().map_err(draw_err)
}

fn panel(
    area: &Area,
    name: &str,
    epochs: usize,
    series: &[Series],
    values: Values,
    family: FontFamily,
) -> Result<(), PlotError> {
    let (y_lo, y_hi) = chart::range(series.iter().flat_map(|s| values(s).iter().copied()), &[]);
    let x_hi = epochs as f64 + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(name, (family, 20))
        .margin_left(14)
        .margin_right(30)
        .margin_top(6)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5..x_hi, y_lo..y_hi)
        .map_err(draw_err)?;
    let epoch_label = |v: &f64| {
        // Whole epochs only: a tick between two epochs has no epoch.
        if (v - v.round()).abs() < 1e-9 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    chart::mesh(
        &mut chart,
        family,
        ("epoch", ""),
        epochs.min(10),
        &epoch_label,
    )?;

    let points: Vec<Vec<Option<(f64, f64)>>> = series
        .iter()
        .map(|s| {
            let at = |(e, v): (usize, &f64)| {
                v.is_finite()
                    .then(|| (e as f64 + 1.0, chart::clamp(*v).clamp(y_lo, y_hi)))
            };
            values(s).iter().enumerate().map(at).collect()
        })
        .collect();
    // All lines first, then all markers, so no line hides a marker.
    for (i, line) in points.iter().enumerate() {
        let colour = style(i).0;
        for run in chart::segments(line) {
            chart
                .draw_series(LineSeries::new(run, colour.stroke_width(2)))
                .map_err(draw_err)?;
        }
    }
    // Markers only while they stay apart; on a long run they would merge
    // into a thick smear.
    let spacing = f64::from(area.dim_in_pixel().0) / epochs as f64;
    if spacing >= 2.5 * f64::from(MARKER_MAX) + 6.0 {
        let plot = chart.plotting_area();
        for (i, line) in points.iter().enumerate() {
            let (colour, shape, radius) = style(i);
            for p in line.iter().flatten() {
                chart::marker(plot, shape, radius, *p, colour)?;
            }
        }
    }
    Ok(())
}

/// Rows of up to three entries, each row centred under the panels.
fn legend(area: &Area, series: &[Series], family: FontFamily) -> Result<(), PlotError> {
    const SWATCH: i32 = 36;
    const GAP: i32 = 8;
    const BETWEEN: i32 = 40;
    let cap = LEGEND_COLUMNS * LEGEND_MAX_ROWS;
    let shown = if series.len() > cap {
        cap - 1
    } else {
        series.len()
    };
    let mut entries: Vec<(Option<usize>, String)> = series[..shown]
        .iter()
        .enumerate()
        .map(|(i, s)| (Some(i), chart::shorten(&s.label, LEGEND_MAX_CHARS)))
        .collect();
    if shown < series.len() {
        entries.push((None, format!("+{} more", series.len() - shown)));
    }
    let text = TextStyle::from((family, 17).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let rows = entries.len().div_ceil(LEGEND_COLUMNS);
    // Fewer rows than reserved: centre them in the reserved band.
    let reserved = rows.max(LEGEND_MIN_ROWS) as i32;
    let row_h = LEGEND_ROW as i32;
    let mut y = (reserved - rows as i32) * row_h / 2 + row_h / 2;
    for row in entries.chunks(LEGEND_COLUMNS) {
        let mut widths = Vec::with_capacity(row.len());
        for (i, label) in row {
            let (w, _) = area.estimate_text_size(label, &text).map_err(draw_err)?;
            let swatch = if i.is_some() { SWATCH + GAP } else { 0 };
            widths.push(w as i32 + swatch);
        }
        let total: i32 = widths.iter().sum::<i32>() + BETWEEN * (row.len() as i32 - 1);
        let mut x = (WIDTH as i32 - total) / 2;
        for ((index, label), w) in row.iter().zip(&widths) {
            let mut tx = x;
            if let Some(i) = index {
                let (colour, shape, radius) = style(*i);
                area.draw(&PathElement::new(
                    [(x, y), (x + SWATCH - 1, y)],
                    colour.stroke_width(2),
                ))
                .map_err(draw_err)?;
                chart::marker(area, shape, radius, (x + SWATCH / 2, y), colour)?;
                tx += SWATCH + GAP;
            }
            area.draw_text(label, &text, (tx, y)).map_err(draw_err)?;
            x += w + BETWEEN;
        }
        y += row_h;
    }
    Ok(())
}

/// Colour, marker shape and marker radius of series `index`.
fn style(index: usize) -> (RGBColor, Marker, i32) {
    let radius = (MARKER_MAX - index.min(100) as i32).max(MARKER_MIN);
    (
        rgb(crate::colour(index)),
        SHAPES[index % SHAPES.len()],
        radius,
    )
}
