//! Figures for mixnn reports, drawn without a plotting stack.
//!
//! The one figure is the counterpart of the MixNN paper's Figure 3: test
//! accuracy and training time per epoch, one line per way of training, side
//! by side. It is rasterised here with an embedded bitmap font and encoded
//! with `png`, because a plotting crate (and the system fonts it would look
//! for) is a heavy dependency for two line charts, and the same input should
//! give the same bytes on every machine.
//!
//! Figures are built from measurements, so nothing about the numbers is
//! trusted: NaN and infinite values are left out, ranges of any size are
//! scaled into view, and no input makes the drawing panic.

mod axis;
mod canvas;
mod figure;
mod font;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

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
    let png = figure3_png(title, series)?;
    std::fs::write(path, png).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
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
    let canvas = figure::render(title, series, epochs);
    encode(canvas)
}

fn encode(canvas: canvas::Canvas) -> Result<Vec<u8>, PlotError> {
    // Both dimensions are small constants plus a capped legend, far below
    // u32::MAX.
    let (w, h) = (canvas.width() as u32, canvas.height() as u32);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.into_raw())?;
    writer.finish()?;
    Ok(out)
}
