//! `depot-worker [--config PATH]`: runs syncs.

use clap::Parser;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "Depot Sync worker")]
struct Args {
    /// TOML configuration file (also DEPOT_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match depot_settings::Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("depot-worker: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = depot_telemetry::init(&settings.telemetry, "depot-worker");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });
    let code = match depot_worker::run(settings, shutdown).await {
        Ok(()) => {
            tracing::info!("worker stopped");
            0
        }
        Err(e) => {
            eprintln!("depot-worker: {e:#}");
            2
        }
    };
    // Exit here rather than by returning: dropping the runtime would wait
    // for every blocking task, including a git thread abandoned after the
    // shutdown grace period while it waits on a silent upstream (its sync is
    // already released). Flush telemetry first, as returning would.
    drop(_telemetry);
    std::process::exit(code);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
