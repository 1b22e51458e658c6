//! Weir's private PKI.
//!
//! One CA (created by `weir-certs init`) signs a server certificate for the aggregator and a
//! client certificate per agent; the agent's `site/name` identity lives in its certificate as a
//! `weir://agent/<site>/<name>` URI SAN. Revocation is a CRL file signed by the same CA. The
//! [`tls`] module turns those files into rustls configs for both ends of the mutual-TLS QUIC
//! link. The CA directory layout is documented in [`ca`].

pub mod bundle;
pub mod ca;
pub mod docs;
mod error;
mod files;
mod identity;
pub mod ledger;
pub mod tls;

pub use ca::{
    CaOptions, IssueOptions, IssuedCert, RevokedCert, init_ca, issue_agent, issue_aggregator,
    revoke,
};
pub use error::CertError;
pub use identity::{
    AgentIdentity, CertSummary, agent_identity, cert_not_after, cert_serial_hex,
    crl_revoked_serials, summarize, validate_name,
};
pub use ledger::{CertKind, Ledger, LedgerEntry, read_ledger};
