//! Mesa's Python SDK for end-to-end tests: the virtualenv that
//! `scripts/mesa-venv.sh` keeps under the target directory (built on first
//! use, reused after), and a runner for the scripts in `tests/python/`.
//! Any test that drives Depot through Mesa's own Python clients uses these.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The repository's root (this crate is `tests/`).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The python of the virtualenv holding `mesa-sdk` (see
/// `scripts/mesa-venv.sh` for the pinned version); made once per process.
pub fn mesa_python() -> Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = super::bin_dir()
                .parent()
                .map(|t| t.join("mesa-venv"))
                .ok_or("no target directory")?;
            let out = std::process::Command::new("bash")
                .arg(repo_root().join("scripts/mesa-venv.sh"))
                .env("MESA_VENV", &venv)
                .output()
                .map_err(|e| format!("scripts/mesa-venv.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/mesa-venv.sh failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(PathBuf::from(path))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Run `tests/python/<script>` with the SDK's python and `env`; returns its
/// stdout, or fails with its stderr on a non-zero exit or after `limit`.
pub async fn run_script(script: &str, env: &[(&str, String)], limit: Duration) -> Result<String> {
    let python = mesa_python()?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo_root().join("tests/python").join(script))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{script} did not finish within {limit:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{script} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}
