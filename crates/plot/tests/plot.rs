//! The figures as a caller sees them: bytes that decode as a PNG of the
//! promised size, with every series (point, image) visible, the same bytes
//! for the same input, and refusals (never panics) for input they cannot
//! draw.

// Tests fail by panicking: unwrap, expect and panic! are how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use mixnn_plot::{
    PlotError, Series, TradeoffPoint, colour, figure3, figure3_png, image_grid, image_grid_png,
    tradeoff, tradeoff_png,
};

struct Image {
    width: usize,
    height: usize,
    /// Pixels, RGB (figures) or one grey byte each (grids).
    rgb: Vec<u8>,
    gray: bool,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let decoder = png::Decoder::new(Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("PNG frame");
        assert!(matches!(
            info.color_type,
            png::ColorType::Rgb | png::ColorType::Grayscale
        ));
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image {
            width: info.width as usize,
            height: info.height as usize,
            rgb: buf,
            gray: info.color_type == png::ColorType::Grayscale,
        }
    }

    /// The grey level at (x, y) of a grid.
    fn grey(&self, x: usize, y: usize) -> u8 {
        assert!(self.gray);
        self.rgb[y * self.width + x]
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

#[test]
fn same_input_gives_the_same_bytes() {
    let a = figure3_png("Figure 3", &paper_like()).unwrap();
    let b = figure3_png("Figure 3", &paper_like()).unwrap();
    assert_eq!(a, b);
    let c = figure3_png("Figure 3!", &paper_like()).unwrap();
    assert_ne!(a, c, "the title must show");
    let t = tradeoff_png("t", &sweep(), 0.95).unwrap();
    assert_eq!(t, tradeoff_png("t", &sweep(), 0.95).unwrap());
    let g = image_grid_png(&digits(), 28, 28).unwrap();
    assert_eq!(g, image_grid_png(&digits(), 28, 28).unwrap());
}

fn sweep() -> Vec<TradeoffPoint> {
    [0.0, 0.3, 0.6, 1.0, 1.5]
        .iter()
        .map(|&s| TradeoffPoint {
            label: format!("σ={s}"),
            ssim: 0.95 - 0.4 * s,
            accuracy: 0.99 - 0.04 * s,
        })
        .collect()
}

#[test]
fn tradeoff_draws_every_point_and_both_lines() {
    let img = Image::decode(&tradeoff_png("Gaussian noise at conv1", &sweep(), 0.95).unwrap());
    assert_eq!((img.width, img.height), (900, 640));
    // The points (a 5-pixel disc each) in the series colour.
    assert!(img.count(colour(0), 0, 900, 640) > 5 * 60);
    // The 95% line spans the plot in red.
    assert!(img.count(colour(3), 0, 900, 640) > 2 * 600);
    // The dashed SSIM 0.3 line: dark grey pixels in one column band.
    assert!(img.count([90, 90, 90], 0, 900, 640) > 2 * 200);
    // One point fewer draws fewer point pixels.
    let fewer = Image::decode(&tradeoff_png("t", &sweep()[..2], 0.95).unwrap());
    assert!(fewer.count(colour(0), 0, 900, 640) < img.count(colour(0), 0, 900, 640));
}

#[test]
fn tradeoff_refuses_what_it_cannot_draw() {
    let err = tradeoff_png("t", &[], 0.95).unwrap_err();
    assert!(matches!(err, PlotError::NoPoints { points: 0 }), "{err}");
    let nan = [TradeoffPoint {
        label: "nan".into(),
        ssim: f64::NAN,
        accuracy: 0.9,
    }];
    let err = tradeoff_png("t", &nan, 0.95).unwrap_err();
    assert!(matches!(err, PlotError::NoPoints { points: 1 }), "{err}");
    let err = tradeoff_png("t", &sweep(), f64::INFINITY).unwrap_err();
    assert!(err.to_string().contains("accuracy line"), "{err}");
}

#[test]
fn tradeoff_survives_wild_points() {
    let mut wild = sweep();
    for (ssim, accuracy) in [
        (f64::MAX, f64::MIN),
        (-1e308, 5e-324),
        (f64::NAN, 0.5),
        (0.5, f64::NEG_INFINITY),
    ] {
        wild.push(TradeoffPoint {
            label: "x".repeat(500),
            ssim,
            accuracy,
        });
    }
    let img = Image::decode(&tradeoff_png(&"long ".repeat(300), &wild, -3.0).unwrap());
    assert_eq!((img.width, img.height), (900, 640));
    let one = [TradeoffPoint {
        label: "only".into(),
        ssim: 0.3,
        accuracy: 0.95,
    }];
    assert!(tradeoff_png("one", &one, 0.95).is_ok());

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bad = dir.join("no such dir").join("t.png");
    let err = tradeoff(&bad, "t", &sweep(), 0.95).unwrap_err();
    assert!(err.to_string().contains("no such dir"), "{err}");
}

/// Two rows: a bright square and its dimmer "reconstruction".
fn digits() -> Vec<Vec<Vec<f32>>> {
    let square = |v: f32| -> Vec<f32> {
        (0..28 * 28)
            .map(|i| {
                let (x, y) = (i % 28, i / 28);
                if (8..20).contains(&x) && (8..20).contains(&y) {
                    v
                } else {
                    0.0
                }
            })
            .collect()
    };
    vec![
        vec![square(1.0), square(0.5)],
        vec![square(0.8), square(0.2)],
    ]
}

#[test]
fn image_grid_enlarges_each_cell_in_place() {
    let img = Image::decode(&image_grid_png(&digits(), 28, 28).unwrap());
    // 28 -> 112 pixels a cell, 4-pixel gaps: 2 * 112 + 3 * 4.
    assert_eq!((img.width, img.height), (236, 236));
    let centre = |row: usize, col: usize| img.grey(4 + col * 116 + 56, 4 + row * 116 + 56);
    assert_eq!(centre(0, 0), 255);
    assert_eq!(centre(0, 1), 128);
    assert_eq!(centre(1, 0), 204);
    assert_eq!(centre(1, 1), 51);
    // Image corners are black, the gutter is grey.
    assert_eq!(img.grey(4, 4), 0);
    assert_eq!(img.grey(0, 0), 128);
}

#[test]
fn image_grid_clamps_values_and_allows_ragged_rows() {
    let odd = vec![
        vec![vec![f32::NAN, 2.0, -1.0, f32::INFINITY]],
        vec![vec![0.5; 4], vec![1.0; 4]],
    ];
    let img = Image::decode(&image_grid_png(&odd, 2, 2).unwrap());
    // Each value becomes a 56 x 56 block: 112 pixels a cell.
    assert_eq!((img.width, img.height), (4 + 2 * 116, 4 + 2 * 116));
    assert_eq!(img.grey(4, 4), 0, "NaN is black");
    assert_eq!(img.grey(4 + 56, 4), 255, "above 1 is white");
    assert_eq!(img.grey(4, 4 + 56), 0, "below 0 is black");
    assert_eq!(img.grey(4 + 56, 4 + 56), 255, "infinity is white");
    assert_eq!(
        img.grey(4 + 116 + 10, 4 + 10),
        128,
        "a missing cell stays gutter"
    );
}

#[test]
fn image_grid_refuses_bad_input() {
    let msg = |r: Result<Vec<u8>, PlotError>| r.unwrap_err().to_string();
    assert!(msg(image_grid_png(&[], 28, 28)).contains("no images"));
    assert!(msg(image_grid_png(&[vec![]], 28, 28)).contains("no images"));
    assert!(msg(image_grid_png(&digits(), 0, 28)).contains("empty"));
    let short = vec![vec![vec![0.0; 28 * 28]], vec![vec![0.0; 27]]];
    let m = msg(image_grid_png(&short, 28, 28));
    assert!(
        m.contains("row 1, column 0") && m.contains("27 values"),
        "{m}"
    );
    let huge = vec![vec![vec![0.0; 1]; 20_000]];
    assert!(msg(image_grid_png(&huge, 1, 1)).contains("exceed"));
    let overflow = vec![vec![vec![0.0; 1]]];
    assert!(msg(image_grid_png(&overflow, usize::MAX, 2)).contains("exceed"));

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("mixnn-plot-grid.png");
    image_grid(&path, &digits(), 28, 28).unwrap();
    assert_eq!(Image::decode(&std::fs::read(&path).unwrap()).width, 236);
}
