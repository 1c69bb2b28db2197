//! `depot-admin`: the operator's CLI. Everything it does goes through
//! `depot-store`, so it needs the database only.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use depot_domain::Scope;
use depot_settings::Settings;
use depot_store::PoolOptions;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "depot-admin", version, about = "Depot Sync administration")]
pub struct Cli {
    /// TOML configuration file (also DEPOT_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Organizations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an organization.
    Create {
        slug: String,
        #[arg(long)]
        name: Option<String>,
        /// Succeed when the org already exists.
        #[arg(long)]
        exists_ok: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key; prints it alone on the last line (shown only once).
    Create {
        #[arg(long)]
        org: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a key by id (`key_…`), effective immediately.
    Revoke { id: String },
}

fn check_slug(slug: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && slug != "whoami"
        && slug != "openapi.json";
    if !ok {
        bail!(
            "org slug must be 1-64 characters of [a-z0-9-], not starting with '-' (and not 'whoami')"
        );
    }
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    let url = settings.database.url.expose();
    if let Command::Migrate = cli.command {
        let applied = depot_store::migrate::run(url).await?;
        if applied.is_empty() {
            println!("schema is up to date");
        }
        for m in applied {
            println!("applied {m}");
        }
        return Ok(());
    }
    let pool = depot_store::connect(
        url,
        &PoolOptions {
            max_size: 2,
            timeout: Duration::from_millis(settings.database.connect_timeout_ms),
        },
    )?;
    let client = pool.get().await.context("cannot connect to the database")?;
    let client = &client;
    match cli.command {
        // Handled above, before a pool is needed.
        Command::Migrate => {}
        Command::Org {
            command:
                OrgCommand::Create {
                    slug,
                    name,
                    exists_ok,
                },
        } => {
            check_slug(&slug)?;
            let name = name.unwrap_or_else(|| slug.clone());
            match depot_store::orgs::create(client, &slug, &name).await? {
                Some(org) => println!("created org {} ({})", org.slug, org.id),
                None if exists_ok => println!("org {slug} already exists"),
                None => bail!("org {slug} already exists"),
            }
        }
        Command::Key {
            command: KeyCommand::Create { org, scopes, name },
        } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    s.trim()
                        .parse::<Scope>()
                        .map_err(|_| anyhow::anyhow!("unknown scope {s:?} (read, write, admin)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let org = depot_store::orgs::by_slug(client, &org)
                .await?
                .with_context(|| format!("no org {org}"))?;
            let (id, key) =
                depot_store::keys::create(client, &org.id, &name, &scopes, None).await?;
            let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            println!(
                "created key {id} for org {} with scopes {}",
                org.slug,
                names.join(",")
            );
            println!("{key}");
        }
        Command::Key {
            command: KeyCommand::Revoke { id },
        } => {
            if !depot_store::keys::revoke(client, &id).await? {
                bail!("no key {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
