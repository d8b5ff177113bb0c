//! `feature-lab export`: writes the rows as a dataset for pandas or scikit-learn, in CSV or
//! Parquet. Columns: node, ts, attack, attack_type, anomaly_score, anomalous_features, every
//! scored feature, the per-interval delta of every cumulative counter (`<counter>_delta`, NULL
//! across a counter reset or a gap), and with --normalized the z-score of every feature
//! (`z_<feature>`, as node_feature_zscores() computes it, baseline = the exported window's rows
//! labelled normal). Rows stream from a server-side portal in batches, so the export's memory
//! does not grow with the table.
//!
//! With --pods, the per-pod rows (pod_features) instead: node, ts, kind, owner, namespace, pod,
//! qos, network, workload, anomaly_score, anomalous_features, attack, attack_type, every eBPF and
//! resource column, and the per-interval delta of every
//! cumulative resource counter (`<counter>_delta`, from pod_feature_deltas).
//!
//! Types as a data scientist expects them: in Parquet an integer column stays an integer
//! (INT32/INT64, from the declaration), anomalous_features is a list of strings, ts a UTC
//! timestamp. In CSV NULL is an empty field and anomalous_features a JSON array, so a verdict
//! still warming up (empty field) differs from a row judged normal (`[]`).
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use feature_db::deadline::{within, Db as Client};
use parquet::{
    data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::parser::parse_message_type,
};

use crate::window::TimeWindow;
use feature_db::DatabaseArgs;
use feature_schema::{timefmt::rfc3339_micros, ColumnType, Kind, Value, FEATURES, SCHEMA};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

/// How long any one database call of `export` may take (--db-timeout).
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file to write: created, or replaced if it is a regular file (devices, FIFOs,
    /// directories and symlinks are refused); "-" writes to standard output.
    #[arg(long)]
    pub output: PathBuf,
    /// Add a z-score column per feature (z_<feature>).
    #[arg(long)]
    pub normalized: bool,
    /// Only this node's rows [default: every node].
    #[arg(long)]
    pub node: Option<String>,
    /// Export the per-pod rows (pod_features) instead of the node rows.
    #[arg(long, conflicts_with = "normalized")]
    pub pods: bool,
    #[command(flatten)]
    pub window: TimeWindow,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub db_timeout: feature_db::deadline::DbTimeoutArgs,
}

/// Rows fetched from the portal at a time (and rows per Parquet row group).
const BATCH_ROWS: i32 = 8192;

/// Which rows an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// node_features: one row per node per interval.
    Nodes,
    /// pod_features: one row per pod, service and other per node per interval.
    Pods,
}

/// How an identity or label column is typed in the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    /// Text that is never NULL.
    Name,
    Text,
    Timestamp,
    /// The attack label (smallint).
    Label,
    Score,
    List,
}

/// Identity and label columns of node rows, before the numeric ones.
pub const META_COLUMNS: [(&str, MetaKind); 6] = [
    ("node", MetaKind::Name),
    ("ts", MetaKind::Timestamp),
    ("attack", MetaKind::Label),
    ("attack_type", MetaKind::Text),
    ("anomaly_score", MetaKind::Score),
    ("anomalous_features", MetaKind::List),
];

/// Identity and label columns of pod rows, before the numeric ones.
pub const POD_META_COLUMNS: [(&str, MetaKind); 13] = [
    ("node", MetaKind::Name),
    ("ts", MetaKind::Timestamp),
    ("kind", MetaKind::Name),
    ("owner", MetaKind::Name),
    ("namespace", MetaKind::Text),
    ("pod", MetaKind::Text),
    ("qos", MetaKind::Text),
    ("network", MetaKind::Text),
    ("workload", MetaKind::Text),
    ("anomaly_score", MetaKind::Score),
    ("anomalous_features", MetaKind::List),
    ("attack", MetaKind::Label),
    ("attack_type", MetaKind::Text),
];

impl Dataset {
    pub fn meta(self) -> &'static [(&'static str, MetaKind)] {
        match self {
            Dataset::Nodes => &META_COLUMNS,
            Dataset::Pods => &POD_META_COLUMNS,
        }
    }
}

/// The numeric columns of pod rows: the eBPF columns, the resource columns, then the deltas of
/// the cumulative resource counters; every one a bigint.
pub fn pod_value_columns() -> Vec<String> {
    use feature_schema::pods::{event_columns, RESOURCES};
    let mut cols: Vec<String> = event_columns().iter().map(|c| (*c).to_owned()).collect();
    cols.extend(RESOURCES.iter().map(|r| r.name.to_owned()));
    cols.extend(RESOURCES.iter().filter(|r| r.counter).map(|r| format!("{}_delta", r.name)));
    cols
}

/// The numeric columns after the meta columns, in file order.
pub fn value_columns(normalized: bool) -> Vec<String> {
    let mut cols: Vec<String> = FEATURES.iter().map(|f| f.column.to_owned()).collect();
    cols.extend(FEATURES.iter().filter(|f| f.kind == Kind::Counter).map(|f| format!("{}_delta", f.column)));
    if normalized {
        cols.extend(FEATURES.iter().map(|f| format!("z_{}", f.column)));
    }
    cols
}

/// Each numeric column's type, in [`value_columns`] order: a feature's and its delta's as the
/// declaration says, z-scores double.
pub fn value_types(normalized: bool) -> Vec<ColumnType> {
    let ty = |f: &feature_schema::Feature| SCHEMA[f.index].ty;
    let mut types: Vec<ColumnType> = FEATURES.iter().map(ty).collect();
    types.extend(FEATURES.iter().filter(|f| f.kind == Kind::Counter).map(ty));
    if normalized {
        types.extend(FEATURES.iter().map(|_| ColumnType::Float8));
    }
    types
}

/// One exported row.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    /// In the dataset's meta column order: Text, Timestamp (µs), Int4 (the label), Float8,
    /// TextArray or Null.
    pub meta: Vec<Value>,
    /// In [`value_columns`] order, each of its [`value_types`] type (or NULL).
    pub values: Vec<Value>,
}

fn pod_select_sql() -> String {
    let meta: Vec<String> = POD_META_COLUMNS.iter().map(|(c, _)| format!("d.{c}")).collect();
    let values: Vec<String> = pod_value_columns().iter().map(|c| format!("d.{c}")).collect();
    format!(
        "SELECT {}, {} FROM pod_feature_deltas d \
         WHERE ($1::text IS NULL OR d.node = $1) AND ($2::timestamptz IS NULL OR d.ts >= $2) \
           AND ($3::timestamptz IS NULL OR d.ts <= $3) \
         ORDER BY d.node, d.ts, d.kind, d.owner",
        meta.join(", "),
        values.join(", ")
    )
}

/// Every row's z-score per feature, one column each (the export_zscores table the normalized
/// export joins), from node_feature_zscores over the window.
fn zscores_sql() -> String {
    let pivot: Vec<String> =
        FEATURES.iter().map(|f| format!("max(z) FILTER (WHERE feature = '{0}') AS z_{0}", f.column)).collect();
    format!("SELECT node, ts, {} FROM node_feature_zscores(2.0, $2, $3, false, $1) GROUP BY node, ts", pivot.join(", "))
}

fn select_sql(normalized: bool) -> String {
    let mut cols: Vec<String> = FEATURES.iter().map(|f| format!("d.{}", f.column)).collect();
    cols.extend(FEATURES.iter().filter(|f| f.kind == Kind::Counter).map(|f| format!("d.{}_delta", f.column)));
    let mut from = String::from("node_feature_deltas d");
    if normalized {
        cols.extend(FEATURES.iter().map(|f| format!("z.z_{}", f.column)));
        // export_zscores: zscores_sql(), computed on its own first (scores.rs says why).
        from += " LEFT JOIN export_zscores z ON z.node = d.node AND z.ts = d.ts";
    }
    format!(
        "SELECT d.node, d.ts, d.attack, d.attack_type, d.anomaly_score, d.anomalous_features, {} \
         FROM {from} \
         WHERE ($1::text IS NULL OR d.node = $1) AND ($2::timestamptz IS NULL OR d.ts >= $2) \
           AND ($3::timestamptz IS NULL OR d.ts <= $3) \
         ORDER BY d.node, d.ts",
        cols.join(", ")
    )
}

/// Where an export's bytes go: a new file (made durable at the end) or standard output.
enum Output {
    File(File),
    Stdout(std::io::Stdout),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::File(f) => f.write(buf),
            Output::Stdout(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.flush(),
            Output::Stdout(s) => s.flush(),
        }
    }
}

impl Output {
    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.sync_all(),
            Output::Stdout(s) => s.flush(),
        }
    }
}

/// Refuses an `--output` that exists and is not a regular file (a directory, a symlink, a
/// device such as /dev/full, a FIFO or a socket): export only creates or replaces files.
pub fn check_output(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("--output {}", path.display())),
    };
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    bail!(
        "--output {} is {what}; export writes only to a new or existing regular file (or - for standard output)",
        path.display()
    )
}

/// Where rows go, batch by batch.
trait Sink {
    fn write_batch(&mut self, rows: &[ExportRow]) -> anyhow::Result<()>;
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

/// RFC 4180 CSV: a header line, NULL as an empty field, text quoted when it needs to be,
/// anomalous_features as a JSON array.
struct CsvSink(BufWriter<Output>);

fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl CsvSink {
    fn new(file: Output, meta: &[(&str, MetaKind)], columns: &[String]) -> anyhow::Result<Self> {
        let mut w = BufWriter::new(file);
        let header: Vec<&str> = meta.iter().map(|(c, _)| *c).chain(columns.iter().map(String::as_str)).collect();
        writeln!(w, "{}", header.join(","))?;
        Ok(Self(w))
    }
}

impl Sink for CsvSink {
    fn write_batch(&mut self, rows: &[ExportRow]) -> anyhow::Result<()> {
        let num = |v: &Value| match v {
            Value::Int8(i) => i.to_string(),
            Value::Int4(i) => i.to_string(),
            Value::Float8(f) => f.to_string(),
            _ => String::new(),
        };
        let meta = |v: &Value| match v {
            Value::Text(t) => csv_text(t),
            Value::Timestamp(us) => rfc3339_micros(from_micros(*us)),
            Value::TextArray(l) => csv_text(&serde_json::to_string(l).unwrap_or_default()),
            other => num(other),
        };
        for r in rows {
            let mut fields: Vec<String> = r.meta.iter().map(meta).collect();
            fields.extend(r.values.iter().map(num));
            writeln!(self.0, "{}", fields.join(","))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        self.0.into_inner().map_err(|e| e.into_error())?.sync()?;
        Ok(())
    }
}

/// Parquet: ts as TIMESTAMP(MICROS, UTC), attack as INT32 (INT16 logical), text as UTF8,
/// anomalous_features as a LIST of UTF8, each number as its column's type (INT64, INT32 or
/// DOUBLE); everything but node/ts/attack optional. One row group per batch, Snappy-compressed.
struct ParquetSink(SerializedFileWriter<Output>, Vec<MetaKind>, Vec<ColumnType>);

/// The file's schema in Parquet's message syntax.
pub fn parquet_schema(meta: &[(&str, MetaKind)], columns: &[String], types: &[ColumnType]) -> String {
    let mut s = String::from("message features {\n");
    for (c, kind) in meta {
        s += &match kind {
            MetaKind::Name => format!("  REQUIRED BYTE_ARRAY {c} (UTF8);\n"),
            MetaKind::Text => format!("  OPTIONAL BYTE_ARRAY {c} (UTF8);\n"),
            MetaKind::Timestamp => format!("  REQUIRED INT64 {c} (TIMESTAMP(MICROS,true));\n"),
            MetaKind::Label => format!("  REQUIRED INT32 {c} (INTEGER(16,true));\n"),
            MetaKind::Score => format!("  OPTIONAL DOUBLE {c};\n"),
            MetaKind::List => format!(
                "  OPTIONAL group {c} (LIST) {{\n    REPEATED group list {{\n      REQUIRED BYTE_ARRAY element (UTF8);\n    }}\n  }}\n"
            ),
        };
    }
    for (c, t) in columns.iter().zip(types) {
        let physical = match t {
            ColumnType::Int8 => "INT64",
            ColumnType::Int4 => "INT32",
            _ => "DOUBLE",
        };
        s += &format!("  OPTIONAL {physical} {c};\n");
    }
    s + "}"
}

impl ParquetSink {
    fn new(file: Output, meta: &[(&str, MetaKind)], columns: &[String], types: &[ColumnType]) -> anyhow::Result<Self> {
        let schema =
            Arc::new(parse_message_type(&parquet_schema(meta, columns, types)).context("building the Parquet schema")?);
        let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
        Ok(Self(
            SerializedFileWriter::new(file, schema, props)?,
            meta.iter().map(|(_, k)| *k).collect(),
            types.to_vec(),
        ))
    }
}

fn micros(ts: SystemTime) -> i64 {
    match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Values and definition levels (1 = present) of an optional column.
fn optional<T: Clone>(values: impl Iterator<Item = Option<T>>) -> (Vec<T>, Vec<i16>) {
    let mut present = Vec::new();
    let mut levels = Vec::new();
    for v in values {
        levels.push(i16::from(v.is_some()));
        present.extend(v);
    }
    (present, levels)
}

impl Sink for ParquetSink {
    fn write_batch(&mut self, rows: &[ExportRow]) -> anyhow::Result<()> {
        let mut rg = self.0.next_row_group()?;
        let mut index = 0usize;
        while let Some(mut col) = rg.next_column()? {
            let text = |r: &ExportRow| match &r.meta[index] {
                Value::Text(t) => Some(ByteArray::from(t.as_str())),
                _ => None,
            };
            match self.1.get(index).copied() {
                Some(MetaKind::Name) => {
                    let v: Vec<ByteArray> =
                        rows.iter().map(|r| text(r).unwrap_or_else(|| ByteArray::from(""))).collect();
                    col.typed::<ByteArrayType>().write_batch(&v, None, None)?;
                }
                Some(MetaKind::Text) => {
                    let (v, def) = optional(rows.iter().map(text));
                    col.typed::<ByteArrayType>().write_batch(&v, Some(&def), None)?;
                }
                Some(MetaKind::Timestamp) => {
                    let v: Vec<i64> = rows
                        .iter()
                        .map(|r| match r.meta[index] {
                            Value::Timestamp(us) => us,
                            _ => 0,
                        })
                        .collect();
                    col.typed::<Int64Type>().write_batch(&v, None, None)?;
                }
                Some(MetaKind::Label) => {
                    let v: Vec<i32> = rows
                        .iter()
                        .map(|r| match r.meta[index] {
                            Value::Int4(a) => a,
                            _ => 0,
                        })
                        .collect();
                    col.typed::<Int32Type>().write_batch(&v, None, None)?;
                }
                Some(MetaKind::Score) => {
                    let (v, def) = optional(rows.iter().map(|r| match r.meta[index] {
                        Value::Float8(f) => Some(f),
                        _ => None,
                    }));
                    col.typed::<DoubleType>().write_batch(&v, Some(&def), None)?;
                }
                Some(MetaKind::List) => {
                    // A LIST: definition level 0 = NULL list, 1 = empty list, 2 = an element;
                    // repetition level 0 starts a row's list, 1 continues it.
                    let (mut v, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                    for r in rows {
                        match &r.meta[index] {
                            Value::TextArray(l) if l.is_empty() => {
                                def.push(1);
                                rep.push(0);
                            }
                            Value::TextArray(l) => {
                                for (k, f) in l.iter().enumerate() {
                                    v.push(ByteArray::from(f.as_str()));
                                    def.push(2);
                                    rep.push(i16::from(k > 0));
                                }
                            }
                            _ => {
                                def.push(0);
                                rep.push(0);
                            }
                        }
                    }
                    col.typed::<ByteArrayType>().write_batch(&v, Some(&def), Some(&rep))?;
                }
                None => {
                    let k = index - self.1.len();
                    let cells = rows.iter().map(|r| &r.values[k]);
                    match self.2[k] {
                        ColumnType::Int8 => {
                            let (v, def) = optional(cells.map(|c| match c {
                                Value::Int8(x) => Some(*x),
                                _ => None,
                            }));
                            col.typed::<Int64Type>().write_batch(&v, Some(&def), None)?;
                        }
                        ColumnType::Int4 => {
                            let (v, def) = optional(cells.map(|c| match c {
                                Value::Int4(x) => Some(*x),
                                _ => None,
                            }));
                            col.typed::<Int32Type>().write_batch(&v, Some(&def), None)?;
                        }
                        _ => {
                            let (v, def) = optional(cells.map(|c| match c {
                                Value::Float8(x) => Some(*x),
                                _ => None,
                            }));
                            col.typed::<DoubleType>().write_batch(&v, Some(&def), None)?;
                        }
                    }
                }
            }
            col.close()?;
            index += 1;
        }
        rg.close()?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        let mut file = self.0.into_inner()?;
        file.sync()?;
        Ok(())
    }
}

/// Streams the selected rows into the file; returns how many were written.
#[allow(clippy::too_many_arguments)]
pub async fn export(
    client: &mut Client,
    dataset: Dataset,
    format: Format,
    output: &std::path::Path,
    normalized: bool,
    node: Option<&str>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> anyhow::Result<u64> {
    let (columns, types) = match dataset {
        Dataset::Nodes => (value_columns(normalized), value_types(normalized)),
        Dataset::Pods => {
            let c = pod_value_columns();
            let t = vec![ColumnType::Int8; c.len()];
            (c, t)
        }
    };
    let query = match dataset {
        Dataset::Nodes => select_sql(normalized),
        Dataset::Pods => pod_select_sql(),
    };
    if normalized && dataset == Dataset::Nodes {
        crate::scores::materialize(client, "export_zscores", &zscores_sql(), node, from, to).await?;
    }
    let shape = Shape { meta: dataset.meta(), columns: &columns, types: &types, query: &query };
    if output == std::path::Path::new("-") {
        let out = Output::Stdout(std::io::stdout());
        let n = write_rows(client, format, out, &shape, node, from, to).await?;
        if n == 0 {
            bail!("{}", no_rows(node));
        }
        return Ok(n);
    }
    check_output(output)?;
    // Written under a temporary name beside it and renamed at the end: a failed export leaves
    // neither a half file nor a changed old one.
    let mut name = output.file_name().context("--output has no file name")?.to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    let tmp = output.with_file_name(name);
    // Ctrl-C or SIGTERM from here ends the export between batches (or while it waits for one),
    // and the partial file goes; before here there is none.
    crate::interrupt::catch();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let result = write_rows(client, format, Output::File(file), &shape, node, from, to).await.and_then(|n| {
        if n == 0 {
            bail!("{}", no_rows(node));
        }
        std::fs::rename(&tmp, output).with_context(|| format!("renaming {} to {}", tmp.display(), output.display()))?;
        Ok(n)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The error of an export that found nothing to write (a mistyped node, an empty window).
fn no_rows(node: Option<&str>) -> String {
    match node {
        Some(n) => format!("--node {n:?}: no rows of that node in this window; nothing exported"),
        None => "no rows in this window; nothing exported".to_owned(),
    }
}

/// What an export writes: its meta columns, numeric columns and their types, and its query.
struct Shape<'a> {
    meta: &'static [(&'static str, MetaKind)],
    columns: &'a [String],
    types: &'a [ColumnType],
    query: &'a str,
}

fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + std::time::Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_micros(us.unsigned_abs())
    }
}

async fn write_rows(
    client: &mut Client,
    format: Format,
    out: Output,
    shape: &Shape<'_>,
    node: Option<&str>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> anyhow::Result<u64> {
    let mut sink: Box<dyn Sink> = match format {
        Format::Csv => Box::new(CsvSink::new(out, shape.meta, shape.columns)?),
        Format::Parquet => Box::new(ParquetSink::new(out, shape.meta, shape.columns, shape.types)?),
    };
    let limit = client.limit();
    let tx = within(limit, client.transaction()).await?;
    let statement = within(limit, tx.prepare(shape.query)).await.context("preparing the export query")?;
    let portal = within(limit, tx.bind(&statement, &[&node, &from, &to])).await.context("starting the export query")?;
    let mut total = 0u64;
    let m = shape.meta.len();
    loop {
        let interrupted = async {
            while !crate::interrupt::requested() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let batch = tokio::select! {
            b = within(limit, tx.query_portal(&portal, BATCH_ROWS)) => b.context("reading rows")?,
            () = interrupted => bail!("interrupted: nothing exported (the partial file is removed)"),
        };
        if batch.is_empty() {
            break;
        }
        let rows: Vec<ExportRow> = batch
            .iter()
            .map(|r| ExportRow {
                meta: shape
                    .meta
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| match kind {
                        MetaKind::Name | MetaKind::Text => {
                            r.get::<_, Option<String>>(i).map_or(Value::Null, Value::Text)
                        }
                        MetaKind::Timestamp => Value::Timestamp(micros(r.get::<_, SystemTime>(i))),
                        MetaKind::Label => Value::Int4(i32::from(r.get::<_, i16>(i))),
                        MetaKind::Score => r.get::<_, Option<f64>>(i).map_or(Value::Null, Value::Float8),
                        MetaKind::List => r.get::<_, Option<Vec<String>>>(i).map_or(Value::Null, Value::TextArray),
                    })
                    .collect(),
                values: shape
                    .types
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        let i = m + k;
                        match t {
                            ColumnType::Int8 => r.get::<_, Option<i64>>(i).map_or(Value::Null, Value::Int8),
                            ColumnType::Int4 => r.get::<_, Option<i32>>(i).map_or(Value::Null, Value::Int4),
                            _ => r.get::<_, Option<f64>>(i).map_or(Value::Null, Value::Float8),
                        }
                    })
                    .collect(),
            })
            .collect();
        sink.write_batch(&rows).context("writing the export")?;
        total += rows.len() as u64;
    }
    within(limit, tx.commit()).await?;
    sink.finish().context("finishing the export")?;
    Ok(total)
}

/// Refuses an output whose extension names the other format (`--format csv --output x.parquet`
/// would write CSV into a file every Parquet reader rejects).
fn check_extension(format: Format, output: &std::path::Path) -> anyhow::Result<()> {
    let extension = output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let named = match extension.as_deref() {
        Some("csv") => Format::Csv,
        Some("parquet") | Some("pq") => Format::Parquet,
        _ => return Ok(()),
    };
    if named != format {
        anyhow::bail!(
            "--output {} names a {named:?} file but --format is {format:?}: change one of them",
            output.display()
        );
    }
    Ok(())
}

pub async fn command(args: ExportArgs) -> anyhow::Result<()> {
    check_extension(args.format, &args.output)?;
    let mut client = args.database.connect(args.db_timeout.or(DB_TIMEOUT)).await?;
    client.require_current().await?;
    let (from, to) = args.window.resolve(&client).await?;
    if args.output != std::path::Path::new("-") {
        check_output(&args.output)?;
    }
    let dataset = if args.pods { Dataset::Pods } else { Dataset::Nodes };
    let n = export(&mut client, dataset, args.format, &args.output, args.normalized, args.node.as_deref(), from, to)
        .await?;
    // With --output -, the rows are on stdout: the count goes to the log.
    if args.output == std::path::Path::new("-") {
        tracing::info!(rows = n, "rows written to standard output");
    } else {
        println!("{n} rows written to {}", args.output.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_named_for_the_other_format_is_refused() {
        let p = std::path::Path::new;
        assert!(check_extension(Format::Csv, p("rows.parquet")).unwrap_err().to_string().contains("--format is Csv"));
        assert!(check_extension(Format::Parquet, p("rows.CSV")).is_err());
        assert!(check_extension(Format::Csv, p("rows.csv")).is_ok());
        assert!(check_extension(Format::Parquet, p("rows.parquet")).is_ok());
        assert!(check_extension(Format::Csv, p("-")).is_ok());
        assert!(check_extension(Format::Parquet, p("rows.out")).is_ok());
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_text("node-1"), "node-1");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }

    #[test]
    fn schema_parses_with_every_column() {
        let cols = value_columns(true);
        let counters = FEATURES.iter().filter(|f| f.kind == Kind::Counter).count();
        assert_eq!(cols.len(), FEATURES.len() + counters + FEATURES.len());
        let schema = parse_message_type(&parquet_schema(&META_COLUMNS, &cols, &value_types(true))).unwrap();
        assert_eq!(schema.get_fields().len(), META_COLUMNS.len() + cols.len());
        let pods = pod_value_columns();
        let schema =
            parse_message_type(&parquet_schema(&POD_META_COLUMNS, &pods, &vec![ColumnType::Int8; pods.len()])).unwrap();
        assert_eq!(schema.get_fields().len(), POD_META_COLUMNS.len() + pods.len());
    }
}
