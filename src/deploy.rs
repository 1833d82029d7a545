//! The deploy job: resolve the reference to a digest, read the build metadata, write the
//! records, notify the tracking endpoints.

use crate::cli::DeployArgs;
use crate::exit::ExitCode;

/// `imagetrail deploy`.
pub async fn run(_args: DeployArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("deploy is not implemented yet")
}
