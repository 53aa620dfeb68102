//! Figures as PNG and SVG (plotters, text in the embedded DejaVu Sans so no system font is needed):
//! line charts in panels, log-scale grouped bar charts, and grids of grey-scale images.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{AnalysisError, Result};

/// One curve of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry (none when empty).
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Palette index (the same index draws the same colour in every panel).
    pub color: usize,
    /// Draw dashed (used for empirical curves beside certified ones).
    pub dashed: bool,
}

/// One panel of line charts.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Panel title.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// X range.
    pub x: (f64, f64),
    /// Y range.
    pub y: (f64, f64),
    /// The curves.
    pub series: Vec<Series>,
}

/// One group of points of a scatter chart: one colour and marker, one legend entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PointGroup {
    /// Legend entry.
    pub name: String,
    /// (x, y, label); a non-empty label is written beside its point.
    pub points: Vec<(f64, f64, String)>,
    /// Palette index.
    pub color: usize,
    /// Hollow markers (used for published reference numbers beside our own runs).
    pub hollow: bool,
}

/// One panel of a scatter chart.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterChart {
    /// Panel title.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// X range.
    pub x: (f64, f64),
    /// Y range.
    pub y: (f64, f64),
    /// The point groups.
    pub groups: Vec<PointGroup>,
}

/// A grouped bar chart on a log-scale y axis (Figure 3).
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Title.
    pub title: String,
    /// Y-axis label.
    pub y_label: String,
    /// One group of bars per category (e.g. a bound method), labelled on the x axis.
    pub categories: Vec<String>,
    /// One bar per category for each of these (e.g. naive and LMT models): (legend name, values).
    pub bars: Vec<(String, Vec<f64>)>,
}

/// A grey-scale image in [0, 1], row-major, with a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    /// Caption above the image.
    pub caption: String,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Pixels, `height * width`, clamped to [0, 1] when drawn.
    pub pixels: Vec<f32>,
}

const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(90, 90, 90),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(255, 187, 120),
    RGBColor(0, 0, 0),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the dejavu crate.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Plot {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Draws into `<stem>.png` and `<stem>.svg` at a size, with the same drawing function.
macro_rules! render {
    ($stem:expr, $size:expr, $f:expr) => {{
        register_font();
        let stem: &Path = $stem;
        if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AnalysisError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        {
            let root = BitMapBackend::new(&png, $size).into_drawing_area();
            $f(&root).map_err(|e| plot_err(&png, e))?;
            root.present().map_err(|e| plot_err(&png, e))?;
        }
        {
            let root = SVGBackend::new(&svg, $size).into_drawing_area();
            $f(&root).map_err(|e| plot_err(&svg, e))?;
            root.present().map_err(|e| plot_err(&svg, e))?;
        }
        Ok([png, svg])
    }};
}

/// Line-chart panels side by side under one title, as `<stem>.png` and `<stem>.svg`.
pub fn line_panels(stem: &Path, title: &str, panels: &[LineChart]) -> Result<[PathBuf; 2]> {
    let size = (520 * panels.len().max(1) as u32, 440);
    render!(stem, size, |root: &DrawingArea<_, Shift>| draw_panels(
        root, title, panels
    ))
}

fn draw_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[LineChart],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    for (area, p) in root
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(p.x.0..p.x.1, p.y.0..p.y.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(&p.x_label)
            .y_desc(&p.y_label)
            .label_style(("sans-serif", 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for s in &p.series {
            let c = color(s.color);
            let style = c.stroke_width(2);
            let series = if s.dashed {
                // Dashes: subdivide into at least ~120 short segments, then draw three of every six.
                let per = (120 / s.points.len().max(2)).max(1);
                let mut fine = Vec::new();
                for w in s.points.windows(2) {
                    for k in 0..per {
                        let t = k as f64 / per as f64;
                        fine.push((
                            w[0].0 + (w[1].0 - w[0].0) * t,
                            w[0].1 + (w[1].1 - w[0].1) * t,
                        ));
                    }
                }
                fine.extend(s.points.last().copied());
                let pts: Vec<Vec<(f64, f64)>> = fine
                    .windows(2)
                    .enumerate()
                    .filter(|(i, _)| (i / 3) % 2 == 0)
                    .map(|(_, w)| w.to_vec())
                    .collect();
                chart
                    .draw_series(pts.into_iter().map(|seg| PathElement::new(seg, style)))
                    .map_err(|e| e.to_string())?
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style))
                    .map_err(|e| e.to_string())?
            };
            // A series without a name (a second reference line, say) gets no legend entry.
            if !s.name.is_empty() {
                series.label(&s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Scatter-chart panels side by side under one title, as `<stem>.png` and `<stem>.svg`.
pub fn scatter_panels(stem: &Path, title: &str, panels: &[ScatterChart]) -> Result<[PathBuf; 2]> {
    let size = (620 * panels.len().max(1) as u32, 520);
    render!(stem, size, |root: &DrawingArea<_, Shift>| draw_scatter(
        root, title, panels
    ))
}

fn draw_scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[ScatterChart],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    for (area, p) in root
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(p.x.0..p.x.1, p.y.0..p.y.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(&p.x_label)
            .y_desc(&p.y_label)
            .label_style(("sans-serif", 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for g in &p.groups {
            let c = color(g.color);
            let style = if g.hollow {
                c.stroke_width(2)
            } else {
                c.filled()
            };
            chart
                .draw_series(
                    g.points
                        .iter()
                        .map(|&(x, y, _)| Circle::new((x, y), 5, style)),
                )
                .map_err(|e| e.to_string())?
                .label(&g.name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, style));
            chart
                .draw_series(
                    g.points
                        .iter()
                        .filter(|p| !p.2.is_empty())
                        .map(|(x, y, l)| {
                            Text::new(
                                l.clone(),
                                (*x, *y),
                                ("sans-serif", 11).into_font().color(&c),
                            )
                        }),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A grouped bar chart with a log-scale y axis, as `<stem>.png` and `<stem>.svg`. Values must be > 0.
pub fn bar_chart_log(stem: &Path, chart: &BarChart) -> Result<[PathBuf; 2]> {
    let values: Vec<f64> = chart
        .bars
        .iter()
        .flat_map(|b| b.1.iter().copied())
        .collect();
    if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(plot_err(stem, "a log-scale bar needs a finite value > 0"));
    }
    let size = (140 * chart.categories.len().max(3) as u32 + 120, 460);
    render!(stem, size, |root: &DrawingArea<_, Shift>| draw_bars(
        root, chart, &values
    ))
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &BarChart,
    values: &[f64],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (y0, y1) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil() + 0.01),
    );
    let n = chart.categories.len();
    let mut c = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (y0..y1).log_scale())
        .map_err(|e| e.to_string())?;
    let cats = chart.categories.clone();
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                cats.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let groups = chart.bars.len().max(1) as f64;
    let width = 0.8 / groups;
    for (g, (name, vals)) in chart.bars.iter().enumerate() {
        let col = color(g);
        c.draw_series(vals.iter().enumerate().map(|(i, &v)| {
            let x0 = i as f64 - 0.4 + g as f64 * width;
            Rectangle::new([(x0, y0), (x0 + width * 0.95, v)], col.filled())
        }))
        .map_err(|e| e.to_string())?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
        c.draw_series(vals.iter().enumerate().map(|(i, &v)| {
            let x = i as f64 - 0.4 + (g as f64 + 0.5) * width;
            Text::new(
                format!("{v:.3}"),
                (x - width * 0.4, v * 1.15),
                ("sans-serif", 11),
            )
        }))
        .map_err(|e| e.to_string())?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Grey-scale images in a grid of `cols` columns under one title, as `<stem>.png` and `<stem>.svg`.
pub fn image_grid(
    stem: &Path,
    title: &str,
    images: &[GreyImage],
    cols: usize,
) -> Result<[PathBuf; 2]> {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let size = (190 * cols as u32, 200 * rows as u32 + 40);
    render!(stem, size, |root: &DrawingArea<_, Shift>| draw_images(
        root, title, images, rows, cols
    ))
}

fn draw_images<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    images: &[GreyImage],
    rows: usize,
    cols: usize,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 16))
        .map_err(|e| e.to_string())?;
    for (area, img) in root.split_evenly((rows, cols)).iter().zip(images) {
        let area = area
            .titled(&img.caption, ("sans-serif", 12))
            .map_err(|e| e.to_string())?;
        let (w, h) = area.dim_in_pixel();
        let scale = ((w.min(h) as usize).saturating_sub(10) / img.width.max(img.height).max(1))
            .max(1) as i32;
        let (ox, oy) = (((w as i32) - scale * img.width as i32) / 2, 2);
        for r in 0..img.height {
            for c in 0..img.width {
                let v = (img.pixels[r * img.width + c].clamp(0.0, 1.0) * 255.0).round() as u8;
                let (x, y) = (ox + c as i32 * scale, oy + r as i32 * scale);
                area.draw(&Rectangle::new(
                    [(x, y), (x + scale, y + scale)],
                    RGBColor(v, v, v).filled(),
                ))
                .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_decodable_png_and_svg_files() {
        // LMT_KEEP_PLOTS=DIR keeps the figures for a look.
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::env::var_os("LMT_KEEP_PLOTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| tmp.path().to_path_buf());
        let dir = dir.as_path();
        let s = |c| Series {
            name: format!("s{c}"),
            points: vec![(0.0, 0.0), (1.0, 0.5), (2.0, 1.0)],
            color: c,
            dashed: c == 1,
        };
        let p = LineChart {
            title: "panel".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x: (0.0, 2.0),
            y: (0.0, 1.0),
            series: vec![s(0), s(1)],
        };
        let files = line_panels(&dir.join("lines"), "two panels", &[p.clone(), p]).unwrap();
        let bars = BarChart {
            title: "bars".into(),
            y_label: "bound".into(),
            categories: vec!["a".into(), "b".into()],
            bars: vec![
                ("m1".into(), vec![0.5, 50.0]),
                ("m2".into(), vec![2.0, 3.0]),
            ],
        };
        let more = bar_chart_log(&dir.join("bars"), &bars).unwrap();
        let img = GreyImage {
            caption: "x".into(),
            height: 2,
            width: 2,
            pixels: vec![0.0, 1.0, 0.5, 0.2],
        };
        let grid = image_grid(&dir.join("grid"), "grid", &[img.clone(), img], 2).unwrap();
        for f in files.iter().chain(&more).chain(&grid) {
            let bytes = std::fs::read(f).unwrap();
            assert!(bytes.len() > 200, "{} is nearly empty", f.display());
        }
        for f in [&files[0], &more[0], &grid[0]] {
            assert_eq!(&std::fs::read(f).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        }
        for f in [&files[1], &more[1], &grid[1]] {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.contains("<svg") && text.contains("</svg>"));
        }
        let bad = BarChart {
            bars: vec![("m".into(), vec![0.0, 1.0])],
            ..bars
        };
        assert!(bar_chart_log(&dir.join("bad"), &bad).is_err());
    }
}
