//! `syncs::create_queued`, the POST's one statement, against a real
//! Postgres: each typed outcome, and the outbox payload it completes with
//! the repository's id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_domain::{Direction, RefGlobs};
use depot_store::Pool;
use depot_store::syncs::{self, Created};

mod common;

async fn setup(prefix: &str) -> (common::ScratchDb, Pool, String) {
    common::with_org(prefix, "cq", 2).await
}

async fn repo(pool: &Pool, org_id: &str, id: &str, name: &str, upstream: bool) {
    let client = pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO repos (id, org_id, name) VALUES ($1, $2, $3)",
            &[&id, &org_id, &name],
        )
        .await
        .unwrap();
    if upstream {
        client
            .execute(
                "INSERT INTO upstreams (repo_id, url) VALUES ($1, 'https://example.com/x.git')",
                &[&id],
            )
            .await
            .unwrap();
    }
}

async fn create(pool: &Pool, org_id: &str, name: &str, prefix: &[u8]) -> Created {
    let client = pool.get().await.unwrap();
    syncs::create_queued(
        &client,
        org_id,
        name,
        &depot_domain::ids::new_id("sync"),
        Direction::Pull,
        &RefGlobs::all(),
        prefix,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_missing_repository_is_repo_gone() {
    let (_db, pool, org) = setup("cq_gone").await;
    assert!(matches!(
        create(&pool, &org, "nope", b"").await,
        Created::RepoGone
    ));
}

#[tokio::test]
async fn a_repository_without_upstream_is_refused() {
    let (_db, pool, org) = setup("cq_noup").await;
    repo(&pool, &org, "repo_a", "a", false).await;
    assert!(matches!(
        create(&pool, &org, "a", b"").await,
        Created::UpstreamNotConfigured
    ));
}

#[tokio::test]
async fn a_second_identical_request_names_the_queued_sync() {
    let (_db, pool, org) = setup("cq_twin").await;
    repo(&pool, &org, "repo_a", "a", true).await;
    let Created::Created { sync, .. } = create(&pool, &org, "a", b"").await else {
        panic!("not created");
    };
    match create(&pool, &org, "a", b"").await {
        Created::AlreadyQueued(id) => assert_eq!(id, sync.id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_outbox_payload_is_the_prefix_and_the_repo_id_field() {
    let (_db, pool, org) = setup("cq_payload").await;
    // 200 bytes: a two-byte length varint (0xC8 0x01).
    let long_id = format!("repo_{}", "x".repeat(195));
    for (id, name) in [("repo_short", "short"), (long_id.as_str(), "long")] {
        repo(&pool, &org, id, name, true).await;
        let Created::Created { sync, outbox_id } = create(&pool, &org, name, b"\x0a\x01s").await
        else {
            panic!("not created");
        };
        assert_eq!(sync.repo_id, id);
        let client = pool.get().await.unwrap();
        let payload: Vec<u8> = client
            .query_one("SELECT payload FROM outbox WHERE id = $1", &[&outbox_id])
            .await
            .unwrap()
            .get(0);
        let mut expected = b"\x0a\x01s\x12".to_vec();
        let len = id.len();
        if len < 128 {
            expected.push(len as u8);
        } else {
            expected.extend([(len & 127) as u8 | 128, (len >> 7) as u8]);
        }
        expected.extend(id.as_bytes());
        assert_eq!(payload, expected, "{id}");
    }
}
