//! The `atomic scan` job: targets from `/scanin` (or named images), one outcome per target,
//! and the three output files.

use crate::cli::{ImagesArgs, ScanArgs, ScanType};
use crate::exit::ExitCode;

/// `imagetrail scan [TYPE]`: the atomic entry point.
pub async fn run_scan(_args: ScanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("scan is not implemented yet")
}

/// `imagetrail register|verify IMAGE...`.
pub async fn run_images(_args: ImagesArgs, _scan_type: ScanType) -> anyhow::Result<ExitCode> {
    anyhow::bail!("register/verify are not implemented yet")
}
