//! The fleet CA: creating it, issuing aggregator and agent certificates, and revoking them.
//!
//! A CA directory holds:
//!
//! | file          | mode | content                                                        |
//! |---------------|------|----------------------------------------------------------------|
//! | `ca.pem`      | 0644 | self-signed CA certificate (pathLen 0: signs leaves only)      |
//! | `ca.key`      | 0600 | its ECDSA P-256 key (PKCS#8 PEM); every later call needs it    |
//! | `crl.pem`     | 0644 | CRL signed by the CA, regenerated on each revoke               |
//! | `issued.json` | 0644 | the ledger (see [`crate::ledger`])                             |
//!
//! The directory itself is created 0700. Issued certificate directories get `<kind>.pem`,
//! `<kind>.key` (0600) and a copy of `ca.pem`, so they are self-contained.
//!
//! CRLs carry `nextUpdate` = now + 10 years ([`CRL_VALIDITY_DAYS`]): Weir does not publish CRLs
//! on a schedule, it rewrites `crl.pem` when something is revoked, and the aggregator ignores
//! `nextUpdate` anyway (see [`crate::tls::server_config`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};

use crate::files::{self, Output, PRIVATE, PUBLIC};
use crate::identity::{self, AgentIdentity};
use crate::ledger::{self, CertKind, Ledger, LedgerEntry};
use crate::{CertError, tls};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CRL_FILE: &str = "crl.pem";

/// `nextUpdate` of every CRL this CA writes, counted from its `thisUpdate`.
pub const CRL_VALIDITY_DAYS: i64 = 3650;

/// Backdating of `notBefore` when not given explicitly, to tolerate clock skew between hosts.
const NOT_BEFORE_SKEW_SECS: i64 = 3600;

/// Options for [`init_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Subject CN of the CA certificate.
    pub common_name: String,
    /// How long the CA certificate is valid.
    pub validity_days: u32,
    /// Replace an existing CA in the output directory (this orphans every certificate it issued).
    pub force: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            common_name: "Weir fleet CA".to_owned(),
            validity_days: 3650,
            force: false,
        }
    }
}

/// Options for [`issue_aggregator`] and [`issue_agent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueOptions {
    /// Validity from now, used for whichever of `not_before`/`not_after` is not given.
    pub validity_days: u32,
    /// Start of validity; default now minus one hour (clock skew).
    pub not_before: Option<jiff::Timestamp>,
    /// End of validity; default `not_before` + `validity_days`.
    pub not_after: Option<jiff::Timestamp>,
    /// Replace existing certificate/key files in the output directory.
    pub force: bool,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions {
            validity_days: 825,
            not_before: None,
            not_after: None,
            force: false,
        }
    }
}

/// What [`issue_aggregator`] / [`issue_agent`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub serial_hex: String,
    pub not_after: jiff::Timestamp,
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    pub serial_hex: String,
    /// The regenerated CRL (`CA_DIR/crl.pem`).
    pub crl_path: PathBuf,
}

/// Creates a new CA in `out`: `ca.pem`, `ca.key`, an empty signed `crl.pem` and `issued.json`.
pub fn init_ca(out: &Path, opts: &CaOptions) -> Result<(), CertError> {
    if opts.common_name.trim().is_empty() {
        return Err(CertError::InvalidArgument(
            "the CA common name must not be empty".to_owned(),
        ));
    }
    let key = new_key("CA key")?;
    let now = jiff::Timestamp::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&[
        (DnType::OrganizationName, "Weir"),
        (DnType::CommonName, &opts.common_name),
    ]);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(now - jiff::SignedDuration::from_secs(NOT_BEFORE_SKEW_SECS))?;
    params.not_after = to_offset(now + days(opts.validity_days))?;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError::generate("CA certificate", e))?;
    let issuer = Issuer::new(params, key);
    let ledger = Ledger {
        crl_number: 1,
        certs: Vec::new(),
    };
    let crl = build_crl(&issuer, &ledger, now)?;

    files::create_dir(out, 0o700)?;
    files::write_all(
        &[
            Output::new(out.join(CA_KEY_FILE), issuer.key().serialize_pem(), PRIVATE),
            Output::new(out.join(CA_CERT_FILE), cert.pem(), PUBLIC),
            Output::new(out.join(CRL_FILE), crl, PUBLIC),
            Output::new(Ledger::path(out), ledger.to_json(), PUBLIC),
        ],
        opts.force,
    )
}

/// Issues the aggregator's server certificate (EKU serverAuth) with the given DNS and IP SANs.
///
/// Writes `out/aggregator.pem`, `out/aggregator.key` and `out/ca.pem`.
pub fn issue_aggregator(
    ca_dir: &Path,
    dns: &[String],
    ips: &[IpAddr],
    out: &Path,
    opts: &IssueOptions,
) -> Result<IssuedCert, CertError> {
    if dns.is_empty() && ips.is_empty() {
        return Err(CertError::InvalidArgument(
            "the aggregator certificate needs at least one DNS name (--dns) or IP address (--ip) that agents will connect to".to_owned(),
        ));
    }
    let mut sans = Vec::with_capacity(dns.len() + ips.len());
    for name in dns {
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|e| CertError::InvalidArgument(format!("invalid DNS name {name:?}: {e}")))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    let cn = dns
        .first()
        .cloned()
        .unwrap_or_else(|| "weir-aggregator".to_owned());
    let subject: Vec<String> = dns
        .iter()
        .cloned()
        .chain(ips.iter().map(IpAddr::to_string))
        .collect();
    issue(
        ca_dir,
        out,
        opts,
        Leaf {
            kind: CertKind::Aggregator,
            file_stem: "aggregator",
            dn: dn(&[
                (DnType::OrganizationName, "Weir"),
                (DnType::CommonName, &cn),
            ]),
            sans,
            eku: ExtendedKeyUsagePurpose::ServerAuth,
            ledger_subject: subject.join(","),
        },
    )
}

/// Issues an agent's client certificate (EKU clientAuth) for `site/name`.
///
/// The identity is in subject CN = name, OU = site and the URI SAN `weir://agent/<site>/<name>`
/// (the one [`crate::agent_identity`] reads). Writes `out/agent.pem`, `out/agent.key`,
/// `out/ca.pem`.
pub fn issue_agent(
    ca_dir: &Path,
    site: &str,
    name: &str,
    out: &Path,
    opts: &IssueOptions,
) -> Result<IssuedCert, CertError> {
    identity::validate_name("site", site)?;
    identity::validate_name("agent", name)?;
    let id = AgentIdentity {
        site: site.to_owned(),
        name: name.to_owned(),
    };
    let uri = id
        .uri()
        .try_into()
        .map_err(|e| CertError::InvalidArgument(format!("invalid agent URI for {id}: {e}")))?;
    issue(
        ca_dir,
        out,
        opts,
        Leaf {
            kind: CertKind::Agent,
            file_stem: "agent",
            dn: dn(&[
                (DnType::OrganizationName, "Weir"),
                (DnType::OrganizationalUnitName, site),
                (DnType::CommonName, name),
            ]),
            sans: vec![SanType::URI(uri)],
            eku: ExtendedKeyUsagePurpose::ClientAuth,
            ledger_subject: id.to_string(),
        },
    )
}

/// Revokes the certificate in `cert_pem_path` (which this CA must have issued): marks it in
/// `issued.json` and rewrites `crl.pem` with the next CRL number.
///
/// Idempotent: revoking an already revoked certificate changes nothing and returns the same
/// result.
pub fn revoke(ca_dir: &Path, cert_pem_path: &Path) -> Result<RevokedCert, CertError> {
    let der = tls::load_certs(cert_pem_path)?
        .into_iter()
        .next()
        .expect("load_certs never returns an empty list");
    let serial = identity::cert_serial_hex(&der).map_err(|e| CertError::CertFile {
        path: cert_pem_path.to_owned(),
        reason: e.to_string(),
    })?;
    let crl_path = ca_dir.join(CRL_FILE);
    let issuer = load_issuer(ca_dir)?;
    let mut ledger = ledger::read_ledger(ca_dir)?;
    let entry = ledger
        .certs
        .iter_mut()
        .find(|e| e.serial == serial)
        .ok_or_else(|| CertError::NotIssuedByCa {
            cert: cert_pem_path.to_owned(),
            serial: serial.clone(),
            ca_dir: ca_dir.to_owned(),
        })?;
    if entry.revoked && crl_path.exists() {
        return Ok(RevokedCert {
            serial_hex: serial,
            crl_path,
        });
    }
    let now = jiff::Timestamp::now();
    entry.revoked = true;
    entry.revoked_at.get_or_insert(now);
    ledger.crl_number += 1;
    let crl = build_crl(&issuer, &ledger, now)?;
    // Ledger first: if the CRL write fails, a retry sees the entry revoked and rewrites the CRL
    // (revoked but CRL missing is handled above); the opposite order could lose a revocation.
    ledger.save(ca_dir)?;
    files::replace(&crl_path, crl.as_bytes(), PUBLIC)?;
    tracing::info!(serial = %serial, crl = %crl_path.display(), "certificate revoked");
    Ok(RevokedCert {
        serial_hex: serial,
        crl_path,
    })
}

/// A leaf certificate about to be issued.
struct Leaf {
    kind: CertKind,
    file_stem: &'static str,
    dn: DistinguishedName,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    ledger_subject: String,
}

fn issue(
    ca_dir: &Path,
    out: &Path,
    opts: &IssueOptions,
    leaf: Leaf,
) -> Result<IssuedCert, CertError> {
    let issuer = load_issuer(ca_dir)?;
    let mut ledger = ledger::read_ledger(ca_dir)?;
    let ca_pem = files::read_to_string(&ca_dir.join(CA_CERT_FILE))?;

    let now = jiff::Timestamp::now();
    let (not_before, not_after) = match (opts.not_before, opts.not_after) {
        (Some(b), Some(a)) => (b, a),
        (Some(b), None) => (b, b + days(opts.validity_days)),
        (None, Some(a)) => (
            now - jiff::SignedDuration::from_secs(NOT_BEFORE_SKEW_SECS),
            a,
        ),
        (None, None) => (
            now - jiff::SignedDuration::from_secs(NOT_BEFORE_SKEW_SECS),
            now + days(opts.validity_days),
        ),
    };
    if not_after <= not_before {
        return Err(CertError::InvalidArgument(format!(
            "not_after ({not_after}) must be later than not_before ({not_before})"
        )));
    }

    let key = new_key("certificate key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf.dn;
    params.subject_alt_names = leaf.sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![leaf.eku];
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| CertError::generate(format!("{} certificate", leaf.kind), e))?;
    let serial_hex = identity::cert_serial_hex(cert.der())?;
    // Read back what the encoder wrote (second precision) rather than trusting the input.
    let not_after = identity::cert_not_after(cert.der())?;

    let cert_path = out.join(format!("{}.pem", leaf.file_stem));
    let key_path = out.join(format!("{}.key", leaf.file_stem));
    let outputs = [
        Output::new(key_path.clone(), key.serialize_pem(), PRIVATE),
        Output::new(cert_path.clone(), cert.pem(), PUBLIC),
        Output::new(out.join(CA_CERT_FILE), ca_pem, PUBLIC),
    ];
    files::check_all(&outputs, opts.force)?;
    // Ledger before the certificate: a certificate must never exist that `revoke` cannot find.
    ledger.certs.push(LedgerEntry {
        serial: serial_hex.clone(),
        kind: leaf.kind,
        subject: leaf.ledger_subject,
        not_after,
        revoked: false,
        revoked_at: None,
    });
    ledger.save(ca_dir)?;
    files::create_dir(out, 0o755)?;
    files::write_all(&outputs, opts.force)?;
    Ok(IssuedCert {
        cert_path,
        key_path,
        serial_hex,
        not_after,
    })
}

/// Reloads the CA's signing identity from `ca.pem` + `ca.key`, checking they belong together.
fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let ca_err = |reason: String| CertError::Ca {
        dir: ca_dir.to_owned(),
        reason,
    };
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    for p in [&cert_path, &key_path] {
        if !p.exists() {
            return Err(ca_err(format!(
                "{} is missing (create a CA with `weir-certs init --out {}`)",
                p.display(),
                ca_dir.display()
            )));
        }
    }
    let cert_pem = files::read_to_string(&cert_path)?;
    let key_pem = files::read_to_string(&key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        ca_err(format!(
            "{} is not a usable private key: {e}",
            key_path.display()
        ))
    })?;
    let cert_der = tls::load_certs(&cert_path)?.remove(0);
    let cert =
        identity::parse(&cert_der).map_err(|e| ca_err(format!("{}: {e}", cert_path.display())))?;
    if !cert.is_ca() {
        return Err(ca_err(format!(
            "{} is not a CA certificate",
            cert_path.display()
        )));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(ca_err(format!(
            "{} does not belong to {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| ca_err(format!("cannot use {} as issuer: {e}", cert_path.display())))
}

/// Builds and PEM-encodes the CRL for the current ledger.
fn build_crl(
    issuer: &Issuer<'_, KeyPair>,
    ledger: &Ledger,
    now: jiff::Timestamp,
) -> Result<String, CertError> {
    let mut revoked_certs = Vec::new();
    for entry in ledger.certs.iter().filter(|e| e.revoked) {
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&hex_to_bytes(&entry.serial)?),
            revocation_time: to_offset(entry.revoked_at.unwrap_or(now))?,
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: to_offset(now)?,
        next_update: to_offset(now + jiff::SignedDuration::from_hours(24 * CRL_VALIDITY_DAYS))?,
        crl_number: SerialNumber::from_slice(&minimal_be(ledger.crl_number)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(issuer)
        .and_then(|crl| crl.pem())
        .map_err(|e| CertError::generate("CRL", e))
}

fn new_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CertError::generate(what, e))
}

fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in parts {
        dn.push(ty.clone(), *value);
    }
    dn
}

/// 16 random bytes, top bit cleared (positive) and second-highest set (no leading zero byte, so
/// the DER encoding is exactly 16 bytes and the hex form is stable).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn minimal_be(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    bytes[first..].to_vec()
}

fn hex_to_bytes(hex: &str) -> Result<Vec<u8>, CertError> {
    let bad = || CertError::InvalidArgument(format!("invalid serial {hex:?} in the CA ledger"));
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

fn days(n: u32) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(24 * i64::from(n))
}

fn to_offset(ts: jiff::Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second())
        .map_err(|e| CertError::InvalidArgument(format!("time {ts} out of range: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_16_bytes() {
        for _ in 0..64 {
            let s = random_serial().to_bytes();
            assert_eq!(s.len(), 16);
            assert_eq!(s[0] & 0xc0, 0x40);
        }
    }

    #[test]
    fn hex_and_crl_number_encoding() {
        assert_eq!(hex_to_bytes("4f00ff").unwrap(), vec![0x4f, 0, 0xff]);
        assert!(hex_to_bytes("abc").is_err());
        assert!(hex_to_bytes("zz").is_err());
        assert_eq!(minimal_be(1), vec![1]);
        assert_eq!(minimal_be(256), vec![1, 0]);
        assert_eq!(minimal_be(0), vec![0]);
    }
}
