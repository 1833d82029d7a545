//! The OCI distribution client: resolve a reference to digests, read manifests and config blobs,
//! list the catalog and tags, delete manifests. Credentials from `~/.docker/config.json`.

use thiserror::Error;

/// What can go wrong talking to a registry.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The registry could not be reached.
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable {
        /// The registry host.
        registry: String,
        /// Why it failed.
        reason: String,
    },
}
