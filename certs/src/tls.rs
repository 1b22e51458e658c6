//! rustls configurations for both ends of a Weir connection, built from certificate files.
//!
//! Both sides are TLS 1.3 only and use the aws-lc-rs provider passed explicitly (this crate never
//! installs a process-wide default provider). The agent trusts only the fleet CA, never system
//! roots; the aggregator requires a client certificate chaining to the fleet CA.
//!
//! Revocation policy of [`server_config`] (decided here, once):
//! - Only the end-entity (agent) certificate is checked: the chain is leaf → CA, and the CA is a
//!   trust anchor, which has no revocation status.
//! - Unknown revocation status is **denied** (the rustls default). `crl.pem` is signed by the
//!   same CA that signs every accepted client certificate, so it is authoritative for all of
//!   them: a certificate not listed is "not revoked", not "unknown". The only way to get
//!   "unknown" is a CRL from another CA, which [`server_config`] rejects up front instead of
//!   letting it refuse every client at handshake time.
//! - The CRL's `nextUpdate` is **not** enforced (the rustls default, `ExpirationPolicy::Ignore`):
//!   Weir rewrites the CRL on revocation rather than on a schedule, and an expired CRL must not
//!   lock out the whole fleet. `weir-certs` also sets `nextUpdate` 10 years ahead.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::CertError;

/// The crypto provider every Weir TLS config uses: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_err(what: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> CertError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => CertError::io(path, source),
        rustls_pki_types::pem::Error::NoItemsFound => CertError::Pem {
            what,
            path: path.to_owned(),
            reason: format!("the file holds no PEM {what} block"),
        },
        other => CertError::Pem {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Loads every certificate in a PEM file (at least one, or an error).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err("certificate", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("certificate", path, e))?;
    if certs.is_empty() {
        return Err(pem_err(
            "certificate",
            path,
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err("private key", path, e))
}

/// Loads every CRL in a PEM file (at least one, or an error: an empty CRL file is refused rather
/// than silently disabling revocation).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_err("CRL", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("CRL", path, e))?;
    if crls.is_empty() {
        return Err(pem_err(
            "CRL",
            path,
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(crls)
}

fn roots(ca: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), CertError> {
    let ca_certs = load_certs(ca)?;
    let mut roots = RootCertStore::empty();
    for cert in &ca_certs {
        roots.add(cert.clone()).map_err(|source| CertError::Tls {
            path: ca.to_owned(),
            source,
        })?;
    }
    Ok((roots, ca_certs))
}

/// Aggregator side: TLS 1.3 only, requires a client certificate chaining to `ca`, refuses
/// certificates listed in the CRL file `crl` if given, and advertises `alpn`.
///
/// See the module docs for the revocation policy. The CRL is read once: to apply a new
/// `crl.pem`, build a new config (the aggregator does so when the file changes).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crl: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, CertError> {
    let (roots, ca_certs) = roots(ca)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl_path) = crl {
        let crls = load_crls(crl_path)?;
        for c in &crls {
            check_crl_issuer(c, crl_path, &ca_certs, ca)?;
        }
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = builder.build().map_err(|source| CertError::Verifier {
        ca: ca.to_owned(),
        source,
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| CertError::Tls {
            path: cert.to_owned(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| CertError::Tls {
            path: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Agent side: TLS 1.3 only, trusts only `ca` (not system roots), presents `cert`/`key`, and
/// offers `alpn`.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig, CertError> {
    let (roots, _) = roots(ca)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| CertError::Tls {
            path: cert.to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| CertError::Tls {
            path: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Refuses a CRL that is not issued and signed by one of the CA certificates: such a CRL would
/// make every client's revocation status "unknown", i.e. refuse the whole fleet.
fn check_crl_issuer(
    crl: &CertificateRevocationListDer<'_>,
    crl_path: &Path,
    ca_certs: &[CertificateDer<'_>],
    ca_path: &Path,
) -> Result<(), CertError> {
    let mismatch = |reason: String| CertError::CrlMismatch {
        crl: crl_path.to_owned(),
        ca: ca_path.to_owned(),
        reason,
    };
    let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|e| mismatch(format!("not a valid CRL: {e}")))?;
    for ca_der in ca_certs {
        let Ok(ca) = crate::identity::parse(ca_der) else {
            continue;
        };
        if ca.subject().as_raw() == parsed.issuer().as_raw() {
            return parsed
                .verify_signature(ca.public_key())
                .map_err(|e| mismatch(format!("bad signature: {e}")));
        }
    }
    Err(mismatch(format!(
        "CRL issuer {:?} is not the CA's subject",
        parsed.issuer().to_string()
    )))
}
