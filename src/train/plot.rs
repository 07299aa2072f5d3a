//! The run's plot, `training.png`: two side-by-side panels, the mean training loss per epoch and the validation
//! Jaccard per epoch, drawn by hand into an RGB image (antialiased lines, point markers, framed axes, gridlines,
//! ticks with numeric labels, titles in the embedded 5x7 bitmap font of `font.rs`) and written atomically.
//!
//! Scaling: the epoch axis starts at 0 (or below the first epoch) and steps by 1, 2 or 5 times a power of ten; the
//! loss axis is fitted to the finite losses with round ticks, and switches to a log scale (decade ticks) when the
//! positive losses span three decades or more; the Jaccard axis is always 0..1. Non-finite losses are skipped and
//! break the line; epochs without a validation score are skipped and the line runs on over them. Panels with
//! nothing to draw say why ("no epochs yet", "no validation", "no finite loss").

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use super::font::{glyph, text_width, ADVANCE, CAP_H, GLYPH_H, GLYPH_W};
use super::log::EpochRecord;
use crate::error::Result;
use crate::fsutil::write_atomic;

/// Width of the plot in pixels.
pub const PLOT_WIDTH: u32 = 900;
/// Height of the plot in pixels.
pub const PLOT_HEIGHT: u32 = 420;

type Colour = [u8; 3];

const WHITE: Colour = [255, 255, 255];
const TEXT: Colour = [35, 35, 35];
const MUTED: Colour = [110, 110, 110];
const FRAME: Colour = [70, 70, 70];
const GRID: Colour = [228, 228, 228];
const LOSS_COLOUR: Colour = [31, 119, 180];
const JACCARD_COLOUR: Colour = [214, 95, 14];
const BEST_COLOUR: Colour = [40, 40, 40];

const PANEL_W: i64 = PLOT_WIDTH as i64 / 2;
const TITLE_Y: i64 = 12;
const CAPTION_Y: i64 = 36;
const PLOT_TOP: i64 = 56;
const PLOT_BOTTOM: i64 = PLOT_HEIGHT as i64 - 62;
const TITLE_SCALE: u32 = 2;
const TICK_SCALE: u32 = 2;
const CAPTION_SCALE: u32 = 2;
const TICK_LEN: i64 = 5;
/// Gap between the frame and the outermost data points, so that markers stay inside.
const INNER_PAD: f64 = 9.0;
const LINE_WIDTH: f64 = 2.0;
const MARKER_RADIUS: f64 = 3.3;
/// Markers are left out when neighbouring points are closer than this (in pixels): the line alone reads better.
const MIN_MARKER_SPACING: f64 = 7.0;

/// Draws the training loss and the validation Jaccard of `records` per epoch into a
/// `PLOT_WIDTH` x `PLOT_HEIGHT` PNG at `path`, replacing it atomically.
///
/// Any record list is drawn: none at all gives empty axes saying "no epochs yet", NaN or infinite losses are
/// skipped, a loss range of three decades or more is drawn on a log scale, and a run without validation says so
/// in the Jaccard panel. The error is only ever one of writing `path`.
pub fn plot_run(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let img = render(records);
    write_atomic(path, |w| {
        PngEncoder::new(w).write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8).map_err(std::io::Error::other)
    })
}

/// The plot of `records` as an image (see [`plot_run`]).
fn render(records: &[EpochRecord]) -> RgbImage {
    let mut canvas = Canvas::new(PLOT_WIDTH, PLOT_HEIGHT, WHITE);
    let mut sorted: Vec<&EpochRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.epoch);
    let x_axis = epoch_axis(&sorted);

    let loss: Vec<Option<(f64, f64)>> = sorted.iter().map(|r| r.train_loss.is_finite().then_some((r.epoch as f64, r.train_loss))).collect();
    let finite: Vec<f64> = loss.iter().flatten().map(|p| p.1).collect();
    let loss_axis = value_axis(&finite);
    let last = loss.iter().rev().flatten().next();
    let loss_panel = Panel {
        title: if loss_axis.log { "training loss (log scale)" } else { "training loss" }.to_string(),
        caption: last.map(|&(e, v)| format!("last {} (epoch {e})", format_sig(v))),
        empty: if sorted.is_empty() { "no epochs yet" } else { "no finite loss" },
        x: x_axis.clone(),
        y: loss_axis,
        points: loss,
        colour: LOSS_COLOUR,
        connect_gaps: false,
        highlight: None,
    };
    draw_panel(&mut canvas, 0, &loss_panel);

    let jaccard: Vec<Option<(f64, f64)>> =
        sorted.iter().map(|r| r.val_jaccard.filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v.clamp(0.0, 1.0)))).collect();
    // The first of the best epochs, as the checkpointing keeps it.
    let best = jaccard.iter().flatten().fold(None::<(f64, f64)>, |b, &p| match b {
        Some(q) if q.1 >= p.1 => Some(q),
        _ => Some(p),
    });
    let jaccard_panel = Panel {
        title: "validation Jaccard".to_string(),
        caption: best.map(|(e, v)| format!("best {v:.4} (epoch {e})")),
        empty: if sorted.is_empty() { "no epochs yet" } else { "no validation" },
        x: x_axis,
        y: linear_axis(0.0, 1.0),
        points: jaccard,
        colour: JACCARD_COLOUR,
        connect_gaps: true,
        highlight: best,
    };
    draw_panel(&mut canvas, PANEL_W, &jaccard_panel);
    canvas.img
}

/// One panel's content.
struct Panel {
    title: String,
    caption: Option<String>,
    /// What the plot area says when `points` has nothing to draw.
    empty: &'static str,
    x: Axis,
    y: Axis,
    /// `(epoch, value)` in epoch order; `None` breaks the line.
    points: Vec<Option<(f64, f64)>>,
    colour: Colour,
    /// Whether the line runs on over missing points (epochs without validation) instead of breaking there
    /// (a non-finite loss).
    connect_gaps: bool,
    /// A point to ring (the best epoch).
    highlight: Option<(f64, f64)>,
}

/// Draws `p` into the panel whose left edge is at `ox`.
fn draw_panel(c: &mut Canvas, ox: i64, p: &Panel) {
    let label_w = p.y.ticks.iter().map(|(_, s)| text_width(s, TICK_SCALE)).max().unwrap_or(0) as i64;
    let (left, right) = (ox + 14 + label_w + 6 + TICK_LEN, ox + PANEL_W - 20);
    let (top, bottom) = (PLOT_TOP, PLOT_BOTTOM);
    let cx = (left + right) / 2;
    let map_x = |v: f64| left as f64 + INNER_PAD + p.x.frac(v) * ((right - left) as f64 - 2.0 * INNER_PAD);
    let map_y = |v: f64| bottom as f64 - INNER_PAD - p.y.frac(v) * ((bottom - top) as f64 - 2.0 * INNER_PAD);

    c.text_centred(cx, TITLE_Y, &p.title, TITLE_SCALE, TEXT, true);
    if let Some(caption) = &p.caption {
        c.text_centred(cx, CAPTION_Y, caption, CAPTION_SCALE, MUTED, false);
    }

    let cap_h = (CAP_H * TICK_SCALE) as i64;
    for (v, label) in &p.y.ticks {
        let y = map_y(*v).floor() as i64;
        c.fill_rect(left + 1, y, right, y + 1, GRID);
        c.fill_rect(left - TICK_LEN, y, left, y + 1, FRAME);
        let w = text_width(label, TICK_SCALE) as i64;
        c.text(left - TICK_LEN - 5 - w, y - cap_h / 2, label, TICK_SCALE, TEXT, false);
    }
    for (v, label) in &p.x.ticks {
        let x = map_x(*v).floor() as i64;
        c.fill_rect(x, top + 1, x + 1, bottom, GRID);
        c.fill_rect(x, bottom, x + 1, bottom + TICK_LEN, FRAME);
        c.text_centred(x, bottom + TICK_LEN + 5, label, TICK_SCALE, TEXT, false);
    }
    c.text_centred(cx, bottom + TICK_LEN + 5 + cap_h + 10, "epoch", TICK_SCALE, MUTED, false);
    c.frame(left, top, right, bottom, FRAME);

    let pts: Vec<Option<(f64, f64)>> =
        p.points.iter().filter(|o| o.is_some() || !p.connect_gaps).map(|o| o.map(|(e, v)| (map_x(e), map_y(v)))).collect();
    if pts.iter().all(Option::is_none) {
        let y = (top + bottom) / 2 - cap_h / 2;
        c.text_centred(cx, y, p.empty, TITLE_SCALE, MUTED, false);
        return;
    }
    let mut line = Vec::new();
    for pair in pts.windows(2) {
        if let [Some(a), Some(b)] = pair {
            line.push(Shape::Segment(*a, *b, LINE_WIDTH / 2.0));
        }
    }
    c.draw(&line, p.colour);
    let spacing = (map_x(1.0) - map_x(0.0)).abs();
    let lonely = |i: usize| {
        let gap = |j: Option<usize>| j.and_then(|j| pts.get(j)).is_none_or(|q| q.is_none());
        gap(i.checked_sub(1)) && gap(Some(i + 1))
    };
    // Isolated points always get a marker (they have no line); the rest only where markers do not crowd.
    let markers: Vec<Shape> = pts
        .iter()
        .enumerate()
        .filter_map(|(i, q)| q.filter(|_| spacing >= MIN_MARKER_SPACING || lonely(i)))
        .map(|q| Shape::Segment(q, q, MARKER_RADIUS))
        .collect();
    c.draw(&markers, p.colour);
    if let Some((e, v)) = p.highlight {
        c.draw(&[Shape::Ring((map_x(e), map_y(v)), MARKER_RADIUS + 3.5, 0.8)], BEST_COLOUR);
    }
}

/// A mapping from values to `0..=1` along one axis, with its labelled ticks.
#[derive(Clone, Debug)]
struct Axis {
    /// Bounds of the axis: values, or base-10 exponents when `log`.
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn frac(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        (v - self.lo) / (self.hi - self.lo)
    }
}

/// 1, 2 or 5 times a power of ten, the smallest at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let base = 10f64.powf(raw.log10().floor());
    let f = raw / base;
    let n = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    n * base
}

/// The epoch axis: integer ticks from 0 (or just below the first epoch) to the last epoch rounded up.
fn epoch_axis(sorted: &[&EpochRecord]) -> Axis {
    let (first, last) = match (sorted.first(), sorted.last()) {
        (Some(a), Some(b)) => (a.epoch as f64, b.epoch as f64),
        _ => (0.0, 10.0),
    };
    let step = nice_step(((last - first) / 6.0).max(1.0));
    let lo = ((first - 1.0).max(0.0) / step).floor() * step;
    let hi = ((last / step).ceil() * step).max(lo + step);
    let n = ((hi - lo) / step).round() as i64;
    let ticks = (0..=n).map(|k| lo + k as f64 * step).map(|v| (v, format!("{v}"))).collect();
    Axis { lo, hi, log: false, ticks }
}

/// An axis fitted to `values` (finite): log when they are positive and span three decades or more, else linear.
fn value_axis(values: &[f64]) -> Axis {
    let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() {
        return linear_axis(0.0, 1.0);
    }
    if min > 0.0 && max / min >= 1e3 {
        return log_axis(min, max);
    }
    if min == max {
        let d = if min == 0.0 { 1.0 } else { min.abs() * 0.5 };
        return linear_axis(min - d, max + d);
    }
    linear_axis(min, max)
}

/// A linear axis covering `lo..=hi` with about five round ticks.
fn linear_axis(lo: f64, hi: f64) -> Axis {
    let span = hi - lo;
    let step = nice_step(span / 5.0);
    if !(step.is_finite() && step > 0.0 && lo.is_finite() && hi.is_finite()) {
        // Only reachable with spans near f64::MAX: two bare ticks.
        let ticks = vec![(lo, format!("{lo:.1e}")), (hi, format!("{hi:.1e}"))];
        return Axis { lo, hi: if hi > lo { hi } else { lo + 1.0 }, log: false, ticks };
    }
    let k0 = (lo / step + 1e-9).floor();
    let k1 = (hi / step - 1e-9).ceil().max(k0 + 1.0);
    let ticks = (0..=(k1 - k0) as i64).map(|k| (k0 + k as f64) * step).map(|v| (v, format_tick(v, step, lo.abs().max(hi.abs())))).collect();
    Axis { lo: k0 * step, hi: k1 * step, log: false, ticks }
}

/// A base-10 log axis over whole decades covering `min..=max` (both positive), with at most nine decade ticks.
fn log_axis(min: f64, max: f64) -> Axis {
    let lo = min.log10().floor();
    let hi = max.log10().ceil().max(lo + 1.0);
    let every = ((hi - lo) / 8.0).ceil().max(1.0);
    let ticks =
        (0..).map(|k| lo + k as f64 * every).take_while(|e| *e <= hi + 1e-9).map(|e| (10f64.powf(e), format_decade(e as i32))).collect();
    Axis { lo, hi, log: true, ticks }
}

/// `10^e` as a short label: plain for `1e-3..=1e3`, else `1eN`.
fn format_decade(e: i32) -> String {
    match e {
        0..=3 => format!("1{}", "0".repeat(e as usize)),
        -3..=-1 => format!("0.{}1", "0".repeat((-e - 1) as usize)),
        _ => format!("1e{e}"),
    }
}

/// A tick value with as many decimals as its `step` needs; scientific for very large or very small values.
fn format_tick(v: f64, step: f64, magnitude: f64) -> String {
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    if magnitude >= 1e5 || step < 1e-3 {
        if v == 0.0 {
            return "0".to_string();
        }
        let digits = (magnitude.log10().floor() - step.log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{v:.digits$e}")
    } else {
        let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// `v` with four significant digits (scientific outside `1e-3..1e5`).
fn format_sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor();
    if !(-3.0..5.0).contains(&mag) {
        format!("{v:.3e}")
    } else {
        let decimals = (3.0 - mag).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// Something drawn antialiased: a segment with round caps and half-width (a disc when both ends coincide), or a
/// ring of radius `r` and half-width.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Segment((f64, f64), (f64, f64), f64),
    Ring((f64, f64), f64, f64),
}

impl Shape {
    /// Bounding box in whole pixels, inclusive.
    fn bounds(&self) -> (i64, i64, i64, i64) {
        let (a, b, r) = match *self {
            Shape::Segment(a, b, hw) => (a, b, hw + 1.0),
            Shape::Ring(c, r, hw) => (c, c, r + hw + 1.0),
        };
        (
            (a.0.min(b.0) - r).floor() as i64,
            (a.1.min(b.1) - r).floor() as i64,
            (a.0.max(b.0) + r).ceil() as i64,
            (a.1.max(b.1) + r).ceil() as i64,
        )
    }

    /// How much of the pixel whose centre is `p` the shape covers, approximately, in `0..=1`.
    fn coverage(&self, p: (f64, f64)) -> f64 {
        let (d, hw) = match *self {
            Shape::Segment(a, b, hw) => (segment_distance(p, a, b), hw),
            Shape::Ring(c, r, hw) => (((p.0 - c.0).hypot(p.1 - c.1) - r).abs(), hw),
        };
        (hw + 0.5 - d).clamp(0.0, 1.0)
    }
}

fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    (p.0 - a.0 - t * dx).hypot(p.1 - a.1 - t * dy)
}

/// An RGB image with the few drawing operations the plot needs; everything outside the image is clipped.
struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn new(width: u32, height: u32, background: Colour) -> Self {
        Canvas { img: RgbImage::from_pixel(width, height, Rgb(background)) }
    }

    fn blend(&mut self, x: i64, y: i64, colour: Colour, alpha: f64) {
        if x < 0 || y < 0 || x >= self.img.width() as i64 || y >= self.img.height() as i64 || alpha <= 0.0 {
            return;
        }
        let px = self.img.get_pixel_mut(x as u32, y as u32);
        for (dst, src) in px.0.iter_mut().zip(colour) {
            *dst = (*dst as f64 + (src as f64 - *dst as f64) * alpha.min(1.0)).round() as u8;
        }
    }

    /// Fills `x0..x1` by `y0..y1` (ends exclusive).
    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: Colour) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, colour, 1.0);
            }
        }
    }

    /// A one-pixel outline whose outer corners are `(x0, y0)` and `(x1, y1)` (inclusive).
    fn frame(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: Colour) {
        self.fill_rect(x0, y0, x1 + 1, y0 + 1, colour);
        self.fill_rect(x0, y1, x1 + 1, y1 + 1, colour);
        self.fill_rect(x0, y0, x0 + 1, y1 + 1, colour);
        self.fill_rect(x1, y0, x1 + 1, y1 + 1, colour);
    }

    /// Draws `text` with its top-left corner (of the capital height) at `(x, y)`; `bold` doubles every stroke
    /// one pixel to the right.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, colour: Colour, bold: bool) {
        let s = scale as i64;
        for (i, c) in text.chars().enumerate() {
            let gx = x + i as i64 * (ADVANCE as i64) * s;
            for (row, bits) in glyph(c).iter().enumerate().take(GLYPH_H as usize) {
                for col in 0..GLYPH_W {
                    if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                        let (px, py) = (gx + col as i64 * s, y + row as i64 * s);
                        self.fill_rect(px, py, px + s + bold as i64, py + s, colour);
                    }
                }
            }
        }
    }

    /// Draws `text` horizontally centred on `cx`.
    fn text_centred(&mut self, cx: i64, y: i64, text: &str, scale: u32, colour: Colour, bold: bool) {
        let w = text_width(text, scale) as i64 + bold as i64;
        self.text(cx - w / 2, y, text, scale, colour, bold);
    }

    /// Draws the union of `shapes` in one colour, each pixel blended once with its highest coverage, so that
    /// joints of a polyline are not darker than its segments.
    fn draw(&mut self, shapes: &[Shape], colour: Colour) {
        let (w, h) = (self.img.width() as i64, self.img.height() as i64);
        let mut cover = vec![0f32; (w * h) as usize];
        for shape in shapes {
            let (x0, y0, x1, y1) = shape.bounds();
            for y in y0.max(0)..=y1.min(h - 1) {
                for x in x0.max(0)..=x1.min(w - 1) {
                    let cv = shape.coverage((x as f64 + 0.5, y as f64 + 0.5)) as f32;
                    let slot = &mut cover[(y * w + x) as usize];
                    *slot = slot.max(cv);
                }
            }
        }
        for (i, &cv) in cover.iter().enumerate() {
            if cv > 0.0 {
                self.blend(i as i64 % w, i as i64 / w, colour, cv as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, loss: f64, jaccard: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            step: epoch as u64 * 100,
            train_loss: loss,
            images_per_second: 50.0,
            seconds: 60.0,
            val_jaccard: jaccard,
            val_threshold_jaccard: jaccard,
            val_dice: jaccard,
            val_accuracy: jaccard,
        }
    }

    /// A realistic run: loss falling from about 0.65 to 0.12, Jaccard rising from 0.45 to about 0.78.
    fn run(epochs: usize) -> Vec<EpochRecord> {
        (1..=epochs)
            .map(|e| {
                let t = e as f64;
                let wiggle = 0.012 * (t * 1.7).sin();
                let loss = 0.12 + 0.53 * (-t / 7.0).exp() + wiggle;
                let jaccard = 0.78 - 0.33 * (-t / 5.0).exp() + 0.6 * wiggle;
                record(e, loss, Some(jaccard))
            })
            .collect()
    }

    fn count_near(img: &RgbImage, x0: u32, x1: u32, colour: Colour) -> usize {
        img.enumerate_pixels().filter(|(x, _, p)| (x0..x1).contains(x) && p.0.iter().zip(colour).all(|(a, b)| a.abs_diff(b) < 12)).count()
    }

    #[test]
    fn writes_a_png_of_the_plot_size_whose_content_follows_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        let b = dir.path().join("sub/b.png");
        plot_run(&a, &run(30)).unwrap();
        plot_run(&b, &run(12)).unwrap();
        let ia = image::open(&a).unwrap().into_rgb8();
        let ib = image::open(&b).unwrap().into_rgb8();
        assert_eq!(ia.dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
        assert_eq!(ib.dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
        assert_ne!(ia.as_raw(), ib.as_raw());
        let half = PLOT_WIDTH / 2;
        // Each series is in its own panel.
        assert!(count_near(&ia, 0, half, LOSS_COLOUR) > 200);
        assert_eq!(count_near(&ia, half, PLOT_WIDTH, LOSS_COLOUR), 0);
        assert!(count_near(&ia, half, PLOT_WIDTH, JACCARD_COLOUR) > 200);
        assert_eq!(count_near(&ia, 0, half, JACCARD_COLOUR), 0);
        // The same records draw the same picture, and nothing is left beside the target.
        plot_run(&a, &run(30)).unwrap();
        assert_eq!(image::open(&a).unwrap().into_rgb8().as_raw(), ia.as_raw());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn edge_cases_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let huge: Vec<EpochRecord> = (1..=8).map(|e| record(e, 10f64.powi(7 - e as i32), None)).collect();
        let nan = vec![
            record(1, 0.9, Some(0.3)),
            record(2, f64::NAN, Some(0.4)),
            record(3, f64::INFINITY, None),
            record(4, 0.5, Some(f64::NAN)),
            record(5, 0.4, Some(0.6)),
        ];
        let flat: Vec<EpochRecord> = (1..=5).map(|e| record(e, 0.0, Some(1.0))).collect();
        let long: Vec<EpochRecord> = (1..=2000).map(|e| record(e, 1.0 / e as f64, Some(0.5))).collect();
        let cases: Vec<(&str, Vec<EpochRecord>)> = vec![
            ("empty", vec![]),
            ("one", vec![record(1, 0.42, Some(0.55))]),
            ("nan", nan),
            ("huge", huge),
            ("flat", flat),
            ("long", long),
            ("all-nan", vec![record(1, f64::NAN, None), record(2, f64::NEG_INFINITY, None)]),
            ("wild", vec![record(3, -1e300, Some(7.0)), record(9, 1e300, Some(-2.0))]),
        ];
        let mut seen = Vec::new();
        for (name, records) in cases {
            let path = dir.path().join(format!("{name}.png"));
            plot_run(&path, &records).unwrap_or_else(|e| panic!("{name}: {e}"));
            let img = image::open(&path).unwrap().into_rgb8();
            assert_eq!(img.dimensions(), (PLOT_WIDTH, PLOT_HEIGHT), "{name}");
            assert!(!seen.contains(img.as_raw()), "{name} looks like an earlier case");
            seen.push(img.into_raw());
        }
        // No validation: nothing of the Jaccard colour; one record: its marker is drawn.
        let none = render(&[record(1, 0.5, None), record(2, 0.4, None)]);
        assert_eq!(count_near(&none, 0, PLOT_WIDTH, JACCARD_COLOUR), 0);
        let one = render(&[record(1, 0.42, Some(0.55))]);
        assert!(count_near(&one, 0, PLOT_WIDTH / 2, LOSS_COLOUR) > 10);
        assert!(count_near(&one, PLOT_WIDTH / 2, PLOT_WIDTH, JACCARD_COLOUR) > 10);
    }

    #[test]
    fn axes_pick_round_ticks_and_scales() {
        let labels = |a: &Axis| a.ticks.iter().map(|t| t.1.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&linear_axis(0.0, 1.0)), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let loss = value_axis(&[0.65, 0.3, 0.12]);
        assert_eq!(labels(&loss), ["0.0", "0.2", "0.4", "0.6", "0.8"]);
        assert!(!loss.log);
        let log = value_axis(&[2e4, 3.0, 0.05]);
        assert!(log.log);
        assert_eq!(labels(&log), ["0.01", "0.1", "1", "10", "100", "1000", "1e4", "1e5"]);
        assert_eq!(labels(&value_axis(&[2.5e6, 3.5e6]))[0], "2.4e6");
        let recs = run(30);
        let sorted: Vec<&EpochRecord> = recs.iter().collect();
        assert_eq!(labels(&epoch_axis(&sorted)), ["0", "5", "10", "15", "20", "25", "30"]);
        assert_eq!(labels(&epoch_axis(&sorted[..1])), ["0", "1"]);
        assert_eq!(format_sig(0.123456), "0.1235");
        assert_eq!(format_sig(1234.5), "1234");
        assert_eq!(format_decade(-2), "0.01");
    }

    /// Writes a sample 30-epoch plot to `$PLOT_OUT` (default: `plot.png` in the temp folder) to look at, and
    /// edge cases beside it (`plot-empty.png`, `plot-one.png`, ...).
    #[test]
    #[ignore]
    fn sample_plot() {
        let out = std::env::var_os("PLOT_OUT").map(std::path::PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("plot.png"));
        plot_run(&out, &run(30)).unwrap();
        println!("wrote {}", out.display());
        let gappy: Vec<EpochRecord> = run(20)
            .into_iter()
            .map(|mut r| {
                if r.epoch % 7 == 3 {
                    r.train_loss = f64::NAN;
                }
                if r.epoch % 5 != 0 {
                    r.val_jaccard = None;
                }
                r
            })
            .collect();
        let cases: Vec<(&str, Vec<EpochRecord>)> = vec![
            ("empty", vec![]),
            ("one", vec![record(1, 0.42, Some(0.55))]),
            ("gappy", gappy),
            ("huge", (1..=12).map(|e| record(e, 3.0 * 10f64.powi(6 - e as i32), None)).collect()),
            ("long", (1..=300).map(|e| record(e, 2e5 + 1e5 / e as f64, Some(e as f64 / 400.0))).collect()),
        ];
        for (name, records) in cases {
            let path = out.with_file_name(format!("plot-{name}.png"));
            plot_run(&path, &records).unwrap();
            println!("wrote {}", path.display());
        }
    }
}
