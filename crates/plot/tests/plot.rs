//! The figure as a caller sees it: bytes that decode as a PNG of the
//! promised size, with every series visible in both panels, and refusals
//! (never panics) for input it cannot draw.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use mixnn_plot::{PlotError, Series, colour, figure3, figure3_png};

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let decoder = png::Decoder::new(Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("PNG frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image {
            width: info.width as usize,
            height: info.height as usize,
            rgb: buf,
        }
    }

    /// Pixels of exactly `c` in columns `x0..x1`, rows `0..y1`.
    fn count(&self, c: [u8; 3], x0: usize, x1: usize, y1: usize) -> usize {
        (0..y1.min(self.height))
            .flat_map(|y| (x0..x1.min(self.width)).map(move |x| (x, y)))
            .filter(|(x, y)| {
                let i = (y * self.width + x) * 3;
                self.rgb[i..i + 3] == c
            })
            .count()
    }
}

fn paper_like() -> Vec<Series> {
    let series = |label: &str, acc0: f64, secs: f64| Series {
        label: label.to_string(),
        accuracy: (0..10)
            .map(|e| acc0 + 0.08 * (1.0 - 0.7f64.powi(e)))
            .collect(),
        seconds: (0..10).map(|e| secs + 0.3 * f64::from(e % 3)).collect(),
    };
    vec![
        series("distributed (pool)", 0.88, 41.0),
        series("single-process wasm", 0.89, 12.5),
        series("single-process native", 0.885, 7.0),
    ]
}

#[test]
fn decodes_to_the_documented_size() {
    let img = Image::decode(&figure3_png("MNIST, paper MLP", &paper_like()).unwrap());
    assert_eq!((img.width, img.height), (1200, 500));
}

#[test]
fn every_series_shows_in_both_panels() {
    let img = Image::decode(&figure3_png("Figure 3", &paper_like()).unwrap());
    // Above the legend, so the legend swatches do not count.
    let plots_end = 380;
    for i in 0..3 {
        let left = img.count(colour(i), 0, 600, plots_end);
        let right = img.count(colour(i), 600, 1200, plots_end);
        assert!(
            left > 100 && right > 100,
            "series {i}: {left} left, {right} right"
        );
    }
    // No colour beyond the series given.
    assert_eq!(img.count(colour(3), 0, 1200, img.height), 0);
}

#[test]
fn colours_are_distinct() {
    let palette: Vec<_> = (0..6).map(colour).collect();
    for (i, a) in palette.iter().enumerate() {
        assert!(palette[i + 1..].iter().all(|b| a != b));
        assert_ne!(*a, [255, 255, 255]);
    }
}

#[test]
fn empty_input_is_an_error() {
    assert!(matches!(figure3_png("t", &[]), Err(PlotError::NoSeries)));
    let empty = [Series::default(), Series::default()];
    let err = figure3_png("t", &empty).unwrap_err();
    assert!(matches!(err, PlotError::NoEpochs { series: 2 }), "{err}");
}

#[test]
fn single_epoch() {
    let one = [Series {
        label: "only".into(),
        accuracy: vec![0.5],
        seconds: vec![3.0],
    }];
    let img = Image::decode(&figure3_png("one epoch", &one).unwrap());
    assert_eq!((img.width, img.height), (1200, 500));
    assert!(img.count(colour(0), 0, 600, 380) > 20);
    assert!(img.count(colour(0), 600, 1200, 380) > 20);
}

#[test]
fn non_finite_values_are_skipped() {
    let odd = [
        Series {
            label: "gaps".into(),
            accuracy: vec![0.9, f64::NAN, 0.95, f64::INFINITY, 0.96],
            seconds: vec![f64::NEG_INFINITY, 2.0, 2.5, f64::NAN],
        },
        Series {
            label: "nothing measured".into(),
            accuracy: vec![f64::NAN; 3],
            seconds: vec![],
        },
    ];
    let img = Image::decode(&figure3_png("NaN", &odd).unwrap());
    assert!(img.count(colour(0), 0, 600, 380) > 20);
}

#[test]
fn wild_input_never_panics() {
    let extremes = vec![f64::MAX, f64::MIN, 5e-324, -0.0, 1e-300, f64::NAN];
    let mut many: Vec<Series> = (0..40)
        .map(|i| Series {
            label: format!("série µ {i} {}", "x".repeat(i * 10)),
            accuracy: extremes.clone(),
            seconds: vec![1e300; i],
        })
        .collect();
    many.push(Series {
        label: String::new(),
        accuracy: (0..5000).map(f64::from).collect(),
        seconds: vec![0.0; 5000],
    });
    let img = Image::decode(&figure3_png(&"long title ".repeat(500), &many).unwrap());
    assert_eq!(img.width, 1200);
    assert!(img.height > 500);
}

#[test]
fn writes_the_file_or_names_it_in_the_error() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("mixnn-plot-figure3.png");
    figure3("file", &paper_like(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(Image::decode(&bytes).width, 1200);

    let bad = dir.join("no such dir").join("f.png");
    let err = figure3("file", &paper_like(), &bad).unwrap_err();
    assert!(matches!(err, PlotError::Io { .. }));
    assert!(err.to_string().contains("no such dir"), "{err}");
}
