//! Local demo upstream for `make run`: serves bare repositories under a root
//! directory over git smart HTTP until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use depot_testkit::fixture::{self, WorkRepo};
use depot_testkit::{GitHttpServer, GitServerOptions};

#[derive(Debug, Parser)]
#[command(about = "Serve git repositories over smart HTTP for local development")]
struct Args {
    /// Directory holding the bare repositories (`<root>/<name>.git`); created if missing.
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Require HTTP basic auth with this user name.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Password for --user.
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Create `<root>/NAME.git` with a small history unless it already exists (repeatable).
    #[arg(long, value_name = "NAME")]
    seed: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating {}", args.root.display()))?;
    for name in &args.seed {
        seed(&args.root, name).with_context(|| format!("seeding {name}"))?;
    }

    let server = GitHttpServer::start(GitServerOptions {
        root: args.root,
        basic_auth: args.user.zip(args.password),
        listen: Some(args.listen),
    })?;
    println!("serving git on {}", server.base_url());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}

/// Branches `main` and `feature/x`, annotated tag `v1.0`.
fn seed(root: &Path, name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("invalid repository name {name:?}");
    }
    let bare = root.join(format!("{name}.git"));
    if bare.exists() {
        return Ok(());
    }
    let scratch = tempfile::tempdir().context("creating scratch directory")?;
    let work = WorkRepo::new(scratch.path())?;
    work.commit("main", "Initial commit")?;
    let v1 = work.commit("main", "Add greeting")?;
    work.tag("v1.0", &v1, true)?;
    work.commit("feature/x", "Start feature x")?;
    work.commit("main", "Update docs")?;
    fixture::init_bare(&bare)?;
    work.push_all_to(&bare)?;
    Ok(())
}
