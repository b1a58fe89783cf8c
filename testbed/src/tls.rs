//! A private CA per stack, and a server certificate it signs. The leaf is CA:FALSE
//! with SANs localhost, 127.0.0.1 and ::1: rustls refuses a self-signed
//! CA certificate used as a server certificate, so clients verify for real.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// A private CA and a server certificate it signs (localhost, 127.0.0.1, ::1).
pub struct TestCerts {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
}

/// New certificates, for servers the tests start themselves.
pub fn generate() -> Result<TestCerts, Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "mailroom testbed CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    for ip in ["127.0.0.1", "::1"] {
        leaf.subject_alt_names.push(SanType::IpAddress(
            ip.parse()
                .map_err(|_| Error::Setup(format!("bad IP {ip}")))?,
        ));
    }
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca)?;
    Ok(TestCerts {
        ca_pem: ca.pem(),
        server_pem: leaf_cert.pem(),
        server_key_pem: leaf_key.serialize_pem(),
    })
}

/// A TLS acceptor serving `certs`' server certificate, offering `alpn`.
pub fn acceptor(certs: &TestCerts, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = vec![
        CertificateDer::from_pem_slice(certs.server_pem.as_bytes())
            .map_err(|e| Error::Tls(e.to_string()))?,
    ];
    let key = PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}
