//! The CA's ledger, `issued.json`: every certificate the CA signed, and which are revoked.
//!
//! The ledger is the source of truth for the CRL: `crl.pem` is regenerated from it on each
//! revocation, with `crl_number` incremented. Format (JSON, pretty-printed):
//!
//! ```json
//! { "crl_number": 2,
//!   "certs": [ { "serial": "4f..", "kind": "agent", "subject": "paris/gw-1",
//!                "not_after": "2027-01-01T00:00:00Z", "revoked": true,
//!                "revoked_at": "2025-01-01T00:00:00Z" } ] }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CertError;
use crate::files::{self, PUBLIC};

/// File name of the ledger inside the CA directory.
pub const LEDGER_FILE: &str = "issued.json";

/// What a certificate was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    Aggregator,
    Agent,
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertKind::Aggregator => "aggregator",
            CertKind::Agent => "agent",
        })
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// Serial as lowercase hex, as printed by `weir-certs show`.
    pub serial: String,
    pub kind: CertKind,
    /// `site/name` for agents, the DNS names and IPs (comma separated) for aggregators.
    pub subject: String,
    pub not_after: jiff::Timestamp,
    pub revoked: bool,
    /// When `revoke` was run; kept so regenerated CRLs keep the original revocation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<jiff::Timestamp>,
}

/// The whole ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// CRL number of the current `crl.pem`; incremented each time the CRL is regenerated.
    pub crl_number: u64,
    pub certs: Vec<LedgerEntry>,
}

impl Ledger {
    pub(crate) fn path(ca_dir: &Path) -> PathBuf {
        ca_dir.join(LEDGER_FILE)
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(self).expect("ledger serializes");
        s.push('\n');
        s.into_bytes()
    }

    /// Atomically rewrites the ledger.
    pub(crate) fn save(&self, ca_dir: &Path) -> Result<(), CertError> {
        files::replace(&Self::path(ca_dir), &self.to_json(), PUBLIC)
    }
}

/// Reads `CA_DIR/issued.json`.
pub fn read_ledger(ca_dir: &Path) -> Result<Ledger, CertError> {
    let path = Ledger::path(ca_dir);
    let text = files::read_to_string(&path)?;
    serde_json::from_str(&text).map_err(|source| CertError::Ledger { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let ledger = Ledger {
            crl_number: 3,
            certs: vec![LedgerEntry {
                serial: "4f01".into(),
                kind: CertKind::Agent,
                subject: "paris/gw-1".into(),
                not_after: "2030-01-01T00:00:00Z".parse().unwrap(),
                revoked: true,
                revoked_at: Some("2025-01-01T00:00:00Z".parse().unwrap()),
            }],
        };
        let back: Ledger = serde_json::from_slice(&ledger.to_json()).unwrap();
        assert_eq!(back, ledger);
        assert!(
            String::from_utf8(ledger.to_json())
                .unwrap()
                .contains("\"kind\": \"agent\"")
        );
    }
}
