//! The public API contract (docs/api.md) against the gateway, Postgres and
//! RabbitMQ: every endpoint's success shape, every error row, the scope and
//! cross-org matrix, pagination edges, tri-state PATCH, the 409 rules and
//! idempotency. Every reply is checked against `proto-schemas/openapi.yaml`
//! by `TestEnv::api` / `TestEnv::request` (status listed, body validates).
//! The gateway runs in-process (`EnvOptions::api_only`) except in the tests
//! that read its log, which run the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::api::{Req, assert_error, contract};
use depot_e2e::calls::{Direction, Pull, Push};
use depot_e2e::{EnvOptions, TestEnv};
use serde_json::{Value, json};

const URL: &str = "https://git.example.com/acme/project.git";
const PASSWORD: &str = "pw-that-must-never-show-up";

/// The gateway in-process and no worker (syncs stay `queued`, so the 409
/// rules and lists are stable): tests that read no process log.
async fn api_tier() -> TestEnv {
    TestEnv::start(EnvOptions::api_only()).await.unwrap()
}

/// No worker, the real gateway binary: tests that read its log.
async fn env_without_worker() -> TestEnv {
    TestEnv::start(EnvOptions {
        workers: 0,
        ..EnvOptions::default()
    })
    .await
    .unwrap()
}

fn upstream() -> Value {
    json!({"url": URL, "auth": {"kind": "username_password", "username": "alice", "password": PASSWORD}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repos_and_org_endpoints_have_the_documented_shapes() {
    let env = env_without_worker().await;
    let key = env.org_and_key("acme", "read,write").unwrap();

    // whoami and the org summary.
    let (status, me) = env.whoami(&key).await;
    assert_eq!(status, 200);
    assert_eq!(me["org"]["slug"], "acme");
    assert!(me["org"]["id"].as_str().unwrap().starts_with("org_"));
    assert!(me["key_id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(me["scopes"], json!(["read", "write"]));
    let (status, org) = env.get_org(&key, "acme").await;
    assert_eq!(status, 200);
    assert_eq!(org["num_repos"], 0);

    // Create: defaults, then every field.
    let plain = env.create_repo(&key, "acme", &json!({})).await;
    assert!(plain["id"].as_str().unwrap().starts_with("repo_"));
    assert!(!plain["name"].as_str().unwrap().is_empty());
    assert_eq!(plain["org"], "acme");
    assert_eq!(plain["default_bookmark"], "main");
    assert_eq!(plain["head_change_id"], "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz");
    assert_eq!(plain["tags"], json!({}));
    assert!(plain["upstream"].is_null());
    let created_at = plain["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == 24,
        "{created_at}"
    );

    let body = json!({
        "name": "mirror",
        "default_bookmark": "trunk",
        "tags": {"team": "infra"},
        "upstream": upstream(),
    });
    let full = env.create_repo(&key, "acme", &body).await;
    assert_eq!(full["name"], "mirror");
    assert_eq!(full["default_bookmark"], "trunk");
    assert_eq!(full["tags"], json!({"team": "infra"}));
    assert_eq!(
        full["upstream"],
        json!({"url": URL, "auth_kind": "username_password", "latest_sync": null})
    );
    assert!(!full.to_string().contains(PASSWORD));

    let body = json!({"name": "tok", "upstream": {
        "url": URL,
        "auth": {"kind": "token", "token": "t0k", "token_username": "x-access-token"},
    }});
    let token = env.create_repo(&key, "acme", &body).await;
    assert_eq!(token["upstream"]["auth_kind"], "token");
    let public = env
        .create_repo(
            &key,
            "acme",
            &json!({"name": "pub", "upstream": {"url": URL}}),
        )
        .await;
    assert!(public["upstream"]["auth_kind"].is_null());

    // Get, list, org count.
    let (status, got) = env.get_repo(&key, "acme/mirror").await;
    assert_eq!(status, 200);
    assert_eq!(got, full);
    let (status, list) = env.list_repos(&key, "acme").await;
    assert_eq!(status, 200);
    assert_eq!(list["has_more"], false);
    assert!(list["next_cursor"].is_null());
    let names: Vec<&str> = list["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [plain["name"].as_str().unwrap(), "mirror", "tok", "pub"]
    );
    let (_, org) = env.get_org(&key, "acme").await;
    assert_eq!(org["num_repos"], 4);

    // Patch: rename, bookmark, tags.
    let (status, patched) = env
        .patch_repo(
            &key,
            "acme/mirror",
            &json!({"name": "mirror2", "default_bookmark": "main", "tags": {"tier": "1"}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["name"], "mirror2");
    assert_eq!(patched["id"], full["id"]);
    assert_eq!(patched["tags"], json!({"team": "infra", "tier": "1"}));
    let (status, _) = env.get_repo(&key, "acme/mirror").await;
    assert_eq!(status, 404);

    // Delete.
    let (status, deleted) = env.delete_repo(&key, "acme/mirror2").await;
    assert_eq!((status, deleted), (200, json!({"success": true})));
    let r = env.get_repo(&key, "acme/mirror2").await;
    assert_error(&r, 404, "NOT_FOUND", None);
    let r = env.delete_repo(&key, "acme/mirror2").await;
    assert_error(&r, 404, "NOT_FOUND", None);

    // The OpenAPI document is served, needs no key, and is the file's.
    let (status, doc) = env.api("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(&doc, contract());

    // Credentials are encrypted at rest: the password is not in the row.
    let db = env.db().await.unwrap();
    let rows = db
        .query(
            "SELECT credential FROM upstreams WHERE credential IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    for row in rows {
        let sealed: Vec<u8> = row.get(0);
        assert!(!sealed.windows(3).any(|w| w == b"t0k"));
    }
    assert!(!env.all_logs().contains(PASSWORD));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_requests_are_validated_field_by_field() {
    let env = api_tier().await;
    let key = env.org_and_key("acme", "write").unwrap();
    env.create_repo(&key, "acme", &json!({"name": "taken"}))
        .await;

    // Raw bodies: not JSON, not an object, empty, too large; content type
    // does not matter.
    for (raw, field) in [
        ("{", "body"),
        ("[1]", "body"),
        ("", "body"),
        ("\"name\"", "body"),
    ] {
        let r = env
            .request(
                "POST",
                "/v1/acme/repos",
                Req {
                    key: Some(&key),
                    raw_body: Some(raw.into()),
                    ..Req::default()
                },
            )
            .await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (400, "INVALID_REQUEST", field),
            "{raw}"
        );
    }
    let big = json!({"name": "big", "tags": {"x": "y".repeat(1000)}, "pad": "z".repeat(70_000)});
    let r = env.post_repo(&key, "acme", &big).await;
    assert_error(&r, 400, "INVALID_REQUEST", Some("body"));
    let r = env
        .request(
            "POST",
            "/v1/acme/repos",
            Req {
                key: Some(&key),
                raw_body: Some(r#"{"name":"as-text"}"#.into()),
                headers: vec![("content-type", "text/plain".into())],
            },
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    for (body, field) in [
        (json!({"nme": "x"}), "nme"),
        (json!({"name": 5}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "a/b"}), "name"),
        (json!({"name": "repos"}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"default_bookmark": "a..b"}), "default_bookmark"),
        (json!({"tags": ["a"]}), "tags"),
        (json!({"tags": {"a": 1}}), "tags.a"),
        (json!({"tags": {"a": null}}), "tags.a"),
        (json!({"upstream": "https://x"}), "upstream"),
        (json!({"upstream": {}}), "upstream.url"),
        (
            json!({"upstream": {"url": URL, "extra": 1}}),
            "upstream.extra",
        ),
        (json!({"upstream": {"url": "ftp://h/r"}}), "upstream.url"),
        (
            json!({"upstream": {"url": "file:///etc/passwd"}}),
            "upstream.url",
        ),
        (
            json!({"upstream": {"url": "https://u:p@h.example.com/r"}}),
            "upstream.url",
        ),
        (
            json!({"upstream": {"url": "https://h.example.com/r?x=1"}}),
            "upstream.url",
        ),
        (json!({"upstream": {"url": "not a url"}}), "upstream.url"),
        (
            json!({"upstream": {"url": URL, "auth": {"kind": "ssh"}}}),
            "upstream.auth.kind",
        ),
        (
            json!({"upstream": {"url": URL, "auth": {"token": "t"}}}),
            "upstream.auth.kind",
        ),
        (
            json!({"upstream": {"url": URL, "auth": {"kind": "token"}}}),
            "upstream.auth.token",
        ),
        (
            json!({"upstream": {"url": URL, "auth": {"kind": "token", "token": ""}}}),
            "upstream.auth.token",
        ),
        (
            json!({"upstream": {"url": URL, "auth": {"kind": "token", "token": "t", "password": "p"}}}),
            "upstream.auth.password",
        ),
        (
            json!({"upstream": {"url": URL, "auth": {"kind": "username_password", "username": "u"}}}),
            "upstream.auth.password",
        ),
        (
            json!({"upstream": {"url": URL, "auth": "secret"}}),
            "upstream.auth",
        ),
    ] {
        let r = env.post_repo(&key, "acme", &body).await;
        assert_error(&r, 400, "INVALID_REQUEST", Some(field));
    }

    // Name clashes: create and rename.
    let r = env.post_repo(&key, "acme", &json!({"name": "taken"})).await;
    assert_error(&r, 409, "REPO_ALREADY_EXISTS", None);
    env.create_repo(&key, "acme", &json!({"name": "other"}))
        .await;
    let r = env
        .patch_repo(&key, "acme/other", &json!({"name": "taken"}))
        .await;
    assert_error(&r, 409, "REPO_ALREADY_EXISTS", None);
    for (body, field) in [
        (json!({"name": "repos"}), "name"),
        (json!({"bogus": true}), "bogus"),
        (json!({"tags": null}), "tags"),
        (
            json!({"upstream": {"url": URL, "auth": {"kind": "token"}}}),
            "upstream.auth.token",
        ),
    ] {
        let r = env.patch_repo(&key, "acme/other", &body).await;
        assert_error(&r, 400, "INVALID_REQUEST", Some(field));
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_url_policy_refuses_schemes_and_private_addresses() {
    // The production policy: https only, no private networks.
    let env = TestEnv::start(EnvOptions {
        workers: 0,
        extra_env: vec![
            ("DEPOT__UPSTREAM__ALLOWED_SCHEMES".into(), "https".into()),
            (
                "DEPOT__UPSTREAM__ALLOW_PRIVATE_NETWORKS".into(),
                "false".into(),
            ),
        ],
        ..EnvOptions::api_only()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "write").unwrap();
    env.create_repo(&key, "acme", &json!({"name": "r"})).await;
    for url in [
        "http://git.example.com/r.git",
        "https://127.0.0.1/r.git",
        "https://localhost/r.git",
        "https://10.1.2.3/r.git",
        "https://192.168.0.10/r.git",
        "https://169.254.169.254/latest",
        "https://[::1]/r.git",
        "https://[::ffff:127.0.0.1]/r.git",
        "https://0x7f000001/r.git",
        "https://no-such-host.invalid/r.git",
    ] {
        let body = json!({"name": "x", "upstream": {"url": url}});
        let r = env.post_repo(&key, "acme", &body).await;
        assert_error(&r, 400, "INVALID_REQUEST", Some("upstream.url"));
        let body = json!({"upstream": {"url": url}});
        let r = env.patch_repo(&key, "acme/r", &body).await;
        assert_error(&r, 400, "INVALID_REQUEST", Some("upstream.url"));
    }
    let (_, repo) = env.get_repo(&key, "acme/r").await;
    assert!(repo["upstream"].is_null());
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_orgs_decide_401_403_404() {
    let env = env_without_worker().await;
    let read = env.org_and_key("acme", "read").unwrap();
    let write = env.org_and_key("acme", "write").unwrap();
    let admin = env.org_and_key("acme", "admin").unwrap();
    let other = env.org_and_key("globex", "admin").unwrap();
    env.create_repo(
        &write,
        "acme",
        &json!({"name": "r", "upstream": {"url": URL}}),
    )
    .await;
    let (status, sync) = env.post_sync(&admin, "acme/r", Pull).await;
    assert_eq!(status, 201);
    let sync_path = format!("/v1/acme/r/upstream/syncs/{}", sync["id"].as_str().unwrap());

    // (method, path, body, scope needed)
    let pull = json!({"direction": "push"});
    let ops: Vec<(&str, String, Option<Value>, u8)> = vec![
        ("GET", "/v1/acme".into(), None, 0),
        ("GET", "/v1/acme/repos".into(), None, 0),
        ("GET", "/v1/acme/r".into(), None, 0),
        ("GET", "/v1/acme/r/upstream/syncs".into(), None, 0),
        ("GET", sync_path.clone(), None, 0),
        (
            "POST",
            "/v1/acme/repos".into(),
            Some(json!({"name": "n"})),
            1,
        ),
        (
            "PATCH",
            "/v1/acme/r".into(),
            Some(json!({"tags": {"a": "b"}})),
            1,
        ),
        ("POST", "/v1/acme/r/upstream/syncs".into(), Some(pull), 1),
    ];
    for (method, path, body, needed) in &ops {
        // 401: missing, malformed, unknown.
        let r = env.api(method, path, None, body.as_ref()).await;
        assert_error(&r, 401, "UNAUTHORIZED", None);
        for header in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "depot_x",
            "Bearer depot_unknown",
        ] {
            let reply = env
                .request(
                    method,
                    path,
                    Req {
                        raw_body: body.as_ref().map(Value::to_string),
                        headers: vec![("authorization", header.into())],
                        ..Req::default()
                    },
                )
                .await;
            assert_eq!(
                (reply.status, reply.code()),
                (401, "UNAUTHORIZED"),
                "{method} {path} {header}"
            );
        }
        // 403 for a key below the scope needed, success for the others.
        for (rank, key) in [&read, &write, &admin].into_iter().enumerate() {
            let r = env.api(method, path, Some(key), body.as_ref()).await;
            if (rank as u8) < *needed {
                assert_error(&r, 403, "FORBIDDEN", None);
            } else {
                assert!(
                    r.0 < 300
                        || r.1["error"]["code"] == "SYNC_ALREADY_QUEUED"
                        || r.1["error"]["code"] == "REPO_ALREADY_EXISTS",
                    "{method} {path} rank {rank}: {:?}",
                    r
                );
            }
        }
        // Another org's key: 404, even with admin scope, never 403.
        let r = env.api(method, path, Some(&other), body.as_ref()).await;
        assert_error(&r, 404, "NOT_FOUND", None);
    }
    // Another org's key naming its own org cannot see acme's repo either.
    let r = env.get_repo(&other, "globex/r").await;
    assert_error(&r, 404, "NOT_FOUND", None);
    let r = env.delete_repo(&read, "acme/r").await;
    assert_error(&r, 403, "FORBIDDEN", None);
    let r = env.delete_repo(&other, "acme/r").await;
    assert_error(&r, 404, "NOT_FOUND", None);
    // A missing repo and org read like another org's: 404.
    let r = env.get_repo(&read, "acme/nope").await;
    assert_error(&r, 404, "NOT_FOUND", None);
    let r = env.get_org(&read, "nobody").await;
    assert_error(&r, 404, "NOT_FOUND", None);

    // whoami: any valid key; revoked and expired keys are 401.
    let (status, me) = env.whoami(&read).await;
    assert_eq!((status, me["scopes"].clone()), (200, json!(["read"])));
    let db = env.db().await.unwrap();
    db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1",
        &[&me["key_id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    // Gateways cache verified keys; a change reaches them within the
    // revocation bound (1 s), by notification.
    let refused_within_bound = |path: &'static str, key: String| {
        let env = &env;
        async move {
            depot_e2e::eventually(std::time::Duration::from_secs(1), "the refusal", || async {
                let r = env.api("GET", path, Some(&key), None).await;
                Ok((r.0 == 401).then_some(r))
            })
            .await
            .unwrap()
        }
    };
    let r = refused_within_bound("/v1/whoami", read.clone()).await;
    assert_error(&r, 401, "UNAUTHORIZED", None);
    let (_, me) = env.whoami(&write).await;
    db.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
        &[&me["key_id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    let r = refused_within_bound("/v1/acme", write.clone()).await;
    assert_error(&r, 401, "UNAUTHORIZED", None);
    // Keys are stored as hashes only.
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM api_keys WHERE key_hash = convert_to($1, 'UTF8')",
            &[&admin],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert!(!env.all_logs().contains(&admin));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_upstream_and_auth_are_tri_state() {
    let env = env_without_worker().await;
    let key = env.org_and_key("acme", "write").unwrap();
    env.create_repo(
        &key,
        "acme",
        &json!({"name": "r", "tags": {"a": "1", "b": "2"}, "upstream": upstream()}),
    )
    .await;
    async fn credential(env: &TestEnv) -> Option<(String, Option<String>, Option<Vec<u8>>)> {
        let db = env.db().await.unwrap();
        let row = db
            .query_opt("SELECT url, auth_kind, credential FROM upstreams u JOIN repos r ON r.id = u.repo_id WHERE r.name = 'r'", &[])
            .await
            .unwrap();
        row.map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<Vec<u8>>>(2),
            )
        })
    }
    let patch = |body: Value| {
        let env = &env;
        let key = key.clone();
        async move {
            let (status, repo) = env.patch_repo(&key, "acme/r", &body).await;
            assert_eq!(status, 200, "{repo}");
            repo
        }
    };
    let original = credential(&env).await.unwrap();

    // Omitted upstream: unchanged.
    let repo = patch(json!({"tags": {"a": null, "c": "3"}})).await;
    assert_eq!(repo["tags"], json!({"b": "2", "c": "3"}));
    assert_eq!(repo["upstream"]["auth_kind"], "username_password");
    assert_eq!(credential(&env).await.unwrap(), original);

    // upstream without auth: URL changes, the credential stays.
    let new_url = "https://git.example.com/acme/moved.git";
    let repo = patch(json!({"upstream": {"url": new_url}})).await;
    assert_eq!(repo["upstream"]["url"], new_url);
    assert_eq!(repo["upstream"]["auth_kind"], "username_password");
    let now = credential(&env).await.unwrap();
    assert_eq!(
        (now.1.clone(), now.2.clone()),
        (original.1.clone(), original.2.clone())
    );

    // auth replaced whole.
    let repo =
        patch(json!({"upstream": {"url": new_url, "auth": {"kind": "token", "token": "tkn"}}}))
            .await;
    assert_eq!(repo["upstream"]["auth_kind"], "token");
    let now = credential(&env).await.unwrap();
    assert_ne!(now.2, original.2);

    // auth null: public upstream.
    let repo = patch(json!({"upstream": {"url": new_url, "auth": null}})).await;
    assert!(repo["upstream"]["auth_kind"].is_null());
    assert_eq!(
        credential(&env).await.unwrap(),
        (new_url.to_string(), None, None)
    );

    // upstream null: removed; then attached again.
    let repo = patch(json!({"upstream": null})).await;
    assert!(repo["upstream"].is_null());
    assert!(credential(&env).await.is_none());
    let repo = patch(json!({"upstream": upstream()})).await;
    assert_eq!(repo["upstream"]["auth_kind"], "username_password");
    assert_eq!(repo["upstream"]["url"], URL);

    // An empty PATCH changes nothing.
    let before = patch(json!({})).await;
    let (_, after) = env.get_repo(&key, "acme/r").await;
    assert_eq!(before, after);
    assert!(!env.all_logs().contains(PASSWORD));
    env.cleanup().await.unwrap();
}

/// The API tier, a `write` key of `acme`, its repository `r` with an
/// upstream and `bare` without one.
async fn syncs_env() -> (TestEnv, String, Value) {
    let env = api_tier().await;
    let key = env.org_and_key("acme", "write").unwrap();
    let repo = env
        .create_repo(
            &key,
            "acme",
            &json!({"name": "r", "upstream": {"url": URL}}),
        )
        .await;
    env.create_repo(&key, "acme", &json!({"name": "bare"}))
        .await;
    (env, key, repo)
}

/// POST that must be a 201; the sync.
async fn queued(env: &TestEnv, key: &str, direction: Direction, globs: Option<Value>) -> Value {
    let (status, sync) = match globs {
        None => env.post_sync(key, "acme/r", direction).await,
        Some(g) => env.post_sync_globs(key, "acme/r", direction, g).await,
    };
    assert_eq!(status, 201, "{sync}");
    sync
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_of_a_repo_without_upstream_is_409_and_of_no_repo_404() {
    let (env, key, _) = syncs_env().await;
    let r = env.post_sync(&key, "acme/bare", Pull).await;
    assert_error(&r, 409, "UPSTREAM_NOT_CONFIGURED", None);
    let r = env.post_sync(&key, "acme/ghost", Pull).await;
    assert_error(&r, 404, "NOT_FOUND", None);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_sync_is_queued_for_every_ref() {
    let (env, key, repo) = syncs_env().await;
    let first = queued(&env, &key, Pull, None).await;
    assert!(first["id"].as_str().unwrap().starts_with("sync_"));
    assert_eq!(first["repo_id"], repo["id"]);
    assert_eq!(first["direction"], "pull");
    assert_eq!(first["status"], "queued");
    assert_eq!(first["attempt"], 0);
    assert_eq!(first["ref_globs"], json!({"branches": "*", "tags": "*"}));
    for f in ["stats", "error", "started_at", "finished_at"] {
        assert!(first[f].is_null(), "{f}");
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_queued_sync_is_409_naming_it() {
    let (env, key, _) = syncs_env().await;
    let first = queued(&env, &key, Pull, None).await;
    let r = env
        .post_sync_globs(&key, "acme/r", Pull, json!({"branches": "*", "tags": "*"}))
        .await;
    assert_error(&r, 409, "SYNC_ALREADY_QUEUED", None);
    assert_eq!(r.1["error"]["details"]["sync_id"], first["id"]);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_direction_or_other_globs_is_a_new_sync_and_a_missing_key_is_empty() {
    let (env, key, _) = syncs_env().await;
    queued(&env, &key, Pull, None).await;
    queued(&env, &key, Push, None).await;
    let main_only = queued(
        &env,
        &key,
        Pull,
        Some(json!({"branches": "main,release/*"})),
    )
    .await;
    assert_eq!(
        main_only["ref_globs"],
        json!({"branches": "main,release/*", "tags": ""})
    );
    let tags_only = queued(&env, &key, Pull, Some(json!({"tags": "v*"}))).await;
    assert_eq!(
        tags_only["ref_globs"],
        json!({"branches": "", "tags": "v*"})
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requests_are_validated_field_by_field() {
    let (env, key, _) = syncs_env().await;
    for (body, field) in [
        (json!({}), "direction"),
        (json!({"direction": "sideways"}), "direction"),
        (json!({"direction": 1}), "direction"),
        (json!({"direction": null}), "direction"),
        (json!({"direction": "pull", "force": true}), "force"),
        (json!({"direction": "pull", "ref_globs": null}), "ref_globs"),
        (json!({"direction": "pull", "ref_globs": "*"}), "ref_globs"),
        (json!({"direction": "pull", "ref_globs": {}}), "ref_globs"),
        (
            json!({"direction": "pull", "ref_globs": {"heads": "*"}}),
            "ref_globs.heads",
        ),
        (
            json!({"direction": "pull", "ref_globs": {"branches": "[oops"}}),
            "ref_globs.branches",
        ),
        (
            json!({"direction": "pull", "ref_globs": {"branches": "*", "tags": "{a"}}),
            "ref_globs.tags",
        ),
        (
            json!({"direction": "pull", "ref_globs": {"branches": 7}}),
            "ref_globs.branches",
        ),
        (
            json!({"direction": "pull", "ref_globs": {"branches": "a".repeat(1025)}}),
            "ref_globs.branches",
        ),
    ] {
        let r = env.post_sync_body(&key, "acme/r", &body).await;
        assert_error(&r, 400, "INVALID_REQUEST", Some(field));
    }
    let r = env
        .request(
            "POST",
            "/v1/acme/r/upstream/syncs",
            Req {
                key: Some(&key),
                raw_body: Some("direction=pull".into()),
                ..Req::default()
            },
        )
        .await;
    assert_eq!((r.status, r.field()), (400, "body"));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_is_found_only_under_its_own_repo_and_a_404_says_which_is_missing() {
    let (env, key, _) = syncs_env().await;
    let first = queued(&env, &key, Pull, None).await;
    let id = first["id"].as_str().unwrap();
    let (status, got) = env.get_sync(&key, "acme/r", id).await;
    assert_eq!((status, &got), (200, &first));
    for other in ["sync_doesnotexist", "nope", "repo_abc"] {
        let r = env.get_sync(&key, "acme/r", other).await;
        assert_error(&r, 404, "NOT_FOUND", None);
        assert_eq!(r.1["error"]["message"], "sync not found", "{other}");
    }
    // The poll resolves repo and sync in one statement and still tells
    // which of the two is missing.
    for other in [id, "nope"] {
        let r = env.get_sync(&key, "acme/no-such-repo", other).await;
        assert_error(&r, 404, "NOT_FOUND", None);
        assert_eq!(r.1["error"]["message"], "repository not found", "{other}");
    }
    let r = env.get_sync(&key, "acme/bare", id).await;
    assert_error(&r, 404, "NOT_FOUND", None);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_list_newest_first_and_the_repo_shows_the_latest() {
    let (env, key, _) = syncs_env().await;
    let first = queued(&env, &key, Pull, None).await;
    let push = queued(&env, &key, Push, None).await;
    let main_only = queued(
        &env,
        &key,
        Pull,
        Some(json!({"branches": "main,release/*"})),
    )
    .await;
    let tags_only = queued(&env, &key, Pull, Some(json!({"tags": "v*"}))).await;
    let (status, list) = env.list_syncs(&key, "acme/r").await;
    assert_eq!(status, 200);
    let ids: Vec<&Value> = list["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(
        ids,
        [
            &tags_only["id"],
            &main_only["id"],
            &push["id"],
            &first["id"]
        ]
    );
    assert_eq!(list["has_more"], false);
    assert!(list["next_cursor"].is_null());

    let (_, repo) = env.get_repo(&key, "acme/r").await;
    assert_eq!(repo["upstream"]["latest_sync"], tags_only);
    let (_, repos) = env.list_repos(&key, "acme").await;
    assert_eq!(
        repos["repos"][0]["upstream"]["latest_sync"]["id"],
        tags_only["id"]
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_is_written_with_its_outbox_row() {
    let (env, key, _) = syncs_env().await;
    queued(&env, &key, Pull, None).await;
    queued(&env, &key, Push, None).await;
    queued(&env, &key, Pull, Some(json!({"tags": "v*"}))).await;
    let db = env.db().await.unwrap();
    let n: i64 = db
        .query_one("SELECT count(DISTINCT sync_id) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_repo_takes_its_syncs_along() {
    let (env, key, _) = syncs_env().await;
    let first = queued(&env, &key, Pull, None).await;
    queued(&env, &key, Push, None).await;
    let (status, _) = env.delete_repo(&key, "acme/r").await;
    assert_eq!(status, 200);
    let r = env
        .get_sync(&key, "acme/r", first["id"].as_str().unwrap())
        .await;
    assert_error(&r, 404, "NOT_FOUND", None);
    let db = env.db().await.unwrap();
    let n: i64 = db
        .query_one("SELECT count(*) FROM syncs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_edges() {
    let env = api_tier().await;
    let key = env.org_and_key("acme", "write").unwrap();
    let other = env.org_and_key("globex", "write").unwrap();

    // Empty lists.
    let (status, list) = env.list_repos(&key, "acme").await;
    assert_eq!(
        (status, list),
        (
            200,
            json!({"next_cursor": null, "has_more": false, "repos": []})
        )
    );
    env.create_repo(
        &key,
        "acme",
        &json!({"name": "r", "upstream": {"url": URL}}),
    )
    .await;
    let (status, list) = env.list_syncs(&key, "acme/r").await;
    assert_eq!(
        (status, list),
        (
            200,
            json!({"next_cursor": null, "has_more": false, "syncs": []})
        )
    );

    for i in 0..4 {
        env.create_repo(&key, "acme", &json!({"name": format!("r{i}")}))
            .await;
    }
    // globex's repos never show in acme's list.
    env.post_repo(&other, "globex", &json!({"name": "g"})).await;
    let mut sync_ids = Vec::new();
    for i in 0..5 {
        let (status, s) = env
            .post_sync_globs(&key, "acme/r", Pull, json!({"branches": format!("b{i}")}))
            .await;
        assert_eq!(status, 201);
        sync_ids.push(s["id"].clone());
    }
    sync_ids.reverse();

    // Walk both lists two at a time.
    async fn walk(env: &TestEnv, key: &str, base: &str, field: &str, limit: usize) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("{base}?limit={limit}&cursor={c}"),
                None => format!("{base}?limit={limit}"),
            };
            let (status, page) = env.api("GET", &path, Some(key), None).await;
            assert_eq!(status, 200, "{page}");
            let items = page[field].as_array().unwrap();
            assert!(items.len() <= limit);
            seen.extend(items.iter().map(|i| i["id"].clone()));
            if page["has_more"] == true {
                cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
                assert_eq!(items.len(), limit);
            } else {
                assert!(page["next_cursor"].is_null());
                break;
            }
        }
        seen
    }
    for limit in [1, 2, 5, 100] {
        let syncs = walk(&env, &key, "/v1/acme/r/upstream/syncs", "syncs", limit).await;
        assert_eq!(syncs, sync_ids, "limit {limit}");
        let repos = walk(&env, &key, "/v1/acme/repos", "repos", limit).await;
        assert_eq!(repos.len(), 5, "limit {limit}");
    }
    // A page exactly as large as what is left says has_more false.
    let (_, page) = env
        .api("GET", "/v1/acme/r/upstream/syncs?limit=5", Some(&key), None)
        .await;
    assert_eq!(page["has_more"], false);
    assert!(page["next_cursor"].is_null());
    let (_, page) = env.list_syncs(&key, "acme/r").await;
    assert_eq!(page["syncs"].as_array().unwrap().len(), 5);

    // Bad limits and cursors are 400 naming the parameter.
    let (_, page) = env
        .api("GET", "/v1/acme/repos?limit=1", Some(&key), None)
        .await;
    let repo_cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = env
        .api("GET", "/v1/acme/r/upstream/syncs?limit=1", Some(&key), None)
        .await;
    let sync_cursor = page["next_cursor"].as_str().unwrap().to_string();
    for base in ["/v1/acme/repos", "/v1/acme/r/upstream/syncs"] {
        for limit in ["0", "101", "-1", "abc", "1.5", ""] {
            let r = env
                .api("GET", &format!("{base}?limit={limit}"), Some(&key), None)
                .await;
            assert_error(&r, 400, "INVALID_REQUEST", Some("limit"));
        }
        let foreign = if base.ends_with("repos") {
            &sync_cursor
        } else {
            &repo_cursor
        };
        for cursor in ["garbage!", "", "AAAA", foreign.as_str()] {
            let r = env
                .api("GET", &format!("{base}?cursor={cursor}"), Some(&key), None)
                .await;
            assert_error(&r, 400, "INVALID_REQUEST", Some("cursor"));
        }
        let (status, _) = env
            .api("GET", &format!("{base}?limit=100"), Some(&key), None)
            .await;
        assert_eq!(status, 200);
        let (status, _) = env
            .api("GET", &format!("{base}?unknown=1"), Some(&key), None)
            .await;
        assert_eq!(status, 200);
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_and_refuse_reuse() {
    let env = api_tier().await;
    let key = env.org_and_key("acme", "write").unwrap();
    let other_key = env.org_and_key("globex", "write").unwrap();
    env.create_repo(
        &key,
        "acme",
        &json!({"name": "r", "upstream": {"url": URL}}),
    )
    .await;
    env.post_repo(
        &other_key,
        "globex",
        &json!({"name": "r", "upstream": {"url": URL}}),
    )
    .await;
    let send = |key: &str, org: &str, idem: &str, body: &str| {
        let env = &env;
        let (key, org, idem, body) = (
            key.to_string(),
            org.to_string(),
            idem.to_string(),
            body.to_string(),
        );
        async move {
            env.request(
                "POST",
                &format!("/v1/{org}/r/upstream/syncs"),
                Req {
                    key: Some(&key),
                    raw_body: Some(body),
                    headers: vec![("idempotency-key", idem)],
                },
            )
            .await
        }
    };

    let first = send(
        &key,
        "acme",
        "k1",
        r#"{"direction":"pull","ref_globs":{"branches":"main","tags":"v*"}}"#,
    )
    .await;
    assert_eq!(first.status, 201);
    // Same key, same body (other key order and blanks): the first response.
    let again = send(
        &key,
        "acme",
        "k1",
        r#"{ "ref_globs": {"tags":"v*", "branches":"main"}, "direction": "pull" }"#,
    )
    .await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    // Different body: 409.
    let reused = send(&key, "acme", "k1", r#"{"direction":"push"}"#).await;
    assert_eq!(
        (reused.status, reused.code()),
        (409, "IDEMPOTENCY_KEY_REUSED")
    );
    // Another org may use the same key string.
    let theirs = send(
        &other_key,
        "globex",
        "k1",
        r#"{"direction":"pull","ref_globs":{"branches":"main","tags":"v*"}}"#,
    )
    .await;
    assert_eq!(theirs.status, 201);
    assert_ne!(theirs.body["id"], first.body["id"]);

    // A 409 answer is replayed too, even once the conflict is gone.
    let conflict = send(
        &key,
        "acme",
        "k2",
        r#"{"direction":"pull","ref_globs":{"branches":"main","tags":"v*"}}"#,
    )
    .await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (409, "SYNC_ALREADY_QUEUED")
    );
    env.env_db_exec("UPDATE syncs SET status = 'failed', finished_at = now(), error = 'x'")
        .await;
    let replayed = send(
        &key,
        "acme",
        "k2",
        r#"{"direction":"pull","ref_globs":{"branches":"main","tags":"v*"}}"#,
    )
    .await;
    assert_eq!((replayed.status, &replayed.body), (409, &conflict.body));
    // Without the key the same body makes a new sync now.
    let (status, _) = env
        .post_sync_globs(&key, "acme/r", Pull, json!({"branches":"main","tags":"v*"}))
        .await;
    assert_eq!(status, 201);

    // Bad header values are 400 naming the header.
    for bad in ["", &"x".repeat(256)] {
        let r = send(&key, "acme", bad, r#"{"direction":"push"}"#).await;
        assert_eq!((r.status, r.field()), (400, "Idempotency-Key"), "{bad:?}");
    }

    // Concurrent requests with one key create one sync, and all get its answer.
    let body = r#"{"direction":"push","ref_globs":{"branches":"concurrent"}}"#;
    let replies = futures_join(
        (0..8)
            .map(|_| send(&key, "acme", "same-key", body))
            .collect(),
    )
    .await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        created.len(),
        8,
        "{:?}",
        replies
            .iter()
            .map(|r| (r.status, r.body.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        created
            .iter()
            .all(|r| r.body["id"] == created[0].body["id"])
    );
    let db = env.db().await.unwrap();
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM syncs WHERE branches_glob = 'concurrent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // Concurrent identical requests without a key: one 201, the rest 409.
    let body = r#"{"direction":"push","ref_globs":{"branches":"race"}}"#;
    let replies = futures_join(
        (0..8)
            .map(|_| {
                let env = &env;
                let key = key.clone();
                async move {
                    env.request(
                        "POST",
                        "/v1/acme/r/upstream/syncs",
                        Req {
                            key: Some(&key),
                            raw_body: Some(body.into()),
                            ..Req::default()
                        },
                    )
                    .await
                }
            })
            .collect(),
    )
    .await;
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
    assert!(
        replies
            .iter()
            .filter(|r| r.status != 201)
            .all(|r| r.code() == "SYNC_ALREADY_QUEUED")
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_the_envelope_and_accept_is_negotiated() {
    let env = api_tier().await;
    let key = env.org_and_key("acme", "write").unwrap();
    env.create_repo(&key, "acme", &json!({"name": "r"})).await;

    // Unknown routes and methods: 404 in the envelope, inside and outside /v1.
    for (method, path) in [
        ("GET", "/nothing"),
        ("GET", "/v1"),
        ("GET", "/v1/acme/r/upstream"),
        ("GET", "/v1/acme/r/upstream/syncs/x/y"),
        ("PUT", "/v1/acme/r"),
        ("POST", "/v1/acme/r"),
        ("DELETE", "/v1/acme/repos/x/y/z"),
        ("DELETE", "/v1/acme/repos"),
        ("POST", "/v1/acme"),
        ("DELETE", "/v1/acme/r/upstream/syncs"),
        ("PUT", "/v1/acme/r/upstream/syncs/sync_x"),
    ] {
        let r = env
            .request(
                method,
                path,
                Req {
                    key: Some(&key),
                    ..Req::default()
                },
            )
            .await;
        assert_eq!((r.status, r.code()), (404, "NOT_FOUND"), "{method} {path}");
    }

    // Accept: 406 when no JSON is acceptable, before anything else.
    for accept in [
        "text/html",
        "application/xml, text/plain",
        "application/json;q=0",
    ] {
        for (method, path) in [
            ("GET", "/v1/acme/r"),
            ("GET", "/v1/whoami"),
            ("POST", "/v1/acme/r/upstream/syncs"),
        ] {
            let r = env
                .request(
                    method,
                    path,
                    Req {
                        key: Some(&key),
                        headers: vec![("accept", accept.into())],
                        ..Req::default()
                    },
                )
                .await;
            assert_eq!(
                (r.status, r.code()),
                (406, "NOT_ACCEPTABLE"),
                "{accept} {path}"
            );
        }
    }
    for accept in [
        "application/json",
        "*/*",
        "application/*",
        "text/html, application/json;q=0.5",
        "application/json; charset=utf-8",
    ] {
        let r = env
            .request(
                "GET",
                "/v1/acme/r",
                Req {
                    key: Some(&key),
                    headers: vec![("accept", accept.into())],
                    ..Req::default()
                },
            )
            .await;
        assert_eq!(r.status, 200, "{accept}");
    }
    // A query string that does not parse.
    let r = env
        .api("GET", "/v1/acme/repos?limit=1&limit=2", Some(&key), None)
        .await;
    assert_eq!(r.0, 400, "{}", r.1);
    env.cleanup().await.unwrap();
}

/// Await all futures concurrently (no extra dependency).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

trait DbExec {
    async fn env_db_exec(&self, sql: &str);
}

impl DbExec for TestEnv {
    async fn env_db_exec(&self, sql: &str) {
        self.db().await.unwrap().batch_execute(sql).await.unwrap();
    }
}

#[test]
fn the_contract_checker_catches_mismatches() {
    use depot_e2e::api::{check_response, operation};
    let sync = json!({
        "id": "sync_1", "repo_id": "repo_1", "direction": "pull", "status": "queued",
        "attempt": 0, "ref_globs": {"branches": "*", "tags": "*"}, "stats": null,
        "error": null, "created_at": "2026-11-26T05:31:56.123Z", "started_at": null,
        "finished_at": null
    });
    let path = "/v1/acme/r/upstream/syncs";
    assert_eq!(
        operation("POST", path).unwrap().1["operationId"],
        "syncUpstream"
    );
    assert_eq!(
        operation("GET", "/v1/acme/repos").unwrap().1["operationId"],
        "listRepos"
    );
    assert_eq!(
        operation("GET", "/v1/whoami").unwrap().1["operationId"],
        "whoami"
    );
    assert_eq!(
        operation("GET", "/v1/acme").unwrap().1["operationId"],
        "getOrg"
    );
    assert!(operation("PUT", "/v1/acme/r").is_none());
    assert!(check_response("POST", path, 201, &sync).unwrap());
    let mut bad = sync.clone();
    bad["status"] = json!("running");
    assert!(check_response("POST", path, 201, &bad).is_err());
    let mut bad = sync.clone();
    bad.as_object_mut().unwrap().remove("finished_at");
    assert!(check_response("POST", path, 201, &bad).is_err());
    let mut bad = sync.clone();
    bad["created_at"] = json!("yesterday");
    assert!(check_response("POST", path, 201, &bad).is_err());
    // A status the operation does not list.
    let err = json!({"error": {"code": "TEAPOT", "message": "no"}});
    assert!(check_response("POST", path, 418, &err).is_err());
    // 5xx without a trace id.
    let err = json!({"error": {"code": "INTERNAL", "message": "internal error"}});
    assert!(check_response("POST", path, 500, &err).is_err());
    // A repo body where a sync is expected.
    assert!(
        check_response(
            "GET",
            "/v1/acme/r/upstream/syncs/sync_1",
            200,
            &json!({"id": "x"})
        )
        .is_err()
    );
}
