//! Least privilege and secrets: the roles the migrations create (the writer can only insert,
//! the labeller can only label, the reader can only read), the agent running as the writer,
//! TLS to Postgres with certificate verification, and passwords kept off command lines and
//! out of logs.
use std::{path::Path, process::Command, time::Duration};

use tests::{agent_command, have_root, run_agent, run_lab, ThrowawayPostgres};

fn migrated_pg() -> ThrowawayPostgres {
    let pg = ThrowawayPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &pg.url("postgres"))], Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.psql(
        "postgres",
        "CREATE ROLE agent LOGIN IN ROLE feature_writer; \
         CREATE ROLE labeller LOGIN IN ROLE feature_labeller; \
         CREATE ROLE reader LOGIN IN ROLE feature_reader;",
    )
    .unwrap();
    pg
}

fn denied(pg: &ThrowawayPostgres, user: &str, sql: &str) {
    match pg.psql_as(user, "postgres", sql) {
        Ok(out) => panic!("{user} could run {sql:?}: {out}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("permission denied") || e.contains("must be owner"), "{user} / {sql}: {e}");
        }
    }
}

#[test]
fn roles_allow_only_what_each_needs_and_the_agent_runs_as_the_writer() {
    if !have_root("roles_allow_only_what_each_needs_and_the_agent_runs_as_the_writer") {
        return;
    }
    let pg = migrated_pg();
    // The agent, as the writer: creates its partition and writes its rows.
    let url = format!("host={} port={} user=agent dbname=postgres", pg.socket_dir().display(), pg.port());
    let out = run_agent(
        &["run", "--records", "2", "--interval", "0.5", "--node-name", "least-privilege", "--no-ebpf"],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM node_features").unwrap().trim(), "2");

    // The writer cannot read features, change, delete, empty or drop anything.
    for sql in [
        "SELECT load1 FROM node_features",
        "SELECT * FROM node_features",
        "UPDATE node_features SET attack = 1",
        "DELETE FROM node_features",
        "TRUNCATE node_features",
        "DROP TABLE node_features",
        "ALTER TABLE node_features ADD COLUMN x int",
        "UPDATE scenario_runs SET labelled = 0",
    ] {
        denied(&pg, "agent", sql);
    }
    // The day partitions it had created (through the SECURITY DEFINER function) are not its
    // own either, and it cannot drop old days (retention is the migrating user's).
    let part = pg
        .psql(
            "postgres",
            "SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'node_features'::regclass LIMIT 1",
        )
        .unwrap();
    denied(&pg, "agent", &format!("DROP TABLE {}", part.trim()));
    denied(&pg, "agent", &format!("DELETE FROM {}", part.trim()));
    denied(&pg, "agent", "SELECT drop_day_partitions_before('node_features', now())");

    // The labeller labels (attack, attack_type) and nothing else.
    pg.psql_as("labeller", "postgres", "UPDATE node_features SET attack = 1, attack_type = 'test'").unwrap();
    for sql in [
        "INSERT INTO node_features (node, ts) VALUES ('least-privilege', now())",
        "UPDATE node_features SET load1 = 0",
        "DELETE FROM node_features",
        "SELECT ensure_node_partition('other')",
        "SELECT ensure_day_partitions(now() + interval '9 days')",
        "DROP TABLE node_features",
    ] {
        denied(&pg, "labeller", sql);
    }
    // The reader reads the rows and the analysis views, and changes nothing.
    assert_eq!(pg.psql_as("reader", "postgres", "SELECT count(*) FROM node_feature_deltas").unwrap().trim(), "2");
    for sql in [
        "UPDATE node_features SET attack = 0",
        "INSERT INTO scenario_runs (node, name, started_at, ended_at, interval_s) VALUES ('a','b',now(),now(),1)",
    ] {
        denied(&pg, "reader", sql);
    }
    // `label` as the labeller works end to end.
    let url = format!("host={} port={} user=labeller dbname=postgres", pg.socket_dir().display(), pg.port());
    let out = run_lab(
        &["label", "--clear", "--from", "2000-01-01Z", "--to", "2100-01-01Z"],
        &[("DATABASE_URL", &url)],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM node_features WHERE attack = 1").unwrap().trim(), "0");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out =
        Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed (scripts/setup.sh)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for localhost signed by it, plus an unrelated CA.
fn certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
}

#[test]
fn tls_verifies_the_server_certificate_and_fails_clearly_when_it_does_not() {
    if !have_root("tls_verifies_the_server_certificate_and_fails_clearly_when_it_does_not") {
        return;
    }
    let mut pg = ThrowawayPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = pg.socket_dir().join("tls");
    certificates(&dir);
    let (uid, gid) = pg.server_ids();
    for f in ["server.key", "server.crt"] {
        std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    pg.configure(
        &[
            "ssl = on",
            &format!("ssl_cert_file = '{}'", dir.join("server.crt").display()),
            &format!("ssl_key_file = '{}'", dir.join("server.key").display()),
        ],
        // Over TCP, TLS only.
        &["hostssl all all 127.0.0.1/32 trust", "host all all 127.0.0.1/32 reject"],
    )
    .unwrap();
    let url = format!("host=localhost port={} user=postgres dbname=postgres", pg.port());
    let ca = dir.join("ca.crt").display().to_string();
    let other = dir.join("other-ca.crt").display().to_string();

    // Right CA: migrations and rows over TLS.
    let out = run_agent(
        &["run", "--records", "2", "--interval", "0.5", "--node-name", "tls-node", "--no-ebpf"],
        &[("DATABASE_URL", &url), ("DB_CA_FILE", &ca)],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM node_features").unwrap().trim(), "2");

    // Wrong CA: a clear error naming the certificate, for `migrate` and for `run`.
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &url), ("DB_CA_FILE", &other)], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TLS certificate did not verify"), "{stderr}");
    let out = run_agent(
        &[
            "run",
            "--records",
            "1",
            "--interval",
            "0.5",
            "--node-name",
            "tls-node",
            "--no-ebpf",
            "--shutdown-timeout",
            "1",
        ],
        &[("DATABASE_URL", &url), ("DB_CA_FILE", &other)],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS certificate did not verify"), "{stderr}");
    // Without a CA file the agent does not use TLS, and this server refuses plain TCP: the
    // refusal is the server's, for want of encryption (not some other failure).
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &url)], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pg_hba.conf rejects connection") && stderr.contains("no encryption"), "{stderr}");
    // A CA file that is not one.
    let out =
        run_agent(&["migrate"], &[("DATABASE_URL", &url), ("DB_CA_FILE", "/etc/hostname")], Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no certificate in it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn passwords_stay_off_the_command_line_and_out_of_the_logs() {
    if !have_root("passwords_stay_off_the_command_line_and_out_of_the_logs") {
        return;
    }
    let secret = "s3cret-battery-staple";
    let out = run_agent(&["run", "--db-password", secret, "--db-host", "/tmp"], &[], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing --db-password on the command line"), "{stderr}");
    let url = format!("postgresql://agent:{secret}@127.0.0.1:1/db");
    let out = run_agent(&["migrate", "--database-url", &url], &[], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing a --database-url with a password"));
    // From the environment or a file it is accepted, and never printed, even on errors.
    let file = std::env::temp_dir().join(format!("feature-agent-pw-{}", std::process::id()));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    for env in [
        vec![("DATABASE_URL", url.as_str())],
        vec![("DB_HOST", "127.0.0.1"), ("DB_PORT", "1"), ("DB_PASSWORD", secret)],
        vec![("DB_HOST", "127.0.0.1"), ("DB_PORT", "1"), ("DB_PASSWORD_FILE", file.to_str().unwrap())],
    ] {
        let out = run_agent(
            &[
                "run",
                "--records",
                "1",
                "--interval",
                "0.2",
                "--no-ebpf",
                "--shutdown-timeout",
                "1",
                "--node-name",
                "pw",
            ],
            &env,
            Duration::from_secs(30),
        );
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(all.contains("database unavailable"), "{all}");
        assert!(!all.contains(secret), "the password was printed: {all}");
    }
    // And the password really comes from DB_PASSWORD or the file: against a server that asks
    // for it (SCRAM), the right one writes a row, a wrong one is refused, neither is printed.
    let mut pg = ThrowawayPostgres::start().unwrap();
    pg.configure(&[], &["host all pwuser 127.0.0.1/32 scram-sha-256"]).unwrap();
    pg.psql("postgres", &format!("CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD '{secret}'")).unwrap();
    let port = pg.port().to_string();
    let wrong = std::env::temp_dir().join(format!("feature-agent-pw-wrong-{}", std::process::id()));
    std::fs::write(&wrong, "not-the-battery\n").unwrap();
    let base = [("DB_HOST", "127.0.0.1"), ("DB_PORT", port.as_str()), ("DB_USER", "pwuser"), ("DB_NAME", "postgres")];
    for (extra, ok) in [
        (("DB_PASSWORD", secret), true),
        (("DB_PASSWORD_FILE", file.to_str().unwrap()), true),
        (("DB_PASSWORD_FILE", wrong.to_str().unwrap()), false),
    ] {
        let mut env = base.to_vec();
        env.push(extra);
        let args =
            ["run", "--records", "1", "--interval", "0.2", "--no-ebpf", "--shutdown-timeout", "1", "--node-name", "pw"];
        let out = run_agent(&args, &env, Duration::from_secs(30));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.success(), ok, "{extra:?}: {all}");
        if ok {
            assert!(all.contains("row written"), "{extra:?}: {all}");
        } else {
            assert!(all.contains("password authentication failed"), "{extra:?}: {all}");
        }
        assert!(!all.contains(secret) && !all.contains("not-the-battery"), "a password was printed: {all}");
    }
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM node_features WHERE node = 'pw'").unwrap().trim(), "2");
    let _ = std::fs::remove_file(wrong);
    // --help does not show the password's value either.
    let out = agent_command().args(["run", "--help"]).env("DB_PASSWORD", secret).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    let _ = std::fs::remove_file(file);
}

/// `migrate` as a role that may not change the schema says what Postgres refused and what to
/// do, instead of a bare "permission denied".
#[test]
fn migrating_as_a_writer_explains_itself() {
    if !have_root("migrating_as_a_writer_explains_itself") {
        return;
    }
    let url = tests::migrated_database("migrate_as_writer");
    tests::sql("migrate_as_writer", "DO $$ BEGIN CREATE ROLE writer_login LOGIN IN ROLE feature_writer; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    let fresh = tests::fresh_database("migrate_as_writer_fresh");
    let as_writer = fresh.replace("user=postgres", "user=writer_login");
    assert_ne!(as_writer, fresh);
    let out = run_agent(&["migrate"], &[("DATABASE_URL", &as_writer)], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("run `feature-agent migrate` as the schema's owner"), "{stderr}");
    let _ = url;
}
