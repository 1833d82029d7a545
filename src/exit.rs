//! Exit codes as a type, so every command maps its outcome the same way.

/// How the process ends. atomic shows no result for a scanner that exits non-zero,
/// so a scan that wrote its results exits [`ExitCode::Success`] whatever the targets said,
/// unless the user asked for `--exit-code N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The job ran and wrote what it had to write.
    Success,
    /// An operational failure: nothing could be written, the engine or a server is unreachable,
    /// a record could not be stored.
    Failure,
    /// The command line or its environment was wrong (clap uses 2 as well).
    Usage,
    /// `--exit-code N`: at least one target failed and the user asked for this code.
    Custom(u8),
}

impl ExitCode {
    /// The code for an error that reached `main`: usage errors exit 2, the rest 1.
    pub fn from_error(err: &anyhow::Error) -> ExitCode {
        match err.downcast_ref::<crate::error::Error>() {
            Some(e) if e.is_usage() => ExitCode::Usage,
            _ => ExitCode::Failure,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        match code {
            ExitCode::Success => std::process::ExitCode::SUCCESS,
            ExitCode::Failure => std::process::ExitCode::from(1),
            ExitCode::Usage => std::process::ExitCode::from(2),
            ExitCode::Custom(n) => std::process::ExitCode::from(n),
        }
    }
}
