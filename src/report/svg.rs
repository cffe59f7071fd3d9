//! A small SVG plotter for the report: line, scatter and bar charts with labelled axes and
//! "nice" ticks. Hand-written so the report needs no graphics stack.

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

/// Ticks at 1, 2 or 5 × 10^k covering [lo, hi].
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
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

impl Plot {
    pub fn to_svg(&self) -> String {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().cloned())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = pts.iter().fold(
            (
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ),
            |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
        );
        if pts.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        for s in &self.series {
            if let Mark::Bars(w) = s.mark {
                x0 = x0.min(x0 - w / 2.0);
                x1 = x1.max(x1 + w / 2.0);
                y0 = y0.min(0.0);
            }
        }
        if x1 - x0 < 1e-12 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        if y1 - y0 < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let pad_y = 0.05 * (y1 - y0);
        let pad_x = 0.03 * (x1 - x0);
        let (x0, x1, y0, y1) = (x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y);
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;

        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        for t in nice_ticks(x0, x1, 6) {
            let x = sx(t);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                fmt_tick(t)
            );
        }
        for t in nice_ticks(y0, y1, 6) {
            let y = sy(t);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 12.0,
            escape(&self.x_label)
        );
        let _ = write!(
            svg,
            r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );

        for (i, s) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let finite: Vec<(usize, (f64, f64))> = s
                .points
                .iter()
                .cloned()
                .enumerate()
                .filter(|(_, (x, y))| x.is_finite() && y.is_finite())
                .collect();
            match s.mark {
                Mark::Line => {
                    let path: Vec<String> = finite
                        .iter()
                        .map(|(_, (x, y))| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                        .collect();
                    let _ = write!(
                        svg,
                        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                        path.join(" ")
                    );
                    for (_, (x, y)) in &finite {
                        let _ = write!(
                            svg,
                            r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"/>"#,
                            sx(*x),
                            sy(*y)
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
                        let _ = write!(
                            svg,
                            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{fill}" fill-opacity="0.75"/>"#,
                            sx(*x),
                            sy(*y)
                        );
                    }
                }
                Mark::Bars(w) => {
                    for (_, (x, y)) in &finite {
                        let (left, right) = (sx(x - w / 2.0), sx(x + w / 2.0));
                        let (top, base) = (sy(y.max(0.0)), sy(y.min(0.0)));
                        let _ = write!(
                            svg,
                            r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{colour}" stroke="white"/>"##,
                            (right - left).max(1.0),
                            (base - top).max(0.0)
                        );
                    }
                }
            }
            let ly = TOP + 14.0 + 18.0 * i as f64;
            if s.shade.is_some() {
                // Its points take their colour from the scale below, not from the palette.
                let _ = write!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="#999"/>"##,
                    W - RIGHT + 18.0,
                    ly - 4.0
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
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                W - RIGHT + 30.0,
                ly,
                escape(&legend_name(&s.name))
            );
        }
        if let Some(label) = &self.shade_label {
            let top = TOP + 30.0 + 18.0 * self.series.len() as f64;
            for k in 0..=10 {
                let v = k as f64 / 10.0;
                let _ = write!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="14" height="10" fill="{}"/>"#,
                    W - RIGHT + 12.0,
                    top + 10.0 * (10 - k) as f64,
                    shade_colour(v)
                );
            }
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">1</text><text x="{:.1}" y="{:.1}">0</text><text x="{:.1}" y="{:.1}">{}</text>"#,
                W - RIGHT + 30.0,
                top + 9.0,
                W - RIGHT + 30.0,
                top + 109.0,
                W - RIGHT + 12.0,
                top + 126.0,
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
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
    fn svg_has_axes_labels_and_one_mark_per_point() {
        let p = Plot {
            title: "Accuracy vs a".into(),
            x_label: "a".into(),
            y_label: "accuracy (%)".into(),
            series: vec![Series {
                name: "gsm8k".into(),
                points: vec![(-1.0, 50.0), (0.0, 51.0), (1.5, 52.0)],
                mark: Mark::Line,
                shade: None,
            }],
            shade_label: None,
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
    }
}
