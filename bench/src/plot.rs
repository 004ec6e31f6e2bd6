//! PNG plots for `tessera report` (plotters, bitmap backend). Text is drawn with DejaVu Sans,
//! embedded in the binary (`bench/assets/fonts`, Bitstream Vera license): plots have their
//! titles, axes and legends on any machine, with or without system fonts.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

type Res<T> = Result<T, String>;

/// DejaVu Sans 2.37 (see `bench/assets/fonts/LICENSE-DejaVu.txt`).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as `sans-serif` (once per process).
fn register_font() -> Res<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font (DejaVu Sans) could not be registered".to_string())
        })
        .clone()
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

/// A line plot written to `path` (PNG, 1400 x 900); `categories` (if not empty) names the x
/// positions 0, 1, ... (drawn rotated); `log_y` draws y on a log scale.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
    log_y: bool,
) -> Res<()> {
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    draw_line_plot(
        &root,
        &path.display().to_string(),
        title,
        x_desc,
        y_desc,
        categories,
        series,
        log_y,
    )
}

/// Draws the plot of [`line_plot`] on `root`; `name` names it in errors.
#[allow(clippy::too_many_arguments)]
fn draw_line_plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    name: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
    log_y: bool,
) -> Res<()> {
    register_font()?;
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("plot {name}: {e:?}");
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
        return Err(format!("plot {name}: no points"));
    }
    if !categories.is_empty() {
        x0 = -0.5;
        x1 = categories.len() as f64 - 0.5;
    } else {
        let pad = (x1 - x0).max(1.0) * 0.05;
        x0 -= pad;
        x1 += pad;
    }
    root.fill(&WHITE).map_err(err)?;
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(20)
        .caption(title, ("sans-serif", 26))
        .x_label_area_size(if categories.is_empty() { 50 } else { 170 })
        .y_label_area_size(80);
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
            let mut mesh = $chart.configure_mesh();
            mesh.x_desc(x_desc).y_desc(y_desc).x_label_formatter(&fmt_x);
            if !categories.is_empty() {
                mesh.x_labels(categories.len()).x_label_style(
                    ("sans-serif", 14)
                        .into_font()
                        .transform(FontTransform::Rotate270),
                );
            }
            mesh.draw().map_err(err)?;
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
                    .collect();
                $chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                    });
                $chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(err)?;
            }
            $chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 16))
                .draw()
                .map_err(err)?;
        }};
    }
    if log_y {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0 / 1.5..y1 * 1.5).log_scale())
            .map_err(err)?;
        draw!(chart);
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, 0.0..y1 * 1.1)
            .map_err(err)?;
        draw!(chart);
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text is drawn from the embedded font, whatever fonts the machine has: the title band
    /// of a rendered plot has dark pixels (it came out blank on machines without a system font,
    /// like the GPU machine), and the axis labels too.
    #[test]
    fn plots_draw_their_text_without_system_fonts() {
        let (w, h) = (700u32, 450u32);
        let mut pixels = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            let series = [Series {
                name: "tessera".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }];
            draw_line_plot(
                &root,
                "test",
                "A TITLE WITH TEXT",
                "x axis",
                "y axis",
                &[],
                &series,
                false,
            )
            .unwrap();
        }
        let dark_in = |rows: std::ops::Range<u32>, cols: std::ops::Range<u32>| {
            rows.flat_map(|y| cols.clone().map(move |x| (y, x)))
                .filter(|&(y, x)| {
                    let i = ((y * w + x) * 3) as usize;
                    pixels[i..i + 3].iter().all(|&c| c < 128)
                })
                .count()
        };
        // The caption sits in the top band (20 px margin, 26 px text), centred.
        let title = dark_in(15..60, w / 4..3 * w / 4);
        assert!(
            title > 100,
            "no text in the title band ({title} dark pixels)"
        );
        // The y axis description, rotated, on the left.
        let y_desc = dark_in(h / 4..3 * h / 4, 15..45);
        assert!(y_desc > 20, "no y axis text ({y_desc} dark pixels)");
    }
}
