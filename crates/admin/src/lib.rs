//! `depot-admin`: the operator's CLI. Everything it does goes through
//! `depot-store`, so it needs the database only.

pub mod private_key;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use depot_domain::Scope;
use depot_secrets::KeyRing;
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
    /// API keys and private keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Upstream credential encryption.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Re-encrypt every stored upstream credential and webhook target
    /// secret under `secrets.credential_key`, reading old ones with
    /// `secrets.previous_credential_keys`; credentials sealed before origin
    /// binding are re-sealed bound to the origin of their row's URL. Safe
    /// to run while the service runs and to run again.
    Rotate,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyKind {
    /// A bearer API key with fixed scopes.
    ApiKey,
    /// An org-bound Ed25519 private key (Mesa's SDK): its holder signs
    /// short-lived access tokens; the server keeps the public key only.
    PrivateKey,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key; prints it alone on the last line (shown only once).
    Create {
        #[arg(long)]
        org: String,
        #[arg(long, value_enum, default_value = "api-key")]
        kind: KeyKind,
        /// API keys only. Comma-separated: read, write, admin.
        #[arg(long, value_delimiter = ',', required_if_eq("kind", "api-key"))]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a key of either kind by id (`key_…`). Gateways refuse it
    /// within `auth.revocation_bound_ms`.
    Revoke { id: String },
    /// The org's keys of both kinds: id, kind, name, scopes, created,
    /// revoked (never a secret).
    List {
        #[arg(long)]
        org: String,
    },
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
            "org slug must be 1-64 characters of [a-z0-9-], not starting with '-' (and not 'whoami' or 'openapi.json', which are routes)"
        );
    }
    Ok(())
}

/// Longest key name accepted, in characters.
const MAX_KEY_NAME_CHARS: usize = 200;

/// A key's name is a label for people reading `key list`, a table of
/// tab-separated lines: a tab, newline or terminal escape in it would break
/// the table (or the terminal), so control characters are refused.
fn check_key_name(name: &str) -> anyhow::Result<()> {
    if name.chars().count() > MAX_KEY_NAME_CHARS || name.chars().any(char::is_control) {
        bail!(
            "key name must be at most {MAX_KEY_NAME_CHARS} characters, none of them control characters (tab, newline, escape)"
        );
    }
    Ok(())
}

/// Which configuration this invocation read, and how to pick another: the
/// first thing to check when the database is not the expected one (the
/// built-in default is `depot`; `make run` uses `depot_dev` from
/// deploy/dev.toml).
fn configuration_hint(flag: Option<&std::path::Path>) -> String {
    let env_file = std::env::var_os("DEPOT_CONFIG").filter(|v| !v.is_empty());
    let file = match (flag, &env_file) {
        (Some(path), _) => format!("config file {} (--config)", path.display()),
        (None, Some(path)) => format!(
            "config file {} (DEPOT_CONFIG)",
            PathBuf::from(path).display()
        ),
        (None, None) => "built-in defaults, no config file".to_string(),
    };
    let overridden = std::env::vars().any(|(k, _)| k.starts_with("DEPOT__DATABASE__"));
    format!(
        "configuration used: {file}{}; choose one with --config PATH or DEPOT_CONFIG \
         (the `make run` setup: --config deploy/dev.toml, or `make admin ARGS='...'`)",
        if overridden {
            ", with DEPOT__DATABASE__* from the environment"
        } else {
            ""
        }
    )
}

/// The error first (what went wrong), the configuration on its own line.
fn with_hint(e: anyhow::Error, hint: String) -> anyhow::Error {
    anyhow::anyhow!("{e:#}\n{hint}")
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    let hint = || configuration_hint(cli.config.as_deref());
    let url = settings.database.url.expose();
    if let Command::Migrate = cli.command {
        let applied = depot_store::migrate::run(url)
            .await
            .map_err(|e| with_hint(anyhow::Error::from(e), hint()))?;
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
    let client = pool
        .get()
        .await
        .context("cannot connect to the database")
        .map_err(|e| with_hint(e, hint()))?;
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
            command:
                KeyCommand::Create {
                    org,
                    kind: KeyKind::PrivateKey,
                    scopes,
                    name,
                },
        } => {
            if !scopes.is_empty() {
                bail!(
                    "--scopes is for API keys: a private key's access tokens carry their own scopes"
                );
            }
            check_key_name(&name)?;
            let org = depot_store::orgs::by_slug(client, &org)
                .await?
                .with_context(|| format!("no org {org}"))?;
            let key = private_key::generate(&org.slug)?;
            let id = depot_store::keys::create_private_key(client, &org.id, &name, &key.public_key)
                .await?;
            println!(
                "created private key {id} for org {} (shown once; the server keeps only its public key)",
                org.slug
            );
            println!("{}", key.text);
        }
        Command::Key {
            command: KeyCommand::List { org },
        } => {
            let org = depot_store::orgs::by_slug(client, &org)
                .await?
                .with_context(|| format!("no org {org}"))?;
            let keys = depot_store::keys::list(client, &org.id).await?;
            println!("id\tkind\tname\tscopes\tcreated\trevoked");
            let time = |t: chrono::DateTime<chrono::Utc>| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            };
            for k in keys {
                let scopes = if k.scopes.is_empty() {
                    "-".to_string()
                } else {
                    k.scopes.join(",")
                };
                let name = if k.name.is_empty() { "-" } else { &k.name };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.kind,
                    name,
                    scopes,
                    time(k.created_at),
                    k.revoked_at.map(time).unwrap_or_else(|| "-".into())
                );
            }
        }
        Command::Key {
            command:
                KeyCommand::Create {
                    org,
                    kind: KeyKind::ApiKey,
                    scopes,
                    name,
                },
        } => {
            check_key_name(&name)?;
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
        Command::Secrets {
            command: SecretsCommand::Rotate,
        } => {
            let ring = KeyRing::new(
                &settings.credential_key()?,
                &settings.previous_credential_keys()?,
            );
            let report = rotate_credentials(client, &ring).await?;
            println!(
                "re-encrypted {} credentials; {} already under the current key; {} changed concurrently (run again)",
                report.rotated, report.current, report.raced
            );
            if !report.not_for_their_url.is_empty() {
                // Not fatal: no key makes these open, so waiting for a
                // rotation to "finish" them would never end. Their syncs
                // fail with credential_unreadable until auth is sent again.
                eprintln!(
                    "warning: {} credentials do not open for their repository and the origin of its URL \
                     (altered, or the URL was changed outside the API); left as they are, send their \
                     upstream.auth again: {}",
                    report.not_for_their_url.len(),
                    report.not_for_their_url.join(", ")
                );
            }
            // Webhook secrets are sealed with the same key: a rotation that
            // left them would make every delivery fail once the old key is
            // removed.
            let hooks = rotate_webhook_secrets(client, &ring).await?;
            println!(
                "re-encrypted {} webhook secrets; {} already under the current key; {} changed concurrently (run again)",
                hooks.rotated, hooks.current, hooks.raced
            );
            if !hooks.not_for_their_url.is_empty() {
                eprintln!(
                    "warning: {} webhook secrets do not open for their target (altered); left as they are, \
                     delete and re-create these targets: {}",
                    hooks.not_for_their_url.len(),
                    hooks.not_for_their_url.join(", ")
                );
            }
            if report.unreadable > 0 || hooks.unreadable > 0 {
                bail!(
                    "{} credentials and {} webhook secrets are sealed under a key that is neither \
                     current nor previous; add that key to secrets.previous_credential_keys and run again",
                    report.unreadable,
                    hooks.unreadable
                );
            }
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

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub rotated: u64,
    pub current: u64,
    pub raced: u64,
    /// Under a key the ring does not hold.
    pub unreadable: u64,
    /// Repo ids whose credential does not open for the repository and the
    /// origin of the URL stored beside it.
    pub not_for_their_url: Vec<String>,
}

/// Walk every sealed credential and re-seal those not under the current
/// key or not yet bound to an origin (crates/secrets: the legacy format is
/// bound to the origin of the URL its row holds now, the only record of
/// where it was meant to go). Each row is replaced by compare-and-swap on
/// credential and URL, so a concurrent PATCH is never overwritten with an
/// older credential or one bound to the old origin.
pub async fn rotate_credentials(
    client: &impl depot_store::GenericClient,
    ring: &KeyRing,
) -> anyhow::Result<RotationReport> {
    let mut report = RotationReport::default();
    let mut after = String::new();
    loop {
        let page = depot_store::credentials::page(client, &after, 200).await?;
        let Some(last) = page.last() else { break };
        after = last.repo_id.clone();
        for row in page {
            if !ring.needs_rotation(&row.credential) {
                report.current += 1;
                continue;
            }
            let Some(origin) = depot_domain::policy::origin(&row.url) else {
                report.not_for_their_url.push(row.repo_id);
                continue;
            };
            let credential = match ring.open_credential(&row.credential, &row.repo_id, &origin) {
                Ok(c) => c,
                Err(depot_secrets::SecretError::WrongKey) => {
                    report.unreadable += 1;
                    continue;
                }
                Err(_) => {
                    report.not_for_their_url.push(row.repo_id);
                    continue;
                }
            };
            let resealed = ring.seal_credential(&credential, &row.repo_id, &origin)?;
            if depot_store::credentials::replace(client, &row, &resealed).await? {
                report.rotated += 1;
            } else {
                report.raced += 1;
            }
        }
    }
    Ok(report)
}

/// [`rotate_credentials`] for webhook targets' secrets: sealed for the
/// target's id and `depot_store::webhooks::SECRET_ORIGIN` (their URL plays
/// no part, so no legacy format exists), replaced by compare-and-swap on the
/// sealed value. `not_for_their_url` names targets whose secret does not open
/// for their id.
pub async fn rotate_webhook_secrets(
    client: &impl depot_store::GenericClient,
    ring: &KeyRing,
) -> anyhow::Result<RotationReport> {
    use depot_store::webhooks::{SECRET_ORIGIN, replace_secret, secrets_page};
    let mut report = RotationReport::default();
    let mut after = String::new();
    loop {
        let page = secrets_page(client, &after, 200).await?;
        let Some(last) = page.last() else { break };
        after = last.target_id.clone();
        for row in page {
            if !ring.needs_rotation(&row.secret) {
                report.current += 1;
                continue;
            }
            let secret = match ring.open_credential(&row.secret, &row.target_id, SECRET_ORIGIN) {
                Ok(s) => s,
                Err(depot_secrets::SecretError::WrongKey) => {
                    report.unreadable += 1;
                    continue;
                }
                Err(_) => {
                    report.not_for_their_url.push(row.target_id);
                    continue;
                }
            };
            let resealed = ring.seal_credential(&secret, &row.target_id, SECRET_ORIGIN)?;
            if replace_secret(client, &row, &resealed).await? {
                report.rotated += 1;
            } else {
                report.raced += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::check_key_name;

    #[test]
    fn a_key_name_may_be_any_printable_text_up_to_200_characters() {
        for name in ["", "ci", "deploy bot (prod) – ünïcode", &"x".repeat(200)] {
            assert!(check_key_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn a_key_name_with_a_control_character_or_over_200_characters_is_refused() {
        for name in ["a\tb", "a\nb", "\u{1b}[31mred", &"x".repeat(201)] {
            let e = check_key_name(name).unwrap_err().to_string();
            assert!(e.contains("control characters"), "{name:?}: {e}");
        }
    }
}
