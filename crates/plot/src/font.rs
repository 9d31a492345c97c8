//! The one font every figure uses, compiled in.
//!
//! plotters' `ab_glyph` feature draws text only with fonts registered by
//! name, and never asks the system for one; registering DejaVu Sans from the
//! crate's own bytes keeps the figures identical on every machine. DejaVu's
//! licence (fonts/DejaVuSans-LICENSE.txt) allows redistributing it
//! unchanged.

use std::sync::OnceLock;

use plotters::style::{FontFamily, FontStyle, register_font};

use crate::PlotError;

/// The family name the font is registered under: not a generic name such
/// as "sans-serif", so nothing else can shadow it.
pub const FAMILY: &str = "mixnn-dejavu-sans";

static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Registers the font once per process and returns its family; every
/// figure calls this before drawing text.
pub fn family() -> Result<FontFamily<'static>, PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(FontFamily::Name(FAMILY))
    } else {
        Err(PlotError::Font)
    }
}
