//! TLS for the server (the Kubernetes API server calls admission webhooks over HTTPS only):
//! rustls with the aws-lc crypto provider, certificate chain and key from PEM files.

use std::path::Path;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;

/// Load the certificate chain and private key.
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    // axum-server is built without a provider of its own; install aws-lc once per process
    // (a second install, e.g. from another server in the same test binary, is a no-op).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key).await.with_context(|| {
        format!(
            "cannot load TLS certificate {} and key {}; give a PEM certificate chain and its PEM private key",
            cert.display(),
            key.display()
        )
    })
}
