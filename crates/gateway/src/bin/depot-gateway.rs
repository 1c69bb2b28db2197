//! `depot-gateway [--config PATH]`: the public HTTP API.

use clap::Parser;
use std::path::PathBuf;

/// jemalloc, not glibc malloc: with 10,000 requests held by `Prefer: wait`
/// the gateway's RSS is 173 MiB instead of 208 MiB (docs/benchmarks.md,
/// row 8b: size classes without per-chunk headers, and the untouched parts
/// of actix's per-connection buffers stay untouched).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "Depot Sync HTTP API gateway")]
struct Args {
    /// TOML configuration file (also DEPOT_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match depot_settings::Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("depot-gateway: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = depot_telemetry::init(&settings.telemetry, "depot-gateway");
    let app = match depot_gateway::Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("depot-gateway: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(port = app.port(), "gateway listening");
    match app.run_until_stopped().await {
        Ok(()) => {
            tracing::info!("gateway stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
