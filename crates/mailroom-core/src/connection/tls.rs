//! The rustls client configuration: webpki and system roots plus an optional
//! private CA, SNI override, and (tests only) no verification at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::unpoisoned;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS choices of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    /// Extra CA certificates (PEM) to trust besides the public roots.
    pub extra_ca_pem: Option<String>,
    /// Name for SNI and certificate checks when it differs from the host.
    pub server_name: Option<String>,
    /// Accept any certificate. Tests only; status warns while it is set.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(
        "the custom CA is not valid PEM: {0}; put PEM certificates (-----BEGIN CERTIFICATE-----) in the referenced key"
    )]
    CaPem(String),
    #[error("the custom CA holds no certificate rustls accepts: {0}")]
    CaCertificate(String),
    #[error("{0:?} is not a valid TLS server name; set tls.serverName to a DNS name or IP address")]
    ServerName(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Configurations built so far. Sharing one per set of options keeps TLS
/// session tickets, so reconnecting resumes instead of a full handshake, and
/// reads the system roots once rather than per connection.
const CACHED_CONFIGS: usize = 256;

/// webpki's roots and the system's, read once per process.
fn public_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Missing or unreadable system roots are not fatal: webpki's are there.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        roots
    })
}

/// The client configuration for one server's options.
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsConfigError> {
    static CACHE: OnceLock<Mutex<HashMap<TlsOptions, Arc<ClientConfig>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(config) = unpoisoned(cache).get(options) {
        return Ok(config.clone());
    }
    let config = build_config(options)?;
    let mut cache = unpoisoned(cache);
    if cache.len() >= CACHED_CONFIGS {
        cache.clear();
    }
    cache.insert(options.clone(), config.clone());
    Ok(config)
}

fn build_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = public_roots().clone();
        if let Some(pem) = &options.extra_ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsConfigError::CaPem(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsConfigError::CaCertificate(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TlsConfigError::CaPem("no certificate found".into()));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The name presented in SNI and checked against the certificate.
pub fn server_name(
    host: &str,
    options: &TlsOptions,
) -> Result<ServerName<'static>, TlsConfigError> {
    let name = options.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|_| TlsConfigError::ServerName(name.to_owned()))
}

/// Accepts every certificate but still checks handshake signatures, so the
/// connection is encrypted, only not authenticated.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
