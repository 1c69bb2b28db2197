//! A pool of reused test databases, so an end-to-end test does not pay for
//! cloning and dropping a database of its own (on a disk-bound machine
//! that was the biggest fixed cost of a test).
//!
//! Invariants:
//!
//! - A pooled database is named after its template,
//!   `depot_tmpl_<hash>_pool_<n>`, so a tree with other migrations never
//!   gets one, and is only ever a clone of that template (emptied since).
//! - A test owns slot `n` while it holds the session-level advisory lock
//!   `(key of <hash>, n)`, taken with `pg_try_advisory_lock` in the
//!   `postgres` database on a connection it keeps for its whole life
//!   ([`Lease`]). The lease ends with that connection: at cleanup, on a
//!   panic, and when the test process dies, even by SIGKILL. Only the
//!   holder of a slot's lock creates, resets or drops its database.
//! - A lease takes the lowest free slot; a slot with no database yet (or
//!   one a test dropped) gets a clone of the template, as every test did
//!   before the pool.
//! - The database is made clean when it is leased, not when it is
//!   released, so a crashed test cannot leave a dirty one behind: backends
//!   still connected to it (the processes of a killed test) are
//!   terminated, prepared transactions rolled back, and then one
//!   transaction deletes the rows of every table in `public` but refinery's
//!   `refinery_schema_history` (the migrations insert no rows of their
//!   own: their INSERTs are all in trigger functions) and restarts every
//!   sequence. Session state (LISTEN channels, advisory locks, settings)
//!   lives and dies with the terminated sessions, which the lease waits
//!   for.
//! - Before it is reused, a database's schema and database-level settings
//!   are compared with the template's (a fingerprint of the catalog, taken
//!   from a fresh clone and kept as the template's comment); on any
//!   difference, e.g. a test that renamed a table and died before renaming
//!   it back, the slot is dropped and cloned again.
//!
//! Not covered: whatever outlives a test and reconnects after its backends
//! are terminated: a daemon of a test killed outside nextest (which kills
//! a test's whole process group), or, under `cargo test` (tests as threads
//! of one process), the background tasks of an in-process gateway, which
//! stopping its server does not end. The lease logs the connections it
//! terminates.

use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

use crate::PG_ADMIN_URL;

/// How many slots a lease tries before giving up: far more tests than ever
/// run at once.
const MAX_SLOTS: i32 = 256;

/// Catalog text that identifies a database's schema and settings; its md5
/// is the fingerprint. Everything a migration (or a test) can create in a
/// schema of its own: schemas, relations (with kind, owner, grants and row
/// security), columns, defaults, constraints, indexes, views, triggers,
/// functions, types, enum labels, extensions, and `ALTER DATABASE … SET`.
const FINGERPRINT: &str = r#"
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp\_%'
)
SELECT md5(coalesce(string_agg(line, E'\n' ORDER BY line), '')) FROM (
    SELECT format('schema %s %s %s', n.nspname, n.nspowner::regrole, n.nspacl)
    FROM pg_namespace n JOIN ns USING (oid)
  UNION ALL
    SELECT format('rel %s.%s %s %s %s %s %s', ns.nspname, c.relname, c.relkind,
                  c.relowner::regrole, c.relacl, c.relrowsecurity,
                  CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
    SELECT format('col %s.%s.%s %s %s %s %s', ns.nspname, c.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                  pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN ns ON ns.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT format('con %s.%s %s', ns.nspname, co.conname, pg_get_constraintdef(co.oid))
    FROM pg_constraint co JOIN ns ON ns.oid = co.connamespace
  UNION ALL
    SELECT format('idx %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
    SELECT format('trg %s %s', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_trigger t WHERE NOT t.tgisinternal
  UNION ALL
    SELECT format('fn %s.%s(%s) %s', ns.nspname, p.proname,
                  pg_get_function_identity_arguments(p.oid), md5(pg_get_functiondef(p.oid)))
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace WHERE p.prokind IN ('f', 'p')
  UNION ALL
    SELECT format('type %s.%s %s', ns.nspname, t.typname, t.typtype)
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
  UNION ALL
    SELECT format('enum %s %s %s', e.enumtypid::regtype, e.enumsortorder, e.enumlabel)
    FROM pg_enum e
  UNION ALL
    SELECT format('ext %s %s', extname, extversion) FROM pg_extension
  UNION ALL
    SELECT format('setting %s %s', s.setrole, s.setconfig)
    FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
    WHERE d.datname = current_database()
  UNION ALL
    SELECT format('database %s %s %s', datconnlimit, datallowconn, datistemplate)
    FROM pg_database WHERE datname = current_database()
) lines(line)
"#;

/// Empties every table of `public` but the migration history and restarts
/// every sequence (but the history's), in one transaction (a single
/// statement). DELETE, not TRUNCATE: on these small tables it took 7 to
/// 14 ms here where TRUNCATE, which gives every table and index new files,
/// took 210 to 360 ms. The replica role skips foreign keys and triggers
/// (the webhook and notify triggers must not fire), so order is free.
const RESET: &str = r#"
DO $reset$
DECLARE
    t record;
    seq record;
BEGIN
    PERFORM set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT schemaname, tablename FROM pg_tables
              WHERE schemaname = 'public' AND tablename <> 'refinery_schema_history'
    LOOP
        EXECUTE format('DELETE FROM %I.%I', t.schemaname, t.tablename);
    END LOOP;
    FOR seq IN
        SELECT s.seqrelid::regclass AS name, s.seqstart
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'public'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                              AND d.refobjid = 'refinery_schema_history'::regclass)
    LOOP
        PERFORM setval(seq.name, seq.seqstart, false);
    END LOOP;
    PERFORM lo_unlink(oid) FROM pg_largeobject_metadata;
END
$reset$
"#;

/// A leased pool database: this test's own until the lease is dropped.
pub struct Lease {
    pub db_name: String,
    /// Holds the advisory lock; the lease ends when it closes.
    holder: Client,
}

impl Lease {
    /// Whether the lock is still held (a Postgres restart ends every
    /// session, and with it the lease).
    pub fn is_held(&self) -> bool {
        !self.holder.is_closed()
    }
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn db_url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Lease a clean, fully migrated database cloned from `template`
/// (`depot_tmpl_<hash>`).
pub async fn lease(template: &str, hash: u64) -> Result<Lease> {
    // Two int4 keys, a space of their own: the template lock uses one bigint.
    let key = ((hash >> 32) ^ hash) as u32 as i32;
    lease_from(template, &format!("{template}_pool"), key).await
}

/// Lease slot `<prefix>_<n>` under lock `(key, n)` (the tests of this
/// module use a pool of their own).
async fn lease_from(template: &str, prefix: &str, key: i32) -> Result<Lease> {
    let holder = connect(PG_ADMIN_URL).await?;
    let mut slot = None;
    for n in 0..MAX_SLOTS {
        let taken: bool = holder
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&key, &n])
            .await?
            .get(0);
        if taken {
            slot = Some(n);
            break;
        }
    }
    let Some(n) = slot else {
        bail!("all {MAX_SLOTS} pool slots of {template} are leased");
    };
    let db_name = format!("{prefix}_{n}");
    let exists = holder
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db_name])
        .await?
        .is_some();
    if !(exists && reuse(&holder, template, &db_name).await?) {
        if exists {
            holder
                .batch_execute(&format!("DROP DATABASE \"{db_name}\" WITH (FORCE)"))
                .await
                .with_context(|| format!("drop {db_name}"))?;
        }
        clone(&holder, template, &db_name).await?;
    }
    Ok(Lease { db_name, holder })
}

/// Make the existing `db_name` clean for a new test; false when it cannot
/// be reused and must be cloned again.
async fn reuse(holder: &Client, template: &str, db_name: &str) -> Result<bool> {
    let terminated: Vec<i32> = holder
        .query(
            // Materialized, so that only this database's backends are
            // terminated: in one WHERE the planner may call
            // pg_terminate_backend before it tests datname.
            "WITH here AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) \
             SELECT pid FROM here WHERE pg_terminate_backend(pid)",
            &[&db_name],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !terminated.is_empty() {
        eprintln!(
            "test database pool: terminated {} leftover connection(s) to {db_name}",
            terminated.len()
        );
        // Until they are gone: one caught committing could add rows after
        // the reset's snapshot. All at once, where waiting in
        // pg_terminate_backend would wait for each in turn.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = holder
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                    &[&terminated],
                )
                .await?
                .get(0);
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{left} terminated connection(s) to {db_name} still there after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let Some(expected) = template_fingerprint(holder, template).await? else {
        return Ok(false);
    };
    // A database a test made unusable (it cannot be connected to, say)
    // is cloned again rather than failing the next test.
    let Ok(db) = connect(&db_url(db_name)).await else {
        return Ok(false);
    };
    for row in db
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await?
    {
        let gid: String = row.get(0);
        db.batch_execute(&format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''")))
            .await?;
    }
    let actual: String = db.query_one(FINGERPRINT, &[]).await?.get(0);
    if actual != expected {
        eprintln!("test database pool: {db_name} differs from {template}; cloning it again");
        return Ok(false);
    }
    db.batch_execute(RESET)
        .await
        .with_context(|| format!("empty {db_name}"))?;
    Ok(true)
}

/// Clone `template` into `db_name`; the first clone also records the
/// template's fingerprint, taken from it before any test used it.
async fn clone(holder: &Client, template: &str, db_name: &str) -> Result<()> {
    holder
        .batch_execute(&format!(
            "CREATE DATABASE \"{db_name}\" TEMPLATE \"{template}\""
        ))
        .await
        .with_context(|| format!("clone {template}"))?;
    if template_fingerprint(holder, template).await?.is_none() {
        let db = connect(&db_url(db_name)).await?;
        let fingerprint: String = db.query_one(FINGERPRINT, &[]).await?.get(0);
        // Concurrent first clones write the same text.
        holder
            .batch_execute(&format!(
                "COMMENT ON DATABASE \"{template}\" IS 'fingerprint {fingerprint}'"
            ))
            .await?;
    }
    Ok(())
}

/// The fingerprint recorded on `template`, if any.
async fn template_fingerprint(holder: &Client, template: &str) -> Result<Option<String>> {
    let comment: Option<String> = holder
        .query_one(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&template],
        )
        .await?
        .get(0);
    Ok(comment.and_then(|c| c.strip_prefix("fingerprint ").map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// This tree's template, built when missing.
    async fn template() -> String {
        crate::migrated_template(&HashMap::new()).await.unwrap()
    }

    /// A pool of one test's own (`label` names it; nextest runs these
    /// tests at once), so a lease it released is its next lease's lowest
    /// free slot.
    async fn test_lease(template: &str, label: &str) -> Lease {
        lease_from(
            template,
            &format!("{template}_pooltest_{label}"),
            test_key(label),
        )
        .await
        .unwrap()
    }

    fn test_key(label: &str) -> i32 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (crate::migrations_hash().unwrap(), label).hash(&mut hasher);
        hasher.finish() as u32 as i32
    }

    /// Polls until no session holds a slot of `label`'s pool. A dropped
    /// lease's connection closes at once, but its backend, and with it the
    /// advisory lock, ends a moment later: a lease taken before that finds
    /// the slot still locked and takes the next one.
    async fn until_no_slot_is_held(label: &str) {
        let admin = connect(PG_ADMIN_URL).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held: i64 = admin
                .query_one(
                    // A two-key advisory lock shows its keys as classid and
                    // objid, with objsubid 2.
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND objsubid = 2 AND classid = $1::int4::oid",
                    &[&test_key(label)],
                )
                .await
                .unwrap()
                .get(0);
            if held == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the released lease's lock is still held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn db(lease: &Lease) -> Client {
        connect(&db_url(&lease.db_name)).await.unwrap()
    }

    async fn fingerprint(lease: &Lease) -> String {
        db(lease)
            .await
            .query_one(FINGERPRINT, &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn a_reused_database_is_empty_with_its_migrations_and_sequences_restarted() {
        let template = template().await;
        let first = test_lease(&template, "reuse").await;
        let client = db(&first).await;
        client
            .batch_execute(
                "INSERT INTO orgs (id, slug, name) VALUES ('o1', 'acme', 'Acme'); \
                 INSERT INTO repos (id, org_id, name) VALUES ('r1', 'o1', 'a'), ('r2', 'o1', 'b')",
            )
            .await
            .unwrap();
        let name = first.db_name.clone();
        drop((client, first));
        until_no_slot_is_held("reuse").await;

        let second = test_lease(&template, "reuse").await;
        assert_eq!(second.db_name, name, "the released slot is reused");
        let client = db(&second).await;
        let tables: Vec<String> = client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
                 AND tablename <> 'refinery_schema_history'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(tables.contains(&"repos".to_string()), "{tables:?}");
        for table in tables {
            let rows: i64 = client
                .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(rows, 0, "rows left in {table}");
        }
        let migrations: i64 = client
            .query_one("SELECT count(*) FROM refinery_schema_history", &[])
            .await
            .unwrap()
            .get(0);
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
            .unwrap()
            .count();
        assert_eq!(migrations as usize, files);
        client
            .batch_execute("INSERT INTO orgs (id, slug, name) VALUES ('o1', 'acme', 'Acme')")
            .await
            .unwrap();
        let seq: i64 = client
            .query_one(
                "INSERT INTO repos (id, org_id, name) VALUES ('r1', 'o1', 'a') RETURNING seq",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(seq, 1);
    }

    #[tokio::test]
    async fn a_database_whose_schema_or_settings_changed_is_cloned_again() {
        let template = template().await;
        let expected = template_fingerprint(&connect(PG_ADMIN_URL).await.unwrap(), &template)
            .await
            .unwrap();
        for change in [
            "ALTER TABLE api_keys RENAME TO api_keys_away",
            "ALTER TABLE orgs ADD COLUMN extra int",
            "CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.t (x int)",
            "DROP INDEX api_keys_org",
        ] {
            let first = test_lease(&template, "schema").await;
            db(&first).await.batch_execute(change).await.unwrap();
            assert_ne!(Some(fingerprint(&first).await), expected, "{change}");
            drop(first);
            until_no_slot_is_held("schema").await;
            let second = test_lease(&template, "schema").await;
            assert_eq!(Some(fingerprint(&second).await), expected, "after {change}");
            drop(second);
            until_no_slot_is_held("schema").await;
        }
        let first = test_lease(&template, "schema").await;
        connect(PG_ADMIN_URL)
            .await
            .unwrap()
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" SET statement_timeout = '1s'",
                first.db_name
            ))
            .await
            .unwrap();
        drop(first);
        until_no_slot_is_held("schema").await;
        let second = test_lease(&template, "schema").await;
        let timeout: String = db(&second)
            .await
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, "0");
    }

    #[tokio::test]
    async fn a_lease_ends_the_connections_a_previous_test_left_behind() {
        let template = template().await;
        let first = test_lease(&template, "leftover").await;
        let leftover = db(&first).await;
        leftover
            .batch_execute("BEGIN; INSERT INTO orgs (id, slug, name) VALUES ('o1', 'acme', 'Acme')")
            .await
            .unwrap();
        drop(first);
        until_no_slot_is_held("leftover").await;
        let second = test_lease(&template, "leftover").await;
        assert!(
            leftover.batch_execute("COMMIT").await.is_err(),
            "the leftover session still runs"
        );
        let rows: i64 = db(&second)
            .await
            .query_one("SELECT count(*) FROM orgs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0);
    }

    #[tokio::test]
    async fn a_held_lease_is_never_given_to_another_test() {
        let template = template().await;
        let first = test_lease(&template, "held").await;
        let second = test_lease(&template, "held").await;
        assert_ne!(first.db_name, second.db_name);
        assert!(first.is_held() && second.is_held());
    }
}
