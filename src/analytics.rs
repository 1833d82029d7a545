//! The analytics server client: the register and scanner-error calls, retries, idempotency.

use thiserror::Error;

/// What can go wrong calling the analytics server.
#[derive(Debug, Error)]
pub enum AnalyticsError {
    /// The server could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why it failed.
        reason: String,
    },
}
