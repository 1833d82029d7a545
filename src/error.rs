//! The error kinds a caller can branch on. Each outside system has its own error enum in
//! its module (engine, analytics, registry, records); this type gathers them so `main`
//! can choose an exit code, and so the library's public functions share one `Result`.
//! [`error_chain`] and [`root_cause`] put a foreign error (reqwest's, which hides the useful
//! part in its source chain) into one line of a message.

use thiserror::Error;

/// Every failure that leaves the library as a typed error.
#[derive(Debug, Error)]
pub enum Error {
    /// The command line or the environment it runs in is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The container engine could not be reached or answered badly.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The analytics server call failed.
    #[error(transparent)]
    Analytics(#[from] crate::analytics::AnalyticsError),
    /// The OCI registry could not be reached or refused the request.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A deployment record could not be read or written.
    #[error(transparent)]
    Records(#[from] crate::records::RecordsError),
    /// A result file or directory could not be written.
    #[error("cannot write {path}: {source}; check that the directory exists and is writable")]
    Output {
        /// The file or directory that could not be written.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether this error is the user's input being wrong (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_))
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line (reqwest hides the useful part in the source chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The innermost cause of an error (e.g. "Connection refused (os error 111)").
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}
