//! The docs name what exists: every relative link of every Markdown file in the repository
//! resolves to a file or directory, and every repository path a doc names in backticks (a word
//! with a slash and a source file's extension, like `agent/src/sources/pods.rs`) exists, relative to
//! the doc or to the repository's root. Paths on a running machine (absolute ones, `target/`)
//! are not the repository's and are left alone.
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every Markdown file of the repository, outside build output and the fixtures' copies.
fn docs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "fixtures" | "node_modules") {
                docs(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_owned());
        }
    }
    out
}

/// Words in backticks that look like a path in the repository.
fn named_paths(text: &str) -> Vec<String> {
    const EXTENSIONS: [&str; 9] = [".rs", ".md", ".sql", ".yml", ".yaml", ".sh", ".toml", ".py", ".json"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.contains(char::is_whitespace) && w.contains('/'))
        .filter(|w| EXTENSIONS.iter().any(|e| w.ends_with(e)))
        .filter(|w| !w.starts_with('/') && !w.starts_with("target/") && !w.starts_with("~") && !w.contains('*'))
        .filter(|w| !w.contains('<') && !w.contains('{') && !w.contains("NNNN"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_relative_link_and_every_named_file_exists() {
    let root = repo();
    let mut files = Vec::new();
    docs(&root, &mut files);
    assert!(files.len() >= 10, "found the docs: {files:?}");
    let mut missing = Vec::new();
    for doc in &files {
        let text = std::fs::read_to_string(doc).unwrap();
        let here = doc.parent().unwrap();
        let shown = doc.strip_prefix(&root).unwrap().display().to_string();
        for link in links(&text) {
            if link.is_empty() || link.starts_with('#') || link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let path = link.split('#').next().unwrap();
            if !here.join(path).exists() {
                missing.push(format!("{shown}: link ({link})"));
            }
        }
        for path in named_paths(&text) {
            if !here.join(&path).exists() && !root.join(&path).exists() {
                missing.push(format!("{shown}: `{path}`"));
            }
        }
    }
    assert!(missing.is_empty(), "the docs name what does not exist:\n{}", missing.join("\n"));
}

/// docs/monitoring.md's table of metrics names exactly the metrics the agent declares (its
/// `metrics!` list), each with its type and labels.
#[test]
fn the_metrics_table_lists_every_declared_metric() {
    use prometheus_client::metrics::MetricType;
    let text = std::fs::read_to_string(repo().join("docs/monitoring.md")).unwrap();
    let mut documented: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| `feature_agent_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let metric = cells[1].trim_matches('`');
        let (name, labels) = match metric.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}').split(',').map(str::to_owned).collect()),
            None => (metric, Vec::new()),
        };
        let kind = cells[2].split_whitespace().next().unwrap_or("").to_owned();
        let name = if kind == "counter" { name.strip_suffix("_total").unwrap_or(name) } else { name };
        documented.push((name.to_owned(), kind, labels));
    }
    let declared: Vec<(String, String, Vec<String>)> = agent::daemon::metrics::Metrics::catalog()
        .into_iter()
        .map(|(name, kind, labels, _)| {
            let kind = match kind {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Histogram => "histogram",
                _ => "other",
            };
            (name.to_owned(), kind.to_owned(), labels.into_iter().map(str::to_owned).collect())
        })
        .collect();
    let missing: Vec<_> = declared.iter().filter(|d| !documented.contains(d)).collect();
    let stale: Vec<_> = documented.iter().filter(|d| !declared.contains(d)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/monitoring.md's metrics table and agent/src/daemon/metrics.rs differ:\nnot documented: {missing:?}\ndocumented, not declared: {stale:?}"
    );
}
