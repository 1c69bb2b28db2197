//! Mesa's private keys and access tokens end to end: the admin CLI makes
//! and revokes keys, the gateway verifies tokens signed here with
//! ed25519-dalek exactly as Mesa's SDK signs them, and refuses each broken
//! one with a 401 that names the check. The gateway runs in-process (the
//! API tier): no test here needs its process or its log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use depot_e2e::{EnvOptions, TestEnv, eventually};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A private key as the CLI hands it out: id, text, and the signing key
/// parsed from the text as the SDK parses it.
struct PrivateKey {
    id: String,
    text: String,
    signing: SigningKey,
}

fn create_private_key(env: &TestEnv, org: &str) -> PrivateKey {
    env.admin(&["org", "create", org, "--exists-ok"]).unwrap();
    let out = env
        .admin(&["key", "create", "--org", org, "--kind", "private-key"])
        .unwrap();
    let text = out.lines().last().unwrap().to_string();
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_string();
    let body = text
        .strip_prefix(&format!("mesa_private_key_{org}_"))
        .unwrap_or_else(|| panic!("{text}"));
    let der = URL_SAFE_NO_PAD.decode(body).unwrap();
    let signing = SigningKey::from_pkcs8_der(&der).unwrap();
    PrivateKey { id, text, signing }
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn header(key: &SigningKey) -> Value {
    json!({"alg": "EdDSA", "typ": "mesa-at+jwt", "jwk": {
        "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
    }})
}

/// The claims Mesa's SDK sends for an admin token of 15 minutes.
fn admin_claims(org: &str) -> Value {
    let iat = now();
    json!({"iss": org, "aud": "mesa-api", "admin": true,
           "iat": iat, "exp": iat + 900, "jti": "3f1c2a4e-test"})
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let input = format!("{}.{}", b64json(&header(key)), b64json(claims));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

async fn env() -> TestEnv {
    TestEnv::start(EnvOptions::api_only()).await.unwrap()
}

/// A 401 whose message names `check` and holds nothing of the token.
async fn assert_refused(env: &TestEnv, token: &str, check: &str) {
    let (status, body) = env.whoami(token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(check), "{message:?} should name {check:?}");
    for part in token.split('.') {
        assert!(
            !body.to_string().contains(part),
            "the token is echoed: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_private_key_once_and_stores_only_its_public_half() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let api_key = env.org_and_key("acme", "read").unwrap();
    let db = env.db().await.unwrap();
    let row = db
        .query_one(
            "SELECT public_key, name FROM private_keys WHERE id = $1",
            &[&key.id],
        )
        .await
        .unwrap();
    let public: Vec<u8> = row.get(0);
    assert_eq!(public, key.signing.verifying_key().to_bytes());
    // Nothing in the database holds the private half.
    let seed = key.signing.to_bytes();
    let dump: Vec<u8> = db
        .query_one(
            "SELECT convert_to(string_agg(t::text, ''), 'UTF8') FROM private_keys t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let hex_seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!String::from_utf8_lossy(&dump).contains(&hex_seed));

    let list = env.admin(&["key", "list", "--org", "acme"]).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines[0], "id\tkind\tname\tscopes\tcreated\trevoked",
        "{list}"
    );
    let private_line = lines.iter().find(|l| l.starts_with(&key.id)).unwrap();
    let fields: Vec<&str> = private_line.split('\t').collect();
    assert_eq!(fields[1], "private-key");
    assert_eq!(fields[5], "-");
    let api_line = lines
        .iter()
        .find(|l| l.contains("\tapi-key\t"))
        .expect("the API key is listed too");
    assert!(api_line.contains("\tread\t"), "{api_line}");
    assert!(!list.contains(&key.text[20..]) && !list.contains(&api_key));

    env.admin(&["key", "revoke", &key.id]).unwrap();
    let list = env.admin(&["key", "list", "--org", "acme"]).unwrap();
    let revoked = list.lines().find(|l| l.starts_with(&key.id)).unwrap();
    assert_ne!(revoked.split('\t').nth(5), Some("-"), "{revoked}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_answers_whoami_with_the_private_key_and_all_scopes() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let token = sign(&key.signing, &admin_claims("acme"));
    let (status, me) = env.whoami(&token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["org"]["slug"], "acme");
    assert_eq!(me["key_id"], key.id.as_str());
    assert_eq!(me["scopes"], json!(["read", "write", "admin"]));
    let (status, body) = env.post_repo(&token, "acme", &json!({"name": "r"})).await;
    assert_eq!(status, 201, "{body}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let mut claims = admin_claims("acme");
    claims["iat"] = json!(now() - 1000);
    claims["exp"] = json!(now() - 100);
    assert_refused(&env, &sign(&key.signing, &claims), "expired").await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_orgs_key_is_refused() {
    let env = env().await;
    create_private_key(&env, "acme");
    let other = create_private_key(&env, "globex");
    // globex's key, claiming to speak for acme.
    let token = sign(&other.signing, &admin_claims("acme"));
    assert_refused(&env, &token, "not a registered, unrevoked private key").await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_payload_was_changed_after_signing_is_refused() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let mut claims = admin_claims("acme");
    claims.as_object_mut().unwrap().remove("admin");
    claims["access"] = json!({"r": "read-repo"});
    let token = sign(&key.signing, &claims);
    let (head, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    // The same signature over an escalated payload.
    let mut escalated = claims.clone();
    escalated.as_object_mut().unwrap().remove("access");
    escalated["admin"] = json!(true);
    let tampered = format!("{head}.{}.{signature}", b64json(&escalated));
    assert_refused(&env, &tampered, "signature").await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_a_revoked_key_is_refused_within_a_second() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let (status, _) = env.whoami(&sign(&key.signing, &admin_claims("acme"))).await;
    assert_eq!(status, 200, "the key works (and is cached) before");
    env.admin(&["key", "revoke", &key.id]).unwrap();
    eventually(
        Duration::from_secs(1),
        "the revoked key's refusal",
        || async {
            let token = sign(&key.signing, &admin_claims("acme"));
            let (status, _) = env.whoami(&token).await;
            Ok((status == 401).then_some(()))
        },
    )
    .await
    .unwrap();
    let token = sign(&key.signing, &admin_claims("acme"));
    assert_refused(&env, &token, "not a registered, unrevoked private key").await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_longer_than_four_hours_is_refused() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let mut claims = admin_claims("acme");
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() + 4 * 3600 + 1);
    assert_refused(&env, &sign(&key.signing, &claims), "lifetime").await;
    // Exactly 4 h is allowed.
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() + 4 * 3600);
    let (status, body) = env.whoami(&sign(&key.signing, &claims)).await;
    assert_eq!(status, 200, "{body}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_the_wrong_audience_or_type_is_refused() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let mut claims = admin_claims("acme");
    claims["aud"] = json!("another-api");
    assert_refused(&env, &sign(&key.signing, &claims), "aud").await;
    let input = format!(
        "{}.{}",
        b64json(&json!({"alg": "EdDSA", "typ": "JWT", "jwk": header(&key.signing)["jwk"]})),
        b64json(&admin_claims("acme"))
    );
    let sig = URL_SAFE_NO_PAD.encode(key.signing.sign(input.as_bytes()).to_bytes());
    assert_refused(&env, &format!("{input}.{sig}"), "typ").await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_reaches_its_named_repos_only() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let admin = sign(&key.signing, &admin_claims("acme"));
    for name in ["readable", "writable", "hidden"] {
        let (status, body) = env.post_repo(&admin, "acme", &json!({"name": name})).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut claims = admin_claims("acme");
    claims.as_object_mut().unwrap().remove("admin");
    claims["access"] = json!({"readable": "read-repo", "writable": "write-repo"});
    let token = sign(&key.signing, &claims);
    let (status, body) = env.get_repo(&token, "acme/readable").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.list_syncs(&token, "acme/readable").await;
    assert_eq!(status, 200, "{body}");
    // read-repo cannot write.
    let (status, body) = env
        .patch_repo(&token, "acme/readable", &json!({"tags": {"a": "1"}}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("FORBIDDEN")),
        "{body}"
    );
    let (status, body) = env
        .patch_repo(&token, "acme/writable", &json!({"tags": {"a": "1"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    // A repo of the org outside the grant does not exist for this token.
    let (status, body) = env.get_repo(&token, "acme/hidden").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("NOT_FOUND")),
        "{body}"
    );
    let (status, _) = env.list_syncs(&token, "acme/hidden").await;
    assert_eq!(status, 404);
    // Org-level operations are forbidden.
    let (status, body) = env.list_repos(&token, "acme").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("FORBIDDEN")),
        "{body}"
    );
    let (status, _) = env.post_repo(&token, "acme", &json!({"name": "new"})).await;
    assert_eq!(status, 403);
    let (status, _) = env.get_org(&token, "acme").await;
    assert_eq!(status, 403);
    let (status, me) = env.whoami(&token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["scopes"], json!([]));
    assert_eq!(
        me["access"],
        json!({"readable": "read-repo", "writable": "write-repo"})
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_over_the_size_and_grant_limits_are_refused() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    // 251 repositories: one more than Mesa's verifier grants.
    let mut claims = admin_claims("acme");
    claims.as_object_mut().unwrap().remove("admin");
    let access: serde_json::Map<String, Value> = (0..251)
        .map(|i| (format!("repo-{i}"), json!("read-repo")))
        .collect();
    claims["access"] = Value::Object(access);
    assert_refused(&env, &sign(&key.signing, &claims), "access to 1-250").await;
    // A validly signed token past 32 KiB is refused before it is decoded.
    let mut claims = admin_claims("acme");
    claims["padding"] = json!("x".repeat(33 * 1024));
    let (status, body) = env.whoami(&sign(&key.signing, &claims)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_name_with_a_tab_is_refused_and_no_key_is_created() {
    let env = env().await;
    env.admin(&["org", "create", "acme", "--exists-ok"])
        .unwrap();
    for kind in ["api-key", "private-key"] {
        let mut args = vec!["key", "create", "--org", "acme", "--kind", kind];
        if kind == "api-key" {
            args.extend(["--scopes", "read"]);
        }
        args.extend(["--name", "ci\tprod"]);
        let e = env.admin(&args).unwrap_err().to_string();
        assert!(e.contains("control characters"), "{kind}: {e}");
    }
    let list = env.admin(&["key", "list", "--org", "acme"]).unwrap();
    assert_eq!(list.lines().count(), 1, "only the header: {list}");
    env.cleanup().await.unwrap();
}

/// Repos "writable" and "hidden", and a token with `write-repo` on
/// "writable" and "renamed" (which does not exist yet) and `read-repo` on
/// "readable".
async fn repo_scoped_token(env: &TestEnv, key: &PrivateKey) -> String {
    let admin = sign(&key.signing, &admin_claims("acme"));
    for name in ["writable", "hidden"] {
        let (status, body) = env.post_repo(&admin, "acme", &json!({"name": name})).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut claims = admin_claims("acme");
    claims.as_object_mut().unwrap().remove("admin");
    claims["access"] =
        json!({"writable": "write-repo", "readable": "read-repo", "renamed": "write-repo"});
    sign(&key.signing, &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_cannot_rename_a_repo_out_of_its_grant() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let token = repo_scoped_token(&env, &key).await;
    for target in ["elsewhere", "readable", "hidden"] {
        let (status, body) = env
            .patch_repo(
                &token,
                "acme/writable",
                &json!({"name": target, "tags": {"a": "1"}}),
            )
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &json!("FORBIDDEN")),
            "{target}: {body}"
        );
    }
    // Nothing of either request was applied.
    let (status, body) = env.get_repo(&token, "acme/writable").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tags"], json!({}), "{body}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_renames_a_repo_to_a_name_it_may_write() {
    let env = env().await;
    let key = create_private_key(&env, "acme");
    let token = repo_scoped_token(&env, &key).await;
    let (status, body) = env
        .patch_repo(&token, "acme/writable", &json!({"name": "renamed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "renamed", "{body}");
    let (status, body) = env.get_repo(&token, "acme/renamed").await;
    assert_eq!(status, 200, "{body}");
    env.cleanup().await.unwrap();
}
