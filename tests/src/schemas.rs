//! The released schemas of tests/fixtures/schemas: the migrations of every release that changed
//! them, as they shipped, to build a database as that release left it and upgrade it.
use std::path::Path;

/// A fixture file's text.
pub fn fixture(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schemas");
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The releases, oldest first: (commit, the fixture files it applied, in order).
pub fn releases() -> Vec<(String, Vec<String>)> {
    fixture("releases.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace().map(str::to_owned);
            let release = fields.next().expect("a commit");
            (release, fields.collect())
        })
        .collect()
}

/// SQL that builds the schema a release left: its numbered migrations, recorded as applied in
/// schema_migrations, then (for releases that had one) the generated SQL as it was, recorded in
/// schema_generated.
pub fn release_schema_sql(files: &[impl AsRef<str>]) -> String {
    let mut setup = String::from(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now());",
    );
    let files: Vec<&str> = files.iter().map(AsRef::as_ref).collect();
    for (i, f) in files.iter().filter(|f| !f.starts_with("generated_")).enumerate() {
        setup += &fixture(f);
        let name = format!("{}.sql", f.split('.').next().unwrap());
        setup += &format!("\nINSERT INTO schema_migrations (version, name) VALUES ({}, '{name}');", i + 1);
    }
    for f in files.iter().filter(|f| f.starts_with("generated_")) {
        let text = fixture(f);
        setup += &text;
        setup += &format!(
            "\nINSERT INTO schema_generated (name, sql) VALUES ('analysis', '{}');",
            text.trim_end().replace('\'', "''")
        );
    }
    setup
}
