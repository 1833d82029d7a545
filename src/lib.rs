//! imagetrail follows a container image from build to deployment.
//!
//! One library, one thin binary (`src/main.rs`), three ways to use it:
//!
//! * **The `atomic scan` scanner** (`imagetrail scan`, also `register` and `verify` on named
//!   images): [`scan`] lists the targets under `/scanin`, reads each one's labels through
//!   [`engine`] (Docker or Podman socket, read-only), checks them with [`labels`], registers
//!   them through [`analytics`] and writes the three result files.
//! * **The deploy pipeline CLI** ([`track`]): [`track::deploy`] resolves a tag to a digest
//!   through [`registry`] and writes the records kept by [`records`] (`deploy-info.yml`,
//!   `deploy-history.yml`); [`track::query`] answers `status`, `history`, `at`, `compare` and
//!   `where` from them; [`track::overview`] shows a registry with the deployed digests marked
//!   and prunes it safely.
//!   [`delivery`] computes the delivery metrics (`imagetrail metrics`, also on the dashboard)
//!   and [`db`] moves records between a state directory and PostgreSQL
//!   ([`records::postgres`]).
//! * **The server** (`imagetrail serve`): [`server`] takes the analytics callbacks, the
//!   Atomist-compatible deployments API and Kubernetes admission reviews, and stores through
//!   [`records`], never in a format of its own; it also serves the dashboard. [`tracking_api`] is
//!   the one deployments-API body, which `deploy --endpoint` and the scanner's `deploy` scan
//!   send (with retries) and the server parses.
//!
//! Layers, every arrow pointing down: the front-ends ([`scan`], [`track`], [`server`]) use the
//! store ([`records`]) and the clients ([`registry`], [`engine`], [`analytics`], [`labels`];
//! [`analytics`] and [`tracking_api`] post through one retry loop, [`retry_post`]);
//! those use only the value types: [`reference`](mod@reference) (image references, digests, platforms and
//! registry hosts, parsed and normalised once), [`output`] (tables, times, stored text escaped
//! and cut for a terminal), [`terminal`] (untrusted text made safe), [`error`] (the error kinds
//! callers branch on), [`exit`] (exit codes as a type) and [`parallel`] (independent reads
//! spread over the cores). [`cli`] holds every flag and its
//! `IMAGETRAIL_*` variable; [`logging`] writes to stderr only. `records` imports nothing from
//! a front-end or a client.

pub mod analytics;
pub mod cli;
pub mod db;
pub mod delivery;
pub mod engine;
pub mod error;
pub mod exit;
pub mod labels;
pub mod logging;
pub mod output;
pub mod parallel;
pub mod records;
pub mod reference;
pub mod registry;
pub mod retry_post;
pub mod scan;
pub mod server;
pub mod terminal;
pub mod track;
pub mod tracking_api;

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
            Command::Deploy(args) => track::deploy::run(args).await,
            Command::Status(args) => track::query::status(args),
            Command::History(args) => track::query::history(args),
            Command::At(args) => track::query::at(args),
            Command::Compare(args) => track::query::compare(args).await,
            Command::Where(args) => track::query::where_(args),
            Command::Registry(RegistryCommand::Overview(args)) => {
                track::overview::registry(args).await
            }
            Command::Registry(RegistryCommand::Prune(args)) => track::overview::prune(args).await,
            Command::Images(ImagesCommand::Overview(args)) => track::overview::images(args).await,
            Command::Metrics(args) => delivery::run(args),
            Command::Serve(args) => server::serve(args).await,
            Command::Db(DbCommand::Migrate(args)) => db::migrate(args).await,
            Command::Db(DbCommand::Import(args)) => db::import(args).await,
            Command::Db(DbCommand::Export(args)) => db::export(args).await,
        }
    })
}
