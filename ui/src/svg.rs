//! Charts as inline SVG, drawn here: line charts (training curves, model metrics over time)
//! and bar charts (histograms, top values). No script, no external resource; every label
//! goes through [`esc`].
//!
//! Hand-written rather than `plotters`: a chart is a few dozen SVG elements, and `plotters`
//! (with its font and bitmap back ends off) still adds several crates for what is ~300 lines.

use std::fmt::Write as _;

use crate::html::{esc, num};

/// Series colours, in order.
pub const PALETTE: [&str; 6] = [
    "#1565c0", "#e65100", "#2e7d32", "#6a1b9a", "#c62828", "#00838f",
];

/// One line of a [`line_chart`].
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend name.
    pub name: String,
    /// `(x, y)` points in x order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
    /// A tooltip per point (same length as `points`, or empty for `x, y`).
    pub tips: Vec<String>,
}

/// Where a point lies against the chart's y range.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Clip {
    In,
    Above,
    Below,
}

/// A line chart `width` x `height` pixels of `series`, with axes, ticks, axis titles and a
/// legend. `y_range` fixes the y axis (points outside it are drawn on its edge as open
/// triangles, their tooltip saying so); by default it spans every point. `x_labels` writes
/// the x ticks' labels (e.g. dates of day numbers); such an axis ticks on whole numbers only.
pub fn line_chart(
    series: &[Series],
    x_title: &str,
    y_title: &str,
    y_range: Option<(f64, f64)>,
    x_labels: Option<&dyn Fn(f64) -> String>,
) -> String {
    let (w, h) = (520.0, 260.0);
    let (left, right, top, bottom) = (62.0, 14.0, 14.0, 52.0);
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="linechart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{}">"#,
        esc(y_title)
    );
    if pts().next().is_none() {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#757575" font-size="13">no data</text></svg>"##,
            w / 2.0,
            h / 2.0
        );
        return out;
    }
    let (mut x0, mut x1) = bounds(pts().map(|p| p.0));
    let (mut y0, mut y1) = y_range.unwrap_or_else(|| bounds(pts().map(|p| p.1)));
    if x0 == x1 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y0 == y1 {
        let d = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y0 -= d;
        y1 += d;
    }
    let yt = ticks(y0, y1, 5);
    let (y0, y1) = (y0.min(yt[0]), y1.max(*yt.last().unwrap_or(&y1)));
    let xt = ticks(x0, x1, 6);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
    // Frame, grid lines and tick labels.
    let _ = write!(
        out,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#bdbdbd"/>"##
    );
    for t in &yt {
        if *t < y0 || *t > y1 {
            continue;
        }
        let y = sy(*t);
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eeeeee"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11" fill="#424242">{}</text>"##,
            left + pw,
            left - 4.0,
            y + 4.0,
            esc(&tick_label(*t))
        );
    }
    for t in &xt {
        // Labelled axes (dates as day numbers) tick on whole units only.
        if *t < x0 || *t > x1 || (x_labels.is_some() && t.fract() != 0.0) {
            continue;
        }
        let x = sx(*t);
        let label = x_labels.map_or_else(|| tick_label(*t), |f| f(*t));
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="#f3f3f3"/><text x="{x:.1}" y="{}" text-anchor="middle" font-size="11" fill="#424242">{}</text>"##,
            top + ph,
            top + ph + 14.0,
            esc(&label)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#212121">{}</text><text transform="translate(13,{}) rotate(-90)" text-anchor="middle" font-size="12" fill="#212121">{}</text>"##,
        left + pw / 2.0,
        top + ph + 30.0,
        esc(x_title),
        top + ph / 2.0,
        esc(y_title)
    );
    // Lines and points.
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut d = String::new();
        let mut marks = String::new();
        for (j, (x, y)) in s.points.iter().enumerate() {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            let clip = if *y > y1 {
                Clip::Above
            } else if *y < y0 {
                Clip::Below
            } else {
                Clip::In
            };
            let (px, py) = (sx(*x), sy(y.clamp(y0, y1)));
            let tip =
                s.tips.get(j).cloned().unwrap_or_else(|| {
                    format!("{}: x {}, y {}", s.name, num(Some(*x)), num(Some(*y)))
                });
            match clip {
                Clip::In => {
                    let _ = write!(
                        d,
                        "{}{px:.1},{py:.1}",
                        if d.is_empty() { "M" } else { " L" }
                    );
                    let _ = write!(
                        marks,
                        r#"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="{colour}"><title>{}</title></circle>"#,
                        esc(&tip)
                    );
                }
                Clip::Above | Clip::Below => {
                    let dy = if clip == Clip::Above { 7.0 } else { -7.0 };
                    let _ = write!(
                        marks,
                        r##"<path class="offscale" d="M{px:.1},{py:.1} l-5,{dy} l10,0 z" fill="#fff" stroke="{colour}" stroke-width="1.5"><title>{} (off the scale)</title></path>"##,
                        esc(&tip)
                    );
                }
            }
        }
        // A line needs two points; a lone point is its circle.
        if d.contains(" L") {
            let _ = write!(
                out,
                r#"<path class="series" d="{d}" fill="none" stroke="{colour}" stroke-width="2"/>"#
            );
        }
        out.push_str(&marks);
    }
    // Legend, under the x axis title.
    let mut lx = left;
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let _ = write!(
            out,
            r##"<rect x="{lx:.1}" y="{}" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="{}" font-size="11" fill="#424242">{}</text>"##,
            h - 13.0,
            lx + 14.0,
            h - 4.0,
            esc(&s.name)
        );
        lx += 24.0 + 6.5 * s.name.chars().count() as f64;
    }
    out.push_str("</svg>");
    out
}

/// One bar of a [`histogram`]: `[low, high)` and its count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Lower edge.
    pub low: f64,
    /// Upper edge.
    pub high: f64,
    /// Count (may be fractional: read from a sketch).
    pub count: f64,
}

/// A histogram of `buckets` on a value axis; `baseline` (e.g. the previous day's, whose
/// buckets may span another range) is drawn over it as outlined bars on the same axis. Bar
/// heights are densities (share of the total per unit of value), so days with other counts
/// and bucket widths compare by shape.
pub fn histogram(buckets: &[Bucket], baseline: Option<&[Bucket]>) -> String {
    let (w, h) = (300.0, 150.0);
    let (left, right, top, bottom) = (8.0, 8.0, 8.0, 30.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="histogram" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#
    );
    let finite = |b: &&Bucket| b.low.is_finite() && b.high.is_finite() && b.count.is_finite();
    let today: Vec<Bucket> = buckets.iter().filter(finite).copied().collect();
    let base: Vec<Bucket> = baseline
        .unwrap_or_default()
        .iter()
        .filter(finite)
        .copied()
        .collect();
    if today.is_empty() {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#757575" font-size="12">no finite values</text></svg>"##,
            w / 2.0,
            h / 2.0
        );
        return out;
    }
    let (mut lo, mut hi) = bounds(today.iter().chain(&base).flat_map(|b| [b.low, b.high]));
    if hi <= lo {
        lo -= 0.5;
        hi += 0.5;
    }
    let (pw, ph) = (w - left - right, h - top - bottom);
    // Zero-width buckets (one distinct value) get a sliver of the axis.
    let min_width = (hi - lo) / 40.0;
    let density = |bs: &[Bucket]| -> Vec<(f64, f64, f64, f64)> {
        let total: f64 = bs.iter().map(|b| b.count.max(0.0)).sum();
        bs.iter()
            .map(|b| {
                let width = (b.high - b.low).max(min_width);
                let d = if total > 0.0 {
                    b.count.max(0.0) / total / width
                } else {
                    0.0
                };
                (b.low, b.low + width, d, b.count)
            })
            .collect()
    };
    let (dt, db) = (density(&today), density(&base));
    let max = dt
        .iter()
        .chain(&db)
        .map(|x| x.2)
        .fold(0.0, f64::max)
        .max(1e-300);
    let sx = |x: f64| left + (x - lo) / (hi - lo) * pw;
    for ((l, r, d, _), b) in dt.iter().zip(&today) {
        let bh = d / max * ph;
        let _ = write!(
            out,
            r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#5c6bc0"><title>[{}, {}): {}</title></rect>"##,
            sx(*l) + 0.5,
            top + ph - bh,
            (sx(*r) - sx(*l) - 1.0).max(1.0),
            esc(&num(Some(b.low))),
            esc(&num(Some(b.high))),
            esc(&num(Some(b.count)))
        );
    }
    for (l, r, d, count) in &db {
        let bh = d / max * ph;
        let _ = write!(
            out,
            r##"<rect class="baseline" x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="none" stroke="#e65100" stroke-width="1.5" stroke-dasharray="3,2"><title>baseline [{}, {}): {}</title></rect>"##,
            sx(*l) + 0.5,
            top + ph - bh,
            (sx(*r) - sx(*l) - 1.0).max(1.0),
            esc(&num(Some(*l))),
            esc(&num(Some(*r))),
            esc(&num(Some(*count)))
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#9e9e9e"/><text x="{left}" y="{}" font-size="11" fill="#424242">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end" fill="#424242">{}</text></svg>"##,
        left + pw,
        top + ph,
        top + ph,
        h - 14.0,
        esc(&num(Some(lo))),
        left + pw,
        h - 14.0,
        esc(&num(Some(hi)))
    );
    out
}

/// Horizontal bars of `(label, count)` (top values of a string column), widest first as given.
pub fn bars(items: &[(String, f64)]) -> String {
    let row = 16.0;
    let (w, label_w) = (300.0, 110.0);
    let h = (items.len().max(1) as f64) * row + 8.0;
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max).max(1e-12);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#
    );
    for (i, (label, count)) in items.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let bw = count.max(0.0) / max * (w - label_w - 50.0);
        let shown: String = label.chars().take(16).collect();
        let _ = write!(
            out,
            r##"<text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#424242">{}</text><rect class="bar" x="{label_w}" y="{y:.1}" width="{bw:.1}" height="{}" fill="#26a69a"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="10" fill="#616161">{}</text>"##,
            label_w - 4.0,
            y + 11.0,
            esc(&shown),
            row - 3.0,
            esc(label),
            esc(&num(Some(*count))),
            label_w + bw + 3.0,
            y + 11.0,
            esc(&num(Some(*count)))
        );
    }
    out.push_str("</svg>");
    out
}

/// Smallest and largest of `xs` (`(0, 1)` for none).
fn bounds(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// About `n` "nice" tick values (1, 2 or 5 times a power of ten apart) covering `[lo, hi]`.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).abs();
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // Ticks are whole multiples of `step`, rounded to its decimals (0.6, not
    // 0.6000000000000001).
    let scale = 10f64.powi((-step.log10().floor()).max(0.0) as i32);
    let first = (lo / step).floor() as i64;
    let mut out = Vec::new();
    for i in first.. {
        let t = ((i as f64 * step) * scale).round() / scale;
        if t > hi + step * 0.5 || out.len() >= 50 {
            break;
        }
        out.push(t);
    }
    out
}

/// A tick value as text: no trailing zeros, scientific when very large or small.
fn tick_label(t: f64) -> String {
    if t == 0.0 {
        return "0".into();
    }
    if t.abs() >= 1e5 || t.abs() < 1e-3 {
        return format!("{t:.1e}");
    }
    let s = format!("{t:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, pts: &[(f64, f64)]) -> Series {
        Series {
            name: name.into(),
            points: pts.to_vec(),
            tips: vec![],
        }
    }

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks(3.0, 97.0, 5), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let t = ticks(0.18, 0.27, 5);
        assert!(t[0] <= 0.18 && *t.last().unwrap() >= 0.27, "{t:?}");
        assert_eq!(ticks(1.0, 1.0, 5), [1.0]);
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(250000.0), "2.5e5");
    }

    #[test]
    fn line_chart_draws_a_path_per_series_and_escapes_labels() {
        let svg = line_chart(
            &[
                s("loss<1>", &[(10.0, 0.5), (20.0, 0.3), (30.0, 0.25)]),
                s("lr", &[(10.0, 0.01), (30.0, 0.01)]),
            ],
            "step",
            "value & more",
            None,
            None,
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="series""#).count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("loss&lt;1&gt;"), "{svg}");
        assert!(svg.contains("value &amp; more"));
        assert!(!svg.contains("loss<1>"));
        // The first point of the loss series is at the left edge, the last at the right.
        assert!(svg.contains(r#"d="M62.0,"#), "{svg}");
    }

    #[test]
    fn points_outside_a_fixed_range_are_marked_off_scale() {
        let svg = line_chart(
            &[s("logloss", &[(1.0, 0.2), (2.0, 585188.0), (3.0, 0.25)])],
            "version",
            "logloss",
            Some((0.0, 0.3)),
            None,
        );
        assert_eq!(svg.matches(r#"class="offscale""#).count(), 1, "{svg}");
        assert!(svg.contains("(off the scale)"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn labelled_x_axes_tick_on_whole_numbers() {
        let label = |x: f64| format!("day{x}");
        let svg = line_chart(
            &[s("auc", &[(0.0, 0.5), (2.0, 0.6)])],
            "date",
            "auc",
            None,
            Some(&label),
        );
        // ticks(0, 2, 6) steps by 0.5: only 0, 1 and 2 are labelled.
        assert_eq!(svg.matches(">day").count(), 3, "{svg}");
        assert!(svg.contains(">day1<") && !svg.contains(">day0.5<"), "{svg}");
    }

    #[test]
    fn empty_chart_says_so() {
        let svg = line_chart(&[s("a", &[(1.0, f64::NAN)])], "x", "y", None, None);
        assert!(svg.contains("no data"), "{svg}");
    }

    #[test]
    fn histogram_scales_the_baseline_to_the_same_total() {
        let b = |c: &[f64]| -> Vec<Bucket> {
            c.iter()
                .enumerate()
                .map(|(i, &count)| Bucket {
                    low: i as f64,
                    high: i as f64 + 1.0,
                    count,
                })
                .collect()
        };
        let today = b(&[10.0, 30.0]);
        let yesterday = b(&[2.0, 2.0]);
        let svg = histogram(&today, Some(&yesterday));
        assert_eq!(svg.matches(r#"class="bar""#).count(), 2);
        assert_eq!(svg.matches(r#"class="baseline""#).count(), 2);
        // Densities: today 0.25 and 0.75, yesterday 0.5 and 0.5; the tallest bar is 112 px,
        // yesterday's are 112 * 0.5 / 0.75 = 74.7 px.
        assert!(svg.contains(r#"height="112.0""#), "{svg}");
        assert!(svg.contains(r#"height="74.7""#), "{svg}");
        assert!(svg.contains(r#"width="141.0""#), "{svg}");
        // A baseline over another range widens the axis: today's bars are narrower.
        let wider = b(&[1.0, 1.0, 1.0, 1.0]);
        let svg = histogram(&today, Some(&wider));
        assert!(!svg.contains(r#"width="141.0""#), "{svg}");
        assert!(svg.contains(r#"width="70.0""#), "{svg}");
        assert!(histogram(&[], None).contains("no finite values"));
    }

    #[test]
    fn bars_label_and_escape() {
        let svg = bars(&[("<ios>".into(), 600.0), ("web".into(), 300.0)]);
        assert_eq!(svg.matches(r#"class="bar""#).count(), 2);
        assert!(svg.contains("&lt;ios&gt;: 600"), "{svg}");
    }
}
