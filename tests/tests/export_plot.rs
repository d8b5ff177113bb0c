//! `feature-lab export` and `plot` on a synthetic table: the Parquet file read back equals the
//! rows (raw, deltas, z-scores, labels, verdicts; NULLs where the database has them), the CSV
//! has one line per row under a header, and the PNG decodes and is shaded where labels are.
use std::{collections::HashMap, fs::File, time::Duration};

use feature_schema::ColumnType;
use feature_schema::FEATURES;
use lab::export::{value_columns, value_types};
use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::{Field, RowAccessor},
};
use tests::{have_root, migrated_database, run_lab, sql};

const NODES: [&str; 2] = ["plain-node", "it's, \"hostile\""];
const ROWS: i64 = 40;

/// A migrated database with two nodes of synthetic rows 10 s apart, as one agent run writes them
/// (interval_s NULL on the first, 10 after it): every feature set (some NULL, counters that
/// reset), an attack window, and detector verdicts on some rows.
fn synthetic(db: &str) -> String {
    let url = migrated_database(db);
    let cols: Vec<&str> = FEATURES.iter().map(|f| f.column).collect();
    let mut q = String::new();
    for (n, node) in NODES.iter().enumerate() {
        let lit = tests::sql_literal(node);
        q += "SELECT ensure_day_partitions('2026-01-01 00:00:00Z');";
        for r in 0..ROWS {
            let values: Vec<String> = (0..cols.len() as i64)
                .map(|c| {
                    if (r + c + n as i64) % 13 == 0 {
                        "NULL".to_owned()
                    } else {
                        ((r * 7 + c * 3 + n as i64) % 11 + r).to_string()
                    }
                })
                .collect();
            let attack = i32::from((20..26).contains(&r));
            let attack_type = if attack == 1 { "'port-scan'" } else { "NULL" };
            let (score, feats) = match r % 5 {
                0 => ("NULL", "NULL"),
                1 => ("5.5", "ARRAY['tcp_rst_sent','load1']"),
                _ => ("0.25", "'{}'::text[]"),
            };
            q += &format!(
                "INSERT INTO node_features (node, ts, interval_s, attack, attack_type, anomaly_score, anomalous_features, {}) \
                 VALUES ({lit}, timestamptz '2026-01-01 00:00:00Z' + interval '{} s', {}, {attack}, {attack_type}, {score}, {feats}, {});",
                cols.join(", "),
                r * 10,
                if r == 0 { "NULL" } else { "10" },
                values.join(", ")
            );
        }
    }
    sql(db, &q);
    url
}

fn parse_opt(s: &str) -> Option<f64> {
    (!s.is_empty()).then(|| s.parse().unwrap_or_else(|_| panic!("{s:?}")))
}

#[test]
fn parquet_round_trip_equals_the_rows_and_csv_has_every_row() {
    if !have_root("parquet_round_trip_equals_the_rows_and_csv_has_every_row") {
        return;
    }
    let db = "export_db";
    let url = synthetic(db);
    let dir = tempdir("export");
    let parquet = dir.join("rows.parquet");
    let out = run_lab(
        &["export", "--format", "parquet", "--output", parquet.to_str().unwrap(), "--normalized"],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("80 rows written to {}", parquet.display()));

    // What the database holds, in the export's order. Separator \x1f: node names contain commas.
    let raw: Vec<String> = FEATURES.iter().map(|f| format!("{}::float8", f.column)).collect();
    let deltas: Vec<String> = value_columns(false)[FEATURES.len()..].iter().map(|c| format!("{c}::float8")).collect();
    let expected = sql(
        db,
        &format!(
            "SELECT concat_ws(chr(31), node, (extract(epoch FROM ts) * 1000000)::bigint, attack, coalesce(attack_type, ''), \
             coalesce(anomaly_score::text, ''), coalesce(array_to_string(anomalous_features, ','), ''), {}) \
             FROM node_feature_deltas ORDER BY node, ts",
            raw.iter().chain(&deltas).map(|c| format!("coalesce({c}::text, '')")).collect::<Vec<_>>().join(", ")
        ),
    );
    let z: HashMap<(String, i64, String), Option<f64>> = sql(
        db,
        "SELECT concat_ws(chr(31), node, (extract(epoch FROM ts) * 1000000)::bigint, feature, coalesce(z::text, '')) \
         FROM node_feature_zscores()",
    )
    .lines()
    .map(|l| {
        let p: Vec<&str> = l.split('\x1f').collect();
        ((p[0].to_owned(), p[1].parse().unwrap(), p[2].to_owned()), parse_opt(p[3]))
    })
    .collect();
    assert_eq!(z.len(), 80 * FEATURES.len());
    assert!(z.values().filter(|v| v.is_some()).count() > 1000, "the synthetic rows give real z-scores");

    let reader = SerializedFileReader::new(File::open(&parquet).unwrap()).unwrap();
    let columns = value_columns(true);
    let fields = reader.metadata().file_metadata().schema().get_fields().len();
    assert_eq!(fields, 6 + columns.len());
    let mut n = 0;
    for (row, want) in reader.get_row_iter(None).unwrap().zip(expected.lines()) {
        let row = row.unwrap();
        let want: Vec<&str> = want.split('\x1f').collect();
        let node = row.get_string(0).unwrap().clone();
        let ts = row.get_timestamp_micros(1).unwrap();
        assert_eq!(node, want[0]);
        assert_eq!(ts.to_string(), want[1]);
        assert_eq!(row.get_short(2).unwrap().to_string(), want[2]);
        let text = |i: usize| if row.is_null(i).unwrap() { String::new() } else { row.get_string(i).unwrap().clone() };
        assert_eq!(text(3), want[3]);
        let num = |i: usize| if row.is_null(i).unwrap() { None } else { Some(row.get_double(i).unwrap()) };
        assert_eq!(num(4), parse_opt(want[4]));
        // anomalous_features is a list of strings: NULL, empty or its elements.
        let list = match &row.get_column_iter().nth(5).unwrap().1 {
            Field::Null => String::new(),
            Field::ListInternal(l) => l
                .elements()
                .iter()
                .map(|e| if let Field::Str(s) = e { s.clone() } else { panic!("{e:?}") })
                .collect::<Vec<_>>()
                .join(","),
            other => panic!("anomalous_features is {other:?}"),
        };
        assert_eq!(list, want[5]);
        // Each number in its declared type: integers stay integers.
        let types = value_types(true);
        let typed = |i: usize| -> Option<f64> {
            match (&row.get_column_iter().nth(i).unwrap().1, types[i - 6]) {
                (Field::Null, _) => None,
                (Field::Long(x), ColumnType::Int8) => Some(*x as f64),
                (Field::Int(x), ColumnType::Int4) => Some(f64::from(*x)),
                (Field::Double(x), ColumnType::Float8) => Some(*x),
                (f, t) => panic!("column {} holds {f:?}, declared {t:?}", columns[i - 6]),
            }
        };
        for (k, c) in columns.iter().enumerate() {
            let got = typed(6 + k);
            let expect = match c.strip_prefix("z_") {
                Some(f) => z[&(node.clone(), ts, f.to_owned())],
                None => parse_opt(want[6 + k]),
            };
            assert_eq!(got, expect, "row {n} column {c}");
        }
        n += 1;
    }
    assert_eq!(n, 80);

    // CSV: a header and one line per row; the hostile node name is quoted.
    let csv = dir.join("rows.csv");
    let out = run_lab(
        &["export", "--format", "csv", "--output", csv.to_str().unwrap(), "--node", NODES[1]],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as i64, 1 + ROWS);
    assert!(lines[0].starts_with("node,ts,attack,attack_type,anomaly_score,anomalous_features,cpu_sec_idle,"));
    assert_eq!(lines[0].split(',').count(), 6 + value_columns(false).len());
    assert!(lines[1].starts_with("\"it's, \"\"hostile\"\"\",2026-01-01T00:00:00.000000Z,0,,,,"), "{}", lines[1]);
    // anomalous_features as a JSON array: NULL (warm-up) an empty field, judged normal `[]`.
    assert!(lines[2].contains(",5.5,\"[\"\"tcp_rst_sent\"\",\"\"load1\"\"]\","), "{}", lines[2]);
    assert!(lines[3].contains(",0.25,[],"), "{}", lines[3]);
    assert!(!dir.join("rows.partial").exists());
}

/// A fresh, empty directory for one test.
fn tempdir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("feature-agent-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn plot_png_decodes_and_is_shaded_where_the_labels_are() {
    if !have_root("plot_png_decodes_and_is_shaded_where_the_labels_are") {
        return;
    }
    let db = "plot_db";
    let url = synthetic(db);
    let dir = tempdir("plot");
    let png_path = dir.join("run.png");
    let out = run_lab(
        &["plot", "--node", NODES[1], "--output", png_path.to_str().unwrap()],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (summary["width"].as_u64().unwrap() as u32, summary["height"].as_u64().unwrap() as u32)
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = |x: u32, y: u32| {
        let i = ((y * info.width + x) * 3) as usize;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    let shade = lab::plot::SHADE;
    let shade = [shade.0, shade.1, shade.2];
    let at = |k: &str| summary[k].as_u64().unwrap() as u32;
    let (top, bottom, left, right) = (at("panels_top"), at("panels_bottom"), at("plot_left"), at("plot_right"));
    // One labelled window (rows 20..25 of 40, each row covering the 10 s before it): one shaded
    // run, named by its attack type, six intervals of the 39 the axis spans wide.
    let shaded = summary["shaded"].as_array().unwrap();
    assert_eq!(shaded.len(), 1, "{summary}");
    assert_eq!(shaded[0]["attack_type"], "port-scan");
    let (x0, x1) = (shaded[0]["x0"].as_u64().unwrap() as u32, shaded[0]["x1"].as_u64().unwrap() as u32);
    let expected_w = f64::from(right - left) * 6.0 / 39.0;
    assert!((f64::from(x1 - x0) - expected_w).abs() < 3.0, "{x0}..{x1} vs {expected_w}");
    // Inside: mostly shade (lines cross it); outside: no shade at all.
    let column = |x: u32| (top..bottom).filter(|&y| px(x, y) == shade).count() as u32;
    assert!(column((x0 + x1) / 2) > (bottom - top) / 2);
    for x in (left + 1..right).step_by(7) {
        if x + 1 < x0 || x > x1 + 1 {
            assert_eq!(column(x), 0, "shade at x={x} outside {x0}..{x1}");
        }
    }
    // Rows with r % 5 == 0 have no verdict; the default features' z is NULL where their
    // values are (every 13th row by the synthetic pattern) or their delta is.
    assert_eq!(summary["unjudged"], 8);
    assert_eq!(summary["gaps"], 0);
    let z_null = summary["z_null"].as_array().unwrap();
    assert_eq!(z_null.len(), lab::plot::DEFAULT_FEATURES.split(',').count());
    assert!(z_null.iter().all(|f| f[1].as_u64().unwrap() >= 1), "{summary}");
    // Detector flags on every 5th row (r % 5 == 1): 8 ticks.
    assert_eq!(summary["detections"], 8);

    // Bad input: an unknown feature, an unknown node.
    let out = run_lab(
        &["plot", "--node", NODES[1], "--output", "/tmp/x.png", "--features", "load1,nope"],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\" is not a feature column"));
    let out = run_lab(
        &["plot", "--node", "ghost", "--output", "/tmp/x.png"],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("has 0 rows"));

    // `-` is standard output (the image's bytes, the summary on stderr); a name that is not
    // *.png and a threshold that is not a number above 0 are refused before any work.
    let out =
        run_lab(&["plot", "--node", NODES[1], "--output", "-"], &[("DATABASE_URL", &url)], Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.starts_with(b"\x89PNG\r\n\x1a\n"), "PNG bytes on stdout");
    let summary: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(summary["output"], "-");
    for (args, want) in [
        (["--output", "/tmp/x.jpg", "--threshold", "2"], "*.png"),
        (["--output", "/tmp/x.png", "--threshold", "nan"], "not a number above 0"),
    ] {
        let mut all = vec!["plot", "--node", NODES[1]];
        all.extend(args);
        let out = run_lab(&all, &[("DATABASE_URL", &url)], Duration::from_secs(30));
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(want), "{args:?}");
    }
}

/// `--output` creates or replaces regular files only: a device, a FIFO, a directory or a
/// symlink is refused with a message saying what it is, and left as it was; `-` is stdout; a
/// failed export leaves no partial file behind.
#[test]
fn export_writes_only_regular_files_or_stdout() {
    if !have_root("export_writes_only_regular_files_or_stdout") {
        return;
    }
    let url = synthetic("export_targets");
    let dir = std::env::temp_dir().join(format!("export-targets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let target = dir.join("target.csv");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let env = [("DATABASE_URL", url.as_str())];
    for (path, what) in [
        ("/dev/full", "a device"),
        (fifo.to_str().unwrap(), "a FIFO"),
        (dir.to_str().unwrap(), "a directory"),
        (link.to_str().unwrap(), "a symbolic link"),
    ] {
        let out = run_lab(&["export", "--format", "csv", "--output", path], &env, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {stderr}");
        assert!(stderr.contains(&format!("is {what}")), "{path}: {stderr}");
        assert!(out.stdout.is_empty(), "{path}");
    }
    let meta = std::fs::symlink_metadata("/dev/full").unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()), "/dev/full was replaced");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

    // "-" is standard output: the CSV itself, header and one line per row.
    let out = run_lab(&["export", "--format", "csv", "--output", "-"], &env, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("node,ts,attack,"), "{csv}");
    assert_eq!(csv.lines().count() as i64, 1 + 2 * ROWS);

    // A failure half way (the database refuses the query) leaves neither the output nor a
    // partial file; an existing regular file is replaced only by a complete export.
    let bad = [("DATABASE_URL", url.as_str())];
    // A role that passes the schema check but may not read the rows: the export fails after
    // its temporary file was created.
    sql(
        "export_targets",
        "CREATE ROLE export_nobody LOGIN; GRANT SELECT ON schema_migrations, schema_generated TO export_nobody",
    );
    let nobody = url.replace("user=postgres", "user=export_nobody");
    assert_ne!(nobody, url, "the test URL names its user: {url}");
    let out = run_lab(
        &["export", "--format", "csv", "--output", target.to_str().unwrap()],
        &[("DATABASE_URL", nobody.as_str())],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("permission denied") && stderr.contains("export query"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "a partial file was left: {left:?}");
    let out =
        run_lab(&["export", "--format", "csv", "--output", target.to_str().unwrap()], &bad, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count() as i64, 1 + 2 * ROWS);

    // A node with no rows (a typo) is an error, as plot's is, and writes no file.
    let typo = dir.join("typo.csv");
    let out = run_lab(
        &["export", "--node", "nobody", "--format", "csv", "--output", typo.to_str().unwrap()],
        &env,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node \"nobody\": no rows of that node"));
    assert!(!typo.exists());

    // Ctrl-C at any moment of an export never leaves a partial file: before the export has
    // one, the signal ends the process; after, the export removes it and says so (or, at the
    // very end, the export is complete).
    for delay_ms in [0u64, 20, 40, 80, 120, 160, 240, 320] {
        let out_path = dir.join(format!("interrupted-{delay_ms}.parquet"));
        let mut child = tests::lab_command()
            .args(["export", "--format", "parquet", "--output", out_path.to_str().unwrap()])
            .env("DATABASE_URL", &url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let partials: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
            .collect();
        assert!(partials.is_empty(), "after {delay_ms} ms: {partials:?} ({stderr})");
        if status.code() == Some(1) {
            assert!(stderr.contains("interrupted: nothing exported"), "{stderr}");
        }
        assert_eq!(out_path.exists(), status.success(), "after {delay_ms} ms: {status} {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // A window whose start is after its end is named as such.
    for command in ["export", "evaluate"] {
        let mut args = vec![command, "--from", "2026-01-02", "--to", "2026-01-01"];
        if command == "export" {
            args.extend(["--format", "csv", "--output", "-"]);
        }
        let out = run_lab(&args, &env, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains("--from 2026-01-02 is later than --to 2026-01-01"), "{command}: {stderr}");
    }
}
