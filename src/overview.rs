//! Registry and images overviews, and prune planning (the protected set) and execution.

use crate::cli::{ImagesOverviewArgs, PruneArgs, RegistryOverviewArgs};
use crate::exit::ExitCode;

/// `imagetrail registry overview`.
pub async fn registry(_args: RegistryOverviewArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("registry overview is not implemented yet")
}

/// `imagetrail registry prune`.
pub async fn prune(_args: PruneArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("registry prune is not implemented yet")
}

/// `imagetrail images overview`.
pub async fn images(_args: ImagesOverviewArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("images overview is not implemented yet")
}
