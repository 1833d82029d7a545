//! The container engine (Docker or Podman) behind its socket: endpoint resolution, API version
//! negotiation, and read-only inspection. The scanner never creates, changes or deletes anything.

use thiserror::Error;

/// What can go wrong talking to the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// No engine answered at the endpoint.
    #[error(
        "cannot reach the container engine at {endpoint}: {reason}; mount the socket (-v /var/run/docker.sock:/var/run/docker.sock) or set DOCKER_HOST"
    )]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
}
