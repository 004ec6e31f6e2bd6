//! PNG plots for `tessera report` (plotters, bitmap backend). Text needs a TrueType font found
//! at run time (`TESSERA_FONT`, else DejaVu Sans or Liberation Sans in the usual Linux places);
//! without one the plots are drawn without any text.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

type Res<T> = Result<T, String>;

/// Whether a font was found and registered (looked up once).
fn have_font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let mut candidates: Vec<String> = std::env::var("TESSERA_FONT").into_iter().collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
            ]
            .map(String::from),
        );
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        eprintln!("plots: no TrueType font found (set TESSERA_FONT); drawing without text");
        false
    })
}

/// One line of a plot: a name and its points (x index or value, y); `None` values are skipped.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> String + '_ {
    move |e| format!("plot {}: {e:?}", path.display())
}

/// A line plot; `categories` (if not empty) names the x positions 0, 1, ... (drawn rotated);
/// `log_y` draws y on a log scale.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
    log_y: bool,
) -> Res<()> {
    let text = have_font();
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() && (!log_y || y > 0.0) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return Err(format!("plot {}: no points", path.display()));
    }
    if !categories.is_empty() {
        x0 = -0.5;
        x1 = categories.len() as f64 - 0.5;
    } else {
        let pad = (x1 - x0).max(1.0) * 0.05;
        x0 -= pad;
        x1 += pad;
    }
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 26))
            .x_label_area_size(if categories.is_empty() { 50 } else { 170 })
            .y_label_area_size(80);
    } else {
        builder.x_label_area_size(10).y_label_area_size(10);
    }
    let cats = categories.to_vec();
    let fmt_x = move |x: &f64| -> String {
        if cats.is_empty() {
            format!("{x}")
        } else {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cats.len() {
                // The rotated label is centred on the tick: pad it so the text sits below.
                let c = &cats[i as usize];
                format!("{c}{}", " ".repeat(c.chars().count() + 8))
            } else {
                String::new()
            }
        }
    };
    macro_rules! draw {
        ($chart:ident) => {{
            // Without a font the mesh (its labels) cannot be drawn: lines and points only.
            if text {
                let mut mesh = $chart.configure_mesh();
                mesh.x_desc(x_desc).y_desc(y_desc).x_label_formatter(&fmt_x);
                if !categories.is_empty() {
                    mesh.x_labels(categories.len()).x_label_style(
                        ("sans-serif", 14)
                            .into_font()
                            .transform(FontTransform::Rotate270),
                    );
                }
                mesh.draw().map_err(err(path))?;
            }
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
                    .collect();
                let line = $chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err(path))?;
                if text {
                    line.label(s.name.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                    });
                }
                $chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(err(path))?;
            }
            if text {
                $chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 16))
                    .draw()
                    .map_err(err(path))?;
            }
        }};
    }
    if log_y {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0 / 1.5..y1 * 1.5).log_scale())
            .map_err(err(path))?;
        draw!(chart);
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, 0.0..y1 * 1.1)
            .map_err(err(path))?;
        draw!(chart);
    }
    root.present().map_err(err(path))?;
    Ok(())
}
