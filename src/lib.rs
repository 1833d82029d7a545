//! imagetrail follows a container image from build to deployment.
//!
//! One library, one thin binary (`src/main.rs`), three ways to use it:
//!
//! * **The `atomic scan` scanner** (`imagetrail scan`, also `register` and `verify` on named
//!   images): [`scan`] lists the targets under `/scanin`, reads each one's labels through
//!   [`engine`] (Docker or Podman socket, read-only), checks them with [`labels`], registers
//!   them through [`analytics`] and writes the three result files.
//! * **The deploy pipeline CLI**: [`deploy`] resolves a tag to a digest through [`registry`]
//!   and writes the records kept by [`records`] (`deploy-info.yml`, `deploy-history.yml`);
//!   [`records`] also answers `status`, `history`, `at`, `compare` and `where`; [`overview`]
//!   shows a registry with the deployed digests marked and prunes it safely.
//! * **The server** (`imagetrail serve`): [`server`] takes the analytics callbacks, the
//!   Atomist-compatible deployments API and Kubernetes admission reviews, and stores through
//!   [`records`], never in a format of its own.
//!
//! Around them: [`cli`] (every flag and its `IMAGETRAIL_*` variable), [`exit`] (exit codes as
//! a type), [`error`] (the error kinds callers branch on), [`logging`] (stderr only) and
//! [`terminal`] (untrusted text made safe for a terminal).

pub mod analytics;
pub mod cli;
pub mod db;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod exit;
pub mod labels;
pub mod logging;
pub mod overview;
pub mod records;
pub mod registry;
pub mod scan;
pub mod server;
pub mod terminal;

use cli::{Cli, Command, DbCommand, ImagesCommand, RegistryCommand, ScanType};
use exit::ExitCode;

/// Run one command to completion and say how the process should exit.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Scan(args) => scan::run_scan(args).await,
            Command::Register(args) => scan::run_images(args, ScanType::Register).await,
            Command::Verify(args) => scan::run_images(args, ScanType::Verify).await,
            Command::Deploy(args) => deploy::run(args).await,
            Command::Status(args) => records::query::status(args),
            Command::History(args) => records::query::history(args),
            Command::At(args) => records::query::at(args),
            Command::Compare(args) => records::query::compare(args).await,
            Command::Where(args) => records::query::where_(args),
            Command::Registry(RegistryCommand::Overview(args)) => overview::registry(args).await,
            Command::Registry(RegistryCommand::Prune(args)) => overview::prune(args).await,
            Command::Images(ImagesCommand::Overview(args)) => overview::images(args).await,
            Command::Serve(args) => server::serve(args).await,
            Command::Db(DbCommand::Migrate(args)) => db::migrate(args).await,
            Command::Db(DbCommand::Import(args)) => db::import(args).await,
            Command::Db(DbCommand::Export(args)) => db::export(args).await,
        }
    })
}
