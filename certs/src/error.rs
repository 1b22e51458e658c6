//! The one error type of this crate.
//!
//! Every variant says which file (or which input) was involved and, where there is one, what the
//! operator should do about it: these messages end up on a terminal or in the aggregator's log.

use std::path::PathBuf;

/// Everything that can go wrong while creating, reading or using Weir certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading, writing or creating a file or directory failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A target file exists and `force` was not given. Nothing was written.
    #[error("refusing to overwrite {path}: pass --force to replace it (nothing was written)")]
    Exists { path: PathBuf },

    /// A site or agent name does not follow the naming rule.
    #[error("invalid {kind} name {value:?}: {rule}")]
    InvalidName {
        kind: String,
        value: String,
        rule: &'static str,
    },

    /// Bad arguments that are not names (no SANs, inverted validity, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// A PEM file could not be read, or held nothing of the expected kind.
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// DER bytes given directly (no file) are not a certificate we can use.
    #[error("invalid certificate: {0}")]
    InvalidCert(String),

    /// A certificate file parsed as PEM but its content is not a usable certificate.
    #[error("invalid certificate in {path}: {reason}")]
    CertFile { path: PathBuf, reason: String },

    /// The certificate carries no `weir://agent/<site>/<name>` URI SAN.
    #[error(
        "not a Weir agent certificate: {0} (agent certificates carry a weir://agent/<site>/<name> URI SAN; issue one with `weir-certs issue agent`)"
    )]
    NotAgent(String),

    /// The CA directory is missing a file or holds something unusable.
    #[error("cannot use the CA in {dir}: {reason}")]
    Ca { dir: PathBuf, reason: String },

    /// The CA ledger `issued.json` is unreadable.
    #[error(
        "CA ledger {path} is corrupt: {source} (restore it from backup; it lists every certificate the CA issued)"
    )]
    Ledger {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `revoke` was given a certificate this CA never issued.
    #[error(
        "{cert} (serial {serial}) was not issued by the CA in {ca_dir}: check --ca, or run `weir-certs list --ca {ca_dir}`"
    )]
    NotIssuedByCa {
        cert: PathBuf,
        serial: String,
        ca_dir: PathBuf,
    },

    /// rcgen failed to build or sign something.
    #[error("failed to generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    /// The CRL file does not belong to the CA it is used with.
    #[error("CRL {crl} does not match CA {ca}: {reason} (use the crl.pem written by the same CA)")]
    CrlMismatch {
        crl: PathBuf,
        ca: PathBuf,
        reason: String,
    },

    /// rustls refused the certificates or keys while building a config.
    #[error("cannot build TLS config from {path}: {source}")]
    Tls {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },

    /// The client-certificate verifier could not be built (bad CA or CRL).
    #[error("cannot build client certificate verifier from CA {ca}: {source}")]
    Verifier {
        ca: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CertError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn generate(what: impl Into<String>, source: rcgen::Error) -> Self {
        CertError::Generate {
            what: what.into(),
            source,
        }
    }
}
