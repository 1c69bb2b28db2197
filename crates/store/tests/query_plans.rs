//! The hot statements keep their index plans whatever the table holds:
//! a plan that reads the whole queued backlog is correct and passes every
//! functional test, and only shows as latency under load (docs/benchmarks.md).
//! Checked on the generic plan, the one a prepared statement ends up with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

mod common;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Every node of a JSON plan, depth first.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for child in children {
            nodes(child, out);
        }
    }
}

#[tokio::test]
async fn the_queued_twin_check_reads_one_index_range_not_the_backlog() {
    let db = common::ScratchDb::migrated("depot_plans").await;
    let client = connect(&db.url).await;
    // A backlog: 40,000 queued syncs over 200 repositories, half of them
    // then finished (dead entries in the partial indexes until vacuum).
    client
        .batch_execute(
            "INSERT INTO orgs (id, slug, name) VALUES ('org_p', 'p', 'p');
             INSERT INTO repos (id, org_id, name)
                 SELECT 'repo_' || i, 'org_p', 'r' || i FROM generate_series(1, 200) i;
             INSERT INTO syncs (id, repo_id, direction, branches_glob, tags_glob)
                 SELECT 'sync_' || i, 'repo_' || (i % 200 + 1), 'pull', 'g' || i, ''
                 FROM generate_series(1, 40000) i;
             UPDATE syncs SET status = 'failed', error = 'x', finished_at = now()
                 WHERE substr(id, 6)::int % 2 = 0;
             ANALYZE syncs;",
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan;
             PREPARE twin(text, text, text, text) AS {};",
            depot_store::syncs::QUEUED_TWIN
        ))
        .await
        .unwrap();
    let row = client
        .query_one(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE twin('repo_8', 'pull', 'g7', '')",
            &[],
        )
        .await
        .unwrap();
    let explained: Value = row.get(0);
    let plan = &explained[0]["Plan"];
    let mut all = Vec::new();
    nodes(plan, &mut all);
    let indexes: Vec<&str> = all
        .iter()
        .filter_map(|n| n.get("Index Name").and_then(Value::as_str))
        .collect();
    assert_eq!(indexes, ["syncs_queued_identity"], "{plan:#}");
    let buffers =
        plan["Shared Hit Blocks"].as_i64().unwrap() + plan["Shared Read Blocks"].as_i64().unwrap();
    assert!(buffers < 20, "read {buffers} blocks: {plan:#}");
    // And it finds the twin: `g7` went to repo_8 (7 % 200 + 1), still queued.
    let found = client
        .query_opt("EXECUTE twin('repo_8', 'pull', 'g7', '')", &[])
        .await
        .unwrap()
        .map(|r| r.get::<_, String>(0));
    assert_eq!(found.as_deref(), Some("sync_7"));
}

/// A pooled connection prepares the enqueue statement once, often while
/// `syncs` is still small, and keeps that generic plan while the backlog
/// grows (nothing re-plans it until the table is analyzed again): its
/// queued-twin probe must stay bound to the repository even then.
#[tokio::test]
async fn the_enqueue_statement_planned_on_an_empty_table_stays_bound_to_its_repository() {
    let db = common::ScratchDb::migrated("depot_plans").await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "INSERT INTO orgs (id, slug, name) VALUES ('org_p', 'p', 'p');
             INSERT INTO repos (id, org_id, name)
                 SELECT 'repo_' || i, 'org_p', 'r' || i FROM generate_series(1, 4) i;
             INSERT INTO upstreams (repo_id, url)
                 SELECT id, 'https://example.com/x.git' FROM repos;",
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan;
             PREPARE enqueue(text, text, text, text, text, text, bytea) AS {};
             EXECUTE enqueue('org_p', 'r1', 'sync_first', 'pull', 'first', '', '\\x0a00');",
            depot_store::syncs::create_queued_sql()
        ))
        .await
        .unwrap();
    // Then the backlog arrives, as it does under load: not analyzed.
    client
        .batch_execute(
            "INSERT INTO syncs (id, repo_id, direction, branches_glob, tags_glob)
                 SELECT 'sync_' || i, 'repo_' || (i % 4 + 1), 'pull', 'g' || i, ''
                 FROM generate_series(1, 40000) i;",
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             EXECUTE enqueue('org_p', 'r2', 'sync_new', 'pull', 'new', '', '\\x0a00')",
            &[],
        )
        .await
        .unwrap();
    let explained: Value = row.get(0);
    let plan = &explained[0]["Plan"];
    let mut all = Vec::new();
    nodes(plan, &mut all);
    let probe = all
        .iter()
        .find(|n| n.get("Index Name").and_then(Value::as_str) == Some("syncs_queued_identity"))
        .unwrap_or_else(|| panic!("no probe of syncs_queued_identity: {plan:#}"));
    let cond = probe["Index Cond"].as_str().unwrap_or_default();
    assert!(
        cond.contains("repo_id ="),
        "probe not bound to the repository: {probe:#}"
    );
    // 10,000 queued entries of r2 alone would be dozens of index pages.
    let blocks = probe["Shared Hit Blocks"].as_i64().unwrap()
        + probe["Shared Read Blocks"].as_i64().unwrap();
    assert!(blocks < 10, "the probe read {blocks} blocks: {probe:#}");
}
