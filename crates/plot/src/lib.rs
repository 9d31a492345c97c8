//! Figures for mixnn reports, drawn with `plotters` on its bitmap backend.
//!
//! Three figures: the counterpart of the MixNN paper's Figure 3 (test
//! accuracy and training time per epoch, one line per way of training, side
//! by side), the leakage audit's trade-off (test accuracy against the
//! attacker's SSIM, one point per defence level) and image grids (originals
//! beside reconstructions).
//!
//! Text is drawn with a font compiled into this crate (DejaVu Sans, through
//! plotters' `ab_glyph` feature) rather than one looked up on the machine:
//! the same input gives the same bytes on every machine, and a machine
//! without fonts still gets labelled figures.
//!
//! Figures are built from measurements, so nothing about the numbers is
//! trusted: NaN and infinite values are left out, ranges of any size are
//! scaled into view, and no input makes the drawing panic.

mod chart;
mod figure;
mod font;
mod grid;
mod tradeoff;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use grid::{image_grid, image_grid_png};
pub use tradeoff::{TradeoffPoint, tradeoff, tradeoff_png};

/// One way of training, measured epoch by epoch.
///
/// Entry `i` of either vector belongs to epoch `i + 1`. The vectors may
/// differ in length (a run cut short); NaN or infinite entries (an epoch
/// that was not measured) leave a gap in the line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The legend text, e.g. "distributed (pool)".
    pub label: String,
    /// Test accuracy after each epoch, in whatever unit the caller uses
    /// (fraction or percent); the axis follows the data.
    pub accuracy: Vec<f64>,
    /// Wall-clock training time of each epoch, in seconds.
    pub seconds: Vec<f64>,
}

/// Why no figure was produced.
#[derive(Debug, Error)]
pub enum PlotError {
    /// An empty figure is almost certainly a caller bug, so it is refused
    /// rather than drawn as blank axes.
    #[error("nothing to plot: no series given")]
    NoSeries,

    /// Series were given but none has a single epoch.
    #[error("nothing to plot: none of the {series} series has any epoch")]
    NoEpochs {
        /// How many (empty) series there were.
        series: usize,
    },

    /// A trade-off figure without a single point whose SSIM and accuracy
    /// are both finite.
    #[error(
        "nothing to plot: none of the {points} trade-off points has a finite SSIM and accuracy"
    )]
    NoPoints {
        /// How many points were given.
        points: usize,
    },

    /// A parameter that must be a finite number was not (e.g. the accuracy
    /// line of the trade-off figure).
    #[error("{what} must be a finite number, got {value}")]
    NotFinite {
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: f64,
    },

    /// An image grid that cannot be laid out: no rows, a zero image size,
    /// an image whose length is not width x height, or a figure too large.
    #[error("image grid: {0}")]
    Grid(String),

    /// The font compiled into this crate could not be registered with
    /// plotters (a corrupt build, not bad input).
    #[error("the embedded font could not be loaded")]
    Font,

    /// plotters failed to draw.
    #[error("drawing the figure: {0}")]
    Draw(String),

    /// The PNG encoder failed.
    #[error("encoding the figure as PNG: {0}")]
    Encode(#[from] png::EncodingError),

    /// Writing the PNG file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file that could not be written.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// The colour of series `index` (lines, markers and legend swatch), so
/// callers and tests can find a series in the image. Six distinct colours,
/// then they repeat (with a different marker shape).
pub fn colour(index: usize) -> [u8; 3] {
    figure::PALETTE[index % figure::PALETTE.len()]
}

/// Draws the Figure 3 pair of panels for `series` and writes it as a PNG to
/// `path`.
///
/// The image is 1200 x 500 pixels for up to six series; each further row of
/// three legend entries adds 26 pixels of height.
pub fn figure3(title: &str, series: &[Series], path: &Path) -> Result<(), PlotError> {
    write(path, &figure3_png(title, series)?)
}

/// Same, into memory (for tests).
pub fn figure3_png(title: &str, series: &[Series]) -> Result<Vec<u8>, PlotError> {
    if series.is_empty() {
        return Err(PlotError::NoSeries);
    }
    let epochs = series
        .iter()
        .map(|s| s.accuracy.len().max(s.seconds.len()))
        .max()
        .unwrap_or(0);
    if epochs == 0 {
        return Err(PlotError::NoEpochs {
            series: series.len(),
        });
    }
    let (width, height) = figure::size(series.len());
    let mut rgb = chart::blank(width, height);
    figure::render(&mut rgb, (width, height), title, series, epochs)?;
    encode(&rgb, width, height, png::ColorType::Rgb)
}

/// Writes encoded PNG bytes to `path`, naming the file in the error.
fn write(path: &Path, png: &[u8]) -> Result<(), PlotError> {
    std::fs::write(path, png).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Encodes 8-bit pixels (`Rgb` or `Grayscale`) as PNG. The `png` crate
/// writes no timestamp or other varying chunk, so equal pixels give equal
/// bytes.
fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    colour: png::ColorType,
) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}
