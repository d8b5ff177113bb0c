//! Named prepared statements against unnamed typed ones, for the agent's own write: one
//! interval's transaction (BEGIN, the lease renewal, the node row, 30 pod rows in one INSERT,
//! COMMIT), written A (named: each statement prepared once per session and executed by name)
//! then B (unnamed: parse, bind and execute in one round trip, what the agent does), alternating,
//! in rounds, against one Postgres on this machine (production durability), and B again through
//! PgBouncer 1.18 in transaction mode (where A cannot run: the named statement is gone when the
//! next transaction gets another server connection; the bench shows that error too).
//!
//! cargo bench -p tests --bench statements     (the figures in BENCHMARKS.md)
use std::time::{Duration, Instant, SystemTime};

use feature_schema::{
    insert_param_types, insert_sql,
    pods::{pod_insert_param_types, pod_insert_sql, OwnerKind, PodRow},
    FeatureRow,
};
use tokio_postgres::{
    types::{ToSql, Type},
    Client, NoTls, Statement,
};

const PODS: usize = 30;
const WRITES: usize = 300;
const ROUNDS: usize = 9;
const RENEW: &str =
    "UPDATE node_writers SET expires = now() + make_interval(secs => $3) WHERE node = $1 AND holder = $2";

fn rows(node: &str, k: usize) -> (FeatureRow, Vec<PodRow>) {
    let ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + k as u64);
    let mut row = FeatureRow::empty(node.into(), ts);
    row.cpu_sec_idle = Some(1.5);
    row.load1 = Some(0.25);
    let pods = (0..PODS)
        .map(|p| {
            let mut pod = PodRow::blank();
            pod.node = node.into();
            pod.ts = ts;
            pod.kind = OwnerKind::Pod;
            pod.owner = format!("uid-{p}");
            pod.namespace = Some("bench".into());
            pod
        })
        .collect();
    (row, pods)
}

struct Named {
    renew: Statement,
    node: Statement,
    pods: Statement,
}

async fn write_named(c: &mut Client, s: &Named, node: &str, k: usize) -> Result<(), tokio_postgres::Error> {
    let (row, pods) = rows(node, k);
    let lease = 60.0f64;
    let tx = c.transaction().await?;
    tx.execute(&s.renew, &[&node, &"bench", &lease]).await?;
    tx.execute(&s.node, &row.params()).await?;
    let params: Vec<&(dyn ToSql + Sync)> = pods.iter().flat_map(|p| p.params()).collect();
    tx.execute(&s.pods, &params).await?;
    tx.commit().await
}

async fn write_unnamed(c: &mut Client, node: &str, k: usize) -> Result<(), tokio_postgres::Error> {
    let (row, pods) = rows(node, k);
    let lease = 60.0f64;
    let tx = c.transaction().await?;
    let renew: [&(dyn ToSql + Sync); 3] = [&node, &"bench", &lease];
    tx.query_typed(RENEW, &renew.iter().copied().zip([Type::TEXT, Type::TEXT, Type::FLOAT8]).collect::<Vec<_>>())
        .await?;
    let params = row.params();
    let typed: Vec<_> = params.iter().copied().zip(insert_param_types(1)).collect();
    tx.query_typed(&insert_sql(1), &typed).await?;
    let params: Vec<&(dyn ToSql + Sync)> = pods.iter().flat_map(|p| p.params()).collect();
    let typed: Vec<_> = params.iter().copied().zip(pod_insert_param_types(PODS)).collect();
    tx.query_typed(&pod_insert_sql(PODS), &typed).await?;
    tx.commit().await
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pg = throwaway_pg::ThrowawayPostgres::start_with(true).expect("throwaway Postgres");
    let url = pg.url("postgres");
    let out = std::process::Command::new(tests::agent_bin()).arg("migrate").env("DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.psql("postgres", "SELECT ensure_day_partitions(to_timestamp(1790000000))").unwrap();
    pg.psql("postgres", "INSERT INTO node_writers VALUES ('a', 'bench', 'x', now(), now()), ('b', 'bench', 'x', now(), now()), ('c', 'bench', 'x', now(), now())").unwrap();

    let mut a = connect(&url).await;
    let named = Named {
        renew: a.prepare_typed(RENEW, &[Type::TEXT, Type::TEXT, Type::FLOAT8]).await.unwrap(),
        node: a.prepare(&insert_sql(1)).await.unwrap(),
        pods: a.prepare(&pod_insert_sql(PODS)).await.unwrap(),
    };
    let mut b = connect(&url).await;
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let t = Instant::now();
        for k in 0..WRITES {
            write_named(&mut a, &named, "a", round * WRITES + k).await.unwrap();
        }
        ta.push(t.elapsed().as_secs_f64() * 1e6 / WRITES as f64);
        let t = Instant::now();
        for k in 0..WRITES {
            write_unnamed(&mut b, "b", round * WRITES + k).await.unwrap();
        }
        tb.push(t.elapsed().as_secs_f64() * 1e6 / WRITES as f64);
    }
    let diffs: Vec<f64> = tb.iter().zip(&ta).map(|(b, a)| b - a).collect();
    println!("one interval's write (BEGIN, lease renewal, node row, {PODS} pod rows, COMMIT), {ROUNDS} rounds of {WRITES}, alternating:");
    let (lo, mid, hi) = spread(ta);
    println!("  named (prepared once):   median {mid:.0} us per write (rounds {lo:.0}-{hi:.0})");
    let (lo, mid, hi) = spread(tb);
    println!("  unnamed (query_typed):   median {mid:.0} us per write (rounds {lo:.0}-{hi:.0})");
    let (lo, mid, hi) = spread(diffs);
    println!("  unnamed - named:         median {mid:+.0} us per write (rounds {lo:+.0} to {hi:+.0})");

    // Through PgBouncer in transaction mode.
    let bouncer = throwaway_pg::pgbouncer::ThrowawayPgBouncer::start(
        &pg,
        throwaway_pg::pgbouncer::PoolerOptions { pool_size: 2, ..Default::default() },
    )
    .unwrap();
    let burl = bouncer.url("postgres");
    let mut c = connect(&burl).await;
    let mut tc = Vec::new();
    for round in 0..ROUNDS {
        let t = Instant::now();
        for k in 0..WRITES {
            write_unnamed(&mut c, "c", round * WRITES + k).await.unwrap();
        }
        tc.push(t.elapsed().as_secs_f64() * 1e6 / WRITES as f64);
    }
    let (lo, mid, hi) = spread(tc);
    println!("  unnamed through PgBouncer (transaction mode): median {mid:.0} us per write (rounds {lo:.0}-{hi:.0})");
    // Named through the pooler: a second client holds a server connection in a transaction, so
    // the first client's next transaction lands on the other one, which never saw the statement.
    let d = connect(&burl).await;
    let st = d.prepare("SELECT 1").await.unwrap();
    let e = connect(&burl).await;
    e.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let named_result = d.query(&st, &[]).await;
    match named_result {
        Ok(_) => println!("  named through PgBouncer: happened to run (same server connection)"),
        Err(err) => println!("  named through PgBouncer: {}", feature_db::describe(&err)),
    }
}
