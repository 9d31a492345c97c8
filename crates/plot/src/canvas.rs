//! An RGB raster with just the primitives a line chart needs.
//!
//! Every primitive clips and every loop is bounded by the visible area, so a
//! coordinate far off the canvas (a wild data value, an endless label) costs
//! nothing and can never index out of bounds.

use crate::font::{self, ADVANCE, GLYPH_W};

/// A colour as red, green, blue.
pub type Rgb = [u8; 3];

/// Coordinates are clamped to this before Bresenham walks them: far enough
/// outside any canvas that clamping never changes what is visible, near
/// enough that the walk stays short.
const FAR: i64 = 1 << 14;

/// A rectangle of pixels, `x0..x1` by `y0..y1` (ends exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x0: i64,
    pub y0: i64,
    pub x1: i64,
    pub y1: i64,
}

impl Rect {
    fn intersect(self, other: Rect) -> Rect {
        Rect {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
        }
    }
}

/// The shape drawn at each data point; varying it as well as the colour keeps
/// series apart in a greyscale print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Square,
    Circle,
    Diamond,
    Triangle,
}

/// An 8-bit RGB image, row-major, as the PNG encoder wants it.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
    clip: Rect,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            pixels.extend_from_slice(&background);
        }
        Canvas {
            width,
            height,
            pixels,
            clip: Self::full(width, height),
        }
    }

    fn full(width: usize, height: usize) -> Rect {
        Rect {
            x0: 0,
            y0: 0,
            x1: width as i64,
            y1: height as i64,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.pixels
    }

    /// Restricts drawing to `rect` (within the canvas); `None` lifts it.
    pub fn set_clip(&mut self, rect: Option<Rect>) {
        let full = Self::full(self.width, self.height);
        self.clip = rect.map_or(full, |r| r.intersect(full));
    }

    /// Fills `w` by `h` pixels from (`x`, `y`), as far as the clip allows.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        let r = Rect {
            x0: x,
            y0: y,
            x1: x.saturating_add(w),
            y1: y.saturating_add(h),
        }
        .intersect(self.clip);
        for py in r.y0..r.y1 {
            for px in r.x0..r.x1 {
                // In range: the clip never exceeds the canvas.
                let i = (py as usize * self.width + px as usize) * 3;
                self.pixels[i..i + 3].copy_from_slice(&colour);
            }
        }
    }

    /// Draws the outline of `r`, one pixel wide, just inside it.
    pub fn outline(&mut self, r: Rect, colour: Rgb) {
        let (w, h) = (r.x1 - r.x0, r.y1 - r.y0);
        self.fill_rect(r.x0, r.y0, w, 1, colour);
        self.fill_rect(r.x0, r.y1 - 1, w, 1, colour);
        self.fill_rect(r.x0, r.y0, 1, h, colour);
        self.fill_rect(r.x1 - 1, r.y0, 1, h, colour);
    }

    /// A Bresenham line whose every step stamps a `thickness`-pixel square:
    /// crisp, so the series colours stay exact (tests look for them).
    pub fn line(&mut self, from: (i64, i64), to: (i64, i64), thickness: i64, colour: Rgb) {
        let clamp = |v: i64| v.clamp(-FAR, FAR);
        let (mut x, mut y) = (clamp(from.0), clamp(from.1));
        let (x1, y1) = (clamp(to.0), clamp(to.1));
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
        let t = thickness.max(1);
        let off = (t - 1) / 2;
        let mut err = dx + dy;
        loop {
            self.fill_rect(x - off, y - off, t, t, colour);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A filled marker centred on (`cx`, `cy`), `radius` pixels (1 to 8)
    /// from centre to edge.
    pub fn marker(&mut self, shape: Marker, radius: i64, cx: i64, cy: i64, colour: Rgb) {
        let r = radius.clamp(1, 8);
        for dy in -r..=r {
            for dx in -r..=r {
                let inside = match shape {
                    Marker::Square => dx.abs() < r && dy.abs() < r,
                    Marker::Circle => dx * dx + dy * dy <= r * r + r / 2,
                    Marker::Diamond => dx.abs() + dy.abs() <= r + 1,
                    // Apex one pixel wide at the top, base 2r+1 wide.
                    Marker::Triangle => dx.abs() <= (dy + r + 1) / 2,
                };
                if inside {
                    self.fill_rect(cx.saturating_add(dx), cy.saturating_add(dy), 1, 1, colour);
                }
            }
        }
    }

    /// Writes `s` with its top-left corner at (`x`, `y`), each font pixel
    /// drawn as a `scale` by `scale` square.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, colour: Rgb) {
        let scale = scale.clamp(1, 8);
        let step = ADVANCE as i64 * scale;
        let mut cx = x;
        for c in s.chars() {
            // Everything further right is clipped anyway; stop early so a
            // huge label costs no more than a short one.
            if cx >= self.clip.x1 {
                break;
            }
            if cx + step > self.clip.x0 {
                for (ry, bits) in font::glyph(c).iter().enumerate() {
                    for rx in 0..GLYPH_W {
                        if bits >> (GLYPH_W - 1 - rx) & 1 == 1 {
                            let px = cx + rx as i64 * scale;
                            let py = y.saturating_add(ry as i64 * scale);
                            self.fill_rect(px, py, scale, scale, colour);
                        }
                    }
                }
            }
            cx += step;
        }
    }
}

/// How wide `s` is when drawn at `scale`, without the gap after the last
/// character.
pub fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    (n * ADVANCE as i64 - 1).max(0) * scale.clamp(1, 8)
}

/// The largest scale up to `max` at which `s` fits in `width` pixels; 1 if
/// none does (the rest is clipped).
pub fn fit_scale(s: &str, max: i64, width: i64) -> i64 {
    (1..=max.max(1))
        .rev()
        .find(|&k| text_width(s, k) <= width)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: [u8; 3] = [255, 255, 255];
    const K: [u8; 3] = [0, 0, 0];

    fn count(c: &Canvas, colour: Rgb) -> usize {
        c.pixels.chunks(3).filter(|p| *p == colour).count()
    }

    #[test]
    fn far_off_canvas_is_harmless() {
        let mut c = Canvas::new(10, 10, W);
        c.line((i64::MIN, i64::MAX), (i64::MAX, i64::MIN), 2, K);
        c.fill_rect(i64::MAX - 1, i64::MIN, i64::MAX, i64::MAX, K);
        c.text(-1_000_000, 3, &"x".repeat(100_000), 99, K);
        c.marker(Marker::Triangle, 99, -5, 12, K);
        assert_eq!(c.width() * c.height() * 3, c.into_raw().len());
    }

    #[test]
    fn clip_limits_drawing() {
        let mut c = Canvas::new(10, 10, W);
        c.set_clip(Some(Rect {
            x0: 2,
            y0: 2,
            x1: 4,
            y1: 4,
        }));
        c.fill_rect(0, 0, 10, 10, K);
        assert_eq!(count(&c, K), 4);
    }

    #[test]
    fn horizontal_line_covers_its_length() {
        let mut c = Canvas::new(20, 5, W);
        c.line((2, 2), (11, 2), 1, K);
        assert_eq!(count(&c, K), 10);
    }

    #[test]
    fn widths() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("ab", 1), 11);
        assert_eq!(fit_scale("abc", 3, 40), 2);
        assert_eq!(fit_scale("abc", 3, 1), 1);
    }
}
