//! Line charts as PNG and SVG: a figure of panels stacked vertically, drawn with plotters.
//!
//! Text is laid out and rasterised by plotters' `ab_glyph` renderer with the font shipped in
//! `assets/` (Open Sans, Apache-2.0), so no system font library is needed.
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Open Sans Regular (Apache-2.0, see `assets/README.md`).
const FONT: &[u8] = include_bytes!("../assets/OpenSans-Regular.ttf");

/// Width of a figure and height of one panel, pixels (PNG) or user units (SVG).
const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 380;
const TITLE_HEIGHT: u32 = 50;
const MIN_BODY_HEIGHT: u32 = 600;

/// Matplotlib's "tab10" colours, so the charts look familiar.
pub const BLUE: RGBColor = RGBColor(31, 119, 180);
/// Second series colour.
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
/// Third series colour.
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
/// A paler blue, for raw values under a smoothed curve.
pub const LIGHT_BLUE: RGBColor = RGBColor(158, 202, 225);
/// Markers of a chosen value.
pub const RED: RGBColor = RGBColor(214, 39, 40);
/// Fourth series colour.
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A line through the points.
    Line,
    /// A line with a dot at each point (for sparse series such as per-epoch values).
    LineAndDots,
    /// Dots only.
    Dots,
    /// A vertical line at the x of the first point, across the whole panel.
    Vertical,
}

/// One named series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// The points; non-finite ones (and non-positive ones on a log axis) are left out.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: RGBColor,
    /// Drawing style.
    pub style: Style,
}

/// One chart: axes, a title and some series.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Caption above the chart.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// X range to show instead of the data's (to line up panels that share an axis).
    pub x_range: Option<(f64, f64)>,
    /// Y range to show instead of the data's (points outside it are left out).
    pub y_range: Option<(f64, f64)>,
    /// The series, drawn in order.
    pub series: Vec<Series>,
    /// Put the legend in the upper left corner instead of the upper right.
    pub legend_left: bool,
}

/// Panels stacked vertically under a title.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Title at the top.
    pub title: String,
    /// The panels, top to bottom.
    pub panels: Vec<Panel>,
}

impl Figure {
    /// Pixel size of the figure.
    fn size(&self) -> (u32, u32) {
        // A lone panel gets more height: a short, wide chart hides the shape of its curve.
        let panels = (PANEL_HEIGHT * self.panels.len() as u32).max(MIN_BODY_HEIGHT);
        (WIDTH, TITLE_HEIGHT + panels)
    }

    /// Writes `{stem}.png` and `{stem}.svg` (each through a temporary file and a rename) and
    /// returns their paths.
    ///
    /// # Errors
    /// The file that could not be drawn or written.
    pub fn save(&self, stem: &Path) -> anyhow::Result<Vec<PathBuf>> {
        register_fonts()?;
        let size = self.size();
        let png = stem.with_extension("png");
        let tmp = stem.with_extension("tmp.png");
        {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            self.draw(&root)
                .and_then(|()| root.present())
                .map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
        }
        std::fs::rename(&tmp, &png).with_context(|| format!("writing {}", png.display()))?;
        let svg = stem.with_extension("svg");
        let tmp = stem.with_extension("tmp.svg");
        {
            let root = SVGBackend::new(&tmp, size).into_drawing_area();
            self.draw(&root)
                .and_then(|()| root.present())
                .map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
        }
        std::fs::rename(&tmp, &svg).with_context(|| format!("writing {}", svg.display()))?;
        Ok(vec![png, svg])
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let body = root.titled(&self.title, ("sans-serif", 28))?;
        let areas = body.split_evenly((self.panels.len().max(1), 1));
        for (panel, area) in self.panels.iter().zip(&areas) {
            panel.draw(area)?;
        }
        Ok(())
    }
}

impl Panel {
    /// The points of `series` that can be drawn on this panel's axes.
    fn drawable<'a>(&'a self, series: &'a Series) -> impl Iterator<Item = (f64, f64)> + 'a {
        // A vertical line's y is not drawn: only its x must fit.
        let check_y = series.style != Style::Vertical;
        series.points.iter().copied().filter(move |&(x, y)| {
            x.is_finite()
                && (!self.log_x || x > 0.0)
                && (!check_y
                    || (y.is_finite()
                        && (!self.log_y || y > 0.0)
                        && self.y_range.is_none_or(|(lo, hi)| (lo..=hi).contains(&y))))
        })
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .filter(|s| s.style != Style::Vertical)
            .flat_map(|s| self.drawable(s))
            .collect();
        if points.is_empty() {
            let caption = format!("{}: no data", self.title);
            area.draw_text(
                &caption,
                &("sans-serif", 22).into_font().color(&BLACK),
                (40, PANEL_HEIGHT as i32 / 2),
            )?;
            return Ok(());
        }
        let mut xs = match self.x_range {
            Some((lo, hi)) => padded([lo, hi].into_iter(), self.log_x, 0.02),
            None => padded(points.iter().map(|p| p.0), self.log_x, 0.02),
        };
        let ys = match self.y_range {
            Some((lo, hi)) => padded([lo, hi].into_iter(), self.log_y, 0.0),
            None => padded(points.iter().map(|p| p.1), self.log_y, 0.06),
        };
        for s in self.series.iter().filter(|s| s.style == Style::Vertical) {
            for (x, _) in self.drawable(s) {
                xs.start = xs.start.min(x);
                xs.end = xs.end.max(x);
            }
        }
        match (self.log_x, self.log_y) {
            (false, false) => self.draw_on(area, xs, ys),
            (true, false) => self.draw_on(area, xs.log_scale(), ys),
            (false, true) => self.draw_on(area, xs, ys.log_scale()),
            (true, true) => self.draw_on(area, xs.log_scale(), ys.log_scale()),
        }
    }

    fn draw_on<DB, X, Y>(
        &self,
        area: &DrawingArea<DB, Shift>,
        x: X,
        y: Y,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend,
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x, y)?;
        let (y_lo, y_hi) = {
            let r = chart.y_range();
            (r.start, r.end)
        };
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        for s in &self.series {
            let pts: Vec<(f64, f64)> = self.drawable(s).collect();
            if pts.is_empty() {
                continue;
            }
            let color = s.color;
            let line_legend = move |(x, y): (i32, i32)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
            };
            let dot_legend = move |(x, y): (i32, i32)| Circle::new((x + 11, y), 4, color.filled());
            match s.style {
                Style::Line | Style::LineAndDots => {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                        .label(s.label.as_str())
                        .legend(line_legend);
                    if s.style == Style::LineAndDots {
                        chart
                            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
                    }
                }
                Style::Dots => {
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?
                        .label(s.label.as_str())
                        .legend(dot_legend);
                }
                Style::Vertical => {
                    let x = pts[0].0;
                    chart
                        .draw_series(LineSeries::new(
                            vec![(x, y_lo), (x, y_hi)],
                            color.stroke_width(2),
                        ))?
                        .label(s.label.as_str())
                        .legend(line_legend);
                }
            }
        }
        chart
            .configure_series_labels()
            .position(if self.legend_left {
                SeriesLabelPosition::UpperLeft
            } else {
                SeriesLabelPosition::UpperRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 15))
            .draw()?;
        Ok(())
    }
}

/// The range of `values` with `pad` (a fraction of the span, or of the log span) added on both
/// sides; a single value gets a range around it.
fn padded(values: impl Iterator<Item = f64>, log: bool, pad: f64) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if log {
        let (a, b) = (lo.ln(), hi.ln());
        let span = if b > a { b - a } else { 2.0 };
        let p = if b > a { span * pad } else { 1.0 };
        (a - p).exp()..(b + p).exp()
    } else {
        let span = hi - lo;
        if span > 0.0 {
            lo - span * pad..hi + span * pad
        } else {
            let p = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo - p..hi + p
        }
    }
}

/// Tick labels: up to 4 significant digits, plain between 1e-3 and 1e5 (trailing zeros
/// dropped), else scientific (`9.8e-4`, `1e-7`).
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.3e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        format!("{mantissa}e{exponent}")
    }
}

/// Registers the shipped font under the generic family names plotters asks for.
fn register_fonts() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            if register_font(family, FontStyle::Normal, FONT).is_err() {
                result = Err(anyhow!(
                    "the font shipped in perplex-cli/assets could not be read"
                ));
            }
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(117.0), "117");
        assert_eq!(tick(4.675), "4.675");
        assert_eq!(tick(0.001), "0.001");
        assert_eq!(tick(1e-7), "1e-7");
        assert_eq!(tick(2.5e-5), "2.5e-5");
        assert_eq!(tick(100000.0), "1e5");
        assert_eq!(tick(0.00104), "0.00104");
        assert_eq!(tick(9.8e-4), "9.8e-4");
        assert_eq!(tick(1234.6), "1235");
        assert_eq!(tick(-2.5), "-2.5");
    }

    #[test]
    fn single_values_get_a_range_around_them() {
        let r = padded([5.0].into_iter(), false, 0.05);
        assert!(r.start < 5.0 && r.end > 5.0);
        let r = padded([1e-3].into_iter(), true, 0.05);
        assert!(r.start < 1e-3 && r.end > 1e-3 && r.start > 0.0);
    }

    #[test]
    fn figure_with_an_empty_panel_still_draws() {
        let dir = std::env::temp_dir().join(format!("perplex-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fig = Figure {
            title: "t".into(),
            panels: vec![
                Panel {
                    title: "a".into(),
                    series: vec![Series {
                        label: "x".into(),
                        points: vec![(1.0, 2.0)],
                        color: BLUE,
                        style: Style::LineAndDots,
                    }],
                    ..Default::default()
                },
                Panel {
                    title: "empty".into(),
                    ..Default::default()
                },
            ],
        };
        let files = fig.save(&dir.join("fig")).unwrap();
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
