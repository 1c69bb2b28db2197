//! A scratch database per test, dropped when the test ends, also when it
//! fails (a panic unwinds through `Drop`).

use std::time::Duration;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct ScratchDb {
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    /// A new, migrated database named `<prefix>_<random>`.
    pub async fn migrated(prefix: &str) -> ScratchDb {
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let db = ScratchDb { name, url };
        if let Err(e) = depot_store::migrate::run(&db.url).await {
            panic!("migrating {}: {e}", db.name);
        }
        db
    }
}

/// A scratch database, a pool of `max_size` on it, and an org of `slug`
/// (its id). Not every test binary needs it.
#[allow(dead_code)]
pub async fn with_org(
    prefix: &str,
    slug: &str,
    max_size: usize,
) -> (ScratchDb, depot_store::Pool, String) {
    let db = ScratchDb::migrated(prefix).await;
    let pool = depot_store::connect(
        &db.url,
        &depot_store::PoolOptions {
            max_size,
            timeout: Duration::from_secs(5),
        },
    )
    .unwrap_or_else(|e| panic!("pool on {}: {e}", db.name));
    let client = pool
        .get()
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", db.name));
    let org = depot_store::orgs::create(&client, slug, slug)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("creating org {slug} in {}", db.name));
    (db, pool, org.id)
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, which cannot be blocked
        // on from within: a thread with its own runtime does the work.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                tokio::time::timeout(
                    Duration::from_secs(30),
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")),
                )
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop scratch database {}: {dropped:?}", self.name);
        }
    }
}
