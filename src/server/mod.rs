//! `imagetrail serve`: analytics callbacks, the deployments API, queries and the admission
//! webhook. Stores through [`crate::records`], never in a format of its own.

use crate::cli::ServeArgs;
use crate::exit::ExitCode;

/// `imagetrail serve`.
pub async fn serve(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("serve is not implemented yet")
}
