//! TLS to PostgreSQL through rustls (aws-lc, the crypto provider the rest of imagetrail uses),
//! for the URL's `sslmode`:
//!
//! * `disable`: plain TCP (or a Unix socket).
//! * `prefer` (libpq's default) and `require`: encrypted; the certificate is not verified
//!   (as libpq does) unless `sslrootcert=FILE` names the CAs to verify it against, hostname
//!   included.
//! * `verify-ca` and `verify-full`: encrypted and verified against `sslrootcert=FILE`, else the
//!   system bundle (`/etc/ssl/certs/ca-certificates.crt`), hostname included for both (rustls
//!   always checks it: `verify-ca` is treated as the stricter `verify-full`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgError;

/// The system CA bundle on Debian.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to connect, from the URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS or fail; verified only with a `sslrootcert`.
    Require,
    /// TLS, certificate and hostname verified.
    VerifyFull,
}

impl SslMode {
    /// Parse libpq's names.
    pub fn parse(s: &str) -> Result<SslMode, PgError> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" | "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(PgError::InvalidUrl(
                "sslmode must be disable, prefer, require, verify-ca or verify-full".into(),
            )),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(file: &Path) -> Result<RootCertStore, PgError> {
    let bad = |e: &dyn std::fmt::Display| {
        PgError::InvalidUrl(format!(
            "sslrootcert {}: {e}; name a readable PEM file of CA certificates",
            file.display()
        ))
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| bad(&e))? {
        store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if store.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    Ok(store)
}

/// The rustls connector for `mode`, or `None` for plain connections.
pub fn connector(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, PgError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::InvalidUrl(format!("TLS: {e}")))?;
    let config = match (mode, rootcert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            .with_no_client_auth(),
        (_, Some(file)) => builder
            .with_root_certificates(roots(file)?)
            .with_no_client_auth(),
        (SslMode::VerifyFull, None) => builder
            .with_root_certificates(roots(Path::new(SYSTEM_BUNDLE))?)
            .with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// libpq's `sslmode=require` without a root certificate: encryption against passive
/// eavesdropping, no authentication of the server (signatures are still checked, so the
/// handshake is a real one).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
