//! `feature-lab plot`: renders one node's run as a PNG a researcher can put in a paper, drawn
//! with plotters and our embedded DejaVu Sans (lab/assets; no system fonts or fontconfig).
//! From the top:
//! - a verdict strip: the agent's alarms (red bars), rows it did not judge (warm-up: grey), gaps
//!   in the run, and each labelled window named by its attack type;
//! - one panel per chosen feature: its scored value (counters as per-interval deltas, by the
//!   SQL view's gap rule) with y ticks in the column's unit;
//! - a panel of the SQL |z| of the same features with the threshold drawn and a legend; a NULL
//!   z is a gap in its line, and the legend says in how many rows it was NULL.
//!
//! Every panel shares one time axis (ticks labelled with UTC clock time); labelled windows are
//! shaded and warm-up rows greyed across all panels; a line never crosses a missing row or a gap
//! longer than 1.5 intervals.
use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::FontStyle,
};
use std::{
    io::BufWriter,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{bail, Context};
use clap::Args;
use feature_db::deadline::Db as Client;
use serde::Serialize;

use crate::window::TimeWindow;
use feature_db::DatabaseArgs;
use feature_schema::{features::index_of, timefmt::rfc3339_micros, Kind, FEATURES};

pub const DEFAULT_FEATURES: &str =
    "cpu_sec_idle,load1,forks_total,ebpf_execs,tcp_conn_failed,tcp_to_est,sock_alloc_raw,disk_write";
/// The features drawn for one pod (--pod) unless --features says otherwise.
pub const DEFAULT_POD_FEATURES: &str =
    "ebpf_forks,ebpf_execs,tcp_conn_failed,tcp_to_est,tcp_rst_recv,cpu_usage_usec,memory_current";

/// How long any one database call of `plot` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The node to plot.
    #[arg(long)]
    pub node: String,
    /// The PNG file to write (its name must end in .png), or - for standard output (the
    /// summary then goes to standard error).
    #[arg(long, value_parser = parse_output)]
    pub output: PathBuf,
    /// Features to draw, comma-separated (any scored feature column: see the tables of
    /// docs/schema.md; with --pod, any eBPF or resource column of pod_features) [default: a selection].
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Plot this pod's rows (its UID, NAMESPACE/NAME, or a host service's unit) from
    /// pod_features, with its own z-scores, instead of the node's.
    #[arg(long)]
    pub pod: Option<String>,
    #[command(flatten)]
    pub window: TimeWindow,
    /// |z| threshold drawn in the z-score panel (a number above 0).
    #[arg(long, default_value_t = 2.0, value_parser = feature_db::parse_positive)]
    pub threshold: f64,
    /// Image width in pixels (400 to 8000).
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u32).range(400..=8000))]
    pub width: u32,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

/// `--output`: `-` (standard output) or a file whose name ends in `.png`, the only format
/// written (a `.jpg` holding PNG bytes would mislead whatever opens it).
pub fn parse_output(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if s == "-" || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return Ok(path);
    }
    Err(format!("{s:?}: plot writes PNG images; name the file *.png, or give - for standard output"))
}

/// The rows to draw: time, label, detector verdict, scored feature values and their z-scores.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    pub ts: Vec<f64>,
    pub attack: Vec<bool>,
    pub attack_type: Vec<Option<String>>,
    /// The agent gave a verdict (false: warm-up, or written without a detector).
    pub judged: Vec<bool>,
    pub detected: Vec<bool>,
    /// Per feature, per row.
    pub values: Vec<Vec<Option<f64>>>,
    pub z: Vec<Vec<Option<f64>>>,
    /// On a pod's plot: the node's scenario runs in the window that did not run in this pod
    /// (start and end in Unix seconds, and the scenario's name), drawn in the verdict strip so
    /// a neighbour's rows can be read against them.
    pub scenario_windows: Vec<(f64, f64, String)>,
}

/// Labelled attack windows (exact colour, so a test can find the shading).
pub const SHADE: RGBColor = RGBColor(255, 214, 214);
/// Rows the agent did not judge (warm-up).
const WARMUP: RGBColor = RGBColor(232, 232, 232);
const ALARM: RGBColor = RGBColor(214, 39, 40);
/// The node's scenario runs outside the plotted pod (exact colour, so a test can find them).
pub const ELSEWHERE: RGBColor = RGBColor(255, 170, 60);
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];
const FONT: &str = "sans-serif";
/// Height given to each line of the |z| legend (its 12 px font takes about 17).
const LEGEND_LINE_PX: u32 = 21;
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// `text` as the embedded font can draw it: a character it has no glyph for (CJK, emoji) is
/// written as its code point, `<U+540D>`, instead of an empty box, so a pod or attack type named
/// in another script is still told apart and can be looked up.
fn drawable(text: &str) -> String {
    use ab_glyph::Font;
    let Ok(font) = ab_glyph::FontRef::try_from_slice(DEJAVU_SANS) else { return text.to_owned() };
    text.chars()
        .map(
            |c| if c.is_control() || font.glyph_id(c).0 != 0 { c.to_string() } else { format!("<U+{:04X}>", c as u32) },
        )
        .collect()
}

/// A window of consecutive labelled rows, as drawn.
#[derive(Debug, Clone, Serialize)]
pub struct Shaded {
    pub x0: u32,
    pub x1: u32,
    pub attack_type: String,
}

/// Where things ended up in the image; printed as JSON so a reader (or a test) can find them.
#[derive(Debug, Clone, Serialize)]
pub struct PlotSummary {
    pub output: String,
    pub width: u32,
    pub height: u32,
    pub rows: usize,
    /// Pixel rows spanned by the feature panels' plotting areas (shading runs through them).
    pub panels_top: u32,
    pub panels_bottom: u32,
    /// Pixel columns of the time axis' start and end.
    pub plot_left: u32,
    pub plot_right: u32,
    /// Each labelled window: its pixel columns and attack type.
    pub shaded: Vec<Shaded>,
    /// Rows the agent judged anomalous.
    pub detections: usize,
    /// Rows the agent did not judge (warm-up, or no verdict).
    pub unjudged: usize,
    /// Breaks in the time axis: row spacing over 1.5 times the typical interval.
    pub gaps: usize,
    /// Per feature drawn, the rows whose SQL z-score is NULL (drawn as gaps).
    pub z_null: Vec<(String, usize)>,
    /// Pixel row of the |z| panel's clipped maximum: no line is drawn above it, and the legend
    /// sits above it.
    pub z_clip_y: u32,
    /// On a pod's plot, the node's scenario runs that did not run in this pod, as drawn (pixel
    /// columns and the scenario's name).
    pub scenario_windows: Vec<Shaded>,
    /// Default features left out because they have no value in the window (columns this kernel
    /// or cgroup tree leaves NULL); a feature asked for by name is always drawn.
    pub left_out: Vec<String>,
}

impl PlotData {
    /// Drops the features with no value in any row; returns their indices.
    fn drop_empty(&mut self) -> Vec<usize> {
        let empty: Vec<usize> =
            (0..self.values.len()).filter(|&k| self.values[k].iter().all(Option::is_none)).collect();
        for &k in empty.iter().rev() {
            self.values.remove(k);
            self.z.remove(k);
        }
        empty
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The y-axis description of a feature: its unit, per interval for counters.
fn axis_unit(name: &str) -> String {
    if let Some(r) = feature_schema::pods::RESOURCES.iter().find(|r| r.name == name) {
        return if r.counter { format!("{} / interval", r.unit) } else { r.unit.to_owned() };
    }
    let Some(i) = index_of(name) else { return String::new() };
    let f = FEATURES[i];
    let unit = feature_schema::SCHEMA[f.index].unit;
    match (f.kind, unit) {
        (Kind::Counter, "") => "per interval".to_owned(),
        (Kind::Counter, u) => format!("{u} / interval"),
        (_, u) => u.to_owned(),
    }
}

/// The run's time geometry: x is seconds since the first row; each row covers the interval
/// since the previous one (the first row, the typical interval).
struct Timeline {
    t0: f64,
    span: f64,
    typical: f64,
    /// Per row: true when it follows a gap (spacing over 1.5 typical intervals).
    after_gap: Vec<bool>,
}

impl Timeline {
    fn new(ts: &[f64]) -> Self {
        let t0 = ts.first().copied().unwrap_or(0.0);
        let span = (ts.last().copied().unwrap_or(1.0) - t0).max(1e-9);
        let mut steps: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
        steps.sort_by(f64::total_cmp);
        let typical = steps.get(steps.len() / 2).copied().unwrap_or(1.0).max(1e-9);
        let after_gap = (0..ts.len()).map(|i| i > 0 && ts[i] - ts[i - 1] > 1.5 * typical).collect();
        Self { t0, span, typical, after_gap }
    }

    /// [start, end] in x of row `i`: from the previous row (or one interval back) to itself.
    fn cell(&self, ts: &[f64], i: usize) -> (f64, f64) {
        let start = if i > 0 && !self.after_gap[i] { ts[i - 1] } else { ts[i] - self.typical };
        ((start - self.t0).max(0.0), ts[i] - self.t0)
    }

    /// Runs [i, j] of consecutive rows (no gap between them) where `pick(row)` holds.
    fn runs(&self, n: usize, pick: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
        self.runs_split(n, pick, |_| false)
    }

    /// As [`Timeline::runs`], and a row where `starts_new(row)` holds begins a run of its own
    /// (touching windows of two attack types are two bands).
    fn runs_split(
        &self,
        n: usize,
        pick: impl Fn(usize) -> bool,
        starts_new: impl Fn(usize) -> bool,
    ) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            if !pick(i) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < n && pick(j + 1) && !self.after_gap[j + 1] && !starts_new(j + 1) {
                j += 1;
            }
            out.push((i, j));
            i = j + 1;
        }
        out
    }

    /// The points of `values` as line segments: broken at NULLs and at gaps.
    fn segments(&self, ts: &[f64], values: &[Option<f64>]) -> Vec<Vec<(f64, f64)>> {
        let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut current = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if (v.is_none() || self.after_gap[i]) && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            if let Some(v) = v {
                current.push((ts[i] - self.t0, *v));
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }
}

fn clock(t: f64) -> String {
    let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    rfc3339_micros(ts).chars().skip(11).take(8).collect()
}

fn iso(t: f64) -> String {
    let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    rfc3339_micros(ts).chars().take(19).collect::<String>().replace('T', " ")
}

/// Registers the embedded font under the family name the plot uses (once per process).
fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, DEJAVU_SANS).is_ok()
    });
    if !ok {
        bail!("the embedded font could not be loaded");
    }
    Ok(())
}

/// Draws the plot into an RGB buffer; returns the buffer's height and where things went.
fn render(
    data: &PlotData,
    names: &[String],
    node: &str,
    threshold: f64,
    width: u32,
) -> anyhow::Result<(Vec<u8>, PlotSummary)> {
    register_font()?;
    const TITLE: u32 = 56;
    const STRIP: u32 = 46;
    const PANEL: u32 = 120;
    const Y_LABELS: u32 = 110;
    const RIGHT: u32 = 24;
    let k = names.len() as u32;
    // The |z| panel: 200 px of data, and room above them for the legend (a line per feature and
    // one for the threshold), which the panel's y axis leaves free.
    let zpanel = 200 + LEGEND_LINE_PX * (k + 1) + 16;
    let height = TITLE + STRIP + k * PANEL + zpanel;
    let mut buf = vec![255u8; (width * height * 3) as usize];
    let summary = {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root, data, names, node, threshold, (TITLE, STRIP, PANEL, Y_LABELS, RIGHT))
            .map_err(|e| anyhow::anyhow!("drawing the plot: {e}"))?
    };
    root_present(&buf)?;
    Ok((buf, PlotSummary { width, height, ..summary }))
}

/// A drawn image is never all white: a sanity check that the backend wrote into the buffer.
fn root_present(buf: &[u8]) -> anyhow::Result<()> {
    if buf.iter().all(|b| *b == 255) {
        bail!("drawing the plot produced an empty image");
    }
    Ok(())
}

fn draw(
    root: &Area<'_>,
    data: &PlotData,
    names: &[String],
    node: &str,
    threshold: f64,
    (title_h, strip_h, panel_h, y_labels, right): (u32, u32, u32, u32, u32),
) -> Result<PlotSummary, DrawError> {
    let n = data.ts.len();
    let line = Timeline::new(&data.ts);
    let xs = 0.0..line.span;
    let ts = &data.ts;

    let (title, rest) = root.split_vertically(title_h);
    let (t0, t1) = (ts[0], ts[n - 1]);
    title.draw(&Text::new(
        format!("{}: {n} rows, {} to {} UTC", drawable(node), iso(t0), iso(t1)),
        (12, 8),
        (FONT, 20).into_font().style(FontStyle::Bold),
    ))?;
    title.draw(&Text::new(
        format!(
            "counters as deltas per interval (typical {:.0} s); shaded: labelled attack; grey: not judged (warm-up)",
            line.typical
        ),
        (12, 33),
        (FONT, 14),
    ))?;
    let (strip, rest) = rest.split_vertically(strip_h);
    let mut panels = Vec::with_capacity(names.len());
    let mut rest = rest;
    for _ in names {
        let (p, r) = rest.split_vertically(panel_h);
        panels.push(p);
        rest = r;
    }
    let z_area = rest;

    let attack_runs =
        line.runs_split(n, |i| data.attack[i], |i| i > 0 && data.attack_type[i] != data.attack_type[i - 1]);
    let unjudged_runs = line.runs(n, |i| !data.judged[i]);
    // Background bands shared by every panel: warm-up grey, labelled windows shaded.
    let bands =
        |chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
         lo: f64,
         hi: f64|
         -> Result<(), DrawError> {
            for (style, runs) in [(WARMUP, &unjudged_runs), (SHADE, &attack_runs)] {
                chart.draw_series(runs.iter().map(|&(i, j)| {
                    Rectangle::new([(line.cell(ts, i).0, lo), (line.cell(ts, j).1, hi)], style.filled())
                }))?;
            }
            Ok(())
        };
    let time_label = |x: &f64| clock(t0 + x);

    // Verdict strip.
    let mut chart = ChartBuilder::on(&strip)
        .margin_right(right)
        .y_label_area_size(y_labels)
        .build_cartesian_2d(xs.clone(), 0.0..1.0)?;
    chart.configure_mesh().disable_mesh().disable_x_axis().y_labels(0).draw()?;
    strip.draw(&Text::new("agent alarms", (8, 16), (FONT, 13).into_font().style(FontStyle::Bold)))?;
    bands(&mut chart, 0.0, 1.0)?;
    chart.draw_series(
        (0..n)
            .filter(|&i| data.detected[i])
            .map(|i| Rectangle::new([(line.cell(ts, i).0, 0.0), (line.cell(ts, i).1, 0.55)], ALARM.filled())),
    )?;
    let label_font = (FONT, 13).into_font().color(&BLACK);
    for &(i, _) in &attack_runs {
        let name = data.attack_type[i].as_deref().map_or_else(|| "attack (no type)".to_owned(), drawable);
        chart.draw_series(std::iter::once(Text::new(name, (line.cell(ts, i).0, 0.95), label_font.clone())))?;
    }
    for i in (0..n).filter(|&i| line.after_gap[i]) {
        let x = (ts[i - 1] + ts[i]) / 2.0 - t0;
        chart.draw_series(std::iter::once(Text::new("gap", (x, 0.95), label_font.clone())))?;
    }
    // The node's scenario runs elsewhere than this pod: a band along the strip's foot, named.
    let mut scenario_windows = Vec::new();
    for (start, end, name) in &data.scenario_windows {
        let (x0, x1) = ((start - t0).clamp(0.0, line.span), (end - t0).clamp(0.0, line.span));
        if x1 <= x0 {
            continue;
        }
        chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.6), (x1, 0.72)], ELSEWHERE.filled())))?;
        let label = format!("node: {}", drawable(name));
        chart.draw_series(std::iter::once(Text::new(label, (x0, 0.75), (FONT, 11).into_font().color(&BLACK))))?;
        let (px0, _) = chart.backend_coord(&(x0, 0.6));
        let (px1, _) = chart.backend_coord(&(x1, 0.6));
        scenario_windows.push(Shaded { x0: px0 as u32, x1: px1 as u32, attack_type: name.clone() });
    }
    let (plot_x, _) = chart.plotting_area().get_pixel_range();

    // Feature panels.
    let mut panels_top = u32::MAX;
    let mut panels_bottom = 0;
    let mut shaded = Vec::new();
    for (p, (name, area)) in names.iter().zip(&panels).enumerate() {
        let colour = PALETTE[p % PALETTE.len()];
        let present: Vec<f64> = data.values[p].iter().flatten().copied().collect();
        let (mut lo, mut hi) =
            present.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
        if present.is_empty() {
            (lo, hi) = (0.0, 1.0);
        } else if hi - lo < 1e-9 {
            (lo, hi) = (lo - 1.0, hi + 1.0);
        } else {
            let pad = (hi - lo) * 0.08;
            (lo, hi) = (lo - pad, hi + pad);
        }
        let mut chart = ChartBuilder::on(area)
            .margin_top(4)
            .margin_right(right)
            .y_label_area_size(y_labels)
            .build_cartesian_2d(xs.clone(), lo..hi)?;
        chart
            .configure_mesh()
            .x_labels(10)
            .y_labels(4)
            .x_label_formatter(&time_label)
            .y_label_formatter(&|v| fmt_value(*v))
            .label_style((FONT, 12))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(235, 235, 235))
            .draw()?;
        bands(&mut chart, lo, hi)?;
        for seg in line.segments(ts, &data.values[p]) {
            if seg.len() == 1 {
                chart.draw_series(std::iter::once(Circle::new(seg[0], 2, colour.filled())))?;
            } else {
                chart.draw_series(LineSeries::new(seg, colour.stroke_width(2)))?;
            }
        }
        let unit = axis_unit(name);
        let caption = match (present.is_empty(), unit.is_empty()) {
            (true, _) => format!("{name} (no data)"),
            (false, true) => name.clone(),
            (false, false) => format!("{name} ({unit})"),
        };
        let (px, py) = chart.plotting_area().get_pixel_range();
        area.draw(&Text::new(
            caption,
            (px.start - area.get_base_pixel().0 + 6, py.start - area.get_base_pixel().1 + 3),
            (FONT, 14).into_font().style(FontStyle::Bold).color(&colour),
        ))?;
        panels_top = panels_top.min(py.start as u32);
        panels_bottom = panels_bottom.max(py.end as u32);
        if p == 0 {
            for &(i, j) in &attack_runs {
                let (x0, _) = chart.backend_coord(&(line.cell(ts, i).0, lo));
                let (x1, _) = chart.backend_coord(&(line.cell(ts, j).1, lo));
                let attack_type = data.attack_type[i].clone().unwrap_or_default();
                shaded.push(Shaded { x0: x0 as u32, x1: x1 as u32, attack_type });
            }
        }
    }

    // |z| panel: each feature's SQL z-score, clipped at 4x the threshold, threshold dashed. The
    // legend sits in a band above the clipped maximum, where no line is drawn, so it never
    // covers one: the y axis goes that much higher than the data can.
    let zmax = threshold * 4.0;
    let legend_px = f64::from(LEGEND_LINE_PX) * (names.len() + 1) as f64 + 16.0;
    let plot_px = (f64::from(z_area.dim_in_pixel().1) - 58.0).max(1.0);
    let ytop = zmax / (1.0 - (legend_px / plot_px).min(0.6));
    let mut chart = ChartBuilder::on(&z_area)
        .margin_top(8)
        .margin_right(right)
        .margin_bottom(6)
        .y_label_area_size(y_labels)
        .x_label_area_size(44)
        .build_cartesian_2d(xs.clone(), 0.0..ytop)?;
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(5)
        .x_label_formatter(&time_label)
        .y_label_formatter(&|v| if *v <= zmax * 1.001 { fmt_value(*v) } else { String::new() })
        .x_desc(format!("time (UTC, {})", iso(t0).chars().take(10).collect::<String>()))
        .y_desc(format!("SQL |z| (clipped at {})", fmt_value(zmax)))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(235, 235, 235))
        .draw()?;
    bands(&mut chart, 0.0, ytop)?;
    let dash = line.span / 120.0;
    chart
        .draw_series((0..120).step_by(2).map(|d| {
            let x = f64::from(d) * dash;
            PathElement::new(vec![(x, threshold), (x + dash, threshold)], ALARM.stroke_width(1))
        }))?
        .label(format!("|z| = {threshold}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 8, y), (x + 12, y), (x + 20, y)], ALARM));
    let mut z_null = Vec::new();
    for (p, name) in names.iter().enumerate() {
        let colour = PALETTE[p % PALETTE.len()];
        let clipped: Vec<Option<f64>> = data.z[p].iter().map(|z| z.map(|z| z.abs().min(zmax))).collect();
        let nulls = clipped.iter().filter(|z| z.is_none()).count();
        z_null.push((name.clone(), nulls));
        let label = if nulls > 0 { format!("{name} (z NULL in {nulls} rows)") } else { name.clone() };
        let segments = line.segments(ts, &clipped);
        // An empty series still carries the legend entry, so a feature never vanishes.
        let mut labelled = false;
        for seg in segments.into_iter().chain(std::iter::once(Vec::new())) {
            if labelled && seg.is_empty() {
                continue;
            }
            let ann = if seg.len() == 1 {
                chart.draw_series(std::iter::once(Circle::new(seg[0], 2, colour.filled())))?
            } else {
                chart.draw_series(LineSeries::new(seg, colour.stroke_width(2)))?
            };
            if !labelled {
                ann.label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
                labelled = true;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font((FONT, 12))
        .draw()?;
    let plot_right = chart.backend_coord(&(line.span, 0.0)).0 as u32;
    let z_clip_y = chart.backend_coord(&(0.0, zmax)).1.max(0) as u32;

    Ok(PlotSummary {
        output: String::new(),
        width: 0,
        height: 0,
        rows: n,
        panels_top,
        panels_bottom,
        plot_left: plot_x.start as u32,
        plot_right,
        shaded,
        detections: data.detected.iter().filter(|d| **d).count(),
        unjudged: data.judged.iter().filter(|j| !**j).count(),
        gaps: line.after_gap.iter().filter(|g| **g).count(),
        z_null,
        z_clip_y,
        scenario_windows,
        left_out: Vec::new(),
    })
}

fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> anyhow::Result<()> {
    let out: Box<dyn std::io::Write> = if path == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)
    };
    let mut enc = png::Encoder::new(BufWriter::new(out), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// The SQL of a plot's rows: time, label, whether judged and flagged (`verdict`), the scored
/// values `columns` and the z-scores of `names`, from `from` (a deltas view `d` joined to its
/// z-scores `z`) where `filter` holds, in the --from/--to window ($2, $3), grouped by `group`.
fn series_sql(columns: &[String], names: &[String], verdict: &str, from: &str, filter: &str, group: &str) -> String {
    let zs: Vec<String> = names.iter().map(|n| format!("max(z.z) FILTER (WHERE z.feature = '{n}')")).collect();
    format!(
        "SELECT extract(epoch FROM d.ts)::float8, d.attack = 1, d.attack_type, {verdict}, {}, {}
         FROM {from}
         WHERE {filter} AND ($2::timestamptz IS NULL OR d.ts >= $2) AND ($3::timestamptz IS NULL OR d.ts <= $3)
         GROUP BY {group}, {}
         ORDER BY d.ts",
        columns.join(", "),
        zs.join(", "),
        columns.join(", ")
    )
}

/// Reads the node's rows, the scored values of `names` and their z-scores.
async fn load(
    client: &Client,
    node: &str,
    names: &[String],
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> anyhow::Result<PlotData> {
    let cols: Vec<String> = names
        .iter()
        .map(|n| {
            let f = FEATURES[index_of(n).expect("validated")];
            if f.kind == Kind::Counter {
                format!("d.{n}_delta::float8")
            } else {
                format!("d.{n}::float8")
            }
        })
        .collect();
    // The z-scores, computed on their own first (scores.rs says why).
    crate::scores::materialize(
        client,
        "plot_zscores",
        "SELECT * FROM node_feature_zscores(2.0, $2, $3, false, $1)",
        Some(node),
        from,
        to,
    )
    .await?;
    let sql = series_sql(
        &cols,
        names,
        "d.anomalous_features IS NOT NULL, coalesce(cardinality(d.anomalous_features), 0) > 0",
        "node_feature_deltas d LEFT JOIN plot_zscores z ON z.node = d.node AND z.ts = d.ts",
        "d.node = $1",
        "d.node, d.ts, d.attack, d.attack_type, d.anomalous_features",
    );
    let rows = client.query(&sql, &[&node, &from, &to]).await.context("reading the node's rows")?;
    Ok(plot_data(&rows, names.len()))
}

/// The pod's rows: its scored values (eBPF counts, resource deltas or gauges) and its z-scores
/// against its own normal rows, and the agent's verdict on each row (judged against its
/// workload's baselines; NULL while the workload warmed up).
async fn load_pod(
    client: &Client,
    node: &str,
    pod: &str,
    names: &[String],
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> anyhow::Result<PlotData> {
    let cols: Vec<String> = names
        .iter()
        .map(|n| match feature_schema::pods::RESOURCES.iter().find(|r| r.name == n) {
            Some(r) if r.counter => format!("d.{n}_delta::float8"),
            _ => format!("d.{n}::float8"),
        })
        .collect();
    // The `other` row (cgroups of no pod or service) is never judged: it has no workload, so
    // there is no warm-up to grey either.
    let sql = series_sql(
        &cols,
        names,
        "(d.anomalous_features IS NOT NULL OR d.kind = 'other'), coalesce(cardinality(d.anomalous_features), 0) > 0",
        "pod_feature_deltas d
         LEFT JOIN pod_feature_zscores z ON z.node = d.node AND z.ts = d.ts AND z.kind = d.kind AND z.owner = d.owner",
        "d.node = $1 AND (d.owner = $4 OR d.namespace || '/' || d.pod = $4)",
        "d.node, d.ts, d.kind, d.owner, d.attack, d.attack_type, d.anomalous_features",
    );
    let rows = client.query(&sql, &[&node, &from, &to, &pod]).await.context("reading the pod's rows")?;
    let mut data = plot_data(&rows, names.len());
    // The node's scenario runs that did not run in this pod (by namespace/name or UID).
    let runs = client
        .query(
            "SELECT extract(epoch FROM r.started_at)::float8, extract(epoch FROM r.ended_at)::float8, r.name
             FROM scenario_runs r
             WHERE r.node = $1 AND ($2::timestamptz IS NULL OR r.ended_at >= $2)
               AND ($3::timestamptz IS NULL OR r.started_at <= $3)
               AND coalesce(r.details->>'pod', '') <> $4
               AND NOT EXISTS (SELECT 1 FROM pod_features p WHERE p.node = r.node AND p.owner = $4
                               AND p.namespace || '/' || p.pod = r.details->>'pod')
             ORDER BY r.started_at",
            &[&node, &from, &to, &pod],
        )
        .await
        .context("reading the node's scenario runs")?;
    data.scenario_windows = runs.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    Ok(data)
}

fn plot_data(rows: &[tokio_postgres::Row], k: usize) -> PlotData {
    let mut data = PlotData {
        values: vec![Vec::with_capacity(rows.len()); k],
        z: vec![Vec::with_capacity(rows.len()); k],
        ..Default::default()
    };
    for r in rows {
        data.ts.push(r.get(0));
        data.attack.push(r.get(1));
        data.attack_type.push(r.get(2));
        data.judged.push(r.get(3));
        data.detected.push(r.get(4));
        for p in 0..k {
            data.values[p].push(r.get(5 + p));
            data.z[p].push(r.get(5 + k + p));
        }
    }
    data
}

pub async fn command(mut args: PlotArgs) -> anyhow::Result<()> {
    let defaults = args.features.is_empty();
    if defaults {
        let default = if args.pod.is_some() { DEFAULT_POD_FEATURES } else { DEFAULT_FEATURES };
        args.features = default.split(',').map(str::to_owned).collect();
    }
    let pod_columns = feature_schema::pods::pod_columns();
    for f in &args.features {
        let known = match args.pod {
            Some(_) => pod_columns.iter().skip(feature_schema::pods::POD_SCALARS.len()).any(|(c, _)| c == f),
            None => index_of(f).is_some(),
        };
        if !known {
            bail!("--features: {f:?} is not a feature column (docs/schema.md lists them)");
        }
    }
    if args.features.len() > 16 {
        bail!("--features: give 1 to 16 features");
    }
    let client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    client.require_current().await?;
    let (from, to) = args.window.resolve(&client).await?;
    let (mut data, title) = match &args.pod {
        None => (load(&client, &args.node, &args.features, from, to).await?, format!("node {}", args.node)),
        Some(pod) => {
            (load_pod(&client, &args.node, pod, &args.features, from, to).await?, format!("{} pod {pod}", args.node))
        }
    };
    if data.ts.len() < 2 {
        bail!("{title} has {} rows in this window; a plot needs at least 2", data.ts.len());
    }
    // The default panels skip what has no value here (a pod's memory and io on a cgroup tree
    // without those controllers), rather than draw empty panels.
    let mut left_out = Vec::new();
    if defaults && data.values.len() == args.features.len() {
        for k in data.drop_empty().into_iter().rev() {
            left_out.insert(0, args.features.remove(k));
        }
    }
    let (rgb, mut summary) = render(&data, &args.features, &title, args.threshold, args.width)?;
    summary.left_out = left_out;
    write_png(&args.output, summary.width, summary.height, &rgb)?;
    summary.output = args.output.display().to_string();
    // With the image on standard output, the summary goes to standard error.
    if args.output == Path::new("-") {
        eprintln!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_png_or_stdout_and_the_threshold_a_positive_number() {
        assert_eq!(parse_output("-").unwrap(), PathBuf::from("-"));
        assert_eq!(parse_output("a/b.PNG").unwrap(), PathBuf::from("a/b.PNG"));
        for bad in ["plot.jpg", "plot", "plot.png.gz", ""] {
            assert!(parse_output(bad).unwrap_err().contains("*.png"), "{bad}");
        }
        for bad in ["nan", "inf", "-1", "0", "x"] {
            assert!(feature_db::parse_positive(bad).is_err(), "{bad}");
        }
    }

    fn pixel(buf: &[u8], width: u32, x: u32, y: u32) -> RGBColor {
        let i = ((y * width + x) * 3) as usize;
        RGBColor(buf[i], buf[i + 1], buf[i + 2])
    }

    fn data(n: u32) -> PlotData {
        PlotData {
            ts: (0..n).map(|i| 1_767_225_600.0 + f64::from(i) * 10.0).collect(),
            attack: (0..n).map(|i| (8..12).contains(&i)).collect(),
            attack_type: (0..n).map(|i| (8..12).contains(&i).then(|| "port-scan".to_owned())).collect(),
            judged: (0..n).map(|i| i >= 3).collect(),
            detected: (0..n).map(|i| i == 9).collect(),
            values: vec![(0..n).map(|i| Some(f64::from(i % 5))).collect()],
            z: vec![(0..n).map(|i| (i != 15).then(|| f64::from(i) / 4.0)).collect()],
            scenario_windows: Vec::new(),
        }
    }

    /// A scenario run of the node elsewhere than the plotted pod is drawn along the verdict
    /// strip over its time, named, and reported; one wholly outside the rows is not.
    #[test]
    fn scenario_runs_elsewhere_are_marked_on_a_pod_plot() {
        let mut d = data(20);
        let t0 = d.ts[0];
        d.scenario_windows =
            vec![(t0 + 50.0, t0 + 90.0, "port-scan".to_owned()), (t0 - 500.0, t0 - 400.0, "old".to_owned())];
        let (buf, s) = render(&d, &["load1".to_owned()], "n pod shop/web-0", 2.0, 800).unwrap();
        assert_eq!(s.scenario_windows.len(), 1, "{:?}", s.scenario_windows);
        let w = &s.scenario_windows[0];
        assert_eq!(w.attack_type, "port-scan");
        let width = w.x1 - w.x0;
        // 40 s of a 190 s axis.
        let axis = s.plot_right - s.plot_left;
        assert!((f64::from(width) / f64::from(axis) - 40.0 / 190.0).abs() < 0.02, "{w:?} on {axis}");
        let mid = (w.x0 + w.x1) / 2;
        let coloured = (0..s.height).any(|y| {
            let i = ((y * s.width + mid) * 3) as usize;
            buf[i..i + 3] == [ELSEWHERE.0, ELSEWHERE.1, ELSEWHERE.2]
        });
        assert!(coloured, "the band is drawn");
    }

    #[test]
    fn shading_covers_the_labelled_rows_only_and_warmup_is_grey() {
        let d = data(20);
        let (buf, s) = render(&d, &["load1".to_owned()], "n", 2.0, 800).unwrap();
        assert_eq!(buf.len() as u32, s.width * s.height * 3);
        assert_eq!(s.shaded.len(), 1);
        assert_eq!(s.shaded[0].attack_type, "port-scan");
        let Shaded { x0, x1, .. } = s.shaded[0];
        let column = |x: u32, c: RGBColor| {
            (s.panels_top..s.panels_bottom).filter(|&y| pixel(&buf, 800, x, y) == c).count() as u32
        };
        assert!(column((x0 + x1) / 2, SHADE) > (s.panels_bottom - s.panels_top) / 2);
        assert_eq!(column(x0 - 20, SHADE), 0);
        // Rows 0..3 not judged: grey at the start of the axis.
        assert!(column(s.plot_left + 3, WARMUP) > (s.panels_bottom - s.panels_top) / 2);
        assert_eq!((s.detections, s.unjudged, s.gaps), (1, 3, 0));
        assert_eq!(s.z_null, vec![("load1".to_owned(), 1)]);
    }

    #[test]
    fn a_gap_breaks_the_lines_and_is_counted() {
        let mut d = data(20);
        for t in &mut d.ts[10..] {
            *t += 300.0;
        }
        let (_, s) = render(&d, &["load1".to_owned()], "n", 2.0, 800).unwrap();
        assert_eq!(s.gaps, 1);
        let line = Timeline::new(&d.ts);
        let segments = line.segments(&d.ts, &d.values[0]);
        assert_eq!(segments.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10]);
        let z = line.segments(&d.ts, &d.z[0]);
        assert_eq!(z.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 5, 4]);
    }

    /// The |z| legend's box lies wholly above the clipped maximum, so it covers no line, even
    /// with many features whose z is clipped at the top all along.
    #[test]
    fn the_legend_covers_no_line() {
        let mut d = data(12);
        let names: Vec<String> = ["load1", "load5", "load15", "intr", "ctxt", "open_fds"].map(str::to_owned).to_vec();
        d.values = vec![vec![Some(1.0); 12]; names.len()];
        d.z = vec![vec![Some(100.0); 12]; names.len()];
        let (buf, s) = render(&d, &names, "n", 2.0, 800).unwrap();
        let border = [160u8, 160, 160];
        // (Only the |z| panel's rows: text elsewhere has pixels of that grey too.)
        let rows: Vec<u32> = (s.panels_bottom..s.height)
            .filter(|y| (0..s.width).any(|x| buf[((y * s.width + x) * 3) as usize..][..3] == border))
            .collect();
        // The legend's box is the longest run of consecutive such rows (its two sides); a lone
        // row of that grey is a glyph's edge.
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &y in &rows {
            match runs.last_mut() {
                Some(run) if run.1 + 1 == y => run.1 = y,
                _ => runs.push((y, y)),
            }
        }
        let legend = runs.iter().max_by_key(|(a, b)| b - a).copied().expect("the legend's border is drawn");
        assert!(legend.1 - legend.0 > 100, "a box for seven lines: {runs:?}");
        assert!(legend.1 < s.z_clip_y, "legend rows {legend:?}, clipped maximum at row {}", s.z_clip_y);
    }

    #[test]
    fn a_feature_with_no_value_still_gets_its_panel_and_legend() {
        let mut d = data(12);
        d.values.push(vec![None; 12]);
        d.z.push(vec![None; 12]);
        let (_, s) = render(&d, &["load1".to_owned(), "tcp_conn_failed".to_owned()], "n", 2.0, 800).unwrap();
        assert_eq!(s.z_null[1], ("tcp_conn_failed".to_owned(), 12));
    }

    #[test]
    fn units_on_the_axes() {
        assert_eq!(axis_unit("forks_total"), "forks / interval");
        assert_eq!(axis_unit("cpu_sec_idle"), "s / interval");
        assert_eq!(axis_unit("load1"), "");
    }

    /// Two windows of different attack types that touch are two bands, each named after its
    /// own type.
    #[test]
    fn touching_windows_of_two_types_are_two_bands() {
        let mut d = data(20);
        for i in 12..15 {
            d.attack[i] = true;
            d.attack_type[i] = Some("exec-storm".to_owned());
        }
        let (_, s) = render(&d, &["load1".to_owned()], "n", 2.0, 800).unwrap();
        let types: Vec<&str> = s.shaded.iter().map(|b| b.attack_type.as_str()).collect();
        assert_eq!(types, ["port-scan", "exec-storm"]);
        assert!(s.shaded[0].x1 <= s.shaded[1].x0 + 1, "{:?}", s.shaded);
    }

    /// Names in scripts the embedded font lacks are drawn as code points, not boxes; what it
    /// has (Latin with accents, Greek, Cyrillic) is drawn as it is.
    #[test]
    fn undrawable_characters_become_code_points() {
        assert_eq!(drawable("pöd-Ωж"), "pöd-Ωж");
        assert_eq!(drawable("pod-名前"), "pod-<U+540D><U+524D>");
        assert_eq!(drawable("scan 🔥"), "scan <U+1F525>");
    }

    #[test]
    fn features_without_a_value_are_dropped_with_their_z_scores() {
        let mut d = PlotData {
            ts: vec![0.0, 1.0],
            values: vec![vec![Some(1.0), None], vec![None, None], vec![None, Some(2.0)]],
            z: vec![vec![None, None], vec![Some(9.0), None], vec![None, None]],
            ..PlotData::default()
        };
        assert_eq!(d.drop_empty(), vec![1]);
        assert_eq!(d.values, vec![vec![Some(1.0), None], vec![None, Some(2.0)]]);
        assert_eq!(d.z.len(), 2);
    }
}
