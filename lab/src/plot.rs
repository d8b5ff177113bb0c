//! `feature-lab plot`: renders one node's run as a PNG. One panel per chosen feature (its
//! scored value: counters as per-interval deltas, each panel scaled to its own range), labelled
//! attack windows shaded across every panel, the agent's detections marked as red ticks above
//! the panels, and beneath them a panel of the SQL z-scores of the same features with the
//! threshold drawn. The drawing is our own (a few primitives and the public-domain 8x8 font),
//! so the plot needs no system fonts or graphics libraries.
use std::{
    io::BufWriter,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::window::TimeWindow;
use feature_db::DatabaseArgs;
use feature_schema::{features::index_of, timefmt::rfc3339_micros, Kind, FEATURES};

pub const DEFAULT_FEATURES: &str =
    "cpu_sec_idle,load1,forks_total,ebpf_execs,tcp_conn_failed,tcp_to_est,sock_alloc_raw,disk_write";

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The node to plot.
    #[arg(long)]
    pub node: String,
    /// The PNG file to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Features to draw, comma-separated (any scored feature column: see the README schema table).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_FEATURES)]
    pub features: Vec<String>,
    #[command(flatten)]
    pub window: TimeWindow,
    /// |z| threshold drawn in the z-score panel.
    #[arg(long, default_value_t = 2.0)]
    pub threshold: f64,
    /// Image width in pixels (400 to 8000).
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u32).range(400..=8000))]
    pub width: u32,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The rows to draw: time, label, detector verdict, scored feature values and their z-scores.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    pub ts: Vec<f64>,
    pub attack: Vec<bool>,
    pub detected: Vec<bool>,
    /// Per feature, per row.
    pub values: Vec<Vec<Option<f64>>>,
    pub z: Vec<Vec<Option<f64>>>,
}

/// Where things ended up in the image; printed as JSON so a reader (or a test) can find them.
#[derive(Debug, Clone, Serialize)]
pub struct PlotSummary {
    pub output: String,
    pub width: u32,
    pub height: u32,
    pub rows: usize,
    /// Pixel rows spanned by the feature panels (shading runs through them).
    pub panels_top: u32,
    pub panels_bottom: u32,
    /// Pixel columns [x0, x1] of each shaded (labelled) window.
    pub shaded: Vec<(u32, u32)>,
    pub detections: usize,
}

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GREY: [u8; 3] = [200, 200, 200];
pub const SHADE: [u8; 3] = [255, 214, 214];
const RED: [u8; 3] = [220, 20, 20];
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
    [188, 189, 34],
];

/// An RGB image with the few primitives the plot needs.
struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Self {
        Self { w, h, px: WHITE.repeat((w * h) as usize) }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.w && (y as u32) < self.h {
            let i = ((y as u32 * self.w + x as u32) * 3) as usize;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: u32, y0: u32, x1: u32, y1: u32, c: [u8; 3]) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(i64::from(x), i64::from(y), c);
            }
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// 8x8 text, ASCII only (others drawn as '?').
    fn text(&mut self, x: u32, y: u32, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.set(i64::from(x) + (k * 8 + col) as i64, i64::from(y) + row as i64, c);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.w + x) * 3) as usize;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    fn write_png(&self, path: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut enc = png::Encoder::new(BufWriter::new(file), self.w, self.h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&self.px)?;
        writer.finish()?;
        Ok(())
    }
}

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

/// Draws the plot; returns the canvas and where the shading went.
fn render(data: &PlotData, names: &[String], node: &str, threshold: f64, width: u32) -> (Canvas, PlotSummary) {
    const LEFT: u32 = 150;
    const RIGHT: u32 = 20;
    const TOP: u32 = 56;
    const PANEL: u32 = 72;
    const GAP: u32 = 8;
    const ZPANEL: u32 = 200;
    let k = names.len() as u32;
    let panels_bottom = TOP + k * (PANEL + GAP) - GAP;
    let z_top = panels_bottom + 30;
    let height = z_top + ZPANEL + 40;
    let mut c = Canvas::new(width, height);
    let plot_w = width - LEFT - RIGHT;
    let (t0, t1) = (data.ts.first().copied().unwrap_or(0.0), data.ts.last().copied().unwrap_or(1.0));
    let span = (t1 - t0).max(1e-9);
    let x_of = |t: f64| LEFT + (((t - t0) / span) * f64::from(plot_w - 1)).round() as u32;
    // Each row covers the interval since the previous row (the first: the median spacing).
    let mut steps: Vec<f64> = data.ts.windows(2).map(|w| w[1] - w[0]).collect();
    steps.sort_by(f64::total_cmp);
    let typical = steps.get(steps.len() / 2).copied().unwrap_or(1.0);

    c.text(10, 10, &format!("node {node}: {} rows, {} to {}", data.ts.len(), iso(t0), iso(t1)), BLACK);
    c.text(10, 26, "shaded: labelled attack   red ticks: agent detections   counters: per-interval deltas", BLACK);

    // Shading of labelled windows, merged into runs, over the panels and the z panel.
    let mut shaded = Vec::new();
    let mut i = 0;
    while i < data.ts.len() {
        if !data.attack[i] {
            i += 1;
            continue;
        }
        let start = data.ts[i] - if i > 0 { data.ts[i] - data.ts[i - 1] } else { typical };
        let mut j = i;
        while j + 1 < data.ts.len() && data.attack[j + 1] {
            j += 1;
        }
        let (x0, x1) = (x_of(start.max(t0)), x_of(data.ts[j]));
        c.rect(x0, TOP, x1, panels_bottom, SHADE);
        c.rect(x0, z_top, x1, z_top + ZPANEL, SHADE);
        shaded.push((x0, x1));
        i = j + 1;
    }

    // Feature panels.
    for (p, name) in names.iter().enumerate() {
        let top = TOP + p as u32 * (PANEL + GAP);
        let bottom = top + PANEL;
        let colour = PALETTE[p % PALETTE.len()];
        let vals = &data.values[p];
        let present: Vec<f64> = vals.iter().flatten().copied().collect();
        let (lo, hi) = present.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
        c.line((i64::from(LEFT), i64::from(bottom)), (i64::from(width - RIGHT), i64::from(bottom)), GREY);
        c.line((i64::from(LEFT), i64::from(top)), (i64::from(LEFT), i64::from(bottom)), GREY);
        c.text(8, top + 4, &name.chars().take(17).collect::<String>(), colour);
        if present.is_empty() {
            c.text(8, top + 20, "no data", GREY);
            continue;
        }
        c.text(8, top + 20, &format!("max {}", fmt_value(hi)), BLACK);
        c.text(8, top + 36, &format!("min {}", fmt_value(lo)), BLACK);
        let range = (hi - lo).max(1e-12);
        let y_of = |v: f64| i64::from(bottom - 2) - (((v - lo) / range) * f64::from(PANEL - 6)).round() as i64;
        let mut prev: Option<(i64, i64)> = None;
        for (t, v) in data.ts.iter().zip(vals) {
            match v {
                Some(v) => {
                    let pt = (i64::from(x_of(*t)), y_of(*v));
                    c.line(prev.unwrap_or(pt), pt, colour);
                    prev = Some(pt);
                }
                None => prev = None,
            }
        }
    }
    // Detections: ticks in the band above the panels.
    let mut detections = 0;
    for (t, d) in data.ts.iter().zip(&data.detected) {
        if *d {
            let x = x_of(*t);
            c.rect(x.saturating_sub(1), TOP - 14, x + 1, TOP - 3, RED);
            detections += 1;
        }
    }

    // z-score panel: |z| of each feature, clipped at 4x the threshold, threshold line dashed.
    let z_bottom = z_top + ZPANEL;
    let zmax = threshold * 4.0;
    let y_of_z = |z: f64| i64::from(z_bottom) - ((z.abs().min(zmax) / zmax) * f64::from(ZPANEL - 4)).round() as i64;
    c.text(8, z_top + 4, "|z| (SQL)", BLACK);
    c.text(8, z_top + 20, &format!("clip {}", fmt_value(zmax)), BLACK);
    c.line((i64::from(LEFT), i64::from(z_bottom)), (i64::from(width - RIGHT), i64::from(z_bottom)), GREY);
    c.line((i64::from(LEFT), i64::from(z_top)), (i64::from(LEFT), i64::from(z_bottom)), GREY);
    let ty = y_of_z(threshold);
    c.text(8, ty.max(0) as u32 - 4, &format!("|z|={threshold}"), RED);
    for x in (LEFT..width - RIGHT).step_by(8) {
        c.rect(x, ty as u32, (x + 3).min(width - RIGHT), ty as u32, RED);
    }
    for (p, zs) in data.z.iter().enumerate() {
        let colour = PALETTE[p % PALETTE.len()];
        let mut prev: Option<(i64, i64)> = None;
        for (t, z) in data.ts.iter().zip(zs) {
            match z {
                Some(z) => {
                    let pt = (i64::from(x_of(*t)), y_of_z(*z));
                    c.line(prev.unwrap_or(pt), pt, colour);
                    prev = Some(pt);
                }
                None => prev = None,
            }
        }
    }
    c.text(LEFT, z_bottom + 12, &iso(t0), BLACK);
    let end_label = iso(t1);
    c.text(width - RIGHT - 8 * end_label.len() as u32, z_bottom + 12, &end_label, BLACK);

    let summary = PlotSummary {
        output: String::new(),
        width,
        height,
        rows: data.ts.len(),
        panels_top: TOP,
        panels_bottom,
        shaded,
        detections,
    };
    (c, summary)
}

fn iso(t: f64) -> String {
    let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    rfc3339_micros(ts).chars().take(19).collect::<String>().replace('T', " ")
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
    let zs: Vec<String> = names.iter().map(|n| format!("max(z.z) FILTER (WHERE z.feature = '{n}')")).collect();
    let sql = format!(
        "SELECT extract(epoch FROM d.ts)::float8, d.attack = 1, coalesce(cardinality(d.anomalous_features), 0) > 0, {}, {}
         FROM node_feature_deltas d
         LEFT JOIN node_feature_zscores(2.0, $2, $3, false, $1) z ON z.node = d.node AND z.ts = d.ts
         WHERE d.node = $1 AND ($2::timestamptz IS NULL OR d.ts >= $2) AND ($3::timestamptz IS NULL OR d.ts <= $3)
         GROUP BY d.node, d.ts, d.attack, d.anomalous_features, {}
         ORDER BY d.ts",
        cols.join(", "),
        zs.join(", "),
        cols.join(", ")
    );
    let rows = client.query(&sql, &[&node, &from, &to]).await.context("reading the node's rows")?;
    let k = names.len();
    let mut data = PlotData {
        values: vec![Vec::with_capacity(rows.len()); k],
        z: vec![Vec::with_capacity(rows.len()); k],
        ..Default::default()
    };
    for r in &rows {
        data.ts.push(r.get(0));
        data.attack.push(r.get(1));
        data.detected.push(r.get(2));
        for p in 0..k {
            data.values[p].push(r.get(3 + p));
            data.z[p].push(r.get(3 + k + p));
        }
    }
    Ok(data)
}

pub async fn command(args: PlotArgs) -> anyhow::Result<()> {
    for f in &args.features {
        if index_of(f).is_none() {
            bail!("--features: {f:?} is not a feature column (see `feature-lab export` or the README for the list)");
        }
    }
    if args.features.is_empty() || args.features.len() > 16 {
        bail!("--features: give 1 to 16 features");
    }
    let client = args.database.connect().await?;
    feature_db::migrate::require_current(&client).await?;
    let (from, to) = args.window.resolve(&client).await?;
    let data = load(&client, &args.node, &args.features, from, to).await?;
    if data.ts.len() < 2 {
        bail!("node {:?} has {} rows in this window; a plot needs at least 2", args.node, data.ts.len());
    }
    let (canvas, mut summary) = render(&data, &args.features, &args.node, args.threshold, args.width);
    canvas.write_png(&args.output)?;
    summary.output = args.output.display().to_string();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shading_covers_the_labelled_rows_only() {
        let n = 20;
        let data = PlotData {
            ts: (0..n).map(|i| f64::from(i) * 10.0).collect(),
            attack: (0..n).map(|i| (8..12).contains(&i)).collect(),
            detected: (0..n).map(|i| i == 9).collect(),
            values: vec![(0..n).map(|i| Some(f64::from(i % 5))).collect()],
            z: vec![(0..n).map(|i| Some(f64::from(i) / 4.0)).collect()],
        };
        let (c, s) = render(&data, &["load1".to_owned()], "n", 2.0, 800);
        assert_eq!(s.shaded.len(), 1);
        let (x0, x1) = s.shaded[0];
        let mid = (x0 + x1) / 2;
        let in_shade = (s.panels_top..s.panels_bottom).filter(|&y| c.get(mid, y) == SHADE).count();
        assert!(in_shade as u32 > (s.panels_bottom - s.panels_top) / 2);
        let outside = (s.panels_top..s.panels_bottom).filter(|&y| c.get(x0 - 20, y) == SHADE).count();
        assert_eq!(outside, 0);
        assert_eq!(s.detections, 1);
        assert_eq!(c.get(799, 0), WHITE);
    }
}
