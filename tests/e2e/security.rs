//! Security properties end to end: credential key rotation with no downtime,
//! API key revocation with immediate effect, the upstream URL policy
//! enforced again when a run starts, and stored credentials that only ever
//! go to the origin they were given for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::calls::Pull;
use depot_e2e::{
    CREDENTIAL_KEY_BYTES, EnvOptions, GitHttpServer, GitServerOptions, TestEnv, UPSTREAM_PASSWORD,
    UPSTREAM_USER, Upstream, fixture,
};
use depot_testkit::basic_auth_header;
use serde_json::{Value, json};
use std::time::Duration;

/// Another test-only key (base64 of 32 bytes).
const NEW_KEY: &str = "bmV3LXRlc3QtY3JlZGVudGlhbC1rZXktMzItYnl0ZXM=";

async fn create_mirror(env: &TestEnv, key: &str, name: &str, upstream: &Upstream) {
    let (status, body) = env
        .post_repo(
            key,
            "acme",
            &json!({
                "name": name,
                "upstream": {
                    "url": upstream.url(),
                    "auth": {"kind": "username_password", "username": UPSTREAM_USER, "password": UPSTREAM_PASSWORD}
                }
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn pull(env: &TestEnv, key: &str, repo: &str) -> Value {
    let (status, sync) = env.post_sync(key, &format!("acme/{repo}"), Pull).await;
    assert_eq!(status, 201, "{sync}");
    env.wait_for_sync(
        key,
        "acme",
        repo,
        sync["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

async fn stored_fingerprints(env: &TestEnv) -> Vec<Vec<u8>> {
    let db = env.db().await.unwrap();
    db.query(
        "SELECT substring(credential from 2 for 4) FROM upstreams ORDER BY repo_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_key_rotation_needs_no_downtime() {
    let upstream = Upstream::start("rotating").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let mut env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "a", &upstream).await;
    create_mirror(&env, &key, "b", &upstream).await;
    let before = stored_fingerprints(&env).await;
    assert_eq!(before.len(), 2);

    // Step 1: every process learns the new key, keeping the old one readable.
    let old_key = env.env["DEPOT__SECRETS__CREDENTIAL_KEY"].clone();
    env.env
        .insert("DEPOT__SECRETS__CREDENTIAL_KEY".into(), NEW_KEY.into());
    env.env.insert(
        "DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS".into(),
        old_key.clone(),
    );
    env.workers[0].terminate(Duration::from_secs(30)).unwrap();
    env.start_worker().unwrap();
    let done = pull(&env, &key, "a").await;
    assert_eq!(
        done["status"], "completed",
        "old-key credential must still work: {done}"
    );

    // Step 2: re-encrypt. A rotation with the old key missing refuses to
    // pretend it is done.
    let mut without_old = env.env.clone();
    without_old.remove("DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS");
    let saved = std::mem::replace(&mut env.env, without_old);
    let refused = env.admin(&["secrets", "rotate"]);
    assert!(refused.is_err(), "rotation without the old key must fail");
    env.env = saved;
    let out = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(out.contains("re-encrypted 2 credentials"), "{out}");
    let after = stored_fingerprints(&env).await;
    assert!(
        after.iter().all(|f| *f != before[0]),
        "every row must be under the new key"
    );
    let again = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(
        again.contains("re-encrypted 0 credentials; 2 already under the current key"),
        "{again}"
    );

    // Step 3: the old key is dropped everywhere; syncs still work.
    env.env.remove("DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS");
    env.workers[1].terminate(Duration::from_secs(30)).unwrap();
    env.start_worker().unwrap();
    let done = pull(&env, &key, "b").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(!env.all_logs().contains(UPSTREAM_PASSWORD));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_within_the_revocation_bound() {
    let env = TestEnv::start(EnvOptions::api_only()).await.unwrap();
    let key = env.org_and_key("acme", "read").unwrap();
    let (status, me) = env.whoami(&key).await;
    assert_eq!(status, 200, "{me}");
    let key_id = me["key_id"].as_str().unwrap().to_string();
    let out = env.admin(&["key", "revoke", &key_id]).unwrap();
    assert!(out.contains(&key_id));
    // Gateways cache verified keys; the revocation reaches them by
    // notification within auth.revocation_bound_ms (1 s).
    let (status, body) = depot_e2e::eventually(Duration::from_secs(1), "the refusal", || async {
        let r = env.whoami(&key).await;
        Ok((r.0 == 401).then_some(r))
    })
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert!(env.admin(&["key", "revoke", "key_doesnotexist"]).is_err());
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_policy_is_checked_again_when_a_run_starts() {
    let upstream = Upstream::start("policy").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let mut env = TestEnv::start(EnvOptions {
        workers: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    // Stored while the gateway allowed loopback upstreams...
    create_mirror(&env, &key, "a", &upstream).await;
    // ...but the worker now runs with the production policy.
    env.env.insert(
        "DEPOT__UPSTREAM__ALLOW_PRIVATE_NETWORKS".into(),
        "false".into(),
    );
    env.start_worker().unwrap();
    let done = pull(&env, &key, "a").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempt"], 1, "a refused URL is permanent: {done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("upstream_refused"), "{error}");
    assert_eq!(
        upstream.server.request_count(),
        0,
        "the refused upstream must not be contacted"
    );
    env.cleanup().await.unwrap();
}

/// Bytes Postgres cannot store (NUL) never reach it: found by schemathesis
/// as a 500, now a 400 or 404 like any other bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_not_stored() {
    let upstream = Upstream::start("nul").unwrap();
    let env = TestEnv::start(EnvOptions::api_only()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    let (status, body) = env
        .post_repo(&key, "acme", &json!({"name": "a", "tags": {"k": "v\u{0}"}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "tags.k");
    let (status, body) = env
        .post_repo(&key, "acme", &json!({"name": "a", "tags": {"\u{1}": "v"}}))
        .await;
    assert_eq!(status, 400, "{body}");
    create_mirror(&env, &key, "a", &upstream).await;
    let (status, body) = env
        .post_sync_globs(&key, "acme/a", Pull, json!({"branches": "main\u{0}"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "ref_globs.branches");
    let (status, body) = env.get_repo(&key, "acme/a%00b").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = env.get_repo(&key, "acme/a").await;
    assert_eq!(status, 200, "nothing was lost");
    env.cleanup().await.unwrap();
}

/// Peak resident memory of a process, from /proc (kB → bytes).
fn peak_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// An upstream serving more than `upstream.max_pack_bytes` fails that sync
/// at once with `pack_too_large`, lands nothing, and does not hold up a
/// sync of another repository; the worker's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_pack_fails_its_sync_cleanly_while_others_complete() {
    let big = Upstream::start("big").unwrap();
    // 4 MiB of random bytes: incompressible, so the pack is at least that.
    let noise: Vec<u8> = (0..4 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    std::fs::write(big.work.path().join("noise.bin"), noise).unwrap();
    big.work.commit("main", "big").unwrap();
    big.publish().unwrap();
    let small = Upstream::start("small").unwrap();
    small.work.commit("main", "small").unwrap();
    small.publish().unwrap();

    let env = TestEnv::start(EnvOptions {
        workers: 1,
        extra_env: vec![(
            "DEPOT__UPSTREAM__MAX_PACK_BYTES".into(),
            (512 * 1024).to_string(),
        )],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "big", &big).await;
    create_mirror(&env, &key, "small", &small).await;
    let (status, a) = env.post_sync(&key, "acme/big", Pull).await;
    assert_eq!(status, 201, "{a}");
    let (status, b) = env.post_sync(&key, "acme/small", Pull).await;
    assert_eq!(status, 201, "{b}");
    let limit = Duration::from_secs(60);
    let a = env
        .wait_for_sync(&key, "acme", "big", a["id"].as_str().unwrap(), limit)
        .await
        .unwrap();
    let b = env
        .wait_for_sync(&key, "acme", "small", b["id"].as_str().unwrap(), limit)
        .await
        .unwrap();
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["attempt"], 1, "an oversized pack is permanent: {a}");
    assert_eq!(a["error"], "pack_too_large");
    assert_eq!(b["status"], "completed", "{b}");
    let (_, repo) = env.get_repo(&key, "acme/big").await;
    let big_path = env
        .hosted_repo_path(repo["id"].as_str().unwrap())
        .await
        .unwrap();
    if big_path.exists() {
        assert!(
            depot_e2e::fixture::list_refs(&big_path).unwrap().is_empty(),
            "nothing may land"
        );
    }
    let pid = env.workers[0].pid().unwrap();
    let peak = peak_rss_bytes(pid);
    assert!(peak < 256 * 1024 * 1024, "worker peak RSS {peak} bytes");
    env.cleanup().await.unwrap();
}

/// A second upstream on another port that wants other credentials and
/// records every `Authorization` header it receives.
struct Listener {
    server: GitHttpServer,
    _dir: tempfile::TempDir,
}

impl Listener {
    fn start() -> Listener {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        fixture::init_bare(&root.join("other.git")).unwrap();
        let server = GitHttpServer::start(GitServerOptions {
            root,
            basic_auth: Some(("mallory".into(), "listener-pw".into())),
            listen: None,
        })
        .unwrap();
        Listener { server, _dir: dir }
    }

    fn url(&self) -> String {
        self.server.repo_url("other")
    }
}

async fn patch(env: &TestEnv, key: &str, repo: &str, body: Value) -> (u16, Value) {
    env.patch_repo(key, &format!("acme/{repo}"), &body).await
}

async fn stored_upstream(env: &TestEnv, repo: &str) -> (String, String, Option<Vec<u8>>) {
    let db = env.db().await.unwrap();
    let row = db
        .query_one(
            "SELECT r.id, u.url, u.credential FROM repos r JOIN upstreams u ON u.repo_id = r.id
             WHERE r.name = $1",
            &[&repo],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The attack of issue 11: a `write` key points a repository that has a
/// stored credential at a server it controls. Without `auth` the PATCH is
/// refused and changes nothing; with `"auth": null` the sync fails to
/// authenticate and the new server never sees the first one's credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_credential_never_follows_the_url_to_another_origin() {
    let upstream = Upstream::start("origin-a").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let listener = Listener::start();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "m", &upstream).await;
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "completed", "{done}");
    let first_credential = basic_auth_header(UPSTREAM_USER, UPSTREAM_PASSWORD);
    assert!(
        upstream
            .server
            .authorization_headers()
            .contains(&first_credential),
        "the first upstream must have received its credential"
    );
    let before = stored_upstream(&env, "m").await;

    // Without auth: 400, and neither the URL, the credential nor the other
    // fields of the same PATCH change.
    let (status, body) = patch(
        &env,
        &key,
        "m",
        json!({"name": "renamed", "upstream": {"url": listener.url()}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "UPSTREAM_AUTH_REQUIRED", "{body}");
    assert_eq!(body["error"]["details"]["field"], "upstream.auth", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upstream.auth") && message.contains("\"auth\": null"),
        "{message}"
    );
    assert_eq!(stored_upstream(&env, "m").await, before);
    let (status, repo) = env.get_repo(&key, "acme/m").await;
    assert_eq!(status, 200, "the rename must not have happened: {repo}");
    assert_eq!(repo["upstream"]["url"], upstream.url());
    assert_eq!(repo["upstream"]["auth_kind"], "username_password");

    // With "auth": null: accepted, and the pull fails to authenticate.
    let (status, body) = patch(
        &env,
        &key,
        "m",
        json!({"upstream": {"url": listener.url(), "auth": null}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"]["auth_kind"], Value::Null, "{body}");
    assert_eq!(stored_upstream(&env, "m").await.2, None);
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], "authentication_failed", "{done}");
    assert!(
        listener.server.request_count() > 0,
        "the new upstream must have been asked"
    );
    let seen = listener.server.authorization_headers();
    assert!(
        !seen.contains(&first_credential),
        "the first upstream's credential reached the second: {seen:?}"
    );
    assert!(seen.is_empty(), "no credential at all was stored: {seen:?}");
    env.cleanup().await.unwrap();
}

/// Another repository path on the same origin keeps the stored credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_origin_with_another_path_keeps_the_credential() {
    let upstream = Upstream::start("first").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let second_bare = upstream.server.root().join("second.git");
    fixture::init_bare(&second_bare).unwrap();
    upstream.work.push_all_to(&second_bare).unwrap();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "m", &upstream).await;
    let before = stored_upstream(&env, "m").await;
    let second = upstream.server.repo_url("second");
    let (status, body) = patch(&env, &key, "m", json!({"upstream": {"url": second}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"]["url"], second, "{body}");
    assert_eq!(body["upstream"]["auth_kind"], "username_password", "{body}");
    assert_eq!(stored_upstream(&env, "m").await.2, before.2);
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "completed", "{done}");
    env.cleanup().await.unwrap();
}

/// Defence in depth: a row whose URL was changed in the database, past
/// every API check, still never sends its credential to the new host: the
/// worker opens the credential for the origin it is about to contact, and
/// it does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_edited_in_the_database_never_gets_the_credential() {
    let upstream = Upstream::start("edited").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let listener = Listener::start();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "m", &upstream).await;
    let (repo_id, _, _) = stored_upstream(&env, "m").await;
    let db = env.db().await.unwrap();
    let edited = db
        .execute(
            "UPDATE upstreams SET url = $2 WHERE repo_id = $1",
            &[&repo_id, &listener.url()],
        )
        .await
        .unwrap();
    assert_eq!(edited, 1);
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempt"], 1, "permanent: {done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("credential_unreadable"), "{error}");
    assert!(
        listener.server.authorization_headers().is_empty(),
        "{:?}",
        listener.server.authorization_headers()
    );
    assert_eq!(
        listener.server.request_count(),
        0,
        "the run must stop before contacting the new host"
    );
    env.cleanup().await.unwrap();
}

/// A credential in the format written before origin binding (bound to its
/// repository only), as the previous release sealed it.
fn seal_legacy(fingerprint: &[u8], repo_id: &str, credential: &Value) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm::Aes256Gcm::new(CREDENTIAL_KEY_BYTES.into());
    let nonce: [u8; 12] = rand::random();
    let ciphertext = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce),
            Payload {
                msg: &serde_json::to_vec(credential).unwrap(),
                aad: repo_id.as_bytes(),
            },
        )
        .unwrap();
    let mut out = vec![1u8];
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Credentials stored before origin binding keep working after the
/// upgrade, `depot-admin secrets rotate` binds them to their row's origin,
/// and from then on a database edit of the URL no longer opens them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_credentials_keep_working_and_rotate_binds_them_to_their_origin() {
    let upstream = Upstream::start("legacy").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let listener = Listener::start();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "m", &upstream).await;
    let (repo_id, _, sealed) = stored_upstream(&env, "m").await;
    let sealed = sealed.unwrap();
    assert_eq!(sealed[0], 2, "new credentials are origin-bound");
    let legacy = seal_legacy(
        &sealed[1..5],
        &repo_id,
        &json!({"kind": "username_password", "username": UPSTREAM_USER, "password": UPSTREAM_PASSWORD}),
    );
    let db = env.db().await.unwrap();
    db.execute(
        "UPDATE upstreams SET credential = $2 WHERE repo_id = $1",
        &[&repo_id, &legacy],
    )
    .await
    .unwrap();
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "completed", "legacy credential: {done}");

    let out = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(out.contains("re-encrypted 1 credentials"), "{out}");
    let (_, _, bound) = stored_upstream(&env, "m").await;
    let bound = bound.unwrap();
    assert_eq!(bound[0], 2, "rotate re-seals legacy credentials bound");
    let again = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(
        again.contains("re-encrypted 0 credentials; 1 already under the current key"),
        "{again}"
    );
    upstream.work.commit("main", "two").unwrap();
    upstream.publish().unwrap();
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "completed", "bound credential: {done}");

    db.execute(
        "UPDATE upstreams SET url = $2 WHERE repo_id = $1",
        &[&repo_id, &listener.url()],
    )
    .await
    .unwrap();
    let done = pull(&env, &key, "m").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(listener.server.authorization_headers().is_empty());
    assert_eq!(listener.server.request_count(), 0);
    env.cleanup().await.unwrap();
}

/// A rotation meeting a credential that does not open for its row's URL
/// (edited outside the API) leaves it as it is and still rotates the rest:
/// no key would ever make it open, so it must not block the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_leaves_a_credential_bound_to_another_origin_alone() {
    let upstream = Upstream::start("rot-edited").unwrap();
    let listener = Listener::start();
    let mut env = TestEnv::start(EnvOptions {
        workers: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_mirror(&env, &key, "edited", &upstream).await;
    create_mirror(&env, &key, "fine", &upstream).await;
    let (edited_id, _, edited_before) = stored_upstream(&env, "edited").await;
    let db = env.db().await.unwrap();
    db.execute(
        "UPDATE upstreams SET url = $2 WHERE repo_id = $1",
        &[&edited_id, &listener.url()],
    )
    .await
    .unwrap();
    let old_key = env.env["DEPOT__SECRETS__CREDENTIAL_KEY"].clone();
    env.env
        .insert("DEPOT__SECRETS__CREDENTIAL_KEY".into(), NEW_KEY.into());
    env.env
        .insert("DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS".into(), old_key);
    let out = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(
        out.contains("re-encrypted 1 credentials; 0 already under the current key"),
        "{out}"
    );
    assert_eq!(stored_upstream(&env, "edited").await.2, edited_before);
    let (_, _, fine) = stored_upstream(&env, "fine").await;
    assert_ne!(
        fine.unwrap()[1..5],
        edited_before.unwrap()[1..5],
        "the other credential is under the new key"
    );
    env.cleanup().await.unwrap();
}
