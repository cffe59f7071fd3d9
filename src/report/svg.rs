//! A small SVG plotter for the report: line, scatter and bar charts with labelled axes, "nice"
//! ticks (integers only on a round axis), error bars and a colour scale. Hand-written so the
//! report needs no graphics stack.

use std::fmt::Write;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mark {
    Line,
    Scatter,
    /// Bars of the given width in data units, centred on x.
    Bars(f64),
}

/// One series of points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// Per-point colour value in [0, 1] (a colour scale), for scatter plots.
    pub shade: Option<Vec<f64>>,
    /// Per-point interval `(low, high)` in y, drawn as an error bar.
    pub y_errors: Option<Vec<(f64, f64)>>,
    /// Scatter points drawn as rings instead of discs.
    pub hollow: bool,
}

impl Series {
    /// A series with plain marks: no shading, no error bars, filled.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, mark: Mark) -> Self {
        Series {
            name: name.into(),
            points,
            mark,
            shade: None,
            y_errors: None,
            hollow: false,
        }
    }
}

/// A chart.
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Label of the colour scale, when a series is shaded.
    pub shade_label: Option<String>,
    /// The x axis counts something (rounds): ticks at whole numbers only.
    pub integer_x: bool,
    /// Both axes reach down to 0 (quantities whose scale starts there, such as shares).
    pub from_zero: bool,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
/// Width and height of the plotting area.
const PW: f64 = W - LEFT - RIGHT;
const PH: f64 = H - TOP - BOTTOM;

/// Ticks at 1, 2 or 5 × 10^k covering [lo, hi].
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    ticks(lo, hi, target, 0.0)
}

/// Ticks at 1, 2 or 5 × 10^k covering [lo, hi], at least 1 apart: whole numbers only.
pub fn integer_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    ticks(lo, hi, target, 1.0)
}

fn ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = ((hi - lo) / target.max(1) as f64).max(min_step);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // The small slack keeps an end that is a multiple of the step (0.3 / 0.05 = 5.999…).
    let start = (lo / step - 1e-9).ceil() as i64;
    let end = (hi / step + 1e-9).floor() as i64;
    // Round to the step's decimals so 3 × 0.2 prints (and compares) as 0.6.
    let decimals = (-step.log10().floor()).max(0.0) as i32;
    let scale = 10f64.powi(decimals);
    (start..=end)
        .map(|i| (i as f64 * step * scale).round() / scale)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1000.0 || v.abs() < 0.01 {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Legend entries are cut to what fits beside the plot.
fn legend_name(name: &str) -> String {
    const MAX: usize = 26;
    if name.chars().count() <= MAX {
        return name.to_string();
    }
    let mut cut: String = name.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Blue (0) → red (1).
fn shade_colour(v: f64) -> String {
    let v = v.clamp(0.0, 1.0);
    let r = (40.0 + 200.0 * v) as u8;
    let b = (220.0 - 180.0 * v) as u8;
    format!("rgb({r},60,{b})")
}

/// The data range shown and its map onto the plotting area.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    /// The range of every finite point, error bar and bar edge, padded a little.
    fn around(series: &[Series], from_zero: bool) -> Frame {
        let zero = if from_zero { 0.0 } else { f64::INFINITY };
        let mut f = Frame {
            x0: zero,
            x1: f64::NEG_INFINITY,
            y0: zero,
            y1: f64::NEG_INFINITY,
        };
        for s in series {
            // A bar reaches its edges sideways and down (or up) to 0.
            let (half, base) = match s.mark {
                Mark::Bars(w) => (w / 2.0, 0.0),
                _ => (0.0, f64::INFINITY),
            };
            for (x, y) in s.points.iter().copied().filter(|p| finite(*p)) {
                (f.x0, f.x1) = (f.x0.min(x - half), f.x1.max(x + half));
                (f.y0, f.y1) = (f.y0.min(y).min(base), f.y1.max(y));
            }
            for (lo, hi) in s.y_errors.iter().flatten().copied().filter(|e| finite(*e)) {
                (f.y0, f.y1) = (f.y0.min(lo), f.y1.max(hi));
            }
        }
        if !f.x1.is_finite() {
            (f.x0, f.x1, f.y0, f.y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if f.x1 - f.x0 < 1e-12 {
            (f.x0, f.x1) = (f.x0 - 0.5, f.x1 + 0.5);
        }
        if f.y1 - f.y0 < 1e-12 {
            (f.y0, f.y1) = (f.y0 - 0.5, f.y1 + 0.5);
        }
        let (pad_x, pad_y) = (0.03 * (f.x1 - f.x0), 0.05 * (f.y1 - f.y0));
        Frame {
            x0: f.x0 - pad_x,
            x1: f.x1 + pad_x,
            y0: f.y0 - pad_y,
            y1: f.y1 + pad_y,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * PW
    }

    fn sy(&self, y: f64) -> f64 {
        TOP + PH - (y - self.y0) / (self.y1 - self.y0) * PH
    }
}

fn finite((x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite()
}

impl Plot {
    pub fn to_svg(&self) -> String {
        let frame = Frame::around(&self.series, self.from_zero);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
        );
        self.axes(&mut svg, &frame);
        for (i, s) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            draw_series(&mut svg, &frame, s, colour);
            legend_entry(&mut svg, i, s, colour);
        }
        if let Some(label) = &self.shade_label {
            colour_scale(&mut svg, self.series.len(), label);
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Title, grid lines with tick labels, the frame and the axis labels.
    fn axes(&self, svg: &mut String, f: &Frame) {
        let _ = write!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            LEFT + PW / 2.0,
            escape(&self.title)
        );
        let x_ticks = if self.integer_x {
            integer_ticks(f.x0, f.x1, 6)
        } else {
            nice_ticks(f.x0, f.x1, 6)
        };
        for t in x_ticks {
            let x = f.sx(t);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + PH,
                TOP + PH + 16.0,
                fmt_tick(t)
            );
        }
        for t in nice_ticks(f.y0, f.y1, 6) {
            let y = f.sy(t);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + PW,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{PW}" height="{PH}" fill="none" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"##,
            LEFT + PW / 2.0,
            H - 12.0,
            escape(&self.x_label),
            TOP + PH / 2.0,
            escape(&self.y_label)
        );
    }
}

/// One series' marks (and error bars) in `colour`, or in the colour scale when shaded.
fn draw_series(svg: &mut String, f: &Frame, s: &Series, colour: &str) {
    let finite: Vec<(usize, (f64, f64))> = s
        .points
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, p)| finite(*p))
        .collect();
    // Error bars first, so the marks sit on top of them.
    for (k, (x, _)) in &finite {
        if let Some(&(lo, hi)) = s.y_errors.as_ref().and_then(|e| e.get(*k)) {
            error_bar(svg, f.sx(*x), f.sy(lo), f.sy(hi), colour);
        }
    }
    match s.mark {
        Mark::Line => {
            let path: Vec<String> = finite
                .iter()
                .map(|(_, (x, y))| format!("{:.1},{:.1}", f.sx(*x), f.sy(*y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (_, (x, y)) in &finite {
                let (cx, cy) = (f.sx(*x), f.sy(*y));
                let _ = write!(
                    svg,
                    r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{colour}"/>"#
                );
            }
        }
        Mark::Scatter => {
            for (k, (x, y)) in &finite {
                let fill = s
                    .shade
                    .as_ref()
                    .and_then(|v| v.get(*k))
                    .map_or(colour.to_string(), |v| shade_colour(*v));
                let (cx, cy) = (f.sx(*x), f.sy(*y));
                let paint = if s.hollow {
                    format!(r#"fill="none" stroke="{fill}" stroke-width="1.5""#)
                } else {
                    format!(r#"fill="{fill}""#)
                };
                let _ = write!(
                    svg,
                    r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" {paint} fill-opacity="0.75"/>"#
                );
            }
        }
        Mark::Bars(w) => {
            for (_, (x, y)) in &finite {
                let (left, right) = (f.sx(x - w / 2.0), f.sx(x + w / 2.0));
                let (top, base) = (f.sy(y.max(0.0)), f.sy(y.min(0.0)));
                let _ = write!(
                    svg,
                    r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{colour}" stroke="white"/>"##,
                    (right - left).max(1.0),
                    (base - top).max(0.0)
                );
            }
        }
    }
}

/// A vertical bar from `y_low` to `y_high` (screen units) with short caps.
fn error_bar(svg: &mut String, x: f64, y_low: f64, y_high: f64, colour: &str) {
    let _ = write!(
        svg,
        r#"<path class="error-bar" d="M{:.1},{y_low:.1}H{:.1}M{x:.1},{y_low:.1}V{y_high:.1}M{:.1},{y_high:.1}H{:.1}" stroke="{colour}" stroke-width="1.2" fill="none"/>"#,
        x - 4.0,
        x + 4.0,
        x - 4.0,
        x + 4.0
    );
}

/// The series' line in the legend: a swatch of its colour, or a grey disc (ring) for a shaded
/// scatter, whose points take their colour from the scale instead.
fn legend_entry(svg: &mut String, i: usize, s: &Series, colour: &str) {
    let ly = TOP + 14.0 + 18.0 * i as f64;
    let (cx, cy) = (W - RIGHT + 18.0, ly - 4.0);
    if s.shade.is_some() && s.hollow {
        let _ = write!(
            svg,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="4.5" fill="none" stroke="#999" stroke-width="1.5"/>"##
        );
    } else if s.shade.is_some() {
        let _ = write!(
            svg,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="5" fill="#999"/>"##
        );
    } else {
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/>"#,
            W - RIGHT + 12.0,
            ly - 10.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#,
        W - RIGHT + 30.0,
        escape(&legend_name(&s.name))
    );
}

/// The colour scale, 0 (blue) at the bottom to 1 (red) at the top, below `entries` legend lines.
fn colour_scale(svg: &mut String, entries: usize, label: &str) {
    let top = TOP + 30.0 + 18.0 * entries as f64;
    for k in 0..=10 {
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="10" fill="{}"/>"#,
            W - RIGHT + 12.0,
            top + 10.0 * (10 - k) as f64,
            shade_colour(k as f64 / 10.0)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{x:.1}" y="{:.1}">1</text><text x="{x:.1}" y="{:.1}">0</text>"#,
        top + 9.0,
        top + 109.0,
        x = W - RIGHT + 30.0,
    );
    for (k, line) in wrap(label, 28).iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 12.0,
            top + 126.0 + 15.0 * k as f64,
            escape(line)
        );
    }
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            nice_ticks(0.0, 0.3, 6),
            vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
        );
        assert_eq!(
            nice_ticks(-3.0, 3.0, 6),
            vec![-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(nice_ticks(12.0, 57.0, 5), vec![20.0, 30.0, 40.0, 50.0]);
    }

    #[test]
    fn integer_ticks_never_fall_between_rounds() {
        // Rounds 0 and 1, padded: nice_ticks would give 0, 0.2, …, 1.
        assert_eq!(integer_ticks(-0.03, 1.03, 6), vec![0.0, 1.0]);
        assert_eq!(integer_ticks(-0.1, 3.1, 6), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(
            integer_ticks(-0.5, 20.5, 6),
            vec![0.0, 5.0, 10.0, 15.0, 20.0]
        );
    }

    #[test]
    fn long_labels_wrap_at_spaces() {
        assert_eq!(
            wrap("R(x): largest wrong answer's share of the samples", 28),
            vec!["R(x): largest wrong answer's", "share of the samples"]
        );
        assert_eq!(wrap("short", 28), vec!["short"]);
    }

    #[test]
    fn svg_has_axes_labels_and_one_mark_per_point() {
        let p = Plot {
            title: "Accuracy vs a".into(),
            x_label: "a".into(),
            y_label: "accuracy (%)".into(),
            series: vec![Series::new(
                "gsm8k",
                vec![(-1.0, 50.0), (0.0, 51.0), (1.5, 52.0)],
                Mark::Line,
            )],
            shade_label: None,
            integer_x: false,
            from_zero: false,
        };
        let svg = p.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains(">Accuracy vs a<")
                && svg.contains(">accuracy (%)<")
                && svg.contains(">gsm8k<")
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("error-bar").count(), 0);
    }

    #[test]
    fn error_bars_span_their_interval_and_widen_the_axis() {
        let mut s = Series::new("run", vec![(0.0, 50.0), (1.0, 60.0)], Mark::Line);
        s.y_errors = Some(vec![(40.0, 58.0), (52.0, 80.0)]);
        let p = Plot {
            title: "t".into(),
            x_label: "round".into(),
            y_label: "accuracy (%)".into(),
            series: vec![s],
            shade_label: None,
            integer_x: true,
            from_zero: false,
        };
        let frame = Frame::around(&p.series, false);
        assert!(frame.y0 < 40.0 && frame.y1 > 80.0);
        let svg = p.to_svg();
        assert_eq!(svg.matches("class=\"error-bar\"").count(), 2);
        // The second bar runs from 52 % up to 80 %, in screen units.
        let bar = format!("V{:.1}", frame.sy(80.0));
        assert!(svg.contains(&bar), "{bar} in {svg}");
        // Round ticks: 0 and 1 only.
        assert!(svg.contains(">0</text>") && svg.contains(">1</text>"));
        assert!(!svg.contains(">0.2</text>") && !svg.contains(">0.5</text>"));
    }
}
