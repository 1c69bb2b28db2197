//! `depot-admin`: migrations, orgs and API keys.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = depot_admin::Cli::parse();
    match depot_admin::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("depot-admin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
