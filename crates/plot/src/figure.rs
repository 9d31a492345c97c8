//! The layout of Figure 3: a title, two panels sharing the epoch axis, and a
//! legend under both, so the eye can match a line across the two panels.

use crate::Series;
use crate::axis::Axis;
use crate::canvas::{Canvas, Marker, Rect, Rgb, fit_scale, text_width};

/// Distinct on white and to most colour-blind readers (matplotlib's
/// "tab10", first six).
pub const PALETTE: [Rgb; 6] = [
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
const MARKER_MAX: i64 = 5;
const MARKER_MIN: i64 = 3;

const WIDTH: i64 = 1200;
const BASE_HEIGHT: i64 = 500;
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [20, 20, 20];
const GRID: Rgb = [225, 225, 225];

const LEGEND_COLUMNS: usize = 3;
/// Room for two legend rows is always kept, so up to six series give the
/// same image size.
const LEGEND_MIN_ROWS: usize = 2;
/// More rows than this would crowd out the panels; the rest of the series
/// are summarised as "+N more".
const LEGEND_MAX_ROWS: usize = 6;
const LEGEND_ROW: i64 = 26;
/// Longer labels are cut so three entries fit in a row.
const LEGEND_MAX_CHARS: usize = 30;

/// Room left of each plot area for the value labels.
const MARGIN_LEFT: i64 = 95;
const MARGIN_RIGHT: i64 = 30;
const PLOT_TOP: i64 = 86;
/// Below the plot area: tick labels and the "epoch" caption.
const BELOW_PLOT: i64 = 64;

/// Picks what one panel shows out of a series.
type Values = fn(&Series) -> &[f64];

/// Paints the whole figure; `epochs` is the longest series (at least 1).
pub fn render(title: &str, series: &[Series], epochs: usize) -> Canvas {
    let entries = series.len().min(LEGEND_COLUMNS * LEGEND_MAX_ROWS);
    let rows = entries.div_ceil(LEGEND_COLUMNS).max(LEGEND_MIN_ROWS);
    let height = BASE_HEIGHT + LEGEND_ROW * (rows - LEGEND_MIN_ROWS) as i64;
    let mut canvas = Canvas::new(WIDTH as usize, height as usize, WHITE);

    let scale = fit_scale(title, 3, WIDTH - 20);
    centred_text(&mut canvas, WIDTH / 2, 14, title, scale);

    let legend_top = height - 14 - LEGEND_ROW * rows as i64;
    let plot_bottom = legend_top - BELOW_PLOT;
    let epoch_axis = Axis::for_epochs(epochs);
    let panels: [(&str, Values); 2] = [
        ("test accuracy per epoch", |s| &s.accuracy),
        ("training time per epoch (s)", |s| &s.seconds),
    ];
    for (i, (name, values)) in panels.into_iter().enumerate() {
        let left = i as i64 * WIDTH / 2;
        let area = Rect {
            x0: left + MARGIN_LEFT,
            y0: PLOT_TOP,
            x1: left + WIDTH / 2 - MARGIN_RIGHT,
            y1: plot_bottom,
        };
        let value_axis = Axis::for_values(series.iter().flat_map(|s| values(s).iter().copied()));
        panel(
            &mut canvas,
            area,
            name,
            &epoch_axis,
            &value_axis,
            series,
            values,
        );
    }
    legend(&mut canvas, legend_top, series);
    canvas
}

fn panel(
    canvas: &mut Canvas,
    area: Rect,
    name: &str,
    x_axis: &Axis,
    y_axis: &Axis,
    series: &[Series],
    values: Values,
) {
    let px = |epoch: f64| to_pixel(x_axis.map(epoch, area.x0 as f64, (area.x1 - 1) as f64));
    let py = |v: f64| to_pixel(y_axis.map(v, (area.y1 - 1) as f64, area.y0 as f64));
    let (w, h) = (area.x1 - area.x0, area.y1 - area.y0);

    for (v, _) in &y_axis.ticks {
        canvas.fill_rect(area.x0, py(*v), w, 1, GRID);
    }
    for (e, _) in &x_axis.ticks {
        canvas.fill_rect(px(*e), area.y0, 1, h, GRID);
    }

    // Markers only while they stay apart; on a long run they would merge
    // into a thick smear.
    let spacing = w as f64 / (x_axis.hi - x_axis.lo);
    let markers = spacing >= 2.5 * MARKER_MAX as f64;
    let points: Vec<Vec<Option<(i64, i64)>>> = series
        .iter()
        .map(|s| {
            let finite =
                |(e, v): (usize, &f64)| v.is_finite().then(|| (px(e as f64 + 1.0), py(*v)));
            values(s).iter().enumerate().map(finite).collect()
        })
        .collect();
    canvas.set_clip(Some(area));
    // All lines first, then all markers, so no line hides a marker.
    for (i, line) in points.iter().enumerate() {
        for pair in line.windows(2) {
            if let [Some(a), Some(b)] = pair {
                canvas.line(*a, *b, 2, style(i).0);
            }
        }
    }
    for (i, line) in points.iter().enumerate().filter(|_| markers) {
        let (colour, shape, radius) = style(i);
        for (x, y) in line.iter().flatten() {
            canvas.marker(shape, radius, *x, *y, colour);
        }
    }
    canvas.set_clip(None);
    canvas.outline(area, INK);

    let y_labels: Vec<&str> = y_axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
    let widest = y_labels.iter().map(|l| text_width(l, 2)).max().unwrap_or(0);
    let scale = if widest <= MARGIN_LEFT - 16 { 2 } else { 1 };
    for (v, label) in &y_axis.ticks {
        let y = py(*v);
        canvas.fill_rect(area.x0 - 5, y, 5, 1, INK);
        let x = area.x0 - 9 - text_width(label, scale);
        canvas.text(x, y - 7 * scale / 2, label, scale, INK);
    }
    for (e, label) in &x_axis.ticks {
        let x = px(*e);
        canvas.fill_rect(x, area.y1, 1, 5, INK);
        centred_text(canvas, x, area.y1 + 9, label, 2);
    }
    let mid = (area.x0 + area.x1) / 2;
    centred_text(canvas, mid, area.y1 + 36, "epoch", 2);
    let scale = fit_scale(name, 2, area.x1 - area.x0);
    centred_text(canvas, mid, area.y0 - 12 - 7 * scale, name, scale);
}

/// Rows of up to three entries, each row centred under the panels.
fn legend(canvas: &mut Canvas, top: i64, series: &[Series]) {
    const SWATCH: i64 = 36;
    const GAP: i64 = 8;
    const BETWEEN: i64 = 40;
    let cap = LEGEND_COLUMNS * LEGEND_MAX_ROWS;
    let shown = if series.len() > cap {
        cap - 1
    } else {
        series.len()
    };
    let mut entries: Vec<(Option<usize>, String)> = series[..shown]
        .iter()
        .enumerate()
        .map(|(i, s)| (Some(i), shorten(&s.label)))
        .collect();
    if shown < series.len() {
        entries.push((None, format!("+{} more", series.len() - shown)));
    }
    let rows = entries.len().div_ceil(LEGEND_COLUMNS);
    // Fewer rows than reserved: centre them in the reserved band.
    let reserved = rows.max(LEGEND_MIN_ROWS) as i64;
    let mut y = top + (reserved - rows as i64) * LEGEND_ROW / 2 + 4;
    for row in entries.chunks(LEGEND_COLUMNS) {
        let width = |(i, label): &(Option<usize>, String)| {
            text_width(label, 2) + if i.is_some() { SWATCH + GAP } else { 0 }
        };
        let total: i64 = row.iter().map(width).sum::<i64>() + BETWEEN * (row.len() as i64 - 1);
        let mut x = (WIDTH - total) / 2;
        for entry in row {
            let mut tx = x;
            if let Some(i) = entry.0 {
                let (colour, shape, radius) = style(i);
                let cy = y + 7;
                canvas.line((x, cy), (x + SWATCH - 1, cy), 2, colour);
                canvas.marker(shape, radius, x + SWATCH / 2, cy, colour);
                tx += SWATCH + GAP;
            }
            canvas.text(tx, y, &entry.1, 2, INK);
            x += width(entry) + BETWEEN;
        }
        y += LEGEND_ROW;
    }
}

/// Colour, marker shape and marker radius of series `index`.
fn style(index: usize) -> (Rgb, Marker, i64) {
    let radius = (MARKER_MAX - index as i64).max(MARKER_MIN);
    (crate::colour(index), SHAPES[index % SHAPES.len()], radius)
}

fn shorten(label: &str) -> String {
    if label.chars().count() <= LEGEND_MAX_CHARS {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(LEGEND_MAX_CHARS - 2).collect();
        s.push_str("..");
        s
    }
}

fn centred_text(canvas: &mut Canvas, cx: i64, y: i64, s: &str, scale: i64) {
    canvas.text(cx - text_width(s, scale) / 2, y, s, scale, INK);
}

/// Rounds to a pixel; `as` saturates and maps NaN to 0, and the canvas clips,
/// so any value is safe.
fn to_pixel(p: f64) -> i64 {
    p.round() as i64
}
