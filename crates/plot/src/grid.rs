//! Image grids: originals beside reconstructions, so a reader sees what an
//! SSIM figure means. Each cell is a grayscale image, enlarged by a whole
//! factor (nearest neighbour, so no smoothing makes a reconstruction look
//! better than it is).

use std::path::Path;

use crate::PlotError;

/// Cells are enlarged until their longer side is at least this many pixels
/// (a 28 x 28 MNIST digit becomes 112 x 112).
const MIN_CELL: usize = 112;
/// Space between cells, in the gutter's grey.
const GAP: usize = 4;
const GUTTER: u8 = 128;
/// No side of the figure may exceed this many pixels: the figure is for
/// reading, and a bigger one is a caller bug.
const MAX_SIDE: usize = 16_384;

/// Draws `rows` of `width` x `height` grayscale images (values in [0, 1],
/// row-major; a row holds e.g. one original and its reconstructions, or the
/// originals in one row and the reconstructions in the next) and writes the
/// grid as a PNG to `path`.
///
/// Values are clamped to [0, 1]; NaN is drawn black. Rows may differ in
/// length (missing cells stay gutter grey). Errors: no image at all, a zero
/// width or height, an image whose length is not `width * height`, or a
/// figure larger than 16384 pixels a side.
pub fn image_grid(
    path: &Path,
    rows: &[Vec<Vec<f32>>],
    width: usize,
    height: usize,
) -> Result<(), PlotError> {
    crate::write(path, &image_grid_png(rows, width, height)?)
}

/// Same, into memory.
pub fn image_grid_png(
    rows: &[Vec<Vec<f32>>],
    width: usize,
    height: usize,
) -> Result<Vec<u8>, PlotError> {
    let layout = Layout::new(rows, width, height)?;
    let mut pixels = vec![GUTTER; layout.width * layout.height];
    for (r, row) in rows.iter().enumerate() {
        for (c, image) in row.iter().enumerate() {
            layout.paint(&mut pixels, r, c, image);
        }
    }
    // Both sides are at most MAX_SIDE, so they fit a u32.
    crate::encode(
        &pixels,
        layout.width as u32,
        layout.height as u32,
        png::ColorType::Grayscale,
    )
}

/// Where each cell goes in the figure.
struct Layout {
    /// Image size in values.
    cell: (usize, usize),
    /// Enlargement factor.
    scale: usize,
    /// Figure size in pixels.
    width: usize,
    height: usize,
}

impl Layout {
    fn new(rows: &[Vec<Vec<f32>>], w: usize, h: usize) -> Result<Layout, PlotError> {
        if w == 0 || h == 0 {
            return Err(PlotError::Grid(format!("image size {w}x{h} is empty")));
        }
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        if cols == 0 {
            return Err(PlotError::Grid("no images given".into()));
        }
        let len = w.checked_mul(h).ok_or_else(|| too_large(w, h))?;
        for (r, row) in rows.iter().enumerate() {
            for (c, image) in row.iter().enumerate() {
                if image.len() != len {
                    return Err(PlotError::Grid(format!(
                        "image at row {r}, column {c} has {} values, not {w}x{h} = {len}",
                        image.len()
                    )));
                }
            }
        }
        let scale = MIN_CELL.div_ceil(w.max(h)).max(1);
        let side = |n: usize, size: usize| {
            size.checked_mul(scale)
                .and_then(|s| s.checked_add(GAP))
                .and_then(|s| s.checked_mul(n))
                .and_then(|s| s.checked_add(GAP))
                .filter(|s| *s <= MAX_SIDE)
        };
        match (side(cols, w), side(rows.len(), h)) {
            (Some(width), Some(height)) => Ok(Layout {
                cell: (w, h),
                scale,
                width,
                height,
            }),
            _ => Err(too_large(cols * w, rows.len() * h)),
        }
    }

    /// Paints the image of row `r`, column `c` (its length was checked).
    fn paint(&self, pixels: &mut [u8], r: usize, c: usize, image: &[f32]) {
        let (w, h) = self.cell;
        let s = self.scale;
        let x0 = GAP + c * (w * s + GAP);
        let y0 = GAP + r * (h * s + GAP);
        for (i, v) in image.iter().enumerate() {
            let grey = level(*v);
            let (x, y) = (x0 + (i % w) * s, y0 + (i / w) * s);
            for dy in 0..s {
                let start = (y + dy) * self.width + x;
                if let Some(line) = pixels.get_mut(start..start + s) {
                    line.fill(grey);
                }
            }
        }
    }
}

/// A [0, 1] value as an 8-bit grey level; NaN is black.
fn level(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

fn too_large(w: usize, h: usize) -> PlotError {
    PlotError::Grid(format!(
        "a {w}x{h} grid enlarged for reading would exceed {MAX_SIDE} pixels a side"
    ))
}
