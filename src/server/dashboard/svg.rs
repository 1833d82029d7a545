//! Inline SVG charts, drawn on the server (no script): an app's timeline and small bar charts.
//! Every mark has a `<title>` (the browser's tooltip, and what a screen reader reads), and a
//! rollback is a different shape with a text mark, not only a different colour.

use chrono::{DateTime, Utc};

use super::html::Html;

/// One point of a timeline.
#[derive(Debug, Clone)]
pub struct Point {
    /// Which lane (environment index).
    pub lane: usize,
    /// When.
    pub at: DateTime<Utc>,
    /// Whether it was a rollback.
    pub rollback: bool,
    /// The tooltip: digest, revision, who.
    pub title: String,
}

const W: f64 = 960.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 44.0;
const TOP: f64 = 16.0;

/// Above this many points a timeline draws at most one mark per lane and column of
/// [`COLUMN_PX`] pixels for deployments that are not rollbacks (a person cannot tell 10,000
/// marks apart on a 790 px axis, and the page would be megabytes); rollbacks are always drawn
/// one by one.
pub const MAX_POINTS: usize = 1000;

/// The width of one column of a dense timeline, in pixels: a mark is a 10 px circle, so
/// marks one pixel apart only hide each other; 4 px columns draw a quarter as many marks
/// that can still be told apart, about 200 per lane.
pub const COLUMN_PX: usize = 4;

/// One drawn column of a dense timeline: how many deployments, the first and the last.
type Column = (usize, DateTime<Utc>, DateTime<Utc>);

/// A timeline: one lane per environment, one mark per deployment between `from` and `to`, or
/// with more than [`MAX_POINTS`] points, one mark per lane and pixel column ("N deployments
/// from … to …") besides every rollback. Returns the chart and how many marks it draws.
pub fn timeline(
    lanes: &[String],
    points: &[Point],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (Html, usize) {
    let height = TOP + LANE * lanes.len().max(1) as f64 + 30.0;
    let span = (to - from).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        LEFT + (W - LEFT - RIGHT) * ((t - from).num_milliseconds() as f64 / span).clamp(0.0, 1.0)
    };
    let mut h = Html::new();
    h.raw("<svg class=\"timeline\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\"")
        .attr("viewBox", &format!("0 0 {W} {height}"))
        .attr("width", &W.to_string())
        .attr("height", &height.to_string())
        .raw("><title>Deployments over time, one row per environment</title>");
    for (i, name) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64 + LANE / 2.0;
        h.raw("<line class=\"lane\"")
            .attr("x1", &LEFT.to_string())
            .attr("x2", &(W - RIGHT).to_string())
            .attr("y1", &y.to_string())
            .attr("y2", &y.to_string())
            .raw("/><text")
            .attr("x", "8")
            .attr("y", &(y + 4.0).to_string())
            .raw(">")
            .text(&truncate(name, 20))
            .raw("</text>");
    }
    let axis_y = TOP + LANE * lanes.len().max(1) as f64 + 18.0;
    for (t, anchor) in [(from, "start"), (to, "end")] {
        h.raw("<text")
            .attr("x", &x(t).to_string())
            .attr("y", &axis_y.to_string())
            .attr("text-anchor", anchor)
            .raw(">")
            .text(&t.format("%Y-%m-%d %H:%M UTC").to_string())
            .raw("</text>");
    }
    // Rollbacks last, so no later point hides their mark.
    let ordered = points
        .iter()
        .filter(|p| !p.rollback)
        .chain(points.iter().filter(|p| p.rollback));
    let mut marks = 0;
    if points.len() > MAX_POINTS {
        // (lane, column) -> count, first and last time.
        let col_of = |t: DateTime<Utc>| ((x(t) - LEFT) / COLUMN_PX as f64).floor() as i64;
        let mut columns: std::collections::BTreeMap<(usize, i64), Column> =
            std::collections::BTreeMap::new();
        for p in points.iter().filter(|p| !p.rollback) {
            let c = columns
                .entry((p.lane, col_of(p.at)))
                .or_insert((0, p.at, p.at));
            c.0 += 1;
            c.1 = c.1.min(p.at);
            c.2 = c.2.max(p.at);
        }
        for ((lane, col), (n, first, last)) in columns {
            let cx = (LEFT + (col as f64 + 0.5) * COLUMN_PX as f64).min(W - RIGHT);
            let cy = TOP + LANE * lane as f64 + LANE / 2.0;
            let name = lanes.get(lane).map(String::as_str).unwrap_or("");
            let title = if n == 1 {
                format!(
                    "1 deployment in {name} at {}",
                    first.format("%Y-%m-%d %H:%M UTC")
                )
            } else {
                format!(
                    "{n} deployments in {name} from {} to {}",
                    first.format("%Y-%m-%d %H:%M UTC"),
                    last.format("%Y-%m-%d %H:%M UTC")
                )
            };
            h.raw("<g class=\"point many\"><title>")
                .text(&title)
                .raw("</title><circle class=\"pt\" r=\"5\"")
                .attr("cx", &cx.to_string())
                .attr("cy", &cy.to_string())
                .raw("/></g>");
            marks += 1;
        }
    }
    let aggregated = points.len() > MAX_POINTS;
    for p in ordered.filter(|p| !aggregated || p.rollback) {
        marks += 1;
        let (cx, cy) = (x(p.at), TOP + LANE * p.lane as f64 + LANE / 2.0);
        if p.rollback {
            // A diamond with a "↺" above it: shape and text, not colour alone.
            h.raw("<g class=\"point rollback\"><title>")
                .text(&format!("rollback: {}", p.title))
                .raw("</title><path class=\"rb\"")
                .attr(
                    "d",
                    &format!(
                        "M{cx} {} L{} {cy} L{cx} {} L{} {cy} Z",
                        cy - 8.0,
                        cx + 8.0,
                        cy + 8.0,
                        cx - 8.0
                    ),
                )
                .raw("/><text class=\"rbmark\"")
                .attr("x", &cx.to_string())
                .attr("y", &(cy - 11.0).to_string())
                .attr("text-anchor", "middle")
                .raw(">↺</text></g>");
        } else {
            h.raw("<g class=\"point\"><title>")
                .text(&p.title)
                .raw("</title><circle class=\"pt\" r=\"5\"")
                .attr("cx", &cx.to_string())
                .attr("cy", &cy.to_string())
                .raw("/></g>");
        }
    }
    h.raw("</svg>");
    (h, marks)
}

/// A small bar chart of `values` (one bar per label), with a title and the largest value
/// written out.
pub fn bars(title: &str, labels: &[String], values: &[f64], unit: &str, rollback: bool) -> Html {
    let (w, hgt, top, bottom) = (300.0, 110.0, 18.0, 16.0);
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len().max(1) as f64;
    let bw = w / n;
    let mut h = Html::new();
    h.raw("<figure><svg class=\"bars\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\"")
        .attr("viewBox", &format!("0 0 {w} {hgt}"))
        .attr("width", &w.to_string())
        .attr("height", &hgt.to_string())
        .raw("><title>")
        .text(title)
        .raw("</title><text x=\"0\" y=\"12\">")
        .text(&format!("max {} {unit}", fmt_num(max)))
        .raw("</text>");
    for (i, v) in values.iter().enumerate() {
        let bh = if max > 0.0 {
            (hgt - top - bottom) * v / max
        } else {
            0.0
        };
        h.raw("<rect")
            .attr("class", if rollback { "bar rb" } else { "bar" })
            .attr("x", &format!("{:.1}", i as f64 * bw + 0.5))
            .attr("y", &format!("{:.1}", hgt - bottom - bh))
            .attr("width", &format!("{:.1}", (bw - 1.0).max(0.5)))
            .attr("height", &format!("{bh:.1}"))
            .raw("><title>")
            .text(&format!(
                "{}: {} {unit}",
                labels.get(i).map(String::as_str).unwrap_or(""),
                fmt_num(*v)
            ))
            .raw("</title></rect>");
    }
    if let (Some(first), Some(last)) = (labels.first(), labels.last()) {
        h.raw("<text")
            .attr("x", "0")
            .attr("y", &(hgt - 2.0).to_string())
            .raw(">")
            .text(first)
            .raw("</text><text")
            .attr("x", &w.to_string())
            .attr("y", &(hgt - 2.0).to_string())
            .attr("text-anchor", "end")
            .raw(">")
            .text(last)
            .raw("</text>");
    }
    h.raw("</svg><figcaption>")
        .text(title)
        .raw("</figcaption></figure>");
    h
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// At most `n` characters, with "…" when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn points(n: usize, from: DateTime<Utc>, step: Duration) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                lane: i % 2,
                at: from + step * i as i32,
                rollback: i % 50 == 49,
                title: format!("p{i}"),
            })
            .collect()
    }

    #[test]
    fn a_dense_timeline_draws_one_mark_per_column_and_every_rollback() {
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let to = from + Duration::days(90);
        let lanes = vec!["prod".to_string(), "staging".to_string()];
        // 10,800 points, one every 12 minutes: far more than pixel columns.
        let dense = points(10_800, from, Duration::minutes(12));
        let (svg, marks) = timeline(&lanes, &dense, from, to);
        let svg = svg.finish();
        let rollbacks = dense.iter().filter(|p| p.rollback).count();
        assert_eq!(svg.matches("class=\"point rollback\"").count(), rollbacks);
        let many = svg.matches("class=\"point many\"").count();
        assert_eq!(marks, many + rollbacks);
        // At most one mark per lane and column of the plot.
        let columns = (W - LEFT - RIGHT) as usize / COLUMN_PX + 1;
        assert!(many <= 2 * columns, "{many}");
        assert!(svg.contains("deployments in prod from 2026-01-01 00:00 UTC to "));
        // A sparse timeline keeps one mark per deployment, with its own tooltip.
        let sparse = points(100, from, Duration::hours(12));
        let (svg, marks) = timeline(&lanes, &sparse, from, to);
        assert_eq!(marks, 100);
        assert_eq!(svg.finish().matches("<g class=\"point").count(), 100);
    }
}
